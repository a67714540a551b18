"""Never a wrong answer: bad and unusual inputs, before and after a warm-up call.

Each case asserts eager's answer (against float64 eager, fresh random inputs) or eager's error.
The cache's trust rules are in ``tests/test_cache_trust.py``; programs outside the fuzz
grammar in ``tests/test_fuzz.py``.
"""

from __future__ import annotations

import functools
import math
import types
import warnings

import pytest
import torch

import flashlight_hf
from flashlight_hf.compiler.runtime import add_launch_hook
from flashlight_hf.testing import assert_close, rel_error, tolerance


def attn(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1) @ v


def attn_bias(q, k, v, bias):
    return torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + bias, dim=-1) @ v


def causal(q, k, v):
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    i = torch.arange(q.shape[-2], device=q.device)[:, None] + (k.shape[-2] - q.shape[-2])
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    return torch.softmax(s.masked_fill(j > i, float("-inf")), dim=-1) @ v


def r(*shape, device="cpu", dtype=torch.float32):
    return torch.randn(*shape, device=device).to(dtype)


class Launches:
    """Counts generated-kernel launches inside a ``with`` block."""

    def __enter__(self):
        self.names: list[str] = []
        self._remove = add_launch_hook(self.names.append)
        return self

    def __exit__(self, *exc):
        self._remove()


def eager_outcome(fn, args):
    """(float64 result, None) or (None, the exception eager raises on these very inputs)."""
    try:
        fn(*args)
        return fn(*[a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                    for a in args]), None
    except Exception as exc:  # noqa: BLE001 - what eager raises is the expected outcome
        return None, exc


