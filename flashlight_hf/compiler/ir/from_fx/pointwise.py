"""Elementwise ops: casts, unary and binary math, selects, clamps. Broadcasting unifies axes."""

from __future__ import annotations

import torch

from flashlight_hf.compiler.ir.from_fx.core import LT, Handler, LabelState, OpCall, not_handled
from flashlight_hf.compiler.ir.nodes import Const, Pointwise, Unsupported

aten = torch.ops.aten

POINTWISE_UNARY = {
    aten.exp.default: "exp", aten.exp2.default: "exp2", aten.log.default: "log", aten.tanh.default: "tanh",
    aten.sigmoid.default: "sigmoid", aten.relu.default: "relu", aten.neg.default: "neg",
    aten.abs.default: "abs", aten.sqrt.default: "sqrt", aten.rsqrt.default: "rsqrt",
    aten.logical_not.default: "not", aten.bitwise_not.default: "not", aten.sin.default: "sin",
    aten.cos.default: "cos", aten.reciprocal.default: "reciprocal", aten.sign.default: "sign",
    aten.log1p.default: "log1p", aten.expm1.default: "expm1", aten.erf.default: "erf",
    aten.floor.default: "floor", aten.ceil.default: "ceil", aten.isnan.default: "isnan",
    aten.silu.default: "silu", aten.square.default: "square",
}
POINTWISE_BINARY = {
    "add": "add", "sub": "sub", "mul": "mul", "div": "div", "pow": "pow", "maximum": "maximum",
    "minimum": "minimum", "gt": "gt", "ge": "ge", "lt": "lt", "le": "le", "eq": "eq", "ne": "ne",
    "logical_and": "and", "logical_or": "or", "bitwise_and": "and", "bitwise_or": "or",
    "remainder": "mod", "floor_divide": "floordiv", "fmod": "fmod", "atan2": "atan2",
    "logical_xor": "xor", "bitwise_xor": "xor", "__and__": "and", "__or__": "or", "__xor__": "xor",
}
CAST_PACKETS = ("_to_copy", "to", "type_as", "convert_element_type", "_convert_element_type")


def cast(lab: LabelState, c: OpCall) -> LT:
    x = c.args[0]
    if x.node.dtype == c.dtype:
        return x
    return LT(x.axes, Pointwise(c.dtype, "cast", (x.node,)))


def unary(lab: LabelState, c: OpCall) -> LT:
    """The ops of :data:`POINTWISE_UNARY` (by overload: other overloads are not handled)."""
    if c.target not in POINTWISE_UNARY:
        raise not_handled(c)
    x = c.args[0]
    return LT(x.axes, Pointwise(c.dtype, POINTWISE_UNARY[c.target], (x.node,)))


def invert(lab: LabelState, c: OpCall) -> LT:
    return LT(c.args[0].axes, Pointwise(c.dtype, "not", (c.args[0].node,)))


def gelu(lab: LabelState, c: OpCall) -> LT:
    approximate = c.kwargs.get("approximate", c.args[1] if len(c.args) > 1 else "none")
    if approximate != "none":  # the tanh approximation is another function: never run it as erf
        raise Unsupported(c.node.name, f"gelu(approximate={approximate!r}) is not handled by the generator "
                                       "(only the exact, erf form is)")
    return LT(c.args[0].axes, Pointwise(c.dtype, "gelu", (c.args[0].node,)))


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
    args, kwargs, packet, dtype = c.args, c.kwargs, c.packet, c.dtype
    x = args[0]
    lo = args[1] if packet in ("clamp", "clamp_min") and len(args) > 1 else kwargs.get("min")
    hi = (args[2] if len(args) > 2 else kwargs.get("max")) if packet == "clamp" else (
        args[1] if packet == "clamp_max" else None)
    node = x.node
    if lo is not None:
        node = Pointwise(dtype, "maximum", (node, Const(dtype, lo)))
    if hi is not None:
        node = Pointwise(dtype, "minimum", (node, Const(dtype, hi)))
    return LT(x.axes, node)


HANDLERS: dict[str, Handler] = {
    **{p: cast for p in CAST_PACKETS},
    **{t.__name__.split(".")[0]: unary for t in POINTWISE_UNARY},
    "__invert__": invert,
    "gelu": gelu,
    **{p: binary for p in (*POINTWISE_BINARY, "rsub")},
    "where": where,
    "masked_fill": masked_fill,
    **{p: clamp for p in ("clamp", "clamp_min", "clamp_max")},
}
