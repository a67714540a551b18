"""Pointwise functions written with the IR's primitive ops: activations, ``hypot``, ``lerp``, ...

Why compose rather than add IR ops: each is a short formula of ops the generator already emits
and differentiates, so its kernel code, its derivative (the chain rule through the formula) and
its dense evaluation come for free. Each formula follows PyTorch's own kernel, including where it
sends NaN. A branch ``where`` does not take still gets a zero adjoint multiplied by its local
derivative, so an argument that would overflow there (``exp`` of a large score) is first replaced
by a harmless value (the "double where"): the gradient is then exact, never ``0 · inf``.
"""

from __future__ import annotations

import math

import torch

from flashlight_hf.compiler.ir.from_fx.core import LT, Handler, LabelState, OpCall
from flashlight_hf.compiler.ir.nodes import Const, Node, Pointwise, Unsupported

aten = torch.ops.aten


class _F:
    """Builds one formula's nodes in the op's result dtype: ``f.mul(x, 2.0)``; numbers become
    constants, and an integer operand of a float formula is converted first."""

    BOOL = frozenset({"gt", "ge", "lt", "le", "eq", "ne", "and", "or", "isnan", "signbit"})

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def arg(self, x: Node | float, convert: bool = True) -> Node:
        if not isinstance(x, Node):
            return Const(self.dtype, x)
        if convert and self.dtype.is_floating_point and not x.dtype.is_floating_point:
            return Pointwise(self.dtype, "cast", (x,))
        return x

    def op(self, op: str, *args: Node | float) -> Pointwise:
        if op == "where":  # the condition stays as it is
            return Pointwise(self.dtype, op, (args[0], self.arg(args[1]), self.arg(args[2])))
        if op in self.BOOL:
            return Pointwise(torch.bool, op, tuple(self.arg(a, convert=False) for a in args))
        return Pointwise(self.dtype, op, tuple(self.arg(a) for a in args))

    def __getattr__(self, op: str):
        return lambda *args: self.op(op, *args)

    def both(self, a: Node, b: Node) -> Pointwise:
        return self.op("and", a, b)

    def either(self, a: Node, b: Node) -> Pointwise:
        return self.op("or", a, b)


def _arg(c: OpCall, k: int, name: str, default):
    """Argument ``k`` of the call (or keyword ``name``; ``default`` where neither is given)."""
    return c.kwargs.get(name, c.args[k] if len(c.args) > k else default)


def _unary(build):
    """A handler for ``build(f, x, c)``, ``x`` the first operand's node."""
    def handler(lab: LabelState, c: OpCall) -> LT:
        x, f = c.args[0], _F(c.dtype)
        return LT(x.axes, build(f, f.arg(x.node), c))
    return handler


def _binary(build):
    """A handler for ``build(f, a, b, c)`` over the first two operands, broadcast."""
    def handler(lab: LabelState, c: OpCall) -> LT:
        axes, (a, b) = lab.broadcast(c.node.name, [lab.scalar(y, c.dtype) for y in c.args[:2]])
        f = _F(c.dtype)
        return LT(axes, build(f, f.arg(a), f.arg(b), c))
    return handler


# -- activations ---------------------------------------------------------------------------------
def softplus_node(f: _F, x: Node, beta: float = 1.0, threshold: float = 20.0) -> Node:
    """``x`` where ``βx > threshold``, else ``log1p(exp(βx)) / β``."""
    bx = f.mul(x, beta) if beta != 1 else x
    linear = f.gt(bx, threshold)
    soft = f.log1p(f.exp(f.where(linear, 0.0, bx)))
    return f.where(linear, x, f.div(soft, beta) if beta != 1 else soft)


def _softplus(f: _F, x: Node, c: OpCall) -> Node:
    return softplus_node(f, x, _arg(c, 1, "beta", 1.0), _arg(c, 2, "threshold", 20.0))


def _elu(f: _F, x: Node, alpha: float, scale: float = 1.0, input_scale: float = 1.0) -> Node:
    """``scale·x`` for ``x > 0``, else ``α·scale·expm1(input_scale·x)`` (selu is an elu)."""
    neg = f.le(x, 0.0)
    curve = f.mul(f.expm1(f.mul(f.where(neg, x, 0.0), input_scale)), alpha * scale)
    return f.where(neg, curve, f.mul(x, scale) if scale != 1 else x)


def _celu(f: _F, x: Node, c: OpCall) -> Node:
    alpha = _arg(c, 1, "alpha", 1.0)
    return _elu(f, x, alpha, 1.0, 1.0 / alpha)


def _leaky_relu(f: _F, x: Node, c: OpCall) -> Node:
    return f.where(f.gt(x, 0.0), x, f.mul(x, _arg(c, 1, "negative_slope", 0.01)))


