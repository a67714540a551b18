"""Reading part of a tensor: ``slice`` and ``select`` re-index the element expression (a new,
shorter variable offset into the old one, or a constant); ``index`` with tensors gathers from a
program input."""

from __future__ import annotations

from typing import Any

import torch
import torch.fx

from flashlight_hf.compiler.ir.from_fx.core import LT, Handler, LabelState, OpCall, not_handled, substitute
from flashlight_hf.compiler.ir.nodes import (IExpr, Load, Node, Unsupported, Var, as_size, axis_extent, is_one,
                                             size_eq)

aten = torch.ops.aten


def slice_(lab: LabelState, n: torch.fx.Node, x: LT, dim: int = 0, start: Any = None, end: Any = None,
           step: int = 1) -> LT:
    dim %= x.ndim
    ax = x.axes[dim]
    extent = axis_extent(ax)
    start = 0 if start is None else as_size(start)
    out_extent = as_size(lab.val(n).shape[dim])
    if (isinstance(start, int) and start == 0 and step == 1 and size_eq(out_extent, extent)):
        return x
    real = [(v, e) for v, e in ax if not is_one(e)]
    if len(real) != 1:
        raise Unsupported(n.name, "slice of a merged axis")
    v, _ = real[0]
    if v is None:
        return LT(x.axes[:dim] + [[(None, out_extent)]] + x.axes[dim + 1:], x.node)
    nv = lab.new_var(out_extent, f"{v.name}s")
    expr = IExpr.var(nv)
    if step != 1:
        expr = IExpr("mul", (expr, IExpr.const(step)))
    if not (isinstance(start, int) and start == 0):
        expr = IExpr("add", (expr, IExpr.const(start)))
    node = substitute(x.node, {lab.find(v): lab.resolve(expr)}, lab)
    return LT(x.axes[:dim] + [[(nv, out_extent)]] + x.axes[dim + 1:], node)


def select(lab: LabelState, n: torch.fx.Node, x: LT, dim: int, index: Any) -> LT:
    dim %= x.ndim
    real = [(v, e) for v, e in x.axes[dim] if not is_one(e)]
    node = x.node
    if len(real) == 1 and real[0][0] is not None:
        idx = as_size(index)
        if isinstance(idx, int) and idx < 0:
            idx = real[0][1] + idx
        node = substitute(node, {lab.find(real[0][0]): IExpr.const(idx)}, lab)
    elif real:
        raise Unsupported(n.name, "select on a merged axis")
    return LT(x.axes[:dim] + x.axes[dim + 1:], node)


def gather(lab: LabelState, n: torch.fx.Node, x: LT, indices: list, dtype: torch.dtype) -> LT:
    """``x[i0, i1, ...]``: index tensors on the leading axes of a program input (a padding mask
    read at ``[batch, key]``, an ALiBi slope per head, document ids per key). The index
    tensors broadcast together; each replaces its axis's variable in the load."""
    if not isinstance(x.node, Load):
        raise Unsupported(n.name, "indexing a computed tensor (only program inputs can be gathered from)")
    if not indices or any(i is None for i in indices) or len(indices) > x.ndim:
        raise Unsupported(n.name, "advanced indexing other than index tensors on the leading axes")
    if not all(isinstance(i, LT) for i in indices):
        raise Unsupported(n.name, "an index that is not a tensor")
    replace: dict[Var, Node] = {}
    for k, idx in enumerate(indices):
        real = [(v, e) for v, e in x.axes[k] if not is_one(e)]
        if len(real) > 1 or (real and real[0][0] is None):
            raise Unsupported(n.name, "gather along a merged axis")
        if not real:
            continue  # a size-1 axis: every index is 0 (out of range otherwise, as in eager)
        replace[lab.find(real[0][0])] = idx
    axes = lab.broadcast(n.name, list(indices))[0] if len(indices) > 1 else indices[0].axes
    new_index = []
    for e in x.node.index:
        if isinstance(e, IExpr) and e.op == "var" and lab.find(e.args[0]) in replace:
            new_index.append(replace[lab.find(e.args[0])].node)
        else:
            new_index.append(e)
    return LT(list(axes) + list(x.axes[len(indices):]), Load(x.node.dtype, x.node.input, tuple(new_index)))


def _slice(lab: LabelState, c: OpCall) -> LT:
    return slice_(lab, c.node, *c.args)


def _select(lab: LabelState, c: OpCall) -> LT:
    return select(lab, c.node, *c.args)


def _index(lab: LabelState, c: OpCall) -> LT:
    if c.target != aten.index.Tensor:
        raise not_handled(c)
    return gather(lab, c.node, c.args[0], c.args[1], c.dtype)


HANDLERS: dict[str, Handler] = {"slice": _slice, "select": _select, "index": _index}
