"""The numerical helpers themselves must be able to fail."""

import math

import pytest
import torch

from flashlight_hf.testing import assert_close, poisoned_empty, rel_error, tolerance


def test_rel_error_zero_for_equal_and_positive_for_perturbed():
    ref = torch.randn(8, 16, dtype=torch.float64)
    assert rel_error(ref.float(), ref) < 1e-6
    noisy = ref + 1e-2 * torch.randn_like(ref)
    assert 1e-4 < rel_error(noisy, ref) < 1e-1


def test_unwritten_poison_is_caught():
    ref = torch.randn(4, 4, dtype=torch.float64)
    out = poisoned_empty(4, 4, dtype=torch.float32)
    out[:3] = ref[:3].float()
    assert math.isinf(rel_error(out, ref))
    with pytest.raises(AssertionError):
        assert_close(out, ref)


def test_nan_positions_must_match_reference():
    ref = torch.randn(3, 5, dtype=torch.float64)
    ref[1] = float("nan")
    out = ref.clone().float()
    assert rel_error(out, ref) < 1e-6
    out[1] = 0.0
    assert math.isinf(rel_error(out, ref))


def test_tolerance_orders_dtypes():
    assert tolerance(torch.float32) < tolerance(torch.float16) < tolerance(torch.bfloat16)
    with pytest.raises(ValueError, match="no tolerance"):
        tolerance(torch.int32)


def test_key_tile_body_selects_each_flag_value():
    from flashlight_hf.testing import key_tile_body

    src = ("@triton.jit\ndef _attn_fwd_inner(a, BOUNDARY: tl.constexpr):\n    x = 1\n    if BOUNDARY:\n        y = 2\n"
           "    else:\n        y = 3\n    if not BOUNDARY:\n        z = 4\n    return a\n")
    assert key_tile_body(src, boundary=True) == "x = 1\ny = 2\nreturn a"
    assert key_tile_body(src, boundary=False) == "x = 1\ny = 3\nz = 4\nreturn a"
    with pytest.raises(ValueError, match="_attn_fwd_inner"):
        key_tile_body("def other():\n    pass\n", boundary=True)


def test_gradient_error_measures_near_zero_gradients_against_the_set():
    from flashlight_hf.testing import assert_gradients_close, gradient_error, gradient_scale

    big = torch.randn(5, 7, dtype=torch.float64)
    noise = torch.full((3,), 1e-9, dtype=torch.float64)  # a gradient that is zero in exact arithmetic
    scale = gradient_scale([big, noise, None])
    assert scale == float(big.abs().max())
    assert gradient_error(-noise, noise, scale) < 1e-8  # rounding noise either side of 0 passes
    assert gradient_error(noise + 1e-3 * scale, noise, scale) > 1e-4  # a real error there does not
    assert gradient_error(big * (1 + 1e-3), big, scale) == pytest.approx(1e-3)
    nan = torch.tensor([float("nan"), 1.0], dtype=torch.float64)
    assert gradient_error(nan.clone(), nan, scale) == 0.0  # NaN where the reference is NaN
    assert gradient_error(torch.tensor([0.0, 1.0]), nan, scale) == float("inf")
    assert assert_gradients_close([big.float(), None], [big, None], torch.float32) == 1
    with pytest.raises(AssertionError, match="no gradient for input 0"):
        assert_gradients_close([None], [big], torch.float32)
