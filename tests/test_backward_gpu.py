"""The generated backward in bf16 on the GPU (marked ``gpu``; skipped on CPU, where the
interpreter cannot multiply bf16 operands): the programs of ``test_backward`` with bf16 inputs,
every gradient against float64 autograd of the eager program within bf16's tolerance, and the
backward running as the generated kernels (no recompute warning)."""

from __future__ import annotations

import warnings

import pytest
import torch

import flashlight_hf
from flashlight_hf.compiler.abi import KERNEL_BWD_DKDV, KERNEL_BWD_DQ
from flashlight_hf.compiler.runtime.hooks import add_launch_hook
from flashlight_hf.testing import assert_gradients_close, gradients
from tests.test_backward import CASES, _case, _scores

pytestmark = pytest.mark.gpu


def causal_window(q, k, v):
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    s = _scores(q, k).masked_fill((j > i) | (i - j > 48), float("-inf"))
    return torch.softmax(s.float(), dim=-1).to(q.dtype) @ v


def softcap(q, k, v):
    return torch.softmax(30.0 * torch.tanh(_scores(q, k) / 30.0), dim=-1) @ v


def _bf16_gradients_match(fn, inputs: list[torch.Tensor]) -> None:
    inputs = [t.to(torch.bfloat16) if t.is_floating_point() else t for t in inputs]
    seed = torch.randn_like(fn(*inputs))
    launched: list[str] = []
    remove = add_launch_hook(launched.append)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="flashlight")
            got = gradients(flashlight_hf.compile(fn), inputs, seed)
    finally:
        remove()
    assert KERNEL_BWD_DKDV in launched and KERNEL_BWD_DQ in launched, launched
    want = gradients(fn, inputs, seed, dtype=torch.float64)
    assert_gradients_close(got, want, torch.bfloat16, what=getattr(fn, "__name__", "program"))


@pytest.mark.parametrize("name", CASES)
def test_bf16_gradients_of_every_input(name: str):
    fn, inputs = _case(name, 200, 333, "cuda")
    _bf16_gradients_match(fn, inputs)


@pytest.mark.parametrize("fn", [causal_window, softcap], ids=["causal_window", "softcap"])
@pytest.mark.parametrize("d", [64, 128])
def test_bf16_masks_and_head_dims(fn, d: int):
    q, k, v = (torch.randn(2, 4, 300, d, device="cuda") for _ in range(3))
    _bf16_gradients_match(fn, [q, k, v])
