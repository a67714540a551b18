"""Attention programs in plain PyTorch that the registry traces instead of a family's own eager
function: the generic Llama-style program for families it does not know, and spellings of a
family's eager math the generator fuses where the literal one does not.

Each program has Transformers' eager signature ``(module, query, key, value, attention_mask,
scaling=..., dropout=..., **kwargs) -> (output [B, Q, H, D], weights)`` and keeps the family's
dtype handling; ``tests/test_zoo_families.py`` compares every family against its Transformers
eager code on the same weights.
"""

from __future__ import annotations

from typing import Any

import torch


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, Hk, S, D] -> [B, Hk * groups, S, D], each KV head repeated over its query group."""
    if groups == 1:
        return x
    b, hk, s, d = x.shape
    return x[:, :, None].expand(b, hk, groups, s, d).reshape(b, hk * groups, s, d)


def generic_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                      **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama-style attention, for families the registry does not know: KV heads repeated over
    query groups, scaled scores plus the additive mask, softmax in float32 cast back."""
    groups = getattr(module, "num_key_value_groups", query.shape[1] // key.shape[1])
    k, v = repeat_kv(key, groups), repeat_kv(value, groups)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, k.transpose(2, 3)) * scale
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, v).transpose(1, 2).contiguous(), weights
