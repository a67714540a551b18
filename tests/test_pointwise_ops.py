"""Every pointwise ATen op with a Triton equivalent fuses (issue 14): one score-mod program per op.

Each program applies one op to the scores ``s`` or to the row and key indices ``i``, ``j`` in a
way that changes the result, then ``softmax(·) @ v``. For each: ``explain`` finds one kernel and
no fallback, and a generated backward (two kernels); the compiled output equals float64 eager;
for a differentiable op the gradients of q, k and v equal float64 autograd, computed by the
generated backward kernels. Inputs stay in each op's domain (asin of a tanh, acosh of 1.5 + s²)
and its scale keeps the scores moderate (fp32 is judged against a 1e-5 relative error). Integer
and boolean ops are checked forward (the gradient flows through ``s`` around them). Fresh random
inputs each run.
"""

from __future__ import annotations

import math
import time
import warnings

import pytest
import torch
import torch.nn.functional as F

import flashlight_hf
from flashlight_hf.testing import assert_close
from tests.test_backward import check_generated_gradients

GRAD, INT, FORWARD = "grad", "int", "forward"  # how an op is checked (see the module docstring)


def _f(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Integer values as the scores' float dtype (float64 in the reference)."""
    return x.to(like.dtype)


OPS = {
    # -- trigonometric, hyperbolic, exponential and logarithmic --------------------------------
    "tan": (lambda s, i, j: torch.tan(torch.tanh(s)), GRAD),
    "atan": (lambda s, i, j: torch.atan(2 * s), GRAD),
    "asin": (lambda s, i, j: torch.asin(0.9 * torch.tanh(s)), GRAD),
    "acos": (lambda s, i, j: torch.acos(0.9 * torch.tanh(s)), GRAD),
    "atan2": (lambda s, i, j: torch.atan2(s, _f(j - 20, s) * 0.1), GRAD),  # all four quadrants
    "sinh": (lambda s, i, j: torch.sinh(0.5 * s), GRAD),
    "cosh": (lambda s, i, j: torch.cosh(0.5 * s), GRAD),
    "asinh": (lambda s, i, j: torch.asinh(3 * s), GRAD),
    "acosh": (lambda s, i, j: torch.acosh(1.5 + s * s), GRAD),
    "atanh": (lambda s, i, j: torch.atanh(0.9 * torch.tanh(s)), GRAD),
    "erf": (lambda s, i, j: 2 * torch.erf(s), GRAD),
    "erfc": (lambda s, i, j: 2 * torch.erfc(s), GRAD),
    "log1p": (lambda s, i, j: torch.log1p(s.abs()), GRAD),
    "expm1": (lambda s, i, j: torch.expm1(0.5 * s), GRAD),
    "log2": (lambda s, i, j: torch.log2(s.abs() + 0.5), GRAD),
    "log10": (lambda s, i, j: 2 * torch.log10(s.abs() + 0.5), GRAD),
    "exp2": (lambda s, i, j: torch.exp2(0.5 * s), GRAD),
    "pow_scalar_base": (lambda s, i, j: torch.pow(2.0, 0.5 * s), GRAD),
    "pow_float_exponent": (lambda s, i, j: (s.abs() + 0.1) ** torch.tanh(s), GRAD),
    "pow_whole_exponents": (lambda s, i, j: (0.5 * s) ** 4 - (0.5 * s) ** 5 / 4 + 0.5 / (1 + s ** -2), GRAD),
    "pow_integer_tensor_exponent": (lambda s, i, j: (0.5 * s) ** (j % 3), GRAD),  # negative bases
    "sinc": (lambda s, i, j: 2 * torch.sinc(s), GRAD),
    "deg2rad": (lambda s, i, j: torch.deg2rad(60 * s) + torch.rad2deg(s) / 60, GRAD),
    "hypot": (lambda s, i, j: torch.hypot(s, _f(j, s) * 0.1), GRAD),
    "logaddexp": (lambda s, i, j: torch.logaddexp(s, _f(j, s) * 0.1 - 2), GRAD),
    "logaddexp2": (lambda s, i, j: torch.logaddexp2(s, _f(j, s) * 0.1 - 2), GRAD),
    "xlogy": (lambda s, i, j: torch.xlogy(torch.relu(s), s.abs() + 0.5), GRAD),  # x == 0 for half
    "logit": (lambda s, i, j: torch.logit(0.9 * torch.sigmoid(s) + 0.05), GRAD),
    "logit_eps": (lambda s, i, j: torch.logit(torch.sigmoid(2 * s), eps=0.05), GRAD),
    # -- rounding, remainders, signs (piecewise constant: added to s) -------------------------------
    "floor": (lambda s, i, j: s + 0.5 * torch.floor(2 * s), GRAD),
    "ceil": (lambda s, i, j: s + 0.5 * torch.ceil(2 * s), GRAD),
    "round": (lambda s, i, j: s + 0.5 * torch.round(2 * s), GRAD),
    "round_decimals": (lambda s, i, j: s + torch.round(s, decimals=1) - torch.round(20 * s, decimals=-1) / 20,
                       GRAD),
    "trunc": (lambda s, i, j: s + 0.5 * torch.trunc(2 * s), GRAD),
    "frac": (lambda s, i, j: torch.frac(2 * s), GRAD),
    "remainder": (lambda s, i, j: torch.remainder(s, 0.7), GRAD),
    "fmod": (lambda s, i, j: torch.fmod(s, 0.7), GRAD),
    "div_trunc": (lambda s, i, j: s + 0.1 * torch.div(4 * s, 3, rounding_mode="trunc"), GRAD),
    "div_floor": (lambda s, i, j: s + 0.1 * torch.div(4 * s, 3, rounding_mode="floor"), GRAD),
    "sign": (lambda s, i, j: s + 0.5 * torch.sign(s), GRAD),
    "sgn": (lambda s, i, j: s + 0.5 * torch.sgn(s), GRAD),
    "signbit": (lambda s, i, j: s + _f(torch.signbit(s), s), GRAD),
    "copysign": (lambda s, i, j: torch.copysign(s, _f(i - j, s)), GRAD),  # +0.0 on the diagonal
    "copysign_scalar": (lambda s, i, j: torch.copysign(s, -1.0), GRAD),
    # -- clamps, extrema, selects, NaN and infinity ------------------------------------------------
    "clamp": (lambda s, i, j: torch.clamp(s, -0.5, 0.5), GRAD),
    "clamp_tensor_bounds": (lambda s, i, j: torch.clamp(s, min=_f(j, s) * 0.02 - 0.5, max=_f(i, s) * 0.02), GRAD),
    "clamp_min_max_tensor": (lambda s, i, j: torch.clamp_max(torch.clamp_min(s, _f(j, s) * 0.02 - 0.5), 0.6), GRAD),
    "fmax": (lambda s, i, j: torch.fmax(s, _f(j, s) * 0.02 - 0.3), GRAD),
    "fmin": (lambda s, i, j: torch.fmin(s, _f(j, s) * 0.02 - 0.3), GRAD),
    "lerp": (lambda s, i, j: torch.lerp(s, _f(j, s) * 0.1, 0.3) + torch.lerp(s, _f(i, s) * 0.1, 0.8), GRAD),
    "lerp_tensor_weight": (lambda s, i, j: torch.lerp(s, _f(j, s) * 0.1, torch.tanh(s)), GRAD),
    "where_scalar_other": (lambda s, i, j: torch.where(s > 0, s, 0.0), GRAD),
    "where_scalar_mask": (lambda s, i, j: torch.where(i >= j, s, float("-inf")), GRAD),
    "where_scalars": (lambda s, i, j: s + torch.where(i > j, 1.0, -1.0), GRAD),
    "where_0d_tensors": (lambda s, i, j: torch.where(i >= j, s, torch.tensor(-1e4)) * torch.tensor(0.5), GRAD),
    "nan_to_num": (lambda s, i, j: s + torch.nan_to_num((i - j) / (i - j), nan=-1.0), GRAD),  # 0/0 on the diagonal
    "nan_to_num_inf": (lambda s, i, j: s + torch.nan_to_num(1 / (j - i), posinf=2.0, neginf=-2.0), GRAD),
    "isinf": (lambda s, i, j: s + _f(torch.isinf(1 / (j - i)), s), GRAD),
    "isposinf": (lambda s, i, j: s + _f(torch.isposinf(1 / (j - i)), s), GRAD),
    "isneginf": (lambda s, i, j: s + _f(torch.isneginf(-1 / (j - i)), s), GRAD),
    "isnan": (lambda s, i, j: s + _f(torch.isnan((i - j) / (i - j)), s), GRAD),
    "isfinite": (lambda s, i, j: s + _f(torch.isfinite(1 / (j - i)), s), GRAD),
    "heaviside": (lambda s, i, j: s + torch.heaviside(torch.round(s), _f(j, s) * 0.01), FORWARD),  # no derivative
    # -- activations ---------------------------------------------------------------------------------
    "softplus": (lambda s, i, j: F.softplus(s), GRAD),
    "softplus_beta_threshold": (lambda s, i, j: F.softplus(s, beta=2.0, threshold=3.0), GRAD),  # both branches
    "mish": (lambda s, i, j: F.mish(s), GRAD),
    "leaky_relu": (lambda s, i, j: F.leaky_relu(s, 0.1), GRAD),
    "hardtanh": (lambda s, i, j: F.hardtanh(s, -0.5, 0.5), GRAD),
    "relu6": (lambda s, i, j: F.relu6(4 * s) / 4, GRAD),
    "elu": (lambda s, i, j: F.elu(s), GRAD),
    "selu": (lambda s, i, j: F.selu(s), GRAD),
    "celu": (lambda s, i, j: F.celu(s, alpha=0.5), GRAD),
    "gelu_tanh": (lambda s, i, j: F.gelu(s, approximate="tanh"), GRAD),
    "hardsigmoid": (lambda s, i, j: F.hardsigmoid(4 * s), GRAD),
    "hardswish": (lambda s, i, j: F.hardswish(4 * s) / 4, GRAD),
    "threshold": (lambda s, i, j: F.threshold(s, 0.1, -1.0), GRAD),
    "logsigmoid": (lambda s, i, j: F.logsigmoid(s), GRAD),
    "softshrink": (lambda s, i, j: F.softshrink(s, 0.3), GRAD),
    "hardshrink": (lambda s, i, j: F.hardshrink(s, 0.3), GRAD),
    "softsign": (lambda s, i, j: F.softsign(s), GRAD),
    "tanhshrink": (lambda s, i, j: F.tanhshrink(2 * s), GRAD),
    # -- integers: shifts, bitwise and logical ops, arithmetic, comparisons, casts --------------
    "rshift": (lambda s, i, j: s + _f((i * 7 - j) >> 2, s) * 0.1, INT),  # arithmetic: negative values
    "lshift": (lambda s, i, j: s + _f(j << 3, s) * 0.01, INT),
    "rshift_tensor": (lambda s, i, j: s + _f(((i - j) * 1000) >> (j % 70 - 3), s) * 0.001, INT),  # counts -3..66
    "lshift_tensor": (lambda s, i, j: s + _f((i - j) << (j % 70 - 3), s) * 2.0 ** -60, INT),  # wraps, as int64 does
    "bitwise_shift_functions": (lambda s, i, j: s + _f(torch.bitwise_left_shift(i, 1) +
                                                       torch.bitwise_right_shift(j, 1), s) * 0.01, INT),
    "bitwise_and": (lambda s, i, j: s + _f((i & j) + (j & 3), s) * 0.05, INT),
    "bitwise_or": (lambda s, i, j: s + _f((i | j) + (j | 5), s) * 0.02, INT),
    "bitwise_xor": (lambda s, i, j: s + _f((i ^ j) + (j ^ 5), s) * 0.02, INT),
    "bitwise_not": (lambda s, i, j: s + _f(~j, s) * 0.05, INT),
    "bool_ops": (lambda s, i, j: s + _f(((i > j) & (j > 3)) | ~(i < 2) ^ (j == 5), s), INT),
    "logical_ops": (lambda s, i, j: s + _f(torch.logical_and(i % 3, j % 2), s) + _f(torch.logical_or(i % 3, j % 2), s)
                    + _f(torch.logical_xor(i % 3, j % 2), s) + _f(torch.logical_not(j % 3), s), INT),
    "remainder_int": (lambda s, i, j: s + _f((i - j) % 5, s) * 0.3, INT),
    "fmod_int": (lambda s, i, j: s + _f(torch.fmod(i - j, 5), s) * 0.3, INT),
    "floor_divide_int": (lambda s, i, j: s + _f(torch.div(i - j, 3, rounding_mode="floor"), s) * 0.1, INT),
    "div_trunc_int": (lambda s, i, j: s + _f(torch.div(i - j, 3, rounding_mode="trunc"), s) * 0.1, INT),
    "true_div_int": (lambda s, i, j: s + (i - j) / 7, INT),
    "abs_neg_sign_int": (lambda s, i, j: s + _f((i - j).abs() * 0 - (-(i - j)) + torch.sign(i - j), s) * 0.1, INT),
    "extrema_int": (lambda s, i, j: s + _f(torch.maximum(i, j) - torch.minimum(i, j) + torch.clamp(i - j, -3, 3), s)
                    * 0.05, INT),
    "pow_int": (lambda s, i, j: s + _f((j % 4) ** 2 + (j % 3) ** 5, s) * 0.01, INT),
    "compare_int": (lambda s, i, j: s + _f((i > j), s) + _f(i == j * 2, s) - _f(i != j + 1, s) + _f(i <= j, s)
                    - _f(i >= j, s) + _f(i < j, s), INT),
    "where_int_scalars": (lambda s, i, j: s + torch.where(i > j, 1, 0), INT),
    "masked_fill": (lambda s, i, j: s.masked_fill(j > i + 3, -1e9), INT),
    "float_to_int": (lambda s, i, j: s + _f((4 * s).int(), s) * 0.1 + _f((4 * s).long(), s) * 0.1, INT),  # truncates
    "int_to_float": (lambda s, i, j: s + (i - j).to(torch.int32).float() * 0.1 + (i > j).half().float(), INT),
    "bool_casts": (lambda s, i, j: s + _f(s.bool(), s) + _f((i - j).bool(), s) + _f((i > j).long(), s), INT),
}
SQ, SK = 37, 40


def _program(mod):
    def program(q, k, v):
        s = q @ k.mT * q.shape[-1] ** -0.5
        i = torch.arange(q.shape[-2], device=q.device)[:, None]
        j = torch.arange(k.shape[-2], device=q.device)[None, :]
        return torch.softmax(mod(s, i, j), dim=-1) @ v
    return program


def _qkv(device: str) -> list[torch.Tensor]:
    return [torch.randn(1, 1, n, 32, device=device) for n in (SQ, SK, SK)]


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_fuses_with_its_backward_and_matches_float64(name: str, device: str):
    mod, kind = OPS[name]
    program, inputs = _program(mod), _qkv(device)
    e = flashlight_hf.explain(program, *inputs)
    assert e.num_kernels == 1 and e.fallbacks == [], e.fallbacks
    assert e.backward_kernels == 2 and e.backward_fallbacks == [], e.backward_fallbacks
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="flashlight")  # a fallback warning fails the test
        out = flashlight_hf.compile(program)(*inputs)
    assert_close(out, program(*(t.double() for t in inputs)), torch.float32)
    if kind == GRAD:
        check_generated_gradients(program, inputs)


