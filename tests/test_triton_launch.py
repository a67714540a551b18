"""The kept-kernel launch path (flashlight_hf/compiler/runtime/launch.py), the one module that
uses Triton's private launch API.

On CPU: the specialisation key separates what it must, and the interpreter never takes the
fast path. On the GPU: for calls that differ in everything Triton specialises on, the kernel
kept under a key is the very kernel Triton itself picks for those arguments (so a Triton
release that specialises on something new fails here, loudly), and results through the kept
kernel are right.
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from flashlight_hf import settings
from flashlight_hf.compiler.runtime.launch import Launcher, specialization_key


@triton.jit
def _scaled_copy(x_ptr, out_ptr, n, stride, scale, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    keep = offs < n
    x = tl.load(x_ptr + offs * stride, mask=keep, other=0.0)
    tl.store(out_ptr + offs, x * scale, mask=keep)


def test_key_separates_alignment_ones_and_widths():
    base = torch.zeros(64)
    assert specialization_key([base]) != specialization_key([base[1:]])  # 16-byte aligned or not
    assert specialization_key([base]) == specialization_key([base[4:]])  # both aligned
    assert specialization_key([1]) != specialization_key([17])  # equal to 1
    assert specialization_key([16]) != specialization_key([17])  # divisible by 16
    assert specialization_key([17]) == specialization_key([33])
    assert specialization_key([2 ** 31 + 16]) != specialization_key([32])  # i64, not i32
    assert specialization_key([base]) != specialization_key([base.double()])  # dtype
    assert specialization_key([object()]) is None  # unknown argument: Triton's own path


def test_interpreter_never_takes_the_fast_path():
    with settings.override(interpret=True):
        assert not Launcher(_scaled_copy).enabled


def _variants(device: str) -> list[tuple[torch.Tensor, int, int]]:
    """(x, n, stride): aligned / misaligned base, n == 1 / n % 16 == 0 / other, stride 1 / 2."""
    x = torch.randn(4096, device=device)
    return [(x, 1000, 1), (x, 1024, 1), (x[1:], 1000, 1), (x, 1, 1), (x, 1000, 2), (x[3:], 1024, 2),
            (x, 1008, 1), (x[4:], 1000, 1)]


@pytest.mark.gpu
def test_kept_kernel_is_the_one_triton_picks():
    launcher = Launcher(_scaled_copy)
    assert launcher.enabled
    for x, n, stride in _variants("cuda"):
        out = torch.full((n,), float("nan"), device="cuda")
        args = [x, out, n, stride, 0.5]
        grid = triton.cdiv(n, 128)
        for _ in range(2):  # the second launch goes through the kept kernel
            out.fill_(float("nan"))
            launcher(grid, args, (("BLOCK", 128),), 4, 2)
            torch.testing.assert_close(out, x[: n * stride: stride] * 0.5)
        kept, _ = launcher.kernels[(specialization_key(args), (("BLOCK", 128),), 4, 2)]
        triton_own = _scaled_copy.warmup(*args, BLOCK=128, grid=(grid,), num_warps=4, num_stages=2)
        assert kept is triton_own, ("Triton compiled a different kernel for arguments this module treats as "
                                    "one specialisation: update specialization_key for this Triton version")


def test_no_direct_launch_without_a_kept_kernel():
    """Under the interpreter (and before a first launch) there is nothing to relaunch directly."""
    x = torch.randn(64)
    with settings.override(interpret=True):
        assert Launcher(_scaled_copy).direct([x, x, 64, 1, 0.5], (("BLOCK", 128),), 4, 2) is None


def _launched_once(stride: int):
    """(launcher, x, out, its DirectLaunch) after one launch of ``_scaled_copy`` on the GPU."""
    launcher = Launcher(_scaled_copy)
    x = torch.randn(4096, device="cuda")
    out = torch.empty(1000, device="cuda")
    args = [x, out, 1000, stride, 0.5]
    launcher(8, args, (("BLOCK", 128),), 4, 2)
    return launcher, x, out, launcher.direct(args, (("BLOCK", 128),), 4, 2)


@pytest.mark.gpu
def test_direct_launch_relaunches_the_kept_kernel_with_new_pointers():
    launcher, x, out, direct = _launched_once(stride=2)
    assert direct is not None
    for _ in range(3):  # fresh tensors, fresh pointers: same integers, same specialisation
        y = torch.randn(4096, device="cuda")
        got = torch.full((1000,), float("nan"), device="cuda")
        assert direct(8, [y.data_ptr(), got.data_ptr()])
        torch.testing.assert_close(got, y[:2000:2] * 0.5)
    y = torch.randn(4096, device="cuda")
    assert not direct(8, [y[1:].data_ptr(), got.data_ptr()])  # not 16-byte aligned: the caller's path
    assert launcher.direct([x[1:], out, 1000, 2, 0.5], (("BLOCK", 128),), 4, 2) is None


@pytest.mark.gpu
def test_direct_launch_leaves_launch_hooks_to_triton(monkeypatch):
    """A profiler's launch hook must see every launch: with one set, direct launches decline."""
    knobs = pytest.importorskip("triton").knobs.runtime
    _, x, out, direct = _launched_once(stride=1)
    assert direct is not None and direct(8, [x.data_ptr(), out.data_ptr()])
    hook = knobs.launch_enter_hook
    if hasattr(hook, "add"):  # a hook chain (later Tritons)
        seen = []
        hook.add(seen.append)
        try:
            assert not direct(8, [x.data_ptr(), out.data_ptr()])
        finally:
            hook.remove(seen.append)
    else:
        monkeypatch.setattr(knobs, "launch_enter_hook", lambda *a: None)
        assert not direct(8, [x.data_ptr(), out.data_ptr()])
