"""Shape ops: view/reshape, expand, (un)squeeze, permute, transpose, repeat_interleave. None
computes anything: each rearranges the factor lists of the axes, splitting a variable into
digits when a view splits an axis (``h := ho * G + hi``)."""

from __future__ import annotations

import sympy
import torch.fx

from flashlight_hf.compiler.ir.from_fx.core import LT, Handler, LabelState, OpCall
from flashlight_hf.compiler.ir.nodes import (Axis, IExpr, Size, Unsupported, as_size, axis_extent, is_one,
                                             size_eq, size_prod)


def view(lab: LabelState, n: torch.fx.Node, x: LT, shape: list[Size]) -> LT:
    if -1 in shape:
        total = size_prod(axis_extent(a) for a in x.axes)
        known = size_prod(s for s in shape if not (isinstance(s, int) and s == -1))
        shape = [sympy.simplify(total / known) if s == -1 else s for s in shape]
        shape = [int(s) if isinstance(s, sympy.Expr) and s.is_number else s for s in shape]
    factors = [f for ax in x.axes for f in (ax or [(None, 1)])]
    out: list[Axis] = []
    fi = 0
    for target in shape:
        if is_one(target):
            # a size-1 axis keeps the variable of a size-1 source axis (a one-query step)
            if fi < len(factors) and is_one(factors[fi][1]):
                out.append([factors[fi]] if factors[fi][0] is not None else [])
                fi += 1
            else:
                out.append([])
            continue
        while fi < len(factors) and is_one(factors[fi][1]):
            fi += 1
        group: Axis = []
        acc: Size = 1
        while not size_eq(acc, target):
            if fi >= len(factors):
                raise Unsupported(n.name, f"view to {shape} does not split the axes {x.axes}")
            v, e = factors[fi]
            remaining = sympy.simplify(sympy.sympify(target) / sympy.sympify(acc))
            ratio = sympy.simplify(sympy.sympify(e) / remaining)
            if ratio.is_number and ratio > 1:  # the factor must be split
                inner = int(ratio) if ratio.is_integer else None
                if inner is None:
                    raise Unsupported(n.name, f"view splits {e} by {remaining}")
                outer_e = remaining if not (isinstance(remaining, sympy.Expr) and remaining.is_number) else int(remaining)
                if v is None:
                    factors[fi:fi + 1] = [(None, outer_e), (None, inner)]
                else:
                    vo, vi = lab.new_var(outer_e, f"{v.name}o"), lab.new_var(inner, f"{v.name}i")
                    lab.define(v, IExpr("add", (IExpr("mul", (IExpr.var(vo), IExpr.const(inner))),
                                                IExpr.var(vi))), n.name)
                    factors[fi:fi + 1] = [(vo, outer_e), (vi, inner)]
                continue
            group.append((v, e))
            acc = size_prod([acc, e])
            fi += 1
        out.append(group)
    if any(not is_one(e) for _, e in factors[fi:]):
        raise Unsupported(n.name, f"view to {shape} leaves factors {factors[fi:]}")
    return LT(out, x.node)


def expand(x: LT, sizes: list[Size]) -> LT:
    lead = len(sizes) - x.ndim
    axes: list[Axis] = [[(None, s)] if not is_one(s) else [] for s in sizes[:lead]]
    for ax, s in zip(x.axes, sizes[lead:]):
        if isinstance(s, int) and s == -1:
            axes.append(ax)
        elif is_one(axis_extent(ax)) and not is_one(s):
            axes.append([(None, s)])
        else:
            axes.append(ax)
    return LT(axes, x.node)


def _view(lab: LabelState, c: OpCall) -> LT:
    return view(lab, c.node, c.args[0], [as_size(s) for s in c.args[1]])


def _expand(lab: LabelState, c: OpCall) -> LT:
    return expand(c.args[0], [as_size(s) for s in c.args[1]])


def unsqueeze(lab: LabelState, c: OpCall) -> LT:
    x, d = c.args
    d = d % (x.ndim + 1)
    return LT(x.axes[:d] + [[]] + x.axes[d:], x.node)


def squeeze(lab: LabelState, c: OpCall) -> LT:
    args = c.args
    x = args[0]
    dims = range(x.ndim) if len(args) == 1 else ([args[1]] if isinstance(args[1], int) else args[1])
    dims = {d % max(x.ndim, 1) for d in dims}
    keep = [ax for i, ax in enumerate(x.axes) if not (i in dims and is_one(axis_extent(ax)))]
    return LT(keep, x.node)


def permute(lab: LabelState, c: OpCall) -> LT:
    x, perm = c.args
    return LT([x.axes[p % x.ndim] for p in perm], x.node)


def transpose(lab: LabelState, c: OpCall) -> LT:
    args = c.args
    x = args[0]
    a, b = (args[1], args[2]) if len(args) > 2 else (0, 1)
    axes = list(x.axes)
    a, b = a % x.ndim, b % x.ndim
    axes[a], axes[b] = axes[b], axes[a]
    return LT(axes, x.node)


def repeat_interleave(lab: LabelState, c: OpCall) -> LT:
    """``repeat_interleave(x, r, dim)`` with an integer ``r``: axis ``dim`` gains a broadcast
    digit of extent ``r`` (``[(hk, Hkv), (None, r)]``, what ``repeat_kv``'s expand and reshape
    give). ``torch.export`` keeps the op whole; ``make_fx`` lowers it to that expand."""
    x, repeats = c.args[0], c.args[1]
    dim = c.args[2] if len(c.args) > 2 else c.kwargs.get("dim")
    if not isinstance(repeats, int) or dim is None:
        raise Unsupported(c.node.name, "repeat_interleave with per-element repeats or no dim")
    dim %= x.ndim
    axes = list(x.axes)
    axes[dim] = list(axes[dim]) + ([] if repeats == 1 else [(None, repeats)])
    return LT(axes, x.node)


def in_place(handler: Handler) -> Handler:
    """An in-place shape op (``squeeze_``: ``matmul`` of a 1-D operand ends with one) as its
    functional form, where it changes an intermediate nothing else reads (else a later reader
    would see the new shape, which the labelling would not know; an input's new shape is the
    caller's to see)."""

    def run(lab: LabelState, c: OpCall) -> LT:
        source = c.node.args[0]
        if isinstance(source, torch.fx.Node) and (len(source.users) > 1 or source.op != "call_function"):
            raise Unsupported(c.node.name, f"{c.packet} changes a tensor the program reads elsewhere")
        return handler(lab, c)

    return run


HANDLERS: dict[str, Handler] = {
    "repeat_interleave": repeat_interleave,
    "squeeze_": in_place(squeeze),
    "unsqueeze_": in_place(unsqueeze),
    **{p: _view for p in ("view", "_unsafe_view", "reshape", "view_copy")},
    **{p: _expand for p in ("expand", "expand_copy")},
    "unsqueeze": unsqueeze,
    "squeeze": squeeze,
    "permute": permute,
    **{p: transpose for p in ("transpose", "t", "swapaxes")},
}
