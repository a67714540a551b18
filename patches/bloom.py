"""BLOOM: ALiBi added through ``baddbmm``, an additive causal/padding mask, softmax in float32.

BLOOM's attention (``BloomAttention.forward``) computes its scores inline and never calls
Transformers' attention interface. The fused program reproduces that math:
``beta * alibi + inv_norm_factor * (q @ kᵀ)``, plus the mask (converted in-kernel from the
boolean keep-mask the flashlight mask function builds into the 0 / finfo.min values eager adds),
softmax in float32 cast back, times V. The ALiBi tensor is the model's own ``[B·H, 1, K]`` (built
from the padding mask's cumulative sum, so left padding shifts the positions exactly as in
eager): a per-key bias, read as a broadcast ``[B, H, 1, K]`` input, never an N×N tensor.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import torch

from flashlight_hf.compiler import compile as fl_compile

from ._base import FamilyPatch, additive_mask, apply_mask, fallback, mask_kind


def bloom_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, alibi: torch.Tensor, mask: torch.Tensor,
                    inv_norm: float, beta: float, kind: str) -> torch.Tensor:
    """q, k, v: [B, H, S, D]; alibi: [B, H, 1, K]; mask: [B, 1, Q, K] -> [B, H, Q, D]."""
    scores = alibi * beta + (q @ k.transpose(-1, -2)) * inv_norm
    scores = apply_mask(scores, mask, kind, q.dtype)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return probs @ v


_program = fl_compile(bloom_attention)


def forward(module: torch.nn.Module, original: Callable, config: Any, hidden_states: torch.Tensor,
            residual: torch.Tensor, alibi: torch.Tensor, attention_mask: torch.Tensor | None,
            layer_past: Any = None, use_cache: bool = False, output_attentions: bool = False,
            **kwargs: Any) -> tuple[torch.Tensor, None]:
    """``BloomAttention.forward`` with the scores → softmax → V part as one generated kernel."""
    def eager() -> Any:
        return original(hidden_states, residual, alibi, additive_mask(attention_mask, hidden_states.dtype),
                        layer_past=layer_past, use_cache=use_cache, output_attentions=output_attentions, **kwargs)

    if output_attentions:
        return fallback("output_attentions", "output_attentions=True needs the attention probabilities, which "
                        "the fused kernel never materialises", "bloom", eager)
    if module.training and module.attention_dropout.p > 0:
        return fallback("dropout", "attention dropout > 0 in training is not fused", "bloom", eager)
    if attention_mask is None:
        return fallback("no-mask", "the attention received no mask", "bloom", eager)
    if module.pretraining_tp > 1 and module.slow_but_exact:
        return fallback("tp", "pretraining_tp > 1 with slow_but_exact splits the output projection", "bloom", eager)

    batch, q_len, _ = hidden_states.shape
    query, key, value = module._reshape(module.query_key_value(hidden_states))  # [B, H, S, D] each
    if layer_past is not None:
        key, value = layer_past.update(key, value, module.layer_idx)
    out = _program(query, key, value, alibi.view(batch, module.num_heads, 1, -1), attention_mask,
                   float(module.inv_norm_factor), float(module.beta), mask_kind(attention_mask))
    context = out.transpose(1, 2).reshape(batch, q_len, module.num_heads * module.head_dim)
    modeling = sys.modules[type(module).__module__]
    output = modeling.dropout_add(module.dense(context), residual, module.hidden_dropout, module.training)
    return output, None


PATCH = FamilyPatch(
    model_type="bloom",
    module="transformers.models.bloom.modeling_bloom",
    attention_class="BloomAttention",
    forward=forward,
    about="ALiBi from the padding mask's cumulative positions (per key, not N×N), causal + padding mask, "
          "float32 softmax",
)