def _hardtanh(f: _F, x: Node, c: OpCall) -> Node:
    """``clamp(x, lo, hi)`` whose gradient is zero at the bounds, as PyTorch's is (relu6 too)."""
    lo, hi = _arg(c, 1, "min_val", -1.0), _arg(c, 2, "max_val", 1.0)
    return f.where(f.le(x, lo), lo, f.where(f.ge(x, hi), hi, x))


def _threshold(f: _F, x: Node, c: OpCall) -> Node:
    return f.where(f.le(x, c.args[1]), c.args[2], x)


def _hardsigmoid(f: _F, x: Node, c: OpCall | None = None) -> Node:
    """``clamp(x + 3, 0, 6) / 6``, its gradient zero outside ``(-3, 3)``; NaN stays NaN."""
    return f.where(f.le(x, -3.0), 0.0, f.where(f.ge(x, 3.0), 1.0, f.div(f.add(x, 3.0), 6.0)))


def _softshrink(f: _F, x: Node, c: OpCall) -> Node:
    lam = _arg(c, 1, "lambd", 0.5)
    return f.where(f.gt(x, lam), f.sub(x, lam), f.where(f.lt(x, -lam), f.add(x, lam), f.mul(x, 0.0)))


def _hardshrink(f: _F, x: Node, c: OpCall) -> Node:
    lam = _arg(c, 1, "lambd", 0.5)
    return f.where(f.both(f.ge(x, -lam), f.le(x, lam)), 0.0, x)


def _log_sigmoid(lab: LabelState, c: OpCall) -> tuple[LT, None]:
    """``min(x, 0) − log1p(exp(−|x|))``; the op's second result (a buffer) is not modelled."""
    x, f = c.args[0], _F(c.dtype)
    return LT(x.axes, f.sub(f.minimum(x.node, 0.0), f.log1p(f.exp(f.neg(f.abs(x.node)))))), None


def gelu(lab: LabelState, c: OpCall) -> LT:
    """Exact gelu (the IR's ``gelu``, through ``erf``) or its tanh approximation,
    ``x/2 · (1 + tanh(√(2/π)·(x + 0.044715·x³)))``."""
    x, f = c.args[0], _F(c.dtype)
    approximate = _arg(c, 1, "approximate", "none")
    if approximate == "none":
        return LT(x.axes, f.gelu(x.node))
    if approximate != "tanh":
        raise Unsupported(c.node.name, f"gelu(approximate={approximate!r}) is not a gelu PyTorch defines")
    inner = f.mul(f.add(x.node, f.mul(f.mul(f.mul(x.node, x.node), x.node), 0.044715)), math.sqrt(2.0 / math.pi))
    return LT(x.axes, f.mul(f.mul(x.node, 0.5), f.add(f.tanh(inner), 1.0)))


# -- other functions -----------------------------------------------------------------------------
def _infinity(lab: LabelState, c: OpCall) -> LT:
    """``isinf``, ``isposinf``, ``isneginf``: comparisons with infinity, in the operand's dtype."""
    x = c.args[0]
    f = _F(x.node.dtype)
    if not x.node.dtype.is_floating_point:  # never, as x != x is for an integer
        return LT(x.axes, f.ne(x.node, x.node))
    value = {"isinf": f.abs(x.node), "isposinf": x.node, "isneginf": f.neg(x.node)}[c.packet]
    return LT(x.axes, f.eq(value, math.inf))


def _nan_to_num(f: _F, x: Node, c: OpCall) -> Node:
    if not c.dtype.is_floating_point:  # an integer has neither NaN nor infinities
        return x
    nan, posinf, neginf = _arg(c, 1, "nan", None), _arg(c, 2, "posinf", None), _arg(c, 3, "neginf", None)
    info = torch.finfo(c.dtype)
    nan = 0.0 if nan is None else nan
    posinf = info.max if posinf is None else posinf
    neginf = info.min if neginf is None else neginf
    return f.where(f.isnan(x), nan, f.where(f.eq(x, math.inf), posinf, f.where(f.eq(x, -math.inf), neginf, x)))


def _logit(f: _F, x: Node, c: OpCall) -> Node:
    eps = _arg(c, 1, "eps", None)
    if eps is not None:
        x = f.where(f.lt(x, eps), eps, f.where(f.gt(x, 1.0 - eps), 1.0 - eps, x))
    return f.log(f.div(x, f.sub(1.0, x)))


def _sinc(f: _F, x: Node, c: OpCall) -> Node:
    """``sin(πx)/(πx)``; near 0, where that quotient (and more so its derivative) cancels, the
    even series ``1 − y²/6 + y⁴/120 − y⁶/5040 + y⁸/362880`` of ``y = πx`` (next term < 3e-11)."""
    y = f.mul(x, math.pi)
    near0 = f.lt(f.abs(y), 0.5)
    yy = f.mul(y, y)
    series = f.add(1.0, f.mul(yy, f.add(-1 / 6, f.mul(yy, f.add(1 / 120, f.mul(yy, f.add(-1 / 5040, f.mul(
        yy, 1 / 362880))))))))
    far = f.where(near0, 1.0, y)
    return f.where(near0, series, f.div(f.sin(far), far))