def test_integer_ops_change_the_result():
    """The integer programs are not the plain softmax: each op's value reaches the output."""
    q, k, v = _qkv("cpu")
    plain = _program(lambda s, i, j: s)(q, k, v)
    for name, (mod, kind) in OPS.items():
        if kind == INT:
            assert not torch.allclose(_program(mod)(q, k, v), plain), name


def test_an_op_without_a_rule_names_itself_and_a_remedy(device: str):
    """Issue 14, item 5: the fallback says which op and what the user can change."""
    e = flashlight_hf.explain(_program(lambda s, i, j: torch.lgamma(s.abs() + 0.5)), *_qkv(device))
    assert e.num_kernels == 0
    (node, reason), = e.fallbacks
    assert "torch.lgamma" in reason and "compute it outside the compiled function" in reason, reason


def test_pow_of_a_negative_base_by_a_whole_exponent_is_real(device: str):
    """``exp(e·log x)`` alone is NaN for x < 0: the kernel gives torch's real powers."""
    program = _program(lambda s, i, j: (s - 2) ** 3 * 0.1 + (s - 1) ** 9 * 1e-4 + (s - 1) ** (j % 4) * 0.1)
    inputs = _qkv(device)
    out = flashlight_hf.compile(program)(*inputs)
    assert_close(out, program(*(t.double() for t in inputs)), torch.float32)


