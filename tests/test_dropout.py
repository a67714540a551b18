"""Attention dropout inside the generated kernels (issue 13, item 5).

The mask is read back without a debug hook: with q = k = 0 every probability is ``1/N``, and
with V the identity (head dim = keys) the output row ``i`` is ``keep[i, :] / ((1 − p)·N)``, so
the mask a seed draws can be recovered from one call. The mask is a counter-based draw at the
flat ``(b, h, i, j)`` index, so a call with the same seed and shapes on other inputs uses it too.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import flashlight_hf
from flashlight_hf.compiler.abi import KERNEL_BWD_DKDV
from flashlight_hf.compiler.runtime.hooks import add_launch_hook
from flashlight_hf.testing import rel_error, tolerance

B, H, S = 2, 2, 64


def attention(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1) @ v


def causal(q, k, v):
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    return torch.softmax(s.masked_fill(j > i, float("-inf")), dim=-1) @ v


def _mask(compiled, p: float, seed: int, device: str, sq: int = S) -> torch.Tensor:
    """The keep mask ``[B, H, sq, S]`` the kernels draw from ``seed`` (see the module docstring)."""
    zeros_q, zeros_k = torch.zeros(B, H, sq, S, device=device), torch.zeros(B, H, S, S, device=device)
    eye = torch.eye(S, device=device).expand(B, H, S, S).contiguous()
    torch.manual_seed(seed)
    out = compiled.dropout(p)(zeros_q, zeros_k, eye)
    return (out * S * (1 - p)).round()


def test_kept_fraction_is_within_binomial_bounds(device: str):
    p = 0.3
    mask = _mask(flashlight_hf.compile(attention), p, 0, device)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    n = mask.numel()
    kept = float(mask.sum()) / n
    assert abs(kept - (1 - p)) <= 5 * math.sqrt(p * (1 - p) / n), kept


def test_torch_manual_seed_reproduces_a_run_and_seeds_differ(device: str):
    compiled = flashlight_hf.compile(attention)
    a, b, c = _mask(compiled, 0.2, 5, device), _mask(compiled, 0.2, 5, device), _mask(compiled, 0.2, 6, device)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("fn", [attention, causal])
def test_forward_and_backward_use_one_mask(fn, device: str):
    """The gradient equals float64 eager autograd with the forward's mask applied."""
    p, seed, d = 0.25, 3, 32
    compiled = flashlight_hf.compile(fn)
    q, k, v = (torch.randn(B, H, S, d, device=device, requires_grad=True) for _ in range(3))
    launched: list[str] = []
    remove = add_launch_hook(launched.append)
    try:
        torch.manual_seed(seed)
        out = compiled.dropout(p)(q, k, v)
        seed_grad = torch.randn_like(out)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="flashlight")
            out.backward(seed_grad)
    finally:
        remove()
    assert KERNEL_BWD_DKDV in launched
    mask = _mask(flashlight_hf.compile(attention), p, seed, device)  # same seed, same shapes: same draw
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    s = leaves[0] @ leaves[1].mT * d ** -0.5
    if fn is causal:
        s = s.masked_fill(torch.ones(S, S, dtype=torch.bool, device=device).triu(1), float("-inf"))
    ref = (torch.softmax(s, -1) * mask.double() / (1 - p)) @ leaves[2]
    assert rel_error(out, ref) <= tolerance(torch.float32)
    ref.backward(seed_grad.double())
    for t, r in zip((q, k, v), leaves):
        assert rel_error(t.grad, r.grad) <= tolerance(torch.float32)


def test_dropout_zero_is_the_program_and_bad_p_is_an_error():
    compiled = flashlight_hf.compile(attention)
    assert compiled.dropout(0.0) is compiled
    with pytest.raises(ValueError, match="dropout p"):
        compiled.dropout(1.0)


def test_a_program_without_a_value_contraction_cannot_drop_out(device: str):
    def row_max(q, k, v):
        return (q @ k.transpose(-2, -1)).amax(-1)  # no V: nothing to drop out
    x = torch.randn(1, 1, 8, 16, device=device)
    with pytest.raises(NotImplementedError, match="dropout"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flashlight_hf.compile(row_max).dropout(0.1)(x, x, x)


def test_front_door_runs_attention_dropout_in_the_kernels(device: str):
    """A Llama in training with attention dropout: no eager fallback, the backward generated,
    and torch.manual_seed reproduces the loss (gradient checkpointing recomputes one mask)."""
    from flashlight_hf.model_zoo import tiny_configs

    cfg = tiny_configs()["llama"]
    config = cfg.build_config()
    config.attention_dropout = 0.2
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="flashlight").to(device).train()
    ids = torch.randint(5, 200, (2, 19), device=device)
    losses, launched = [], []
    remove = add_launch_hook(launched.append)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="flashlight")
            for checkpointing in (False, False, True):
                if checkpointing:
                    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                torch.manual_seed(1)
                model.zero_grad()
                loss = model(input_ids=ids, labels=ids).loss
                loss.backward()
                losses.append((float(loss), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    finally:
        remove()
    assert KERNEL_BWD_DKDV in launched
    (l0, g0), (l1, g1), (l2, g2) = losses
    assert l0 == l1 and all(torch.equal(a, b) for a, b in zip(g0, g1))
    assert abs(l2 - l0) <= 1e-6 * abs(l0) and all(rel_error(a, b) <= 1e-5 for a, b in zip(g0, g2))
    model.eval()
    with torch.no_grad():  # eval: no dropout, the ordinary forward kernel
        a = model(input_ids=ids).logits
        b = model(input_ids=ids).logits
    assert torch.equal(a, b)