def assert_like_eager(compiled, fn, args, what=""):
    ref, err = eager_outcome(fn, args)
    if err is not None:
        with pytest.raises(type(err)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                compiled(*args)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = compiled(*args)
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != eager's {tuple(ref.shape)}"
    assert_close(out, ref, torch.float32, what=what)


# -- 1. shapes are checked on every new set of shapes, not only the first ----------------------

BAD_AFTER_WARMUP = {
    "v_longer_than_k": lambda d: (r(2, 4, 24, 16, device=d), r(2, 4, 24, 16, device=d), r(2, 4, 40, 16, device=d)),
    "v_shorter_than_k": lambda d: (r(2, 4, 24, 16, device=d), r(2, 4, 40, 16, device=d), r(2, 4, 24, 16, device=d)),
    "v_much_shorter": lambda d: (r(2, 4, 24, 16, device=d), r(2, 4, 300, 16, device=d), r(2, 4, 3, 16, device=d)),
    "batch_q_vs_kv": lambda d: (r(3, 4, 24, 16, device=d), r(2, 4, 24, 16, device=d), r(2, 4, 24, 16, device=d)),
    "heads_q_vs_kv": lambda d: (r(2, 4, 24, 16, device=d), r(2, 2, 24, 16, device=d), r(2, 2, 24, 16, device=d)),
}


@pytest.mark.parametrize("case", sorted(BAD_AFTER_WARMUP))
def test_mismatched_shapes_after_a_warm_up_raise_eagers_error(case: str, device: str):
    compiled = flashlight_hf.compile(attn)
    with Launches() as seen:
        assert_like_eager(compiled, attn, (r(2, 4, 20, 16, device=device), r(2, 4, 28, 16, device=device),
                                           r(2, 4, 28, 16, device=device)))
    assert seen.names, "the warm-up call must run the generated kernel"
    args = BAD_AFTER_WARMUP[case](device)
    assert eager_outcome(attn, args)[1] is not None, "the case must be one eager rejects"
    assert_like_eager(compiled, attn, args, case)
    assert_like_eager(compiled, attn, args, case)  # the memo must not remember it as good
    # still right for good shapes afterwards, V's head dim its own
    assert_like_eager(compiled, attn, (r(2, 4, 33, 16, device=device), r(2, 4, 35, 16, device=device),
                                       r(2, 4, 35, 16, device=device)))
    assert_like_eager(compiled, attn, (r(2, 4, 33, 16, device=device), r(2, 4, 35, 16, device=device),
                                       r(2, 4, 35, 8, device=device)), "V of another head dim")


def test_bias_key_length_must_match_the_keys(device: str):
    compiled = flashlight_hf.compile(attn_bias)
    q, k, v = r(2, 4, 20, 16, device=device), r(2, 4, 28, 16, device=device), r(2, 4, 28, 16, device=device)
    assert_like_eager(compiled, attn_bias, (q, k, v, r(2, 4, 20, 28, device=device)))
    k2, v2 = r(2, 4, 36, 16, device=device), r(2, 4, 36, 16, device=device)
    assert_like_eager(compiled, attn_bias, (q, k2, v2, r(2, 4, 20, 28, device=device)), "bias keys 28, K 36")
    # broadcasting as eager allows it: a bias of one batch, one head, one row
    assert_like_eager(compiled, attn_bias, (q, k2, v2, r(1, 1, 1, 36, device=device)), "broadcast bias")
    assert_like_eager(compiled, attn_bias, (q, k2, v2, r(2, 4, 20, 36, device=device)), "full bias again")


def test_a_checked_set_of_shapes_is_not_checked_again(device: str, monkeypatch):
    from flashlight_hf.compiler import compiled as api
    from flashlight_hf.compiler import runtime

    compiled = flashlight_hf.compile(attn)
    args = (r(1, 2, 1, 16, device=device), r(1, 2, 40, 16, device=device), r(1, 2, 40, 16, device=device))
    compiled(*args)
    compiled(r(1, 2, 1, 16, device=device), r(1, 2, 41, 16, device=device), r(1, 2, 41, 16, device=device))
    calls = []

    def counting(*a, **kw):
        calls.append(1)
        return runtime.shape_mismatch(*a, **kw)

    monkeypatch.setattr(api, "shape_mismatch", counting)
    monkeypatch.setattr(runtime, "shape_mismatch", counting)
    for _ in range(3):
        compiled(*args)
    assert not calls, "a decode step's repeated shapes must cost no new check"


# -- 2. zero sizes, at any point in a sequence of calls ----------------------------------------

ZERO_SIZES = [
    ("one_query", (2, 4, 1, 16), (2, 4, 30, 16)),
    ("empty_query", (2, 4, 0, 16), (2, 4, 30, 16)),
    ("empty_keys", (2, 4, 5, 16), (2, 4, 0, 16)),
    ("empty_batch", (0, 4, 5, 16), (0, 4, 30, 16)),
    ("empty_heads", (2, 0, 5, 16), (2, 0, 30, 16)),
    ("empty_head_dim", (2, 4, 5, 0), (2, 4, 30, 0)),
    ("after_empties", (2, 4, 9, 16), (2, 4, 30, 16)),
]


@pytest.mark.parametrize("fn", [attn, causal], ids=["vanilla", "causal"])
def test_zero_sizes_in_a_sequence_of_calls(fn, device: str):
    compiled = flashlight_hf.compile(fn)
    for order in (ZERO_SIZES, list(reversed(ZERO_SIZES))):
        for name, qs, ks in order:
            args = (r(*qs, device=device), r(*ks, device=device), r(*ks, device=device))
            ref, err = eager_outcome(fn, args)
            if err is not None:  # head dim 0: eager's 0 ** -0.5
                assert name == "empty_head_dim"
                with pytest.raises(type(err)):
                    compiled(*args)
                continue
            with Launches() as seen, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = compiled(*args)
            empty = any(a.numel() == 0 for a in args)
            # which path ran: nothing to compute runs eager (no kernel, no fallback warning)
            assert bool(seen.names) != empty, f"{name}: {'eager' if empty else 'a kernel'} expected"
            assert not [w for w in caught if "unfused" in str(w.message)], name
            assert out.shape == ref.shape, name
            if ref.numel():
                assert rel_error(out, ref) <= 1e-5 or (ref == 0).all() and (out == 0).all(), name


# -- 3. Python values read from outside the function are guarded -------------------------------

TEMPERATURE = 1.0
CONFIG = types.SimpleNamespace(softcap=30.0, heads=types.SimpleNamespace(scale=1.0))
TABLE = {"shift": 0.0}


def with_global_temperature(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) / TEMPERATURE, dim=-1) @ v


def with_config_chain(q, k, v):
    s = q @ k.transpose(-2, -1) * CONFIG.heads.scale
    return torch.softmax(CONFIG.softcap * torch.tanh(s / CONFIG.softcap), dim=-1) @ v


def with_table(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) + TABLE["shift"] * (q @ k.transpose(-2, -1)) ** 2 * 0.01,
                         dim=-1) @ v


def _score_helper(s):
    return s * 0.5


