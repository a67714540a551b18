"""Where the backward kernels' gradient buffers land in the inputs' gradients.

A load reads its input at index expressions over the kernel's variables; its gradient buffer
has one axis per variable. Three ways back, cheapest first: the kernel writes straight into
the gradient (a view: every load of the input reads a disjoint box of it,
:func:`in_place_views`; a GQA group's accumulated heads, :func:`grouped_view`); sums, reshapes
and slices of an fp32 buffer (:func:`fold`); an accumulating scatter at the load's indices (a
gather), run deterministically. Its own module so the runtime's launch code reads as launches.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import sympy
import torch

from flashlight_hf.compiler.codegen.backward_info import StoreInfo
from flashlight_hf.compiler.ir import IExpr, Var, is_one
from flashlight_hf.compiler.ir.evaluate import Evaluator


def _index(st: StoreInfo) -> list[Any]:
    """The load's index, each compound expression without its digits of static extent 1
    (``row·D + d`` -> ``d``: the row the rewrite gives a program without a query axis is always
    0). The buffer keeps that variable's axis, of size 1: the folds below sum it away, or view
    the gradient with it."""
    return [_without_unit_digits(e) if isinstance(e, IExpr) and e.op not in ("var", "const", "sym") else e
            for e in st.load.index]


def _without_unit_digits(e: IExpr) -> IExpr:
    if e.op == "var":
        return IExpr.const(0) if is_one(e.args[0].extent) else e
    if e.op in ("const", "sym"):
        return e
    args = [_without_unit_digits(a) if isinstance(a, IExpr) else a for a in e.args]
    zero = [isinstance(a, IExpr) and a.op == "const" and a.args[0] == 0 for a in args]
    if e.op == "mul" and any(zero):
        return IExpr.const(0)
    if e.op == "add":
        args = [a for a, z in zip(args, zero) if not z]
        if len(args) <= 1:
            return args[0] if args else IExpr.const(0)
    return IExpr(e.op, tuple(args))


def _unit(v: Var, ext: dict) -> bool:
    """A variable of static extent 1: a buffer axis no index needs to read."""
    return is_one(v.extent) and ext.get(v, 1) == 1


def _box(st: StoreInfo, like: torch.Tensor, ext: dict, syms: dict) -> list[tuple[int, int, Var]] | None:
    """Per input axis (start, size, variable) where the load reads a box of its input with each
    of the buffer's variables once (an index ``v`` or ``v + c``); None otherwise."""
    if st.kind or st.group is not None:
        return None
    out = []
    for a, e in enumerate(_index(st)):
        if not isinstance(e, IExpr):
            return None
        if _broadcast_axis(e, like.shape[a]):
            out.append((0, 1, None))
            continue
        sv = _offset_var(e, syms)
        if sv is None:
            return None
        v, start = sv
        if v not in st.variables or start < 0 or start + ext[v] > like.shape[a]:
            return None
        out.append((start, ext[v], v))
    read = [v for _, _, v in out if v is not None]
    if sorted(map(id, read)) != sorted(id(v) for v in st.variables if v in read or not _unit(v, ext)):
        return None
    return out


