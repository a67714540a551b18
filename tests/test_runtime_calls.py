"""What the runtime does per call (flashlight_hf/compiler/runtime/ and api.CompiledAttention.into):
writing into a caller's tensor of any strides, one plan per set of input shapes, and the
decode-step choice between one launch and the split-KV pair. A decode loop repeats the same
call at every layer of every step, so these paths carry most launches a model makes."""

from __future__ import annotations

import pytest
import torch

import flashlight_hf
from flashlight_hf import settings
from flashlight_hf.compiler.runtime import DECODE_CONFIG, add_launch_hook
from flashlight_hf.transformers.masks import Signature, _device_ints, _intern
from flashlight_hf.testing import assert_close, poison_


def attention(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1) @ v


def _qkv(device: str, b: int = 2, h: int = 3, sq: int = 37, sk: int = 45, d: int = 32):
    return (torch.randn(b, h, sq, d, device=device), torch.randn(b, h, sk, d, device=device),
            torch.randn(b, h, sk, d, device=device))


def test_into_writes_a_strided_view_in_place(device: str):
    """The kernel writes the caller's final layout through its strides: [B, S, H, D] memory
    seen as [B, H, S, D], every element written (poisoned first), nothing copied after."""
    q, k, v = _qkv(device)
    compiled = flashlight_hf.compile(attention)
    final = poison_(torch.empty(2, 37, 3, 32, device=device))
    view = final.transpose(1, 2)
    got = compiled.into(view, q, k, v)
    assert got.data_ptr() == final.data_ptr()
    assert_close(final.transpose(1, 2), attention(q.double(), k.double(), v.double()), torch.float32, tf32=False)


def test_into_with_a_wrong_shape_says_what_it_writes(device: str):
    q, k, v = _qkv(device)
    compiled = flashlight_hf.compile(attention)
    compiled(q, k, v)
    with pytest.raises(ValueError, match=r"writes \(2, 3, 37, 32\)"):
        compiled.into(torch.empty(2, 3, 36, 32, device=device), q, k, v)


def test_one_plan_per_set_of_shapes(device: str):
    """Same shapes reuse their plan; a new length gets its own, and both stay right."""
    compiled = flashlight_hf.compile(attention)
    for sk in (45, 45, 70, 45):
        q, k, v = _qkv(device, sk=sk)
        assert_close(compiled(q, k, v), attention(q.double(), k.double(), v.double()), torch.float32, tf32=False)
    kernel = compiled.builds()[0].kernel
    assert len(kernel.plans()) == 2


def test_forced_single_launch_for_a_decode_step(device: str):
    """FLASHLIGHT_SPLIT_KV=1 keeps a decode step that would split in one launch, still right;
    unset, the step splits (in one launch: the merging share combines)."""
    compiled = flashlight_hf.compile(attention)
    sk = 64 * DECODE_CONFIG.block_n
    q, k, v = _qkv(device, b=1, h=1, sq=1, sk=sk)
    launches: list[str] = []
    remove = add_launch_hook(launches.append)
    try:
        with settings.override(split_kv=1):
            assert_close(compiled(q, k, v), attention(q.double(), k.double(), v.double()), torch.float32,
                         tf32=False)
        with settings.override(split_kv=None):
            assert_close(compiled(q, k, v), attention(q.double(), k.double(), v.double()), torch.float32, tf32=False)
    finally:
        remove()
    assert launches == ["flashlight_fwd", "flashlight_fwd_split_fused"], launches


def test_mask_signatures_are_interned_and_hash_once():
    a = _intern(("mask", ("fn", 1, ("value", "int", 3)), "none", 0))
    b = _intern(("mask", ("fn", 1, ("value", "int", 3)), "none", 0))
    assert a is b and isinstance(a, Signature)
    assert hash(a) == hash(tuple(a)) and a == tuple(a)
    assert _intern(("mask", ("fn", 2), "none", 0)) is not a


def test_device_ints_from_plain_ints_and_tensors():
    assert _device_ints([3, 7], torch.device("cpu")).tolist() == [3, 7]
    got = _device_ints([torch.tensor(5, dtype=torch.int32), 9], torch.device("cpu"))
    assert got.dtype == torch.int64 and got.tolist() == [5, 9]


@pytest.mark.parametrize("mode", ["single", "pair", "fused"])
def test_repeated_shapes_with_new_tensors(device: str, mode: str):
    """A decode loop: the same shapes again and again, new tensors (new pointers) every call.
    On a GPU the plan's later launches pass only the new pointers (a direct launch); every
    call must still read its own inputs and write its own output."""
    splits = {"single": 1, "pair": 4, "fused": 4}[mode]
    compiled = flashlight_hf.compile(attention)
    with settings.override(split_kv=splits, fused_split=mode == "fused"):
        for _ in range(3):
            q, k, v = _qkv(device, b=1, h=2, sq=1, sk=8 * DECODE_CONFIG.block_n)
            out = poison_(torch.empty(1, 2, 1, 32, device=device))
            compiled.into(out, q, k, v)
            assert_close(out, attention(q.double(), k.double(), v.double()), torch.float32, tf32=False)
    kernel = compiled.builds()[0].kernel
    (plan,) = kernel.plans()
    assert plan.choice[1] == splits
    if device == "cuda":
        assert plan.direct is not None, "the repeated call should relaunch directly"


def test_plans_follow_the_launch_switches(device: str):
    """A plan made with fast launches on (its direct relaunches included) never serves a call
    made after FLASHLIGHT_FAST_LAUNCH=0: the switch is part of the plan's key."""
    compiled = flashlight_hf.compile(attention)
    q, k, v = _qkv(device)
    for _ in range(2):
        compiled(q, k, v)
    with settings.override(fast_launch=False):
        for _ in range(2):
            assert_close(compiled(q, k, v), attention(q.double(), k.double(), v.double()), torch.float32,
                         tf32=False)
    kernel = compiled.builds()[0].kernel
    assert len(kernel.plans()) == 2
    off = [p for p in kernel.plans() if not p.switches.fast_launch]
    assert len(off) == 1 and off[0].direct is None


def test_decode_tuning_has_its_gpu_busy_wait():
    """Decode tuning times options on the GPU alone by queueing them behind
    ``torch.cuda._sleep`` (a private PyTorch API); if it moves, tuning falls back to wall-clock
    timing, which ranks decode options by host bookkeeping: fail loudly here instead."""
    from flashlight_hf.compiler.runtime import tune

    assert callable(getattr(torch.cuda, "_sleep", None)), "torch.cuda._sleep moved: update tune.hold_gpu"
    assert tune.hold_gpu(0) is True
