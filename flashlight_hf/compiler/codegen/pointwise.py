"""The pointwise op table: one IR op becomes one Triton expression, arithmetic in float32.

Why so few primitives: a kernel must run on the GPU and under Triton's interpreter (numpy, no
libdevice), so only what both provide is used — ``tl.exp``/``log``/``sin``/``cos``/``sqrt``/
``erf``/``floor``/``ceil``, comparisons and ``tl.where``. The other functions (tan, the inverse
trigonometric and hyperbolic functions, erfc, round half to even, ...) are written with those,
accurate to a few float32 ulps: a short series where the direct formula cancels, a polynomial
after range reduction for atan. An operand such a formula reads several times is named first.
Semantics follow PyTorch's: ``maximum``/``minimum`` propagate NaN, integer shifts by a count
outside ``[0, bits)`` give torch's results, ``pow`` of a negative base by a whole exponent is real.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import sympy
import torch

from flashlight_hf.compiler.codegen.source import LN2, TL_DTYPE
from flashlight_hf.compiler.ir import Const, Node, Pointwise, Unsupported, Var

if TYPE_CHECKING:
    from flashlight_hf.compiler.codegen.emitter import Emitter

BINARY = {"add": "+", "sub": "-", "mul": "*", "div": "/", "gt": ">", "ge": ">=", "lt": "<", "le": "<=",
          "eq": "==", "ne": "!=", "and": "&", "or": "|", "xor": "^"}
UNARY = {"exp": "tl.exp({})", "exp2": "tl.exp2({})", "log": "tl.log({})", "sqrt": "tl.sqrt({})",
         "rsqrt": "tl.rsqrt({})", "abs": "tl.abs({})", "neg": "-({})", "sigmoid": "tl.sigmoid({})",
         "sin": "tl.sin({})", "cos": "tl.cos({})",
         "reciprocal": "1.0 / ({})", "not": "({}) == 0", "erf": "tl.erf({})", "floor": "tl.floor({})",
         "ceil": "tl.ceil({})", "isnan": "({0}) != ({0})", "square": "({0}) * ({0})",
         "silu": "({0}) * tl.sigmoid({0})",
         "sign": "tl.where(({0}) > 0, 1.0, tl.where(({0}) < 0, -1.0, 0.0))",
         "tan": "tl.sin({0}) / tl.cos({0})", "cosh": "0.5 * (tl.exp({0}) + tl.exp(-({0})))",
         "log2": f"tl.log({{}}) * {1 / LN2!r}", "log10": f"tl.log({{}}) * {1 / math.log(10.0)!r}",
         "trunc": "tl.where(({0}) < 0, tl.ceil({0}), tl.floor({0}))", "invert": "~({})",
         # the sign bit itself: -0.0 and -nan count as negative, as in torch.signbit
         "signbit": "({}).to(tl.float32).to(tl.int32, bitcast=True) < 0"}
# ops whose Triton functions take floats: an integer operand is converted first
FLOAT_ONLY = (set(UNARY) - {"abs", "neg", "not", "invert", "sign", "square", "isnan"}) | {
    "tanh", "gelu", "sinh", "asinh", "acosh", "atanh", "atan", "asin", "acos", "erfc", "round", "log1p", "expm1",
    "atan2", "hypot", "pow"}
# x ** e for constant exponents that have a cheaper spelling
POWERS = {2.0: "({0}) * ({0})", 1.0: "{0}", 0.5: "tl.sqrt({0})", -0.5: "tl.rsqrt({0})", -1.0: "1.0 / ({0})",
          3.0: "({0}) * ({0}) * ({0})"}
NAN_EXTREMUM = "tl.{}({}, {}, propagate_nan=tl.PropagateNan.ALL)"  # Triton's default drops a NaN operand
PI = math.pi


def pointwise(em: "Emitter", x: Pointwise, lay: tuple[Var, ...]) -> str:
    """The expression for ``x`` over layout ``lay`` (operands named, broadcast to ``lay``)."""
    op = x.op
    if op == "cast":
        a = x.args[0]
        if x.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            # arithmetic stays in fp32; the rounding of a narrower cast is kept where it matters
            if not a.dtype.is_floating_point:  # an integer or bool becomes a float here, not later
                return float_operand(a, em.value(a, lay))
            return em.f32(a, lay) if x.dtype != torch.float64 else f"{em.value(a, lay)}.to(tl.float32)"
        return f"{em.value(a, lay)}.to({TL_DTYPE[x.dtype]})"
    args = [em.f32(a, lay) if a.dtype != torch.bool else em.value(a, lay) for a in x.args]
    if op in FLOAT_ONLY and x.dtype.is_floating_point:
        args = [float_operand(a, text) for a, text in zip(x.args, args)]
    if op in ("mod", "fmod", "floordiv", "truncdiv"):
        return division(em, op, x, args)
    if op in ("shl", "shr"):
        return shift(em, x, args)
    if op in BINARY:
        a, b = args
        if op == "div" and all(y.dtype in (torch.int32, torch.int64) for y in x.args):
            return f"({a}).to(tl.float32) / {b}"
        return f"{a} {BINARY[op]} {b}"
    if op == "where":
        c, a, b = args
        return f"tl.where({c}, {a}, {b})"
    if op in ("maximum", "minimum"):
        if x.dtype.is_floating_point:
            return NAN_EXTREMUM.format(op, args[0], args[1])
        return f"tl.{op}({args[0]}, {args[1]})"
    if op == "atan2":
        return atan2(em, x, args[0], args[1])
    if op == "hypot":
        return hypot(em, x, args[0], args[1])
    if op == "pow":
        return power(em, x, args)
    a = args[0]
    if op == "dropout_scale":  # attention dropout: keep / (1 - p) from a counter-based draw (seed, offset)
        em.uses_dropout = True
        return f"tl.where(tl.rand(dropout_seed, {a}) >= dropout_p, 1.0 / (1.0 - dropout_p), 0.0)"
    if op == "relu":
        return NAN_EXTREMUM.format("maximum", a, "0.0") if x.dtype.is_floating_point else f"tl.maximum({a}, 0)"
    if op == "sign" and not x.dtype.is_floating_point:
        return f"tl.where(({a}) > 0, 1, tl.where(({a}) < 0, -1, 0))"
    if op in UNARY:
        return UNARY[op].format(a)
    if op == "gelu":
        return f"0.5 * ({a}) * (1.0 + tl.erf(({a}) * 0.7071067811865476))"
    if op in SPECIAL:
        return SPECIAL[op](em, x, let(em, x, f"{op}_in", a))
    raise Unsupported("codegen", f"pointwise op {op}")


def float_operand(a: Node, text: str) -> str:
    """An operand of a float-only function: integers and bools converted to float32."""
    if a.dtype.is_floating_point:
        return text
    if isinstance(a, Const) and not isinstance(a.value, sympy.Expr):
        return repr(float(a.value))
    return f"{text}.to(tl.float32)"


def let(em: "Emitter", x: Pointwise, hint: str, text: str) -> str:
    """``text`` in a temporary of its own: a value that a formula for ``x`` reads more than once
    (a name already is one)."""
    if text.isidentifier():
        return text
    name = em.tmp(hint, (hint, em.skey(x)))
    em.emit(f"{name} = {text}")
    return name


def sign_bit(v: str) -> str:
    """Whether ``v``'s sign bit is set, as an operand (parenthesised: ``&`` binds before ``<``)."""
    return f"({UNARY['signbit'].format(v)})"


