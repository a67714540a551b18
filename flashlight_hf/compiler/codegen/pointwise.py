"""The pointwise op table: one IR op becomes one Triton expression, arithmetic in float32."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import sympy
import torch

from flashlight_hf.compiler.codegen.source import TL_DTYPE
from flashlight_hf.compiler.ir import Const, Pointwise, Unsupported, Var

if TYPE_CHECKING:
    from flashlight_hf.compiler.codegen.emitter import Emitter

BINARY = {"add": "+", "sub": "-", "mul": "*", "div": "/", "gt": ">", "ge": ">=", "lt": "<", "le": "<=",
          "eq": "==", "ne": "!=", "and": "&", "or": "|", "xor": "^"}
UNARY = {"exp": "tl.exp({})", "exp2": "tl.exp2({})", "log": "tl.log({})", "sqrt": "tl.sqrt({})",
         "rsqrt": "tl.rsqrt({})", "abs": "tl.abs({})", "neg": "-({})", "sigmoid": "tl.sigmoid({})",
         "relu": "tl.maximum({}, 0.0)", "sin": "tl.sin({})", "cos": "tl.cos({})",
         "reciprocal": "1.0 / ({})", "not": "({}) == 0", "erf": "tl.erf({})", "floor": "tl.floor({})",
         "ceil": "tl.ceil({})", "isnan": "({0}) != ({0})", "square": "({0}) * ({0})",
         "silu": "({0}) * tl.sigmoid({0})", "log1p": "tl.log(1.0 + ({}))", "expm1": "(tl.exp({}) - 1.0)",
         "sign": "tl.where(({0}) > 0, 1.0, tl.where(({0}) < 0, -1.0, 0.0))"}
# x ** e for constant exponents that have a cheaper spelling
POWERS = {2.0: "({0}) * ({0})", 1.0: "{0}", 0.5: "tl.sqrt({0})", -0.5: "tl.rsqrt({0})", -1.0: "1.0 / ({0})",
          3.0: "({0}) * ({0}) * ({0})"}


def pointwise(em: "Emitter", x: Pointwise, lay: tuple[Var, ...]) -> str:
    """The expression for ``x`` over layout ``lay`` (operands named, broadcast to ``lay``)."""
    op = x.op
    if op == "cast":
        a = x.args[0]
        if x.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            # arithmetic stays in fp32; the rounding of a narrower cast is kept where it matters
            return em.f32(a, lay) if x.dtype != torch.float64 else f"{em.value(a, lay)}.to(tl.float32)"
        return f"{em.value(a, lay)}.to({TL_DTYPE[x.dtype]})"
    args = [em.f32(a, lay) if a.dtype != torch.bool else em.value(a, lay) for a in x.args]
    if op in ("mod", "fmod", "floordiv"):
        return division(em, op, x, args)
    if op in BINARY:
        a, b = args
        if op == "div" and all(y.dtype in (torch.int32, torch.int64) for y in x.args):
            return f"({a}).to(tl.float32) / {b}"
        return f"{a} {BINARY[op]} {b}"
    if op == "where":
        c, a, b = args
        return f"tl.where({c}, {a}, {b})"
    if op in ("maximum", "minimum"):
        return f"tl.{op}({args[0]}, {args[1]})"
    a = args[0]
    if op == "dropout_scale":  # attention dropout: keep / (1 - p) from a counter-based draw (seed, offset)
        em.uses_dropout = True
        return f"tl.where(tl.rand(dropout_seed, {a}) >= dropout_p, 1.0 / (1.0 - dropout_p), 0.0)"
    if op in UNARY:
        return UNARY[op].format(a)
    if op == "tanh":
        # tanh without libdevice (the interpreter has none): odd series near 0, exp form elsewhere
        t = em.tmp("tanh_in", ("tanh_in", em.skey(x)))
        em.emit(f"{t} = {a}")
        return (f"tl.where(tl.abs({t}) < 0.125, {t} * (1.0 + {t} * {t} * (-1.0 / 3.0 + {t} * {t} * "
                f"(2.0 / 15.0 + {t} * {t} * (-17.0 / 315.0 + {t} * {t} * (62.0 / 2835.0))))), "
                f"tl.where({t} >= 0, 1.0, -1.0) * (1.0 - tl.exp(-2.0 * tl.abs({t}))) / "
                f"(1.0 + tl.exp(-2.0 * tl.abs({t}))))")
    if op == "gelu":
        return f"0.5 * ({a}) * (1.0 + tl.erf(({a}) * 0.7071067811865476))"
    if op == "pow":
        b = x.args[1]
        if isinstance(b, Const) and not isinstance(b.value, sympy.Expr) and float(b.value) in POWERS:
            return POWERS[float(b.value)].format(a)
        if isinstance(x.args[0], Const):
            return f"tl.exp({args[1]} * {math.log(float(x.args[0].value))!r})"
        return f"tl.exp({args[1]} * tl.log({a}))"
    raise Unsupported("codegen", f"pointwise op {op}")


def division(em: "Emitter", op: str, x: Pointwise, args: list[str]) -> str:
    """``remainder`` (the divisor's sign), ``fmod`` (the dividend's sign) and ``floor_divide``
    with torch's semantics whatever ``%`` means where the kernel runs: Triton's ``%`` takes
    the dividend's sign on the GPU, the interpreter's (numpy) the divisor's. ``r = a % b``
    is corrected to the sign wanted; a floor division is then the exact ``(a - r) / b``."""
    key = em.skey(x)
    a, b = em.tmp("num", ("num", key)), em.tmp("den", ("den", key))
    em.emit(f"{a} = {args[0]}")
    em.emit(f"{b} = {args[1]}")
    r = em.tmp("rem", ("rem", key))
    em.emit(f"{r} = {a} % {b}")
    if op == "fmod":
        return f"tl.where(({r} != 0) & (({r} < 0) != ({a} < 0)), {r} - {b}, {r})"
    m = em.tmp("mod", ("mod", key))
    em.emit(f"{m} = tl.where(({r} != 0) & (({r} < 0) != ({b} < 0)), {r} + {b}, {r})")
    if op == "mod":
        return m
    if all(y.dtype in (torch.int32, torch.int64) for y in x.args):
        return f"({a} - {m}) // {b}"  # exact: the same under either rounding of //
    return f"tl.floor(({a} - {m}) / {b} + 0.5)"  # (a - r) / b is an integer up to rounding
