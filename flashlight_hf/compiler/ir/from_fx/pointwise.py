"""Elementwise ops: casts, unary and binary math, selects, clamps. Broadcasting unifies axes."""

from __future__ import annotations

import torch

from flashlight_hf.compiler.ir.from_fx.core import LT, Handler, LabelState, OpCall, not_handled
from flashlight_hf.compiler.ir.nodes import Const, Pointwise

aten = torch.ops.aten

POINTWISE_UNARY = {
    aten.exp.default: "exp", aten.exp2.default: "exp2", aten.log.default: "log", aten.tanh.default: "tanh",
    aten.sigmoid.default: "sigmoid", aten.relu.default: "relu", aten.neg.default: "neg",
    aten.abs.default: "abs", aten.sqrt.default: "sqrt", aten.rsqrt.default: "rsqrt",
    aten.logical_not.default: "not", aten.bitwise_not.default: "not", aten.sin.default: "sin",
    aten.cos.default: "cos", aten.reciprocal.default: "reciprocal", aten.sign.default: "sign",
    aten.sgn.default: "sign", aten.log1p.default: "log1p", aten.expm1.default: "expm1", aten.erf.default: "erf",
    aten.erfc.default: "erfc", aten.floor.default: "floor", aten.ceil.default: "ceil", aten.round.default: "round",
    aten.trunc.default: "trunc", aten.fix.default: "trunc", aten.isnan.default: "isnan",
    aten.signbit.default: "signbit", aten.silu.default: "silu", aten.square.default: "square",
    aten.tan.default: "tan", aten.asin.default: "asin", aten.acos.default: "acos", aten.atan.default: "atan",
    aten.sinh.default: "sinh", aten.cosh.default: "cosh", aten.asinh.default: "asinh",
    aten.acosh.default: "acosh", aten.atanh.default: "atanh", aten.log2.default: "log2",
    aten.log10.default: "log10",
}
POINTWISE_BINARY = {
    "add": "add", "sub": "sub", "mul": "mul", "div": "div", "pow": "pow", "maximum": "maximum",
    "minimum": "minimum", "gt": "gt", "ge": "ge", "lt": "lt", "le": "le", "eq": "eq", "ne": "ne",
    "logical_and": "and", "logical_or": "or", "bitwise_and": "and", "bitwise_or": "or",
    "remainder": "mod", "floor_divide": "floordiv", "fmod": "fmod", "atan2": "atan2", "arctan2": "atan2",
    "hypot": "hypot",
    "logical_xor": "xor", "bitwise_xor": "xor", "__and__": "and", "__or__": "or", "__xor__": "xor",
    "__lshift__": "shl", "bitwise_left_shift": "shl", "__rshift__": "shr", "bitwise_right_shift": "shr",
}
# rounding an integer is the integer itself
ROUNDING = frozenset({"floor", "ceil", "round", "trunc"})
CAST_PACKETS = ("_to_copy", "to", "type_as", "convert_element_type", "_convert_element_type")


def cast(lab: LabelState, c: OpCall) -> LT:
    x = c.args[0]
    if x.node.dtype == c.dtype:
        return x
    return LT(x.axes, Pointwise(c.dtype, "cast", (x.node,)))


def unary(lab: LabelState, c: OpCall) -> LT:
    """The ops of :data:`POINTWISE_UNARY` (by overload: other overloads are not handled).
    ``bitwise_not`` of an integer flips its bits (``invert``); of a bool it is ``not``."""
    if c.target not in POINTWISE_UNARY:
        raise not_handled(c)
    x = c.args[0]
    op = POINTWISE_UNARY[c.target]
    if op in ROUNDING and not x.node.dtype.is_floating_point:
        return x
    if op == "not" and c.target is aten.bitwise_not.default and x.node.dtype != torch.bool:
        op = "invert"
    return LT(x.axes, Pointwise(c.dtype, op, (x.node,)))


