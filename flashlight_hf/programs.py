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


def sink_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                   s_aux: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """GPT-OSS attention with sinks: a learned logit per head joins each row's softmax and is
    dropped after it (``s_aux``, the module's ``sinks``).

    GPT-OSS's eager code also subtracts the row max from the joined logits before its softmax;
    softmax is invariant to that shift (and subtracts the max itself), and the generator does
    not fuse a max over a concatenated tensor (``repro/gpt_oss.py``), so the shift is left out.
    Dtypes as GPT-OSS's: scores in the input dtype, softmax in the logits' dtype, weights cast
    to V's dtype."""
    sinks = module.sinks if s_aux is None else s_aux
    k, v = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, k.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    joined = torch.cat([scores, sinks.reshape(1, -1, 1, 1).expand(query.shape[0], -1, query.shape[-2], -1)], dim=-1)
    weights = torch.softmax(joined, dim=-1, dtype=joined.dtype)[..., :-1]
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training).to(v.dtype)
    return torch.matmul(weights, v).transpose(1, 2).contiguous(), weights
