"""Causal attention: query i sees keys 0..i. SDPA native via ``is_causal=True``."""

from __future__ import annotations

import torch

from .base import Variant


def attention(q, k, v):
    scale = q.shape[-1] ** -0.5
    scores = q @ k.transpose(-2, -1) * scale
    q_idx = torch.arange(scores.shape[-2], device=q.device)[:, None]
    kv_idx = torch.arange(scores.shape[-1], device=q.device)[None, :]
    scores = scores.masked_fill(kv_idx > q_idx, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return probs @ v


def causal_mask(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


class Causal(Variant):
    name = "causal"
    description = "causal mask; SDPA native (is_causal=True)"
    sdpa_form = "native"
    program = staticmethod(attention)

    def mask_mod(self):
        return causal_mask

    def sdpa_kwargs(self, q):
        return {"is_causal": True}

    def density(self, q_chunk: int = 512) -> float:
        S = self.seqlen
        return (S + 1) / (2 * S)  # S(S+1)/2 kept pairs out of S²
