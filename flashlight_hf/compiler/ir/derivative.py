"""Reverse-mode derivatives of IR expressions: one rule per pointwise op.

Why: the generated backward (BACKWARD.md) differentiates the program's own score and epilogue
expressions — ``dS ∘ ∂f/∂x`` for every dot product ``x``, ``∂f/∂c`` for every captured tensor —
rather than per-variant formulas. :func:`vjp` walks an expression DAG once from its root and
returns, for each requested leaf, the expression ``seed · ∂root/∂leaf`` as IR nodes that the
same codegen emits (one statement per node, named temporaries).

Leaves are the nodes the caller asks about (typically ``Reduce`` dot products and float
``Load``s); every ``Reduce``, ``Load``, ``Index``, ``Const`` and loop-state node is a leaf of the
walk. The rules follow PyTorch's own derivatives (``tools/autograd/derivatives.yaml``) where a
choice exists: ``maximum`` splits ties evenly, a clamp (``maximum``/``minimum`` against a
constant) passes the gradient at its bound, ``relu`` does not, piecewise-constant ops
(``floor``, ``round``, ``sign``, comparisons, integer bit operations) give zero. An op without a rule raises
:class:`~flashlight_hf.compiler.ir.nodes.Unsupported` naming it: the caller keeps the exact
recompute backward, never a wrong gradient.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from flashlight_hf.compiler.ir.nodes import Const, Node, Pointwise, Unsupported

# ops whose gradient is zero almost everywhere (or which return no float)
_PIECEWISE_CONSTANT = frozenset({"floor", "ceil", "round", "trunc", "sign", "signbit", "gt", "ge", "lt", "le", "eq",
                                 "ne", "and", "or", "xor", "not", "invert", "shl", "shr", "isnan", "floordiv",
                                 "truncdiv"})


def _c(like: Node, value: float) -> Const:
    return Const(like.dtype, value)


def _p(op: str, *args: Node) -> Pointwise:
    """A float pointwise node, in the dtype of its first float argument."""
    dtype = next((a.dtype for a in args if a.dtype.is_floating_point), args[0].dtype)
    return Pointwise(dtype, op, tuple(args))


def _is_const(x: Node, value: float | None = None) -> bool:
    if not isinstance(x, Const) or isinstance(x.value, bool) or not isinstance(x.value, (int, float)):
        return False
    return value is None or float(x.value) == value


def mul(a: Node, b: Node) -> Node:
    """``a * b`` with a constant 1 folded away."""
    if _is_const(a, 1.0):
        return b
    if _is_const(b, 1.0):
        return a
    return _p("mul", a, b)


def add(a: Node | None, b: Node) -> Node:
    """``a + b``; ``None`` is an empty sum."""
    return b if a is None else _p("add", a, b)


def _where(cond: Node, yes: Node, no: Node) -> Node:
    return _p("where", cond, yes, no)


def _zero_like(g: Node) -> Const:
    return _c(g, 0.0)


def _one_minus_square(x: Node) -> Node:
    return _p("mul", _p("sub", _c(x, 1.0), x), _p("add", _c(x, 1.0), x))


Rule = Callable[[Pointwise, Node], tuple]  # (node, its adjoint) -> one adjoint per argument (None: none)


def _unary(f: Callable[[Pointwise, Node, Node], Node]) -> Rule:
    return lambda n, g: (f(n, n.args[0], g),)


_RULES: dict[str, Rule] = {
    "add": lambda n, g: (g, g),
    "sub": lambda n, g: (g, _p("neg", g)),
    "mul": lambda n, g: (mul(g, n.args[1]), mul(g, n.args[0])),
    "div": lambda n, g: (_p("div", g, n.args[1]), _p("neg", _p("div", mul(g, n), n.args[1]))),
    "neg": _unary(lambda n, x, g: _p("neg", g)),
    "exp": _unary(lambda n, x, g: mul(g, n)),
    "exp2": _unary(lambda n, x, g: mul(mul(g, n), _c(n, math.log(2.0)))),
    "log": _unary(lambda n, x, g: _p("div", g, x)),
    "log1p": _unary(lambda n, x, g: _p("div", g, _p("add", x, _c(x, 1.0)))),
    "expm1": _unary(lambda n, x, g: mul(g, _p("add", n, _c(n, 1.0)))),
    "sqrt": _unary(lambda n, x, g: _p("div", mul(g, _c(n, 0.5)), n)),
    "rsqrt": _unary(lambda n, x, g: _p("div", mul(mul(g, _c(n, -0.5)), n), x)),
    "reciprocal": _unary(lambda n, x, g: _p("neg", mul(mul(g, n), n))),
    "square": _unary(lambda n, x, g: mul(mul(g, _c(x, 2.0)), x)),
    "abs": _unary(lambda n, x, g: mul(g, _p("sign", x))),
    "tanh": _unary(lambda n, x, g: mul(g, _p("sub", _c(n, 1.0), _p("mul", n, n)))),
    "sigmoid": _unary(lambda n, x, g: mul(g, _p("mul", n, _p("sub", _c(n, 1.0), n)))),
    "silu": _unary(lambda n, x, g: mul(g, _p("mul", _p("sigmoid", x), _p(
        "add", _c(x, 1.0), _p("mul", x, _p("sub", _c(x, 1.0), _p("sigmoid", x))))))),
    "relu": _unary(lambda n, x, g: _where(Pointwise(torch.bool, "gt", (x, _c(x, 0.0))), g, _zero_like(g))),
    "sin": _unary(lambda n, x, g: mul(g, _p("cos", x))),
    "cos": _unary(lambda n, x, g: _p("neg", mul(g, _p("sin", x)))),
    "erf": _unary(lambda n, x, g: mul(mul(g, _c(x, 2.0 / math.sqrt(math.pi))),
                                      _p("exp", _p("neg", _p("mul", x, x))))),
    "erfc": _unary(lambda n, x, g: mul(mul(g, _c(x, -2.0 / math.sqrt(math.pi))),
                                       _p("exp", _p("neg", _p("mul", x, x))))),
    "log2": _unary(lambda n, x, g: _p("div", g, _p("mul", x, _c(x, math.log(2.0))))),
    "log10": _unary(lambda n, x, g: _p("div", g, _p("mul", x, _c(x, math.log(10.0))))),
    "tan": _unary(lambda n, x, g: mul(g, _p("add", _c(n, 1.0), _p("mul", n, n)))),
    "sinh": _unary(lambda n, x, g: mul(g, _p("cosh", x))),
    "cosh": _unary(lambda n, x, g: mul(g, _p("sinh", x))),
    "atan": _unary(lambda n, x, g: _p("div", g, _p("add", _c(x, 1.0), _p("mul", x, x)))),
    # 1 − x² and x² − 1 as products: exact factors, no cancellation near |x| = 1
    "asin": _unary(lambda n, x, g: mul(g, _p("rsqrt", _one_minus_square(x)))),
    "acos": _unary(lambda n, x, g: _p("neg", mul(g, _p("rsqrt", _one_minus_square(x))))),
    "asinh": _unary(lambda n, x, g: mul(g, _p("rsqrt", _p("add", _p("mul", x, x), _c(x, 1.0))))),
    "acosh": _unary(lambda n, x, g: mul(g, _p("rsqrt", _p("mul", _p("sub", x, _c(x, 1.0)), _p("add", x, _c(x, 1.0)))))),
    "atanh": _unary(lambda n, x, g: _p("div", g, _one_minus_square(x))),
    # exact gelu: Φ(x) + x·φ(x)
    "gelu": _unary(lambda n, x, g: mul(g, _p(
        "add", _p("mul", _c(x, 0.5), _p("add", _c(x, 1.0), _p("erf", _p("mul", x, _c(x, 1.0 / math.sqrt(2.0)))))),
        _p("mul", _p("mul", x, _c(x, 1.0 / math.sqrt(2.0 * math.pi))),
           _p("exp", _p("mul", _p("mul", x, x), _c(x, -0.5))))))),
    "cast": lambda n, g: (g if n.args[0].dtype == g.dtype else Pointwise(n.args[0].dtype, "cast", (g,)),),
    "where": lambda n, g: (None, _where(n.args[0], g, _zero_like(g)), _where(n.args[0], _zero_like(g), g)),
    "mod": lambda n, g: (g, _p("neg", mul(g, _p("floordiv", n.args[0], n.args[1])))),
    "fmod": lambda n, g: (g, _p("neg", mul(g, _p("truncdiv", n.args[0], n.args[1])))),
    "hypot": lambda n, g: (_p("div", mul(g, n.args[0]), n), _p("div", mul(g, n.args[1]), n)),
    "atan2": lambda n, g: (  # atan2(y, x)
        _p("div", mul(g, n.args[1]), _p("add", _p("mul", n.args[0], n.args[0]), _p("mul", n.args[1], n.args[1]))),
        _p("neg", _p("div", mul(g, n.args[0]),
                     _p("add", _p("mul", n.args[0], n.args[0]), _p("mul", n.args[1], n.args[1]))))),
}


def _extremum(n: Pointwise, g: Node) -> tuple:
    """maximum / minimum: PyTorch splits a tie evenly between the two; a clamp (one side a
    constant) passes the gradient at its bound."""
    x, y = n.args
    wins = "ge" if n.op == "maximum" else "le"
    strictly = "gt" if n.op == "maximum" else "lt"
    if _is_const(y):
        return (_where(Pointwise(torch.bool, wins, (x, y)), g, _zero_like(g)), None)
    if _is_const(x):
        return (None, _where(Pointwise(torch.bool, wins, (y, x)), g, _zero_like(g)))
    tie = Pointwise(torch.bool, "eq", (x, y))
    half = mul(g, _c(g, 0.5))
    gx = _where(tie, half, _where(Pointwise(torch.bool, strictly, (x, y)), g, _zero_like(g)))
    gy = _where(tie, half, _where(Pointwise(torch.bool, strictly, (y, x)), g, _zero_like(g)))
    return gx, gy


def _pow(n: Pointwise, g: Node) -> tuple:
    base, exponent = n.args
    gb = ge = None
    if base.dtype.is_floating_point:
        if _is_const(exponent):
            c = float(exponent.value)
            gb = _zero_like(g) if c == 0 else mul(mul(g, _c(base, c)), _p("pow", base, _c(base, c - 1)))
        else:
            gb = mul(mul(g, exponent), _p("pow", base, _p("sub", exponent, _c(exponent, 1.0))))
    if exponent.dtype.is_floating_point and not _is_const(exponent):
        # d/dy x^y = x^y · log x, taken as 0 where x == 0 and y >= 0 (as PyTorch does)
        log_base = _where(Pointwise(torch.bool, "eq", (base, _c(base, 0.0))), _c(base, 0.0), _p("log", base))
        ge = mul(mul(g, n), log_base)
    return gb, ge


def has_rule(op: str) -> bool:
    """Whether :func:`vjp` can differentiate through pointwise op ``op``."""
    return op in _RULES or op in _PIECEWISE_CONSTANT or op in ("maximum", "minimum", "pow")


def vjp(root: Node, seed: Node, wrt: Sequence[Node]) -> list[Node | None]:
    """For each node of ``wrt``, ``seed · ∂root/∂node`` as an IR expression (None: ``root``
    does not depend on it). ``seed`` has the shape of one element of ``root`` (a scalar node).
    Raises Unsupported (naming the op) where a node on a path to a requested leaf has no rule."""
    wanted = {id(w) for w in wrt}
    order: list[Node] = []  # topological, root last
    state: dict[int, bool] = {}
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        x, expanded = stack.pop()
        if expanded:
            order.append(x)
            continue
        if id(x) in state:
            continue
        state[id(x)] = True
        stack.append((x, True))
        if isinstance(x, Pointwise) and id(x) not in wanted:
            stack.extend((a, False) for a in x.args)
    needed = _reaches(order, wanted)
    adjoint: dict[int, Node] = {id(root): seed}
    for x in reversed(order):
        g = adjoint.get(id(x))
        if g is None or id(x) in wanted or not isinstance(x, Pointwise) or id(x) not in needed:
            continue
        if x.op in _PIECEWISE_CONSTANT:
            continue
        rule = _RULES.get(x.op) or {"maximum": _extremum, "minimum": _extremum, "pow": _pow}.get(x.op)
        if rule is None:
            raise Unsupported(x.op, f"no derivative rule for pointwise op {x.op!r}")
        for arg, ga in zip(x.args, rule(x, g)):
            if ga is not None and arg.dtype.is_floating_point and id(arg) in needed:
                adjoint[id(arg)] = add(adjoint.get(id(arg)), ga)
    return [adjoint.get(id(w)) for w in wrt]


def _reaches(order: list[Node], wanted: set[int]) -> set[int]:
    """The nodes with a requested leaf below them (themselves included): only their adjoints
    are built, so an op without a rule off every path to a leaf does not matter."""
    out: set[int] = set()
    for x in order:  # children before parents
        if id(x) in wanted or (isinstance(x, Pointwise) and any(id(a) in out for a in x.args)):
            out.add(id(x))
    return out
