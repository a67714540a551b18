"""Falcon: two attention programs in one class — rotary (RoPE, scaled scores, additive mask) and
ALiBi (bias added *before* the 1/√d scaling, scores in float32 for half dtypes, and an additive
mask into which the model has already folded ``alibi / √d``).

``FalconAttention.forward`` computes both inline (its SDPA branch only when the config says
"sdpa"). The fused programs reproduce the eager branches exactly, the ALiBi double counting
included (eager adds ``alibi`` to the scores *and* the model adds ``alibi / √d`` into the mask).
For ALiBi the mask the attention receives is the model's float ``[B, H, Q, K]`` tensor (built by
``FalconModel.forward`` for every implementation), read per tile as a bias; for rotary it is the
boolean keep-mask of the flashlight mask function, converted in-kernel. Multi-query (one K/V
head) and the new decoder architecture (K/V broadcast to every head) reach the program as the
broadcast shapes eager multiplies.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Callable

import torch

from flashlight_hf.compiler import compile as fl_compile

from ._base import FamilyPatch, additive_mask, apply_mask, fallback, mask_kind


def falcon_rotary_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                            kind: str) -> torch.Tensor:
    """q: [B, H, Q, D]; k, v: [B, Hk, K, D] (Hk = H or 1); mask: [B, 1, Q, K] -> [B, H, Q, D]."""
    scores = q @ k.transpose(-1, -2)
    scores = scores / math.sqrt(q.shape[-1])
    probs = torch.softmax(apply_mask(scores, mask, kind, q.dtype), dim=-1, dtype=q.dtype)
    return probs @ v


def falcon_alibi_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, alibi: torch.Tensor,
                           mask: torch.Tensor, inv_norm: float, kind: str) -> torch.Tensor:
    """alibi: [B, H, 1, K]; mask: the model's [B, H, Q, K] float mask (or a boolean keep-mask)."""
    scores = q @ k.transpose(-1, -2)
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.to(torch.float32)
    logits = (scores + alibi) * inv_norm
    probs = torch.softmax(apply_mask(logits, mask, kind, q.dtype), dim=-1, dtype=q.dtype)
    return probs @ v


_rotary = fl_compile(falcon_rotary_attention)
_alibi = fl_compile(falcon_alibi_attention)


def forward(module: torch.nn.Module, original: Callable, config: Any, hidden_states: torch.Tensor,
            alibi: torch.Tensor | None, attention_mask: torch.Tensor | None, position_ids: Any = None,
            layer_past: Any = None, use_cache: bool = False, output_attentions: bool = False,
            position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
            **kwargs: Any) -> tuple[torch.Tensor, None]:
    """``FalconAttention.forward`` with the scores → softmax → V part as one generated kernel."""
    def eager() -> Any:
        return original(hidden_states, alibi, additive_mask(attention_mask, hidden_states.dtype),
                        position_ids=position_ids, layer_past=layer_past, use_cache=use_cache,
                        output_attentions=output_attentions, position_embeddings=position_embeddings, **kwargs)

    if output_attentions:
        return fallback("output_attentions", "output_attentions=True needs the attention probabilities, which "
                        "the fused kernel never materialises", "falcon", eager)
    if alibi is not None and module.training and module.attention_dropout.p > 0:
        return fallback("dropout", "attention dropout > 0 in training is not fused", "falcon", eager)
    if attention_mask is None:
        return fallback("no-mask", "the attention received no mask", "falcon", eager)

    num_kv_heads = module.num_heads if module.new_decoder_architecture else module.num_kv_heads
    query, key, value = module._split_heads(module.query_key_value(hidden_states))
    batch, q_len, _, _ = query.shape
    head_dim = module.head_dim
    query = query.transpose(1, 2).reshape(batch, module.num_heads, q_len, head_dim)
    key = key.transpose(1, 2).reshape(batch, num_kv_heads, q_len, head_dim)
    value = value.transpose(1, 2).reshape(batch, num_kv_heads, q_len, head_dim)
    modeling = sys.modules[type(module).__module__]
    if alibi is None:
        cos, sin = position_embeddings
        query, key = modeling.apply_rotary_pos_emb(query, key, cos, sin)
    if layer_past is not None:
        key, value = layer_past.update(key, value, module.layer_idx)
    kind = mask_kind(attention_mask)
    if alibi is None:
        out = _rotary(query, key, value, attention_mask, kind)
    else:
        out = _alibi(query, key, value, alibi.view(batch, module.num_heads, 1, -1), attention_mask,
                     float(module.inv_norm_factor), kind)
    context = out.permute(0, 2, 1, 3).reshape(batch, q_len, module.num_heads * head_dim)
    return module.dense(context), None


PATCH = FamilyPatch(
    model_type="falcon",
    module="transformers.models.falcon.modeling_falcon",
    attention_class="FalconAttention",
    forward=forward,
    about="rotary or ALiBi (per-key bias before the 1/sqrt(d) scaling), multi-query / grouped K-V, "
          "causal + padding mask",
)
