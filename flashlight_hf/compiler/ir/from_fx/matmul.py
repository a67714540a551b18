"""Matrix products: a sum over the contracted variable of a product. Batch axes broadcast, the
contracted axes unify (that is where GQA's ``h := hk * G + g`` comes from). ``einsum`` is the
same with the axes matched by subscript."""

from __future__ import annotations

import torch
import torch.fx

from flashlight_hf.compiler.ir.from_fx.core import LT, Handler, LabelState, OpCall
from flashlight_hf.compiler.ir.from_fx.reductions import reduce_axis
from flashlight_hf.compiler.ir.nodes import Const, Node, Pointwise, Reduce, Unsupported, is_one


def matmul(lab: LabelState, n: torch.fx.Node, a: LT, b: LT, dtype: torch.dtype) -> LT:
    if not dtype.is_floating_point:  # kernels contract floats; eager decides what integers do
        raise Unsupported(n.name, f"a matmul of {dtype} values")
    squeeze_a = a.ndim == 1
    squeeze_b = b.ndim == 1
    if squeeze_a:
        a = LT([[]] + a.axes, a.node)
    if squeeze_b:
        b = LT(b.axes + [[]], b.node)
    ka, kb = a.axes[-1], b.axes[-2]
    batch_a = LT(a.axes[:-2], a.node)
    batch_b = LT(b.axes[:-2], b.node)
    batch, _ = lab.broadcast(n.name, [batch_a, batch_b]) if (a.ndim > 2 or b.ndim > 2) else ([], None)
    k_axis = lab.unify_axes(ka, kb, n.name)
    prod: Node = Pointwise(dtype, "mul", (a.node, b.node))
    node = prod
    for v, e in k_axis:
        if v is None:
            if not is_one(e):
                node = Pointwise(dtype, "mul", (node, Const(dtype, e)))
            continue
        node = Reduce(dtype, "sum", lab.find(v), node)
    axes = batch + ([] if squeeze_a else [a.axes[-2]]) + ([] if squeeze_b else [b.axes[-1]])
    return LT(axes, node)


def _matmul(lab: LabelState, c: OpCall) -> LT:
    return matmul(lab, c.node, c.args[0], c.args[1], c.dtype)


def einsum(lab: LabelState, c: OpCall) -> LT:
    """``einsum(equation, operands)``: the operands' product, their axes broadcast by subscript
    (one subscript, one variable), summed over the subscripts the output drops. ``torch.export``
    keeps ``einsum`` whole (``make_fx`` lowers it to ``bmm``), so a symbolic trace of an einsum
    program reaches the labeller as this op."""
    n, equation, operands = c.node, c.args[0], list(c.args[1])
    if not c.dtype.is_floating_point:
        raise Unsupported(n.name, f"an einsum of {c.dtype} values")
    if not all(isinstance(x, LT) for x in operands):
        raise Unsupported(n.name, "an einsum operand that is not a tensor")
    terms, out_labels = _parse_einsum(n.name, equation, [x.ndim for x in operands])
    order = out_labels + [s for t in terms for s in t if s not in out_labels]
    order = list(dict.fromkeys(order))  # every subscript once: the output's first, then the summed
    aligned = []
    for x, t in zip(operands, terms):
        if len(set(t)) != len(t):
            raise Unsupported(n.name, f"einsum '{equation}' repeats a subscript in one operand (a diagonal)")
        aligned.append(LT([x.axes[t.index(s)] if s in t else [] for s in order], x.node))
    axes, nodes = lab.broadcast(n.name, aligned)
    node: Node = nodes[0]
    for other in nodes[1:]:
        node = Pointwise(c.dtype, "mul", (node, other))
    if node.dtype != c.dtype:
        node = Pointwise(c.dtype, "cast", (node,))
    for s, ax in zip(order, axes):
        if s not in out_labels:
            node = reduce_axis(lab, n.name, "sum", node, ax, c.dtype)
    return LT(axes[:len(out_labels)], node)


def _parse_einsum(where: str, equation: str, ndims: list[int]) -> tuple[list[list[str]], list[str]]:
    """Per operand its subscripts, and the output's; an ellipsis becomes the subscripts
    ``…0``, ``…1``, … of the broadcast dims it stands for (aligned on the right)."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    parts = lhs.split(",")
    if len(parts) != len(ndims):
        raise Unsupported(where, f"einsum '{equation}' names {len(parts)} operands, given {len(ndims)}")
    n_ell = max([nd - len(p.replace("...", "")) for p, nd in zip(parts, ndims) if "..." in p], default=0)
    ellipsis = [f"...{k}" for k in range(n_ell)]

    def subscripts(p: str, nd: int | None) -> list[str]:
        if "..." not in p:
            return list(p)
        head, tail = p.split("...")
        k = (nd - len(head) - len(tail)) if nd is not None else n_ell
        return list(head) + ellipsis[n_ell - k:] + list(tail)

    terms = [subscripts(p, nd) for p, nd in zip(parts, ndims)]
    for t, nd in zip(terms, ndims):
        if len(t) != nd:
            raise Unsupported(where, f"einsum '{equation}': subscripts {''.join(t)} for a {nd}-D operand")
    if arrow:
        out = subscripts(rhs, None)
    else:  # implicit output: the ellipsis, then the subscripts used once, in alphabetical order
        flat = [s for t in terms for s in t if not s.startswith("...")]
        out = ellipsis + sorted(s for s in set(flat) if flat.count(s) == 1)
    return terms, out


HANDLERS: dict[str, Handler] = {**{p: _matmul for p in ("bmm", "mm", "matmul", "mv", "dot")}, "einsum": einsum}