def round_(lab: LabelState, c: OpCall) -> LT:
    """``round`` (half to even); with ``decimals``, as torch computes it: the scaled value
    rounded, then scaled back (``x·10ᵈ`` for d > 0, ``x / 10⁻ᵈ`` for d < 0)."""
    if c.target not in (aten.round.default, aten.round.decimals):
        raise not_handled(c)
    decimals = c.kwargs.get("decimals", c.args[1] if len(c.args) > 1 else 0)
    x = c.args[0]
    if c.target is aten.round.default or decimals == 0 or not x.node.dtype.is_floating_point:
        return unary(lab, OpCall(c.node, aten.round.default, c.packet, [x], {}, c.dtype))
    scale = Const(c.dtype, 10.0 ** abs(decimals))
    into, back = ("mul", "div") if decimals > 0 else ("div", "mul")
    scaled = Pointwise(c.dtype, "round", (Pointwise(c.dtype, into, (x.node, scale)),))
    return LT(x.axes, Pointwise(c.dtype, back, (scaled, scale)))


def invert(lab: LabelState, c: OpCall) -> LT:
    x = c.args[0]
    return LT(x.axes, Pointwise(c.dtype, "not" if x.node.dtype == torch.bool else "invert", (x.node,)))


def binary(lab: LabelState, c: OpCall) -> LT:
    args, kwargs, packet, dtype = c.args, c.kwargs, c.packet, c.dtype
    a, b = args[0], args[1]
    alpha = kwargs.get("alpha", args[2] if len(args) > 2 and packet in ("add", "sub", "rsub") else 1)
    op = POINTWISE_BINARY.get(packet, "sub")
    a = lab.scalar(a, dtype)
    b = lab.scalar(b, dtype)
    if alpha not in (1, None):
        b = LT(b.axes, Pointwise(dtype, "mul", (b.node, Const(dtype, alpha))))
    if packet == "rsub":
        a, b = b, a
    if packet == "div" and kwargs.get("rounding_mode") == "floor":
        op = "floordiv"
    elif packet == "div" and kwargs.get("rounding_mode") == "trunc":
        op = "truncdiv"
    axes, (na, nb) = lab.broadcast(c.node.name, [a, b])
    if packet.startswith("logical_"):  # "and"/"or"/"xor" are bitwise on integers: compare with 0 first
        na, nb = (n if n.dtype == torch.bool else Pointwise(torch.bool, "ne", (n, Const(n.dtype, 0)))
                  for n in (na, nb))
    return LT(axes, Pointwise(dtype, op, (na, nb)))


def where(lab: LabelState, c: OpCall) -> LT:
    cond, a, b = (lab.scalar(x, c.dtype) for x in c.args)
    axes, nodes = lab.broadcast(c.node.name, [cond, a, b])
    return LT(axes, Pointwise(c.dtype, "where", tuple(nodes)))


def masked_fill(lab: LabelState, c: OpCall) -> LT:
    x, m, v = c.args
    axes, (nx, nm, nv) = lab.broadcast(c.node.name, [x, m, lab.scalar(v, c.dtype)])
    return LT(axes, Pointwise(c.dtype, "where", (nm, nv, nx)))


def clamp(lab: LabelState, c: OpCall) -> LT:
    """``clamp``, ``clamp_min``, ``clamp_max``: bounds are numbers or tensors (broadcast)."""
    args, kwargs, packet, dtype = c.args, c.kwargs, c.packet, c.dtype
    lo = args[1] if packet in ("clamp", "clamp_min") and len(args) > 1 else kwargs.get("min")
    hi = (args[2] if len(args) > 2 else kwargs.get("max")) if packet == "clamp" else (
        args[1] if packet == "clamp_max" else None)
    parts = [args[0]] + [lab.scalar(b, dtype) for b in (lo, hi) if b is not None]
    axes, nodes = lab.broadcast(c.node.name, parts)
    node, bounds = nodes[0], iter(nodes[1:])
    if lo is not None:
        node = Pointwise(dtype, "maximum", (node, next(bounds)))
    if hi is not None:
        node = Pointwise(dtype, "minimum", (node, next(bounds)))
    return LT(axes, node)


HANDLERS: dict[str, Handler] = {
    **{p: cast for p in CAST_PACKETS},
    **{t.__name__.split(".")[0]: unary for t in POINTWISE_UNARY},
    "round": round_,
    "__invert__": invert,
    **{p: binary for p in (*POINTWISE_BINARY, "rsub")},
    "where": where,
    "masked_fill": masked_fill,
    **{p: clamp for p in ("clamp", "clamp_min", "clamp_max")},
}