# -- functions written with the primitives (``t``: the operand's name) ------------------------------
def tanh(em: "Emitter", x: Pointwise, t: str) -> str:
    """The odd series near 0, the exp form elsewhere (the interpreter has no libdevice tanh)."""
    return (f"tl.where(tl.abs({t}) < 0.125, {t} * (1.0 + {t} * {t} * (-1.0 / 3.0 + {t} * {t} * "
            f"(2.0 / 15.0 + {t} * {t} * (-17.0 / 315.0 + {t} * {t} * (62.0 / 2835.0))))), "
            f"tl.where({t} >= 0, 1.0, -1.0) * (1.0 - tl.exp(-2.0 * tl.abs({t}))) / "
            f"(1.0 + tl.exp(-2.0 * tl.abs({t}))))")


def sinh(em: "Emitter", x: Pointwise, t: str) -> str:
    """``(eᵗ − e⁻ᵗ)/2`` cancels near 0: the series there (its next term is below 1e-10)."""
    return (f"tl.where(tl.abs({t}) < 0.5, {t} * (1.0 + {t} * {t} * (1.0 / 6.0 + {t} * {t} * (1.0 / 120.0 + "
            f"{t} * {t} * (1.0 / 5040.0 + {t} * {t} * (1.0 / 362880.0))))), 0.5 * (tl.exp({t}) - tl.exp(-{t})))")


