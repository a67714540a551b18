"""GPT-J on Transformers versions where its attention bypasses ``AttentionInterface`` (5.17, the
GPU box's; from 5.2x ``GPTJAttention`` calls the interface and the front door serves it, so
:data:`flashlight_hf.patches.PATCHED_MODEL_TYPES` includes "gptj" only where it bypasses it).

``GPTJAttention._attn`` there: float32 ``q @ kᵀ / √d`` plus the additive causal/padding mask,
softmax, cast to V's dtype, times V (rotary embeddings are applied before, in ``forward``). The
fused program reproduces it; ``forward`` keeps the layer's own rotary code path through its
helpers (``_split_heads``, ``_get_embed_positions``, the modeling file's ``apply_rotary_pos_emb``).
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import torch

from flashlight_hf.compiler import compile as fl_compile

from ._base import FamilyPatch, additive_mask, apply_mask, fallback, mask_kind


def gptj_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
                   kind: str) -> torch.Tensor:
    """q, k, v: [B, H, S, D]; mask: [B, 1, Q, K] -> [B, H, Q, D]."""
    scores = torch.matmul(q.to(torch.float32), k.to(torch.float32).transpose(-1, -2)) / scale
    scores = apply_mask(scores, mask, kind, q.dtype)
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(probs, v)


_program = fl_compile(gptj_attention)


def forward(module: torch.nn.Module, original: Callable, config: Any, hidden_states: torch.Tensor,
            layer_past: Any = None, attention_mask: torch.Tensor | None = None, position_ids: Any = None,
            use_cache: bool = False, output_attentions: bool = False, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """``GPTJAttention.forward`` (the pre-interface one) with ``_attn`` as one generated kernel."""
    def eager() -> Any:
        return original(hidden_states, layer_past=layer_past,
                        attention_mask=additive_mask(attention_mask, hidden_states.dtype), position_ids=position_ids,
                        use_cache=use_cache, output_attentions=output_attentions, **kwargs)

    if output_attentions:
        return fallback("output_attentions", "output_attentions=True needs the attention probabilities, which "
                        "the fused kernel never materialises", "gptj", eager)
    if module.training and module.attn_dropout.p > 0:
        return fallback("dropout", "attention dropout > 0 in training is not fused", "gptj", eager)
    if attention_mask is None:
        return fallback("no-mask", "the attention received no mask", "gptj", eager)

    modeling = sys.modules[type(module).__module__]
    heads, head_dim = module.num_attention_heads, module.head_dim
    query = module._split_heads(module.q_proj(hidden_states), heads, head_dim, True)
    key = module._split_heads(module.k_proj(hidden_states), heads, head_dim, True)
    value = module._split_heads(module.v_proj(hidden_states), heads, head_dim, False)
    embed_positions = module._get_embed_positions(position_ids)
    sincos = torch.gather(embed_positions, 1, position_ids.unsqueeze(-1).repeat(1, 1, embed_positions.shape[-1]))
    sin, cos = torch.split(sincos.to(key.dtype), sincos.shape[-1] // 2, dim=-1)
    rot = module.rotary_dim
    if rot is not None:
        key = torch.cat([modeling.apply_rotary_pos_emb(key[..., :rot], sin, cos), key[..., rot:]], dim=-1)
        query = torch.cat([modeling.apply_rotary_pos_emb(query[..., :rot], sin, cos), query[..., rot:]], dim=-1)
    else:
        key = modeling.apply_rotary_pos_emb(key, sin, cos)
        query = modeling.apply_rotary_pos_emb(query, sin, cos)
    key, query = key.permute(0, 2, 1, 3), query.permute(0, 2, 1, 3)
    if layer_past is not None:
        key, value = layer_past.update(key, value, module.layer_idx)
    out = _program(query, key, value, attention_mask, float(module.scale_attn), mask_kind(attention_mask))
    out = module._merge_heads(out, heads, head_dim)
    return module.resid_dropout(module.out_proj(out)), None


PATCH = FamilyPatch(
    model_type="gptj",
    module="transformers.models.gptj.modeling_gptj",
    attention_class="GPTJAttention",
    forward=forward,
    about="(Transformers < 5.2x only) rotary on the first rotary_dim features, float32 scores, causal + padding mask",
)
