"""Reverse-mode derivatives of IR expressions against float64 torch autograd.

Each case builds an expression over one variable ``i`` whose leaves load random inputs,
evaluates ``seed · ∂root/∂leaf`` (:func:`flashlight_hf.compiler.ir.derivative.vjp`) with the IR
evaluator, and compares it with autograd of the same expression evaluated by torch.
"""

from __future__ import annotations

import pytest
import torch

from flashlight_hf.compiler.ir import IExpr, Load, Var
from flashlight_hf.compiler.ir.derivative import vjp
from flashlight_hf.compiler.ir.evaluate import evaluate
from flashlight_hf.compiler.ir.nodes import Const, Node, Pointwise, Reduce, Unsupported

N = 64
F32 = torch.float32


def _leaves(n_inputs: int) -> tuple[Var, list[Load]]:
    i = Var("i", N)
    return i, [Load(F32, k, (IExpr.var(i),)) for k in range(n_inputs)]


def _check(root: Node, leaves: list[Node], inputs: list[torch.Tensor], var: Var, *, seed_input: int) -> None:
    """Gradients of ``root`` w.r.t. inputs 0..len(leaves)-1 (each read once per point)."""
    seed = Load(F32, seed_input, (IExpr.var(var),))
    grads = vjp(root, seed, leaves)
    leaf_inputs = [torch.nn.Parameter(t.double().clone()) for t in inputs[:len(leaves)]]
    values = leaf_inputs + [t.double() for t in inputs[len(leaves):]]
    out = evaluate(root, [var], values, dtype=torch.float64)
    (out * values[seed_input]).sum().backward()
    for k, (g, t) in enumerate(zip(grads, leaf_inputs)):
        expected = t.grad if t.grad is not None else torch.zeros_like(t)
        got = torch.zeros_like(expected) if g is None else evaluate(g, [var], values, dtype=torch.float64).expand(N)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12, msg=f"d/d input {k}")


POSITIVE = {"log", "sqrt", "rsqrt", "log1p", "log2", "log10"}
UNIT = {"asin", "acos", "atanh"}  # inside (-1, 1)
UNARY = ["exp", "exp2", "log", "log1p", "expm1", "sqrt", "rsqrt", "reciprocal", "square", "abs", "tanh", "sigmoid",
         "silu", "relu", "sin", "cos", "erf", "gelu", "neg", "floor", "ceil", "sign", "erfc", "log2", "log10", "tan",
         "atan", "asin", "acos", "sinh", "cosh", "asinh", "acosh", "atanh", "round", "trunc"]


@pytest.mark.parametrize("op", UNARY)
def test_unary_rules(op: str):
    i, (x,) = _leaves(1)
    a = torch.randn(N)
    if op in POSITIVE:
        a = a.abs() + 0.1
    if op in UNIT:
        a = 0.9 * torch.tanh(a)
    if op == "acosh":
        a = a.abs() + 1.1
    root = Pointwise(F32, op, (x,))
    _check(root, [x], [a, torch.randn(N)], i, seed_input=1)


BINARY = ["add", "sub", "mul", "div", "maximum", "minimum", "pow", "atan2", "hypot", "mod", "fmod"]


@pytest.mark.parametrize("op", BINARY)
def test_binary_rules(op: str):
    i, (x, y) = _leaves(2)
    a, b = torch.randn(N), torch.randn(N)
    if op == "pow":
        a = a.abs() + 0.1
    if op in ("div", "mod", "fmod"):
        b = b.sign() * (b.abs() + 0.5)
    root = Pointwise(F32, op, (x, y))
    _check(root, [x, y], [a, b, torch.randn(N)], i, seed_input=2)


