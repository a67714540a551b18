"""Split-KV decoding: a few query rows against a long KV cache run as shares of the key axis
(partials) merged by a combine kernel. Every program shape the generator fuses must give the
same answer split as whole — checked against float64 eager with the split forced on."""

from __future__ import annotations

import warnings

import pytest
import torch

import flashlight_hf
from flashlight_hf import settings
from flashlight_hf.compiler.runtime import add_launch_hook
from flashlight_hf.testing import assert_close
from tests.test_generator import MORE, PROGRAMS, _inputs, _more_inputs

DECODE = {**PROGRAMS, **{k: v for k, v in MORE.items() if k != "document_mask"}}


def _args(name: str, device: str, sq: int, sk: int):
    if name in PROGRAMS:
        return _inputs(name, torch.float32, device, sq, sk)
    return _more_inputs(name, device, sq, sk)


@pytest.mark.parametrize("fused", [False, True], ids=["pair", "fused"])
@pytest.mark.parametrize("name", sorted(DECODE))
def test_split_kv_matches_float64(name: str, fused: bool, device: str):
    """Split as a partials + combine pair, and fused (the last share of a row tile combines,
    the default; FLASHLIGHT_FUSED_SPLIT=0 runs the pair): run twice each, so the fused kernel's
    tickets must be reset."""
    fn = DECODE[name]
    compiled = flashlight_hf.compile(fn)
    launches: list[str] = []
    remove = add_launch_hook(launches.append)
    try:
        # shares that split tiles unevenly (7), and more shares than key tiles (16: empty ones)
        for splits, sq, sk in ((7, 3, 260), (16, 1, 70)):
            args = _args(name, device, sq, sk)
            with warnings.catch_warnings(), settings.override(split_kv=splits, fused_split=fused):
                warnings.filterwarnings("error", message="flashlight")
                outs = [compiled(*args), compiled(*args)]
            ref = fn(*[a.double() if a.is_floating_point() else a for a in args])
            for out in outs:
                assert_close(out, ref, torch.float32, tf32=False, what=f"{name} split {splits}")
    finally:
        remove()
    expected = ["flashlight_fwd_split_fused"] if fused else ["flashlight_fwd_split", "flashlight_fwd_combine"]
    assert launches == expected * 4, launches


def test_decode_shapes_split_on_their_own(device: str):
    """Without forcing: one query row, a long cache and few (batch, head) pairs split; a prefill
    does not."""
    from flashlight_hf.compiler.runtime import DECODE_CONFIG

    fn = PROGRAMS["causal_kv_offset"]
    compiled = flashlight_hf.compile(fn)
    launches: list[str] = []
    remove = add_launch_hook(launches.append)
    try:
        sk = 64 * DECODE_CONFIG.block_n
        q = torch.randn(1, 1, 1, 32, device=device)
        k, v = torch.randn(1, 1, sk, 32, device=device), torch.randn(1, 1, sk, 32, device=device)
        assert_close(compiled(q, k, v), fn(q.double(), k.double(), v.double()), torch.float32, tf32=False)
        assert launches == ["flashlight_fwd_split_fused"], launches
        launches.clear()
        q = torch.randn(1, 1, 64, 32, device=device)
        k, v = k[:, :, :64], v[:, :, :64]
        assert_close(compiled(q, k, v), fn(q.double(), k.double(), v.double()), torch.float32, tf32=False)
        assert launches == ["flashlight_fwd"], launches
    finally:
        remove()