def in_place_views(stores: Sequence[StoreInfo], inputs: Sequence[torch.Tensor], ext: dict, syms: dict,
                    wanted: Sequence[bool]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """buffer -> (the input's gradient, the view of it the kernel writes) for each input every
    load of which reads a box of it (:func:`_box`), the boxes pairwise disjoint: the kernels
    write the gradient directly (DiffLlama's two head halves of q and k). Zeroed first where the
    boxes do not cover the input."""
    out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for k, like in enumerate(inputs):
        mine = [st for st in stores if st.load.input == k]
        if not mine or not wanted[k]:
            continue
        boxes = [_box(st, like, ext, syms) for st in mine]
        if any(b is None for b in boxes):
            continue
        disjoint = all(any(a0 + n0 <= a1 or a1 + n1 <= a0 for (a0, n0, _), (a1, n1, _) in zip(p, q))
                       for x, p in enumerate(boxes) for q in boxes[x + 1:])
        if not disjoint:
            continue
        covered = sum(math.prod(n for _, n, _ in b) for b in boxes) == like.numel()
        whole = (torch.empty if covered else torch.zeros)(like.shape, dtype=like.dtype, device=like.device)
        for st, b in zip(mine, boxes):
            view = whole
            for a, (start, size, _) in enumerate(b):
                view = view.narrow(a, start, size)
            for a in reversed([a for a, (_, _, v) in enumerate(b) if v is None]):
                view = view.select(a, 0)
            axis_of = [v for _, _, v in b if v is not None]
            for v in st.variables:
                if v not in axis_of:  # a variable of extent 1 no axis reads: an axis of size 1
                    view = view.unsqueeze(-1)
                    axis_of.append(v)
            out[st.buffer] = (whole, view.permute([axis_of.index(v) for v in st.variables]))
    return out


def _plain_permutation(st: StoreInfo, like: torch.Tensor, ext: dict) -> list[int] | None:
    """Where the load reads every axis of its input by one of the buffer's variables (each
    once): per input axis, the buffer axis of its variable. None otherwise."""
    plain = [e.args[0] if isinstance(e, IExpr) and e.op == "var" else None for e in _index(st)]
    if any(v is None for v in plain) or sorted(map(id, plain)) != sorted(map(id, st.variables)):
        return None
    if any(ext[v] != like.shape[a] for a, v in enumerate(plain)):
        return None
    return [st.variables.index(v) for v in plain]


def grouped_view(st: StoreInfo, like: torch.Tensor, shape: list[int],
                  own: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(the kernel's buffer, the gradient it is a view of) for a load accumulated over a head
    group: per buffer axis the stride of the input axis its variable (or ``h // G``) indexes,
    0 for an axis no input axis reads (its extent is 1). ``own``: the gradient in the input's
    dtype (the only store into it); else fp32, zeroed, to be added to the others."""
    strides = [0] * len(st.variables)
    h, _ = st.group
    whole = (torch.empty if own else torch.zeros)(like.shape, dtype=like.dtype if own else torch.float32,
                                                  device=like.device)
    for a, e in enumerate(st.load.index):
        v = e.args[0] if e.op == "var" else h if e.op == "floordiv" else None
        if v is not None:
            strides[st.variables.index(v)] = whole.stride(a)
    if own and math.prod(shape) != like.numel():
        whole.zero_()  # the load reads part of the input (the view is one-to-one): the rest's gradient is 0
    return whole.as_strided(shape, strides), whole


def fold(st: StoreInfo, buffer: torch.Tensor, like: torch.Tensor, ext: dict, syms: dict,
          inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """A load's gradient buffer as a gradient of the input it reads, in a fixed order: a
    permuted view where the load reads every axis by one variable; sums over the axes it
    broadcasts along (and GQA's ``h // G``) where each index is a variable, ``0`` or a variable
    floor-divided by a constant; else an accumulating scatter at its indices (gathers), run
    deterministically."""
    if st.kind == "scalar":
        buffer = buffer.sum(-1)
    perm = _plain_permutation(st, like, ext)
    if perm is not None:
        return buffer.permute(perm)
    folded = _structured_fold(st, buffer, like, ext, syms)
    if folded is not None:
        return folded
    idx = [_index_values(e, st.variables, ext, syms, buffer.device, inputs) for e in st.load.index]
    idx = torch.broadcast_tensors(*idx, buffer)[:-1]
    grad = torch.zeros(like.shape, dtype=torch.float32, device=buffer.device)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # a sorted scatter: the same bits every run
    try:
        grad.index_put_(tuple(i.long() for i in idx), buffer.float(), accumulate=True)
    finally:
        torch.use_deterministic_algorithms(was)
    return grad


def _offset_var(e: IExpr, syms: dict) -> tuple[Var, int] | None:
    """:meth:`IExpr.offset_var` with its start as this call's integer (DiffLlama's second half
    of the heads reads ``h + var``); None where the index is not of that form."""
    slice_ = e.offset_var()
    if slice_ is None:
        return None
    v, c = slice_
    try:
        return v, int(c.subs(syms)) if isinstance(c, sympy.Expr) else int(c)
    except TypeError:
        return None  # a size the call does not fix


def _broadcast_axis(e: IExpr, size: int) -> bool:
    """The load reads an axis of one element at index 0 (a broadcast, or a batch of 1)."""
    return e.op == "const" and size == 1 and not isinstance(e.args[0], sympy.Expr) and int(e.args[0]) == 0


def _structured_fold(st: StoreInfo, buffer: torch.Tensor, like: torch.Tensor, ext: dict,
                     syms: dict) -> torch.Tensor | None:
    """The fold as sums, reshapes and slices (see :func:`fold`), or None where the index is not
    of that form."""
    shape = list(buffer.shape)
    names: list[Any] = list(st.variables)  # what each axis of ``t`` is
    t = buffer
    picks: list[Any] = []  # per input axis: the axis name of ``t`` it is, or None (a broadcast 0)
    starts: list[int] = []  # per input axis: where the slice the load reads begins
    for a, e in enumerate(_index(st)):
        if not isinstance(e, IExpr):
            return None
        starts.append(0)
        off = _offset_var(e, syms)  # v or v + c: the slice [c, c + extent) of the axis
        if _broadcast_axis(e, like.shape[a]):
            picks.append(None)
        elif off is not None and off[0] in names and off[0] not in picks and off[1] >= 0 \
                and off[1] + ext[off[0]] <= like.shape[a]:
            picks.append(off[0])
            starts[-1] = off[1]
        elif e.op == "floordiv" and isinstance(e.args[0], IExpr) and e.args[0].op == "var" and \
                isinstance(e.args[1], IExpr) and e.args[1].op == "const":
            v, c = e.args[0].args[0], int(e.args[1].args[0])
            if v not in names or ext[v] != like.shape[a] * c:
                return None
            n = names.index(v)  # split v into (v // c, v % c): the second is summed below
            shape = shape[:n] + [like.shape[a], c] + shape[n + 1:]
            t = t.reshape(shape)
            names = names[:n] + [("div", v), ("mod", v)] + names[n + 1:]
            picks.append(("div", v))
        else:
            return None
    keep = [n for n in picks if n is not None]
    drop = [k for k, n in enumerate(names) if n not in keep]
    if drop:
        t = t.sum(dim=drop, dtype=torch.float32)  # a 16-bit buffer summed in fp32
        names = [n for n in names if n in keep]
    t = t.permute([names.index(n) for n in keep])
    sizes = [ext[n] if n is not None and not isinstance(n, tuple) else like.shape[a] if n is not None else 1
             for a, n in enumerate(picks)]
    if sizes == list(like.shape):
        return t.reshape(like.shape)
    # the load reads a slice of the input: its gradient there, zero elsewhere
    grad = torch.zeros(like.shape, dtype=torch.float32, device=buffer.device)
    view = grad
    for a, (start, size) in enumerate(zip(starts, sizes)):
        view = view.narrow(a, start, size)
    view.copy_(t.reshape(sizes))
    return grad


def _index_values(e: Any, variables: list[Var], ext: dict, syms: dict, device: torch.device,
                  inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """An index expression's values over the buffer's variables (a gather's index node too)."""
    if not isinstance(e, IExpr):
        return Evaluator(variables, inputs, sizes=syms, device=device)(e).long()
    if e.op == "var":
        v = e.args[0]
        shape = [1] * len(variables)
        shape[variables.index(v)] = ext[v]
        return torch.arange(ext[v], device=device).reshape(shape)
    if e.op in ("const", "sym"):
        c = e.args[0]
        # torch.full: a fill on the device, not a synchronising host copy (CUDA graph capture)
        return torch.full((), int(c.subs(syms)) if isinstance(c, sympy.Expr) else int(c), device=device)
    parts = [_index_values(a, variables, ext, syms, device, inputs) for a in e.args]
    out = parts[0]
    for p in parts[1:]:
        out = {"add": torch.add, "mul": torch.mul, "floordiv": torch.floor_divide, "mod": torch.remainder}[e.op](out, p)
    return out


__all__ = ["fold", "grouped_view", "in_place_views"]