def test_maximum_ties_split_evenly_and_a_clamp_passes_its_bound():
    i, (x, y) = _leaves(2)
    a = torch.randn(N)
    a[:8] = 0.0  # exactly at the clamp's bound
    b = a.clone()
    b[N // 2:] = torch.randn(N - N // 2)  # ties in the first half
    _check(Pointwise(F32, "maximum", (x, y)), [x, y], [a, b, torch.randn(N)], i, seed_input=2)
    # clamp_min(x, 0) is maximum(x, 0) in the IR: torch.clamp passes the gradient at x == 0
    clamp = Pointwise(F32, "maximum", (x, Const(F32, 0.0)))
    grad = evaluate(vjp(clamp, Const(F32, 1.0), [x])[0], [i], [a.double()], dtype=torch.float64).expand(N)
    t = a.double().requires_grad_()
    torch.clamp(t, min=0.0).sum().backward()
    torch.testing.assert_close(grad, t.grad)


def test_a_score_expression_softcap_mask_and_bias():
    """s = where(keep, tanh(x / c) * c + bias, -inf-free finite fill), through casts."""
    i, (x, bias) = _leaves(2)
    keep = Pointwise(torch.bool, "gt", (Load(F32, 2, (IExpr.var(i),)), Const(F32, 0.0)))
    c = Const(F32, 30.0)
    capped = Pointwise(F32, "mul", (Pointwise(F32, "tanh", (Pointwise(F32, "div", (x, c)),)), c))
    wide = Pointwise(torch.float64, "cast", (Pointwise(F32, "add", (capped, bias)),))
    root = Pointwise(F32, "cast", (Pointwise(torch.float64, "where", (keep, wide, Const(torch.float64, -1e4))),))
    _check(root, [x, bias], [torch.randn(N) * 50, torch.randn(N), torch.randn(N), torch.randn(N)], i, seed_input=3)


def test_a_node_used_twice_accumulates():
    i, (x,) = _leaves(1)
    sq = Pointwise(F32, "mul", (x, x))
    root = Pointwise(F32, "add", (Pointwise(F32, "mul", (sq, x)), Pointwise(F32, "exp", (sq,))))
    _check(root, [x], [torch.randn(N) * 0.5, torch.randn(N)], i, seed_input=1)


def test_a_dot_product_is_a_leaf():
    """The gradient stops at a Reduce (the backward multiplies dX into the contraction)."""
    i, d = Var("i", N), Var("d", 8)
    q = Load(F32, 0, (IExpr.var(i), IExpr.var(d)))
    k = Load(F32, 1, (IExpr.var(d),))
    dot = Reduce(F32, "sum", d, Pointwise(F32, "mul", (q, k)))
    root = Pointwise(F32, "sigmoid", (Pointwise(F32, "mul", (dot, Const(F32, 0.125))),))
    (g,) = vjp(root, Const(F32, 1.0), [dot])
    inputs = [torch.randn(N, 8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)]
    got = evaluate(g, [i, d], inputs, dtype=torch.float64).reshape(N)
    x = (inputs[0] @ inputs[1]).requires_grad_()
    torch.sigmoid(x * 0.125).sum().backward()
    torch.testing.assert_close(got, x.grad)


def test_no_dependence_is_none_and_a_missing_rule_is_named():
    i, (x, y) = _leaves(2)
    assert vjp(Pointwise(F32, "exp", (x,)), Const(F32, 1.0), [y]) == [None]
    unknown = Pointwise(F32, "bessel_j0", (x,))
    with pytest.raises(Unsupported, match="bessel_j0"):
        vjp(Pointwise(F32, "add", (unknown, y)), Const(F32, 1.0), [x])
    # off every path to the leaf asked about, an op without a rule does not matter
    (gy,) = vjp(Pointwise(F32, "add", (unknown, y)), Const(F32, 1.0), [y])
    assert gy is not None


def test_the_evaluator_agrees_with_torch_on_a_whole_attention_row():
    """The evaluator is the reference the derivative tests stand on: check it once end to end."""
    i, j, d = Var("i", 5), Var("j", 7), Var("d", 4)
    q = Load(F32, 0, (IExpr.var(i), IExpr.var(d)))
    k = Load(F32, 1, (IExpr.var(j), IExpr.var(d)))
    s = Reduce(F32, "sum", d, Pointwise(F32, "mul", (q, k)))
    m = Reduce(F32, "max", j, s)
    e = Pointwise(F32, "exp", (Pointwise(F32, "sub", (s, m)),))
    p = Pointwise(F32, "div", (e, Reduce(F32, "sum", j, e)))
    a, b = torch.randn(5, 4, dtype=torch.float64), torch.randn(7, 4, dtype=torch.float64)
    got = evaluate(p, [i, j, d], [a, b], dtype=torch.float64).reshape(5, 7)
    torch.testing.assert_close(got, torch.softmax(a @ b.T, -1))


def test_every_pointwise_op_the_labeller_makes_has_a_rule():
    from flashlight_hf.compiler.ir.derivative import has_rule
    from flashlight_hf.compiler.ir.from_fx.pointwise import POINTWISE_BINARY, POINTWISE_UNARY

    ops = set(POINTWISE_UNARY.values()) | set(POINTWISE_BINARY.values()) | {"cast", "where", "gelu", "truncdiv",
                                                                            "invert"}
    assert not [op for op in sorted(ops) if not has_rule(op)]
    assert not has_rule("bessel_j0")
