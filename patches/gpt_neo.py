"""GPT-Neo: unscaled float32 scores, a causal or *local* (sliding-window) mask from the layer's
``bias`` buffer, then the additive padding mask.

``GPTNeoSelfAttention._attn`` slices a ``[max_pos, max_pos]`` boolean buffer (lower-triangular,
minus everything ``window_size`` or more positions back on local layers) at rows ``K-Q … K``. The
fused program computes the same predicate from ``arange`` — ``j ≤ i + (K−Q)`` and, on local
layers, ``i + (K−Q) − j < window`` — so the kernel skips whole key tiles outside the window.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from flashlight_hf.compiler import compile as fl_compile

from ._base import FamilyPatch, additive_mask, apply_mask, fallback, mask_kind


def gpt_neo_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, window: int,
                      kind: str) -> torch.Tensor:
    """q, k, v: [B, H, S, D]; mask: [B, 1, Q, K]; window 0 = global layer -> [B, H, Q, D]."""
    scores = torch.matmul(q.to(torch.float32), k.to(torch.float32).transpose(-1, -2))
    q_len, k_len = q.shape[-2], k.shape[-2]
    i = torch.arange(q_len, device=q.device)[:, None] + (k_len - q_len)
    j = torch.arange(k_len, device=q.device)[None, :]
    keep = j <= i
    if window:
        keep = keep & (i - j < window)
    scores = torch.where(keep, scores, torch.finfo(scores.dtype).min)
    scores = apply_mask(scores, mask, kind, q.dtype)
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(probs, v)


_program = fl_compile(gpt_neo_attention)


def forward(module: torch.nn.Module, original: Callable, config: Any, hidden_states: torch.Tensor,
            attention_mask: torch.Tensor | None = None, layer_past: Any = None, use_cache: bool = False,
            output_attentions: bool = False, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """``GPTNeoSelfAttention.forward`` with ``_attn`` as one generated kernel."""
    def eager() -> Any:
        return original(hidden_states, attention_mask=additive_mask(attention_mask, hidden_states.dtype),
                        layer_past=layer_past, use_cache=use_cache, output_attentions=output_attentions, **kwargs)

    if output_attentions:
        return fallback("output_attentions", "output_attentions=True needs the attention probabilities, which "
                        "the fused kernel never materialises", "gpt_neo", eager)
    if module.training and module.attn_dropout.p > 0:
        return fallback("dropout", "attention dropout > 0 in training is not fused", "gpt_neo", eager)
    if attention_mask is None:
        return fallback("no-mask", "the attention received no mask", "gpt_neo", eager)

    heads, head_dim = module.num_heads, module.head_dim
    query = module._split_heads(module.q_proj(hidden_states), heads, head_dim)
    key = module._split_heads(module.k_proj(hidden_states), heads, head_dim)
    value = module._split_heads(module.v_proj(hidden_states), heads, head_dim)
    if layer_past is not None:
        key, value = layer_past.update(key, value, module.layer_id)
    if key.shape[-2] > module.bias.shape[-1]:
        # eager slices its [max_pos, max_pos] buffer and fails; keep that behaviour visible
        raise ValueError(f"GPT-Neo attends over {key.shape[-2]} keys, more than max_position_embeddings="
                         f"{module.bias.shape[-1]}; shorten the input or the cache")
    window = int(config.window_size) if module.attention_type == "local" else 0
    out = _program(query, key, value, attention_mask, window, mask_kind(attention_mask))
    out = module._merge_heads(out, heads, head_dim)
    return module.resid_dropout(module.out_proj(out)), None


PATCH = FamilyPatch(
    model_type="gpt_neo",
    module="transformers.models.gpt_neo.modeling_gpt_neo",
    attention_class="GPTNeoSelfAttention",
    forward=forward,
    about="global and local (sliding-window) layers from arange, unscaled float32 scores, causal + padding mask",
)
