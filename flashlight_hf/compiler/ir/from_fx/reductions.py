"""Reductions over axes: sum / mean / amax / amin, and softmax spelled out as max, exp, sum, div
(the rewrite stage recognises that shape and makes it online)."""

from __future__ import annotations

import torch
import torch.fx

from flashlight_hf.compiler.ir.from_fx.core import LT, Handler, LabelState, OpCall
from flashlight_hf.compiler.ir.nodes import (Axis, Const, Node, Pointwise, Reduce, Size, Unsupported,
                                             axis_extent, is_one, size_prod)

SOFTMAX_PACKETS = ("_softmax", "softmax", "_safe_softmax", "_log_softmax", "log_softmax")


def reduce_axis(lab: LabelState, where: str, op: str, node: Node, ax: Axis, dtype: torch.dtype) -> Node:
    """``op`` of ``node`` over every factor of ``ax``; a broadcast factor of a sum multiplies."""
    for v, e in ax:
        if is_one(e) and v is None:
            continue
        if v is None:
            if op == "sum":
                node = Pointwise(dtype, "mul", (node, Const(dtype, e)))
            continue
        node = Reduce(dtype, op, lab.find(v), node)
    return node


def reduce(lab: LabelState, n: torch.fx.Node, packet: str, args: list, kwargs: dict, dtype: torch.dtype) -> LT:
    """``amax`` / ``amin`` / ``sum`` / ``mean`` over ``dim`` (all axes when none), ``keepdim``."""
    x = args[0]
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        dims = list(range(x.ndim))
    if isinstance(dims, int):
        dims = [dims]
    dims = sorted({d % x.ndim for d in dims})
    op = {"amax": "max", "amin": "min", "sum": "sum", "mean": "sum"}[packet]
    node = x.node
    if node.dtype != dtype and op == "sum":
        node = Pointwise(dtype, "cast", (node,))
    count: Size = 1
    for d in dims:
        node = reduce_axis(lab, n.name, op, node, x.axes[d], dtype)
        count = size_prod([count, axis_extent(x.axes[d])])
    if packet == "mean":
        node = Pointwise(dtype, "div", (node, Const(dtype, count)))
    axes = [([] if i in dims else ax) for i, ax in enumerate(x.axes)] if keepdim else \
        [ax for i, ax in enumerate(x.axes) if i not in dims]
    return LT(axes, node)


def softmax(lab: LabelState, n: torch.fx.Node, packet: str, args: list, dtype: torch.dtype) -> LT:
    if not dtype.is_floating_point:  # eager has no integer softmax (on CUDA it raises late)
        raise Unsupported(n.name, f"softmax of {dtype} values")
    x, dim = args[0], args[1] % args[0].ndim
    node = x.node
    if node.dtype != dtype:
        node = Pointwise(dtype, "cast", (node,))
    ax = x.axes[dim]
    m = reduce_axis(lab, n.name, "max", node, ax, dtype)
    shifted = Pointwise(dtype, "sub", (node, m))
    e = Pointwise(dtype, "exp", (shifted,))
    s = reduce_axis(lab, n.name, "sum", e, ax, dtype)
    if packet in ("_log_softmax", "log_softmax"):
        return LT(x.axes, Pointwise(dtype, "sub", (shifted, Pointwise(dtype, "log", (s,)))))
    out: Node = Pointwise(dtype, "div", (e, s))
    if packet == "_safe_softmax":
        out = Pointwise(dtype, "where", (Pointwise(torch.bool, "eq", (m, Const(dtype, float("-inf")))),
                                         Const(dtype, 0.0), out))
    return LT(x.axes, out)


def _reduce(lab: LabelState, c: OpCall) -> LT:
    return reduce(lab, c.node, c.packet, c.args, c.kwargs, c.dtype)


def _softmax(lab: LabelState, c: OpCall) -> LT:
    return softmax(lab, c.node, c.packet, c.args, c.dtype)


HANDLERS: dict[str, Handler] = {
    **{p: _reduce for p in ("amax", "amin", "sum", "mean")},
    **{p: _softmax for p in SOFTMAX_PACKETS},
}
