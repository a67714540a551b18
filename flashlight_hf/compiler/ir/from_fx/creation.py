"""Tensors made inside the program: ``arange`` (an index value) and constant fills.

A fill has no variables: its axes are ``(None, size)`` factors that broadcasting later ties to
real ones; an ``arange`` is a fresh variable whose value is the index itself.
"""

from __future__ import annotations

from flashlight_hf.compiler.ir.from_fx.core import LT, Handler, LabelState, OpCall
from flashlight_hf.compiler.ir.nodes import Const, IExpr, Index, as_size, is_one


def arange(lab: LabelState, c: OpCall) -> LT:
    args = c.args
    start, step = 0, 1
    if len(args) == 1:
        (end,) = args
    elif len(args) == 2:
        start, end = args
    else:
        start, end, step = args[:3]
    extent = as_size(lab.val(c.node).shape[0])
    v = lab.new_var(extent, "ar")
    expr = IExpr.var(v)
    if step != 1:
        expr = IExpr("mul", (expr, IExpr.const(as_size(step))))
    if not (isinstance(start, int) and start == 0):
        expr = IExpr("add", (expr, IExpr.const(as_size(start))))
    return LT([[(v, extent)]], Index(c.dtype, expr))


def scalar_tensor(lab: LabelState, c: OpCall) -> LT:
    return LT([], Const(c.dtype, c.args[0]))


def full(lab: LabelState, c: OpCall) -> LT:
    size = [as_size(s) for s in c.args[0]]
    return LT([[(None, s)] if not is_one(s) else [] for s in size], Const(c.dtype, c.args[1]))


def filled(lab: LabelState, c: OpCall) -> LT:
    """``zeros`` / ``ones`` / ``new_zeros`` / ``new_ones`` / ``new_full``."""
    args, packet = c.args, c.packet
    size_arg = args[1] if packet.startswith("new_") else args[0]
    value = {"zeros": 0, "ones": 1, "new_zeros": 0, "new_ones": 1}.get(packet)
    if value is None:
        value = args[2]
    size = [as_size(s) for s in size_arg]
    return LT([[(None, s)] if not is_one(s) else [] for s in size], Const(c.dtype, value))


def filled_like(lab: LabelState, c: OpCall) -> LT:
    args = c.args
    value = {"zeros_like": 0, "ones_like": 1}.get(c.packet, args[1] if len(args) > 1 else None)
    return LT(list(args[0].axes), Const(c.dtype, value))


HANDLERS: dict[str, Handler] = {
    "arange": arange,
    "scalar_tensor": scalar_tensor,
    "full": full,
    **{p: filled for p in ("zeros", "ones", "new_zeros", "new_ones", "new_full")},
    **{p: filled_like for p in ("zeros_like", "ones_like", "full_like")},
}