def asinh(em: "Emitter", x: Pointwise, t: str) -> str:
    """``log(u + √(u² + 1))`` of ``u = |t|``, signed; the series near 0, ``log(2u)`` where
    ``u²`` would overflow."""
    u = let(em, x, "asinh_abs", f"tl.abs({t})")
    m = let(em, x, "asinh_mag", f"tl.where({u} < 0.125, {u} * (1.0 + {u} * {u} * (-1.0 / 6.0 + {u} * {u} * "
                                f"(3.0 / 40.0 + {u} * {u} * (-15.0 / 336.0)))), tl.where({u} > 67108864.0, "
                                f"tl.log({u}) + {LN2!r}, tl.log({u} + tl.sqrt({u} * {u} + 1.0))))")
    return f"tl.where({t} < 0, -{m}, {m})"


def acosh(em: "Emitter", x: Pointwise, t: str) -> str:
    """``log(t + √(t−1)·√(t+1))`` (NaN below 1, no overflow of a product), ``log(2t)`` where
    ``t²`` would overflow."""
    return (f"tl.where({t} > 67108864.0, tl.log({t}) + {LN2!r}, "
            f"tl.log({t} + tl.sqrt({t} - 1.0) * tl.sqrt({t} + 1.0)))")


def log1p(em: "Emitter", x: Pointwise, t: str) -> str:
    """``log(1 + t)`` loses the digits of a small ``t`` that ``1 + t`` rounds away; scaling
    by ``t / ((1 + t) − 1)`` puts them back (Goldberg), exact where ``1 + t`` is 1."""
    u = let(em, x, "log1p_u", f"1.0 + {t}")
    edge = f"({u} == 1.0) | ({u} == float(\"inf\"))"  # exact there (and log(inf) · inf/inf is NaN)
    return f"tl.where({edge}, {t}, tl.log({u}) * ({t} / tl.where({edge}, 1.0, {u} - 1.0)))"


def expm1(em: "Emitter", x: Pointwise, t: str) -> str:
    """``exp(t) − 1`` cancels near 0: Kahan's ``(u − 1)·t / log(u)`` of ``u = exp(t)``; exact
    where ``u`` is 1, and ``u − 1`` itself where it is large (or infinite)."""
    u = let(em, x, "expm1_u", f"tl.exp({t})")
    return (f"tl.where({u} == 1.0, {t}, tl.where(tl.abs({t}) > 1.0, {u} - 1.0, "
            f"({u} - 1.0) * ({t} / tl.log(tl.where({u} == 1.0, 2.0, {u})))))")


def atanh(em: "Emitter", x: Pointwise, t: str) -> str:
    return (f"tl.where(tl.abs({t}) < 0.125, {t} * (1.0 + {t} * {t} * (1.0 / 3.0 + {t} * {t} * (1.0 / 5.0 + "
            f"{t} * {t} * (1.0 / 7.0 + {t} * {t} * (1.0 / 9.0))))), 0.5 * tl.log((1.0 + {t}) / (1.0 - {t})))")


