"""Tanh logit soft-capping (Gemma-2 style): ``score = cap * tanh(score / cap)``, no mask.

cap defaults to 30 (attention-gym's benchmark value; Gemma-2 uses 50 for attention logits and
30 for the final logits); ``--softcap`` changes it. Exact ``tanh`` (no approximation) in every
form. SDPA cannot express a nonlinearity on the scores (no additive mask can), so the sdpa
rows are n/a for this variant. Density 1.
"""

from __future__ import annotations

import torch

from .base import Variant


def attention(q, k, v, cap):
    scale = q.shape[-1] ** -0.5
    scores = q @ k.transpose(-2, -1) * scale
    scores = cap * torch.tanh(scores / cap)
    probs = torch.softmax(scores, dim=-1)
    return probs @ v


class Softcap(Variant):
    name = "softcap"
    description = "tanh soft-cap cap*tanh(s/cap), no mask; SDPA n/a"
    sdpa_form = None
    program = staticmethod(attention)

    def setup(self, softcap: float = 30.0, **options):
        self.cap = float(softcap)

    def program_args(self):
        return (self.cap,)

    def score_mod(self):
        cap = self.cap

        def tanh_softcap(score, b, h, q_idx, kv_idx):
            return cap * torch.tanh(score / cap)

        return tanh_softcap

    def density(self, q_chunk: int = 512) -> float:
        return 1.0
