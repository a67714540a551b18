"""A tiny Triton kernel (masked vector add + tl.dot) that proves Triton runs on this machine."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from flashlight_hf.testing import assert_close


@triton.jit
def _smoke_kernel(a_ptr, b_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(a_ptr + offs, mask=mask, other=0.0)
    b = tl.load(b_ptr + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, a * 2.0 + b, mask=mask)
    rows = tl.arange(0, 16)
    tile = tl.load(a_ptr + rows[:, None] * 16 + rows[None, :])
    prod = tl.dot(tile, tile)
    tl.store(out_ptr + 256 + rows[:, None] * 16 + rows[None, :], prod)


def run_smoke(device: str) -> None:
    a = torch.randn(256, device=device)
    b = torch.randn(256, device=device)
    out = torch.full((512,), float("nan"), device=device)
    try:
        _smoke_kernel[(1,)](a, b, out, 250, BLOCK=256)
    except Exception as exc:  # pragma: no cover - only on a broken install
        raise RuntimeError(
            f"Triton could not run a trivial kernel on {device!r} ({exc!r}). On a CPU-only machine "
            "set TRITON_INTERPRET=1 before importing triton (the Makefile does)."
        ) from exc
    ref = a.double() * 2 + b.double()
    assert_close(out[:250], ref[:250], torch.float32, what="triton smoke add")
    tile = a.double().reshape(16, 16)
    assert_close(out[256:].reshape(16, 16), tile @ tile, torch.float32, tf32=device == "cuda",
                 what="triton smoke dot")
    assert torch.isnan(out[250:256]).all(), "triton smoke: masked lanes were written"