def atan_nonnegative(em: "Emitter", x: Pointwise, t: str) -> str:
    """``atan(t)`` for ``t ≥ 0`` (Cephes' atanf): reduce to ``|z| ≤ tan(π/8)`` through
    ``atan(t) = π/4 + atan((t−1)/(t+1)) = π/2 − atan(1/t)``, then an odd polynomial."""
    far, mid = f"{t} > 2.414213562373095", f"{t} > 0.41421356237309503"
    z = let(em, x, "atan_z", f"tl.where({far}, -1.0 / tl.maximum({t}, 1.0), tl.where({mid}, ({t} - 1.0) / "
                             f"({t} + 1.0), {t}))")
    zz = let(em, x, "atan_zz", f"{z} * {z}")
    return (f"tl.where({far}, {PI / 2!r}, tl.where({mid}, {PI / 4!r}, 0.0)) + ((((8.05374449538e-2 * {zz} - "
            f"1.38776856032e-1) * {zz} + 1.99777106478e-1) * {zz} - 3.33329491539e-1) * {zz} * {z} + {z})")


def atan(em: "Emitter", x: Pointwise, t: str) -> str:
    m = let(em, x, "atan_mag", atan_nonnegative(em, x, let(em, x, "atan_abs", f"tl.abs({t})")))
    return f"tl.where({t} < 0, -{m}, {m})"


def atan2(em: "Emitter", x: Pointwise, y: str, w: str) -> str:
    """``atan2(y, w)``: the atan of ``min/max`` of the magnitudes (in [0, 1]), moved to its
    octant, then quadrant by the sign bits (so ``atan2(0, -0) = π``, as in torch)."""
    y, w = let(em, x, "atan2_y", y), let(em, x, "atan2_x", w)
    hi = let(em, x, "atan2_hi", NAN_EXTREMUM.format("maximum", f"tl.abs({y})", f"tl.abs({w})"))
    lo = let(em, x, "atan2_lo", NAN_EXTREMUM.format("minimum", f"tl.abs({y})", f"tl.abs({w})"))
    # equal magnitudes (two infinities too) are the diagonal; 0/0 is the origin
    r = let(em, x, "atan2_r", f"tl.where({lo} == {hi}, tl.where({hi} == 0, 0.0, 1.0), {lo} / "
                              f"tl.where({hi} == 0, 1.0, {hi}))")
    a = let(em, x, "atan2_a", atan_nonnegative(em, x, r))
    a = let(em, x, "atan2_oct", f"tl.where(tl.abs({y}) > tl.abs({w}), {PI / 2!r} - {a}, {a})")
    a = let(em, x, "atan2_half", f"tl.where({sign_bit(w)}, {PI!r} - {a}, {a})")
    return f"tl.where({sign_bit(y)}, -{a}, {a})"


def hypot(em: "Emitter", x: Pointwise, a: str, b: str) -> str:
    """``√(a² + b²)`` without overflow: ``hi·√(1 + (lo/hi)²)`` of the larger and smaller
    magnitudes; infinite where either is (a NaN beside it too, as in torch)."""
    a, b = let(em, x, "hypot_a", a), let(em, x, "hypot_b", b)
    hi = let(em, x, "hypot_hi", NAN_EXTREMUM.format("maximum", f"tl.abs({a})", f"tl.abs({b})"))
    r = let(em, x, "hypot_r", f"{NAN_EXTREMUM.format('minimum', f'tl.abs({a})', f'tl.abs({b})')} / "
                              f"tl.where(({hi} == 0) | ({hi} == float(\"inf\")), 1.0, {hi})")
    return (f"tl.where((tl.abs({a}) == float(\"inf\")) | (tl.abs({b}) == float(\"inf\")), float(\"inf\"), "
            f"{hi} * tl.sqrt(1.0 + {r} * {r}))")