def with_helper(q, k, v):
    return torch.softmax(_score_helper(q @ k.transpose(-2, -1)), dim=-1) @ v


def with_default(q, k, v, scale=0.25):
    return torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1) @ v


def _closure_program():
    scale = 0.5

    def program(q, k, v):
        return torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1) @ v

    def set_scale(x):
        nonlocal scale
        scale = x

    return program, set_scale


def _args(device):
    return r(1, 2, 12, 16, device=device), r(1, 2, 20, 16, device=device), r(1, 2, 20, 16, device=device)


def _run_and_check(compiled, fn, device, what):
    args = _args(device)
    with Launches() as seen, warnings.catch_warnings():
        warnings.filterwarnings("error", message="flashlight")
        out = compiled(*args)
    assert seen.names, f"{what}: must run a kernel"
    assert_close(out, fn(*[a.double() for a in args]), torch.float32, what=what)


def test_rebound_module_float_is_seen(device: str, monkeypatch):
    compiled = flashlight_hf.compile(with_global_temperature)
    for t in (1.0, 3.0, 0.25, 1.0):
        monkeypatch.setattr(f"{__name__}.TEMPERATURE", t)
        _run_and_check(compiled, with_global_temperature, device, f"TEMPERATURE={t}")


def test_attribute_chains_containers_helpers_defaults_and_closures_are_seen(device: str, monkeypatch):
    compiled = flashlight_hf.compile(with_config_chain)
    _run_and_check(compiled, with_config_chain, device, "config")
    monkeypatch.setattr(CONFIG, "softcap", 5.0)
    monkeypatch.setattr(CONFIG.heads, "scale", 2.0)
    _run_and_check(compiled, with_config_chain, device, "config changed")

    compiled = flashlight_hf.compile(with_table)
    _run_and_check(compiled, with_table, device, "table")
    monkeypatch.setitem(TABLE, "shift", 2.0)
    _run_and_check(compiled, with_table, device, "table changed in place")

    compiled = flashlight_hf.compile(with_helper)
    _run_and_check(compiled, with_helper, device, "helper")
    monkeypatch.setattr(f"{__name__}._score_helper", lambda s: s * 3.0)
    _run_and_check(compiled, with_helper, device, "helper rebound")

    compiled = flashlight_hf.compile(with_default)
    _run_and_check(compiled, with_default, device, "default")
    monkeypatch.setattr(with_default, "__defaults__", (1.5,))
    _run_and_check(compiled, with_default, device, "default changed")

    program, set_scale = _closure_program()
    compiled = flashlight_hf.compile(program)
    _run_and_check(compiled, program, device, "closure")
    set_scale(2.0)
    _run_and_check(compiled, program, device, "closure rebound")

    part = functools.partial(with_global_temperature)
    compiled = flashlight_hf.compile(part)
    _run_and_check(compiled, part, device, "partial")
    monkeypatch.setattr(f"{__name__}.TEMPERATURE", 4.0)
    _run_and_check(compiled, part, device, "partial, global changed")


def test_a_python_scalar_argument_is_part_of_the_key(device: str):
    compiled = flashlight_hf.compile(with_default)
    args = _args(device)
    for scale in (0.1, 0.7, 0.1):
        assert_close(compiled(*args, scale), with_default(*[a.double() for a in args], scale), torch.float32)


# -- 4. tensor literals are part of the cache key ----------------------------------------------

def literal_a(q, k, v):
    w = torch.tensor([1.0, 1.0], device=q.device)
    return torch.softmax(q @ k.transpose(-2, -1) * w[0] + w[1], dim=-1) @ v


def literal_b(q, k, v):
    w = torch.tensor([3.0, -2.0], device=q.device)
    return torch.softmax(q @ k.transpose(-2, -1) * w[0] + w[1], dim=-1) @ v


def test_programs_differing_only_in_a_tensor_literal_do_not_share_a_build(device: str, tmp_path, monkeypatch, flashlight_env):
    flashlight_env("FLASHLIGHT_CACHE_DIR", str(tmp_path))  # the disk cache is on and shared
    for fn in (literal_a, literal_b, literal_a):
        args = _args(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = flashlight_hf.compile(fn)(*args)
        assert_close(out, fn(*[a.double() for a in args]), torch.float32, what=fn.__name__)


# -- 5. float64 is never computed in float32 ---------------------------------------------------

def upcast_inside(q, k, v):
    return (torch.softmax(q.double() @ k.double().transpose(-2, -1), dim=-1) @ v.double()).float()


def test_float64_inputs_keep_float64_precision(device: str):
    args = [a.double() for a in _args(device)]
    compiled = flashlight_hf.compile(attn)
    with pytest.warns(UserWarning, match="float64"):
        out = compiled(*args)
    assert out.dtype == torch.float64
    assert rel_error(out, attn(*args)) <= 1e-13
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="flashlight")
        compiled(*args)  # warned once


