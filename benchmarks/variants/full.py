"""Full (bidirectional) attention: no mask, no score modification."""

from __future__ import annotations

import torch

from .base import Variant


def attention(q, k, v):
    scale = q.shape[-1] ** -0.5
    scores = q @ k.transpose(-2, -1) * scale
    probs = torch.softmax(scores, dim=-1)
    return probs @ v


class Full(Variant):
    name = "full"
    description = "no mask; SDPA native"
    sdpa_form = "native"
    program = staticmethod(attention)

    def sdpa_kwargs(self, q):
        return {}

    def density(self, q_chunk: int = 512) -> float:
        return 1.0
