"""Gradients through compiled programs: every differentiable input against float64 autograd.

The backward runs as generated kernels (issue 13) wherever it can be derived, and recomputes
the eager program under autograd (exact, N×N in memory) where not (``RECOMPUTED``, one warning
naming the node; no program here is left there since the key gate's backward is derived). Both
are held to the same bar: each floating input's gradient (biases, λ, sink logits, the key
gate's ``w`` included) equals float64 autograd of the eager program, for lengths that are not
tile multiples; the launch hooks say which backward ran.
"""

from __future__ import annotations

import pytest
import torch

import flashlight_hf
from flashlight_hf.compiler.abi import KERNEL_BWD_DKDV, KERNEL_BWD_DQ
from flashlight_hf.compiler.runtime.hooks import add_launch_hook
from flashlight_hf.testing import gradients, rel_error, tolerance
from tests.test_generator import MORE, PROGRAMS, _inputs, _more_inputs

CASES = sorted(PROGRAMS) + sorted(MORE)
# programs of PROGRAMS / MORE whose backward is not derived (the recompute path): none today
RECOMPUTED: set[str] = set()


def _case(name: str, device: str, sq: int, sk: int) -> tuple:
    if name in PROGRAMS:
        return PROGRAMS[name], _inputs(name, torch.float32, device, sq, sk)
    return MORE[name], _more_inputs(name, device, sq, sk)


@pytest.mark.parametrize("name", CASES)
def test_gradients_of_every_input_match_float64(name: str, device: str):
    fn, inputs = _case(name, device, 37, 53)
    compiled = flashlight_hf.compile(fn)
    seed = torch.randn_like(fn(*inputs))
    launched: list[str] = []
    remove = add_launch_hook(launched.append)
    try:
        got = gradients(compiled, inputs, seed)
    finally:
        remove()
    generated = KERNEL_BWD_DKDV in launched and KERNEL_BWD_DQ in launched
    assert generated == (name not in RECOMPUTED), launched
    ref = gradients(fn, inputs, seed, dtype=torch.float64)
    assert compiled.builds() and compiled.builds()[0].kernel is not None, "the forward must be the fused kernel"
    checked = 0
    for k, (g, r) in enumerate(zip(got, ref)):
        if r is None:
            assert g is None or not g.abs().any(), f"input {k}: a gradient where eager has none"
            continue
        assert g is not None, f"input {k}: no gradient"
        assert rel_error(g, r) <= tolerance(torch.float32), f"input {k}: {rel_error(g, r):.2e}"
        checked += 1
    assert checked >= 3  # q, k, v at least


def test_the_forward_output_under_autograd_is_the_kernels(device: str):
    """With inputs that require grad, the output still comes from the fused kernel (through the
    custom op), and it equals eager."""
    fn, inputs = _case("causal_kv_offset", device, 37, 53)
    leaves = [t.detach().requires_grad_() for t in inputs]
    out = flashlight_hf.compile(fn)(*leaves)
    assert out.requires_grad and out.grad_fn is not None
    assert rel_error(out.detach(), fn(*[t.double() for t in inputs])) <= tolerance(torch.float32)