def test_float64_inside_a_float32_program_is_not_rounded(device: str):
    args = _args(device)
    with pytest.warns(UserWarning, match="float64"):
        out = flashlight_hf.compile(upcast_inside)(*args)
    assert torch.equal(out, upcast_inside(*args))


# -- 6. the compiler's own errors become a warned fallback -------------------------------------

def softmax_over_batch(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1), dim=0) @ v


def softmax_over_heads(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1), dim=1) @ v


def softmax_over_rows(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1), dim=-2) @ v


@pytest.mark.parametrize("fn", [softmax_over_batch, softmax_over_heads, softmax_over_rows])
def test_programs_the_generator_cannot_place_fall_back(fn, device: str):
    args = (r(2, 3, 12, 16, device=device), r(2, 3, 20, 16, device=device), r(2, 3, 20, 16, device=device))
    with Launches() as seen, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = flashlight_hf.compile(fn)(*args)
    fallbacks = [str(w.message) for w in caught if "unfused" in str(w.message)]
    assert bool(seen.names) != bool(fallbacks), "a kernel, or a fallback warning: one of them"
    assert all("node" in m for m in fallbacks)
    if fn is softmax_over_batch:
        assert fallbacks, "softmax over the batch axis has no online form in a kernel"
    assert_close(out, fn(*[a.double() for a in args]), torch.float32)


def test_a_kernel_that_fails_at_its_first_launch_falls_back(device: str, monkeypatch):
    from flashlight_hf.compiler import runtime

    def broken(self, *a, **kw):
        raise RuntimeError("simulated Triton compile error")

    monkeypatch.setattr(runtime.CompiledKernel, "__call__", broken)
    args = _args(device)
    with pytest.warns(UserWarning, match="simulated Triton compile error"):
        out = flashlight_hf.compile(attn)(*args)
    assert_close(out, attn(*[a.double() for a in args]), torch.float32)


# -- the rest of the grid: dtypes, devices, NaN/Inf, masked rows, head dims, strides ----------