SPECIAL = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 1.5, 2.5, -2.5, 0.49999997, 1e-30, 3.0, -7.5, 1e20, -1e20, math.inf,
           -math.inf, math.nan]
SPECIAL_OPS = {  # (a, b) -> value; a runs down the rows, b along the keys
    "atan2": torch.atan2, "round": lambda a, b: torch.round(a), "trunc": lambda a, b: torch.trunc(a),
    "signbit": lambda a, b: torch.signbit(a), "copysign": torch.copysign, "erfc": lambda a, b: torch.erfc(a),
    "asinh": lambda a, b: torch.asinh(a), "atan": lambda a, b: torch.atan(a), "asin": lambda a, b: torch.asin(a),
    "acos": lambda a, b: torch.acos(a), "atanh": lambda a, b: torch.atanh(a), "acosh": lambda a, b: torch.acosh(a),
    "sinh": lambda a, b: torch.sinh(a), "cosh": lambda a, b: torch.cosh(a), "tan": lambda a, b: torch.tan(a),
    "log1p": lambda a, b: torch.log1p(a), "expm1": lambda a, b: torch.expm1(a), "log2": lambda a, b: torch.log2(a),
    "logit": lambda a, b: torch.logit(a), "logaddexp": torch.logaddexp, "fmax": torch.fmax, "hypot": torch.hypot,
    "clamp": lambda a, b: torch.clamp(a, min=b - 1, max=b), "maximum": torch.maximum, "xlogy": torch.xlogy,
    "nan_to_num": lambda a, b: torch.nan_to_num(a), "sinc": lambda a, b: torch.sinc(a), "pow": torch.pow,
    # torch's own vectorised fmod overflows on 1e20 / 1e-30 (NaN, its scalar path 8.1e-32): not that pair
    "remainder": lambda a, b: torch.remainder(a, torch.where(b.abs() < 1e-20, 0.7, b)),
    "fmod": lambda a, b: torch.fmod(a, torch.where(b.abs() < 1e-20, 0.7, b)),
    "softplus": lambda a, b: F.softplus(a), "elu": lambda a, b: F.elu(a), "mish": lambda a, b: F.mish(a),
    "gelu_tanh": lambda a, b: F.gelu(a, approximate="tanh"), "logsigmoid": lambda a, b: F.logsigmoid(a),
    "hardswish": lambda a, b: F.hardswish(a), "relu": lambda a, b: torch.relu(a), "isinf": lambda a, b: torch.isinf(a),
    "lerp": lambda a, b: torch.lerp(a, b, 0.7),
}