def asin(em: "Emitter", x: Pointwise, t: str) -> str:
    """``atan2(t, √((1−t)(1+t)))``: exact at ±1, NaN outside [−1, 1]."""
    return atan2(em, x, t, f"tl.sqrt((1.0 - {t}) * (1.0 + {t}))")


def acos(em: "Emitter", x: Pointwise, t: str) -> str:
    return atan2(em, x, f"tl.sqrt((1.0 - {t}) * (1.0 + {t}))", t)


def erfc(em: "Emitter", x: Pointwise, t: str) -> str:
    """``1 − erf`` loses every digit in the tail: Numerical Recipes' erfcc (relative error below
    1.2e-7 everywhere), reflected through ``erfc(−z) = 2 − erfc(z)``."""
    u = let(em, x, "erfc_u", f"1.0 / (1.0 + 0.5 * tl.abs({t}))")
    poly = "-0.82215223 + {0} * 0.17087277"
    for c in (1.48851587, -1.13520398, 0.27886807, -0.18628806, 0.09678418, 0.37409196, 1.00002368):
        poly = f"{c!r} + {{0}} * ({poly})"
    r = let(em, x, "erfc_tail", f"{u} * tl.exp(-{t} * {t} - 1.26551223 + {u} * ({poly.format(u)}))")
    return f"tl.where({t} >= 0, {r}, 2.0 - {r})"


def round_half_even(em: "Emitter", x: Pointwise, t: str) -> str:
    """torch.round: to nearest, ties to even. ``t − floor(t)`` is exact, so a tie is seen as
    one (``floor(t + 0.5)`` rounds 0.49999997 up)."""
    fl = let(em, x, "round_floor", f"tl.floor({t})")
    d = let(em, x, "round_frac", f"{t} - {fl}")
    return (f"tl.where({d} > 0.5, {fl} + 1.0, tl.where({d} == 0.5, {fl} + ({fl} - 2.0 * tl.floor(0.5 * {fl})), "
            f"{fl}))")


SPECIAL = {"log1p": log1p, "expm1": expm1, "tanh": tanh, "sinh": sinh, "asinh": asinh, "acosh": acosh,
           "atanh": atanh, "atan": atan, "asin": asin, "acos": acos, "erfc": erfc, "round": round_half_even}


# -- pow, shifts, divisions -----------------------------------------------------------------------
def power(em: "Emitter", x: Pointwise, args: list[str]) -> str:
    """``base ** e`` as ``exp(e·log|base|)`` with C's ``pow`` cases (torch's): a whole exponent
    of a negative base is real (negative when odd, -0.0 counting as negative), another is NaN
    (except for -inf); ``e == 0`` and ``base == 1`` give 1, as does -1 to an infinite power.
    Small whole constant exponents are products, as torch computes them."""
    base, e = x.args
    a, b = args
    inf = 'float("inf")'
    if isinstance(e, Const) and not isinstance(e.value, sympy.Expr):
        c = float(e.value)
        if c in POWERS:
            return POWERS[c].format(a)
        if c.is_integer() and 0 < abs(c) <= 8:
            product = " * ".join([f"({a})"] * int(abs(c)))
            return product if c > 0 else f"1.0 / ({product})"
        if not x.dtype.is_floating_point:
            raise Unsupported("codegen", f"an integer to the power {e.value}")
        a = let(em, x, "pow_base", a)
        if c == 0:
            return f"tl.zeros_like({a}) + 1.0"
        mag = f"tl.exp({c!r} * tl.log(tl.abs({a})))"
        if not c.is_integer():
            return f"tl.where(({a} < 0) & ({a} > -{inf}), float(\"nan\"), {mag})"
        return f"tl.where({sign_bit(a)}, -({mag}), {mag})" if c % 2 else mag
    if not x.dtype.is_floating_point:
        raise Unsupported("codegen", "an integer to an integer tensor power")
    if isinstance(base, Const) and not isinstance(base.value, sympy.Expr):
        return f"tl.exp({b} * {math.log(float(base.value))!r})"  # a positive base (log raises otherwise)
    a, b = let(em, x, "pow_base", a), let(em, x, "pow_exp", b)
    mag = let(em, x, "pow_mag", f"tl.exp({b} * tl.log(tl.abs({a})))")
    one = f"({b} == 0) | ({a} == 1.0) | (({a} == -1.0) & (tl.abs({b}) == {inf}))"
    odd = f"(tl.floor({b}) == {b}) & (tl.floor({b} * 0.5) != {b} * 0.5)"
    nan = f"({a} < 0) & ({a} > -{inf}) & (tl.floor({b}) != {b})"
    return (f"tl.where({one}, 1.0, tl.where({nan}, float(\"nan\"), "
            f"tl.where({sign_bit(a)} & {odd}, -{mag}, {mag})))")