def test_dtype_mismatch_before_and_after_a_warm_up(device: str):
    compiled = flashlight_hf.compile(attn)
    q, k, v = _args(device)
    mixed = (q, k.double(), v)
    assert_like_eager(compiled, attn, mixed, "mixed before")  # eager raises: float vs double
    compiled(q, k, v)
    assert_like_eager(compiled, attn, mixed, "mixed after")
    ints = (torch.randint(0, 3, q.shape, device=device), torch.randint(0, 3, k.shape, device=device),
            torch.randint(0, 3, v.shape, device=device))
    with pytest.raises(RuntimeError):
        attn(*ints)  # softmax of integers
    with pytest.raises(RuntimeError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled(*ints)


def test_meta_tensors_give_eagers_shapes():
    compiled = flashlight_hf.compile(attn)
    q, k, v = (torch.empty(2, 4, 12, 16, device="meta") for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = compiled(q, k, v)
    assert out.device.type == "meta" and out.shape == (2, 4, 12, 16)


@pytest.mark.gpu
def test_device_mismatch_raises_eagers_error():
    compiled = flashlight_hf.compile(attn)
    q, k, v = _args("cuda")
    compiled(q, k, v)
    for args in ((q, k.cpu(), v), (q.cpu(), k.cpu(), v.cpu())):
        assert_like_eager(compiled, attn, args)


@pytest.mark.parametrize("where", ["nan_in_q", "inf_in_k", "neg_inf_in_k", "nan_in_v", "huge_q"])
def test_nan_and_inf_inputs_propagate_as_in_eager(where: str, device: str):
    q, k, v = _args(device)
    if where == "nan_in_q":
        q[0, 1, 3, 5] = float("nan")
    elif where == "inf_in_k":
        k[0, 0, 7, 2] = float("inf")
    elif where == "neg_inf_in_k":
        k[0, 1, 4, 0] = float("-inf")
    elif where == "nan_in_v":
        v[0, 0, 2, 9] = float("nan")
    else:
        q = q * 1e5  # scores ~1e5: a one-hot softmax, still exact
    ref = attn(q.double(), k.double(), v.double())
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="flashlight")
        out = flashlight_hf.compile(attn)(q, k, v)
    assert torch.equal(torch.isnan(out), torch.isnan(ref)), f"{where}: NaN where eager has none, or none where it has"
    finite = ~torch.isnan(ref)
    # scores ~1e5 carry an absolute rounding error of ~1e-2 in any float32 computation, which a
    # row whose two largest scores are close turns into that relative error: the bar is eager
    # float32's own error on the same inputs (10x for another summation order), or fp32's tolerance
    own = rel_error(attn(q, k, v)[finite], ref[finite])
    err = rel_error(out[finite], ref[finite])
    assert err <= max(tolerance(torch.float32), 10 * own), f"{where}: relative error {err:.2e} (eager fp32: {own:.2e})"


@pytest.mark.gpu
@pytest.mark.xfail(strict=True, reason="known limit: exp2(s·c − max) as one fused multiply-add loses the max "
                   "itself when |s·c| > ~1e9 (as FlashAttention-2's and Triton's tutorial kernels do); "
                   "folding the scale into Q (issue 16) removes it")
def test_scores_beyond_1e9_on_the_gpu():
    q, k, v = _args("cuda")
    out = flashlight_hf.compile(attn)(q * 1e30, k, v)
    assert not torch.isnan(out).any()


def test_rows_with_no_key_in_a_causal_offset(device: str):
    """More queries than keys with a bottom-right causal offset: the first rows see no key
    (eager: NaN)."""
    q, k, v = r(1, 2, 20, 16, device=device), r(1, 2, 12, 16, device=device), r(1, 2, 12, 16, device=device)
    out = flashlight_hf.compile(causal)(q, k, v)
    ref = causal(q.double(), k.double(), v.double())
    assert torch.isnan(ref[..., :8, :]).all()
    assert_close(out, ref, torch.float32)


@pytest.mark.parametrize("head_dim", [1, 2, 3, 5, 17, 24, 100, 512])
def test_head_dims_from_1_to_512(head_dim: int, device: str):
    q, k, v = (r(1, 2, 9, head_dim, device=device), r(1, 2, 21, head_dim, device=device),
               r(1, 2, 21, head_dim, device=device))
    assert_like_eager(flashlight_hf.compile(causal), causal, (q, k, v), f"head dim {head_dim}")


STRIDED = {
    "bshd_transposed": lambda d: tuple(r(2, 13, 3, 16, device=d).transpose(1, 2) for _ in range(3)),
    "every_other_row": lambda d: tuple(r(2, 3, 26, 16, device=d)[:, :, ::2] for _ in range(3)),
    "head_dim_slice": lambda d: tuple(r(2, 3, 13, 40, device=d)[..., 5:21] for _ in range(3)),
    "expanded_batch": lambda d: (r(2, 3, 13, 16, device=d),) + tuple(r(1, 3, 13, 16, device=d).expand(2, 3, 13, 16)
                                                                       for _ in range(2)),
    "storage_offset": lambda d: tuple(r(5, 3, 13, 16, device=d)[3:] for _ in range(3)),
    "fortran_order": lambda d: tuple(r(16, 13, 3, 2, device=d).permute(3, 2, 1, 0) for _ in range(3)),
}


def test_odd_strides_after_a_contiguous_warm_up(device: str):
    compiled = flashlight_hf.compile(attn)
    assert_like_eager(compiled, attn, tuple(r(2, 3, 13, 16, device=device) for _ in range(3)))
    for name, make in STRIDED.items():
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="flashlight")
            assert_like_eager(compiled, attn, make(device), name)


def test_outputs_are_fully_written_into_a_poisoned_buffer(device: str):
    from flashlight_hf.testing import poisoned_empty

    compiled = flashlight_hf.compile(attn)
    q, k, v = r(2, 3, 13, 16, device=device), r(2, 3, 29, 16, device=device), r(2, 3, 29, 16, device=device)
    out = poisoned_empty(2, 3, 13, 16, dtype=torch.float32, device=device)
    compiled.into(out, q, k, v)
    assert_close(out, attn(q.double(), k.double(), v.double()), torch.float32)
    assert not math.isnan(float(out.sum()))


