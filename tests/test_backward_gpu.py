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


def test_bf16_programs_with_an_epilogue():
    """Non-identity epilogues, whose wide dAs reach the kernels in bf16 (DiffLlama's λ-combine
    over two streams in the head-halves layout; Evoformer's gate), and a document mask whose
    tiles the backward skips."""
    from tests.test_backward import differential_head_halves, document_ids
    from tests.test_generator import evoformer

    q, k = torch.randn(2, 8, 300, 64, device="cuda"), torch.randn(2, 8, 300, 64, device="cuda")
    v, lam = torch.randn(2, 4, 300, 128, device="cuda"), torch.rand((), device="cuda")
    _bf16_gradients_match(differential_head_halves, [q, k, v, lam])
    b, n, s, h, d = 1, 4, 200, 2, 64
    qkv = [torch.randn(b, n, s, h, d, device="cuda") for _ in range(3)]
    biases = [torch.randn(b, n, 1, 1, s, device="cuda"), torch.randn(b, 1, h, s, s, device="cuda")]
    _bf16_gradients_match(evoformer, qkv + biases + [torch.randn(b, n, s, h, d, device="cuda")])
    doc = torch.arange(700, device="cuda") // 150
    q, k, v = (torch.randn(2, 4, 700, 64, device="cuda") for _ in range(3))
    _bf16_gradients_match(document_ids, [q, k, v, doc, doc])


@pytest.mark.parametrize("fn", ["causal", "softmax_in_float32", "alibi", "per_key_bias", "gqa_5d_view"])
def test_bf16_autocast_region(fn: str):
    """float32 inputs in CUDA's bf16 autocast region (matmuls in bf16, softmax in float32: the
    build is traced in the region and holds those casts): the output has eager's dtype there and
    is within bf16's tolerance of float64 at the rounded inputs; every gradient comes from the
    generated kernels, in float32 (the inputs' dtype, as eager gives), within bf16's tolerance."""
    from tests import test_autocast as ac

    program = getattr(ac, fn)
    b, h, s, d = 2, 4, 300, 64
    hk = h // 2 if fn == "gqa_5d_view" else h
    inputs = [torch.randn(b, h, s, d, device="cuda"), torch.randn(b, hk, s, d, device="cuda"),
              torch.randn(b, hk, s, d, device="cuda")]
    if fn == "per_key_bias":
        inputs.append(torch.randn(b, 1, 1, s, device="cuda"))
    ac.check_output_in_region(program, inputs, torch.bfloat16, "cuda")
    ac.check_gradients_in_region(program, inputs, torch.bfloat16, "cuda")