def shift(em: "Emitter", x: Pointwise, args: list[str]) -> str:
    """``<<`` / ``>>`` at torch's integer width (an index is int32 in the kernel, int64 in
    torch). A count outside ``[0, bits)`` shifts everything out, as in torch: 0 left, the sign
    right (LLVM leaves such a shift undefined, so it never reaches one)."""
    if x.dtype not in (torch.int32, torch.int64):
        raise Unsupported("codegen", f"a shift of {x.dtype} values")
    bits, ty = torch.iinfo(x.dtype).bits, TL_DTYPE[x.dtype]
    a = args[0] if isinstance(x.args[0], Const) else f"({args[0]}).to({ty})"
    count = x.args[1]
    if isinstance(count, Const) and isinstance(count.value, int) and not isinstance(count.value, bool):
        if 0 <= count.value < bits:
            return f"{a} {'<<' if x.op == 'shl' else '>>'} {count.value}"
        return f"{a} >> {bits - 1}" if x.op == "shr" else f"{a} * 0"
    n = let(em, x, "shift_by", f"({args[1]}).to({ty})")
    ok = f"({n} >= 0) & ({n} < {bits})"
    if x.op == "shr":
        return f"{a} >> tl.where({ok}, {n}, {bits - 1})"
    return f"tl.where({ok}, {a} << tl.where({ok}, {n}, 0), 0)"


def division(em: "Emitter", op: str, x: Pointwise, args: list[str]) -> str:
    """``remainder`` (the divisor's sign), ``fmod`` (the dividend's sign), ``floor_divide``
    and ``div(rounding_mode="trunc")`` with torch's semantics whatever ``%`` means where the
    kernel runs: Triton's ``%`` takes the dividend's sign on the GPU, the interpreter's (numpy)
    the divisor's. ``r = a % b`` is corrected to the sign wanted; an integer division is then
    the exact ``(a - r) // b``. A float truncating division is ``trunc(a / b)``, as torch's."""
    integer = all(y.dtype in (torch.int32, torch.int64) for y in x.args)
    if op == "truncdiv" and not integer:
        q = let(em, x, "quot", f"({args[0]}) / ({args[1]})")
        return UNARY["trunc"].format(q)
    key = em.skey(x)
    a, b = em.tmp("num", ("num", key)), em.tmp("den", ("den", key))
    em.emit(f"{a} = {args[0]}")
    em.emit(f"{b} = {args[1]}")
    r = em.tmp("rem", ("rem", key))
    em.emit(f"{r} = {a} % {b}")
    if op in ("fmod", "truncdiv"):
        f = f"tl.where(({r} != 0) & (({r} < 0) != ({a} < 0)), {r} - {b}, {r})"
        return f if op == "fmod" else f"({a} - {let(em, x, 'fmod', f)}) // {b}"
    m = em.tmp("mod", ("mod", key))
    em.emit(f"{m} = tl.where(({r} != 0) & (({r} < 0) != ({b} < 0)), {r} + {b}, {r})")
    if op == "mod":
        return m
    if integer:
        return f"({a} - {m}) // {b}"  # exact: the same under either rounding of //
    return f"tl.floor(({a} - {m}) / {b} + 0.5)"  # (a - r) / b is an integer up to rounding
