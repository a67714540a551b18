"""Concatenation, as attention sinks use it: a logit column joined to the scores, a softmax over
the joined axis, the column sliced back off.

A ``cat`` result is an :class:`LT` with ``pieces``; :func:`on_pieces` labels the few ops allowed
on one (casts, a max, a shift by a constant, the softmax, the slice that takes one part back),
so the softmax over the joined axis becomes a max and a sum over each part, combined.
"""

from __future__ import annotations

import torch
import torch.fx

from flashlight_hf.compiler.ir.from_fx.core import LT, LabelState
from flashlight_hf.compiler.ir.from_fx.pointwise import CAST_PACKETS
from flashlight_hf.compiler.ir.from_fx.reductions import reduce, reduce_axis
from flashlight_hf.compiler.ir.nodes import (Index, Load, Node, Pointwise, Reduce, Size, Unsupported, as_size,
                                             axis_extent, is_one, size_eq, size_prod)


def cat(lab: LabelState, n: torch.fx.Node, parts: list, dim: int) -> LT:
    parts = [p for p in parts if isinstance(p, LT)]
    nd = parts[0].ndim
    dim %= nd
    for p in parts:
        if p.pieces is not None:
            raise Unsupported(n.name, "concatenation of a concatenation")
    # the other axes must agree; unify them like a broadcast would
    others = [LT([ax for a, ax in enumerate(p.axes) if a != dim], p.node) for p in parts]
    axes, _ = lab.broadcast(n.name, others)
    total = size_prod(axis_extent(p.axes[dim]) for p in parts)
    out_axes = axes[:dim] + [[(None, total)]] + axes[dim:]
    return LT(out_axes, parts[0].node, pieces=list(parts), piece_axis=dim)


def on_pieces(lab: LabelState, n: torch.fx.Node, packet: str, args: list, kwargs: dict, dtype: torch.dtype) -> LT:
    """An op with a concatenated argument: applied part by part where that is what it means."""
    x = args[0]
    if not isinstance(x, LT) or x.pieces is None or any(
            isinstance(a, LT) and a.pieces is not None for a in args[1:]):
        raise Unsupported(n.name, f"{packet} on a concatenated tensor")
    dim = x.piece_axis
    if packet in (*CAST_PACKETS, "clone", "alias", "detach", "contiguous"):
        pieces = [p if p.node.dtype == dtype else LT(p.axes, Pointwise(dtype, "cast", (p.node,)))
                  for p in x.pieces]
        return LT(x.axes, pieces[0].node, pieces=pieces, piece_axis=dim)
    if packet in ("amax", "amin"):
        dims = args[1] if len(args) > 1 else kwargs.get("dim")
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        if [d % x.ndim for d in dims] != [dim]:
            raise Unsupported(n.name, f"{packet} of a concatenated tensor along another axis")
        parts = [reduce(lab, n, packet, [p, *args[1:]], kwargs, dtype) for p in x.pieces]
        node = parts[0].node
        for other in parts[1:]:
            node = Pointwise(dtype, "maximum" if packet == "amax" else "minimum", (node, other.node))
        return LT(parts[0].axes, node)
    if packet in ("sub", "add", "mul", "div") and len(args) == 2 and isinstance(args[1], (LT, int, float)):
        other = lab.scalar(args[1], dtype)
        if other.ndim == x.ndim and not is_one(axis_extent(other.axes[dim])):
            raise Unsupported(n.name, f"{packet} of a concatenated tensor and a tensor varying along its parts")
        pieces = []
        for p in x.pieces:
            axes, (a, b) = lab.broadcast(n.name, [p, other])
            pieces.append(LT(axes, Pointwise(dtype, packet, (a, b))))
        return LT(x.axes, pieces[0].node, pieces=pieces, piece_axis=dim)
    if packet in ("_softmax", "softmax") and args[1] % x.ndim == dim:
        nodes = [p.node if p.node.dtype == dtype else Pointwise(dtype, "cast", (p.node,)) for p in x.pieces]
        nodes = _shift_free(nodes, {v for p in x.pieces for v, _ in p.axes[dim] if v is not None}, lab)
        maxes = [reduce_axis(lab, n.name, "max", nd, p.axes[dim], dtype) for nd, p in zip(nodes, x.pieces)]
        m = maxes[0]
        for other in maxes[1:]:
            m = Pointwise(dtype, "maximum", (m, other))
        exps = [Pointwise(dtype, "exp", (Pointwise(dtype, "sub", (nd, m)),)) for nd in nodes]
        sums = [reduce_axis(lab, n.name, "sum", e, p.axes[dim], dtype) for e, p in zip(exps, x.pieces)]
        total = sums[0]
        for other in sums[1:]:
            total = Pointwise(dtype, "add", (total, other))
        pieces = [LT(p.axes, Pointwise(dtype, "div", (e, total))) for e, p in zip(exps, x.pieces)]
        return LT(x.axes, pieces[0].node, pieces=pieces, piece_axis=dim)
    if packet == "slice" and args[1] % x.ndim == dim:
        start = as_size(args[2]) if len(args) > 2 and args[2] is not None else 0
        offset: Size = 0
        want_extent = as_size(lab.val(n).shape[dim])
        for p in x.pieces:
            ext = axis_extent(p.axes[dim])
            if size_eq(offset, start) and size_eq(ext, want_extent):
                return LT(p.axes, p.node)
            offset = offset + ext
        raise Unsupported(n.name, "a slice that does not select exactly one concatenated part")
    raise Unsupported(n.name, f"{packet} on a concatenated tensor")


def _shift_free(nodes: list[Node], axis_vars: set, lab: LabelState) -> list[Node]:
    """``softmax(x − c)`` is ``softmax(x)`` when ``c`` is constant along the softmax axis (a row
    max subtracted before the softmax, as GPT-OSS's eager code does): drop the shift, so the
    online rewrite sees scores, not scores minus another key reduction."""
    shifts = {id(x.args[1]) for x in nodes if isinstance(x, Pointwise) and x.op == "sub"}
    if len(shifts) != 1 or not all(isinstance(x, Pointwise) and x.op == "sub" for x in nodes):
        return nodes
    c = nodes[0].args[1]
    roots = {lab.find(v) for v in axis_vars}
    if _free_roots(c, lab, {}) & roots:
        return nodes
    return [x.args[0] for x in nodes]


def _free_roots(x: Node, lab: LabelState, memo: dict) -> set:
    """The variables ``x`` depends on, as union-find roots (before canonicalisation a reduction's
    argument may still name its variable by an alias)."""
    if id(x) in memo:
        return memo[id(x)]
    if isinstance(x, Reduce):
        out = _free_roots(x.arg, lab, memo) - {lab.find(x.var)}
    elif isinstance(x, (Load, Index)):
        out = {lab.find(v) for v in x.vars}
        for c in x.children():
            out |= _free_roots(c, lab, memo)
    else:
        out = set()
        for c in x.children():
            out |= _free_roots(c, lab, memo)
    memo[id(x)] = out
    return out