def test_special_values(device: str):
    """Signed zeros, infinities, NaN, ties, tails and huge values — where the kernel's formulas
    differ from the textbook definitions — give torch's float32 values. One program (one build)
    for every op: head ``h`` computes op ``h`` of :data:`SPECIAL_OPS` for every pair of
    :data:`SPECIAL` values, the pair's value as its score; ``@ v`` with ``v`` the identity returns
    the scores (NaN and infinities as sentinels, so no ``inf · 0`` reaches the sum)."""
    fns = list(SPECIAL_OPS.values())
    x = torch.tensor(SPECIAL, device=device)
    n, heads = x.numel(), len(fns)

    def program(q, k, v, a, b):
        h = torch.arange(q.shape[1], device=q.device)[:, None, None]
        s = q @ k.mT
        for op, fn in enumerate(fns):  # a sum of selects, not a chain: every op's own term
            s = s + torch.where(h == op, fn(a, b).float(), 0.0)
        s = torch.where(torch.isnan(s), -1.0, torch.where(s == math.inf, -2.0, torch.where(s == -math.inf, -3.0, s)))
        return s @ v

    q, k = torch.zeros(1, heads, n, 16, device=device), torch.zeros(1, heads, n, 16, device=device)
    inputs = (q, k, torch.eye(n, device=device).expand(1, heads, n, n), x[:, None].expand(n, n).contiguous(),
              x[None, :].expand(n, n).contiguous())
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="flashlight")  # fused: a fallback warning fails the test
        got = flashlight_hf.compile(program)(*inputs)
    want = program(*inputs)
    for op, name in enumerate(SPECIAL_OPS):
        torch.testing.assert_close(got[0, op], want[0, op], rtol=4e-6, atol=1e-30, equal_nan=True,
                                   msg=lambda m: f"{name}: {m}")


def test_a_chain_of_selects_builds_in_linear_time(device: str):
    """``s = where(c_k, s + b_k, s)`` uses ``s`` twice per step: a pass that walks (or hashes)
    below every use doubles its work per step. Twelve steps build in seconds."""
    def program(q, k, v):
        j = torch.arange(k.shape[-2], device=q.device)[None, :]
        s = q @ k.mT * q.shape[-1] ** -0.5
        for step in range(12):
            s = torch.where(j % 13 == step, s + 0.1 * step, s)
        return torch.softmax(s, dim=-1) @ v

    inputs = _qkv(device)
    start = time.perf_counter()
    assert flashlight_hf.explain(program, *inputs).num_kernels == 1
    assert time.perf_counter() - start < 30
    assert_close(flashlight_hf.compile(program)(*inputs), program(*(t.double() for t in inputs)), torch.float32)