def _xlogy(f: _F, x: Node, y: Node, c: OpCall) -> Node:
    """``x·log(y)``, 0 where ``x == 0`` unless ``y`` is NaN: ``log`` reads 1 there."""
    return f.mul(x, f.log(f.where(f.both(f.eq(x, 0.0), f.eq(y, y)), 1.0, y)))


def _logaddexp(f: _F, a: Node, b: Node, c: OpCall) -> Node:
    """``max(a, b) + log1p(exp(−|a − b|))`` (base 2 for logaddexp2); equal operands, two
    equal infinities too, give ``a + log 2``, not NaN."""
    d = f.neg(f.abs(f.where(f.eq(a, b), 0.0, f.sub(a, b))))
    if c.packet == "logaddexp2":
        return f.add(f.maximum(a, b), f.div(f.log1p(f.exp2(d)), math.log(2.0)))
    return f.add(f.maximum(a, b), f.log1p(f.exp(d)))


def _fextremum(f: _F, a: Node, b: Node, c: OpCall) -> Node:
    """``fmax``/``fmin``: the extremum ignoring a NaN operand; the gradient goes to the one chosen."""
    wins = f.ge(a, b) if c.packet == "fmax" else f.le(a, b)
    return f.where(f.either(wins, f.ne(b, b)), a, b)


def _heaviside(f: _F, x: Node, values: Node, c: OpCall) -> Node:
    return f.where(f.eq(x, 0.0), values, f.where(f.gt(x, 0.0), 1.0, 0.0))


def _copysign(lab: LabelState, c: OpCall) -> LT:
    a, b, f = c.args[0], c.args[1], _F(c.dtype)
    if not isinstance(b, LT):  # a number: its sign is known now
        x = f.abs(f.arg(a.node))
        return LT(a.axes, f.neg(x) if math.copysign(1.0, b) < 0 else x)
    axes, (na, nb) = lab.broadcast(c.node.name, [a, b])
    x = f.abs(f.arg(na))
    return LT(axes, f.where(f.signbit(nb), f.neg(x), x))


def _lerp(lab: LabelState, c: OpCall) -> LT:
    """``a + w·(b − a)`` for ``|w| < 0.5``, else ``b − (b − a)·(1 − w)`` (PyTorch's two forms)."""
    w, f = c.args[2], _F(c.dtype)
    axes, nodes = lab.broadcast(c.node.name, [lab.scalar(y, c.dtype) for y in c.args[:3]])
    a, b, wn = (f.arg(n) for n in nodes)
    d = f.sub(b, a)
    near_a = f.add(a, f.mul(wn, d))
    near_b = f.sub(b, f.mul(d, f.sub(1.0, wn)))
    if not isinstance(w, LT):
        return LT(axes, near_a if abs(w) < 0.5 else near_b)
    return LT(axes, f.where(f.lt(f.abs(wn), 0.5), near_a, near_b))


HANDLERS: dict[str, Handler] = {
    "gelu": gelu,
    "softplus": _unary(_softplus),
    "mish": _unary(lambda f, x, c: f.mul(x, f.tanh(softplus_node(f, x)))),
    "elu": _unary(lambda f, x, c: _elu(f, x, _arg(c, 1, "alpha", 1.0), _arg(c, 2, "scale", 1.0),
                                       _arg(c, 3, "input_scale", 1.0))),
    "celu": _unary(_celu),
    "leaky_relu": _unary(_leaky_relu),
    "hardtanh": _unary(_hardtanh),
    "threshold": _unary(_threshold),
    "hardsigmoid": _unary(_hardsigmoid),
    "hardswish": _unary(lambda f, x, c: f.mul(x, _hardsigmoid(f, x))),
    "softshrink": _unary(_softshrink),
    "hardshrink": _unary(_hardshrink),
    "log_sigmoid_forward": _log_sigmoid,
    "frac": _unary(lambda f, x, c: f.sub(x, f.trunc(x))),
    "isinf": _infinity,
    "isposinf": _infinity,
    "isneginf": _infinity,
    "deg2rad": _unary(lambda f, x, c: f.mul(x, math.pi / 180.0)),
    "rad2deg": _unary(lambda f, x, c: f.mul(x, 180.0 / math.pi)),
    "sinc": _unary(_sinc),
    "nan_to_num": _unary(_nan_to_num),
    "logit": _unary(_logit),
    "xlogy": _binary(_xlogy),
    "special_xlogy": _binary(_xlogy),
    "logaddexp": _binary(_logaddexp),
    "logaddexp2": _binary(_logaddexp),
    "fmax": _binary(_fextremum),
    "fmin": _binary(_fextremum),
    "heaviside": _binary(_heaviside),
    "copysign": _copysign,
    "lerp": _lerp,
}