def test_the_custom_op_on_shapes_its_kernel_was_not_traced_for(device: str):
    """What a torch.compile graph holding the op does when its sizes change under it: eager's
    answer (warned) or eager's error, never the kernel on shapes it does not hold for."""
    from flashlight_hf.compiler.driver import build

    q, k, v = r(2, 4, 20, 16, device=device), r(2, 4, 28, 16, device=device), r(2, 4, 28, 16, device=device)
    b = build(attn_bias, (q, k, v, r(2, 4, 20, 28, device=device)), {})
    assert b.kernel is not None
    small_bias = r(1, 1, 1, 28, device=device)  # eager broadcasts it; the kernel holds [B, H, Q, K]
    with pytest.warns(UserWarning, match="eagerly"):
        out = torch.ops.flashlight.fused(b.op_key, [q, k, v, small_bias])
    assert_close(out, attn_bias(q.double(), k.double(), v.double(), small_bias.double()), torch.float32)
    with pytest.raises(RuntimeError):
        torch.ops.flashlight.fused(b.op_key, [q, k, r(2, 4, 9, 16, device=device), r(2, 4, 20, 28, device=device)])


# -- found by the wild fuzz (tests/test_fuzz.py), kept as plain regressions --------------------

def chained_values(q, k, v):
    p = torch.tanh(q @ k.transpose(-2, -1)) / k.shape[-2]
    return (p @ v) @ v.transpose(-2, -1)  # a second contraction, over the value head dim


def test_a_chained_contraction_with_as_many_keys_as_head_dims(device: str):
    """Keys and head dim of equal length once made two chained reductions look like two
    softmax streams over one key axis (a silent wrong answer)."""
    for sk, d in ((16, 16), (24, 24), (13, 16)):
        args = (r(1, 2, 21, d, device=device), r(1, 2, sk, d, device=device), r(1, 2, sk, d, device=device))
        assert_like_eager(flashlight_hf.compile(chained_values), chained_values, args, f"sk{sk} d{d}")


def _index_division(op):
    def program(q, k, v):
        i = torch.arange(q.shape[-2], device=q.device)[:, None]
        j = torch.arange(k.shape[-2], device=q.device)[None, :]
        s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
        return torch.softmax(s + op(j - i) * 0.1, dim=-1) @ v

    return program


DIVISIONS = {
    "remainder_int": lambda x: torch.remainder(x, 5),
    "remainder_neg_divisor": lambda x: torch.remainder(x, -3),
    "remainder_float": lambda x: torch.remainder(x.float() * 0.7, 1.5),
    "fmod_int": lambda x: torch.fmod(x, 4),
    "fmod_float": lambda x: torch.fmod(x.float() * 0.7, -1.25),
    "floor_divide_int": lambda x: torch.div(x, 4, rounding_mode="floor"),
    "floor_divide_float": lambda x: torch.div(x.float() * 0.7, 1.5, rounding_mode="floor"),
    "int_modulo_operator": lambda x: x % 7,
    "int_floordiv_operator": lambda x: x // 3,
}


@pytest.mark.parametrize("name", sorted(DIVISIONS))
def test_remainder_fmod_and_floor_division_of_negative_values(name: str, device: str):
    """``j - i`` is negative below the diagonal: torch's sign rules, not the backend's ``%``."""
    fn = _index_division(DIVISIONS[name])
    args = (r(1, 2, 19, 16, device=device), r(1, 2, 27, 16, device=device), r(1, 2, 27, 16, device=device))
    assert_like_eager(flashlight_hf.compile(fn), fn, args, name)


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_approximation_is_never_run_as_the_exact_form(approximate: str, device: str):
    """gelu(approximate="tanh") is another function than gelu's erf form (7e-4 apart in fp32):
    it fuses as its own tanh formula, the exact form through erf; each gives its eager answer
    (within 1e-5, so neither runs as the other)."""
    def program(q, k, v):
        return torch.nn.functional.gelu(q @ k.transpose(-1, -2) * 0.1, approximate=approximate) @ v

    q, k, v = (torch.randn(1, 2, 20, 16, device=device) for _ in range(3))
    e = flashlight_hf.explain(program, q, k, v)
    assert e.num_kernels == 1, e.fallbacks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = flashlight_hf.compile(program)(q, k, v)
    assert rel_error(out, program(q.double(), k.double(), v.double())) <= 1e-5
