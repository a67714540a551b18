"""PrefixLM: the first ``prefix`` keys are visible to every query (bidirectional prefix), the
rest causally: keep ``kv <= q or kv < prefix``.

prefix defaults to 1024 (``--prefix``). Flex: mask_mod. SDPA: a dense bool [S, S] ``attn_mask``
-> "sdpa (mask tensor)". Density counted exactly by :meth:`Variant.density`.
"""

from __future__ import annotations

import torch

from .base import Variant


def attention(q, k, v, prefix):
    scale = q.shape[-1] ** -0.5
    scores = q @ k.transpose(-2, -1) * scale
    q_idx = torch.arange(scores.shape[-2], device=q.device)[:, None]
    kv_idx = torch.arange(scores.shape[-1], device=q.device)[None, :]
    keep = (kv_idx <= q_idx) | (kv_idx < prefix)
    scores = scores.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return probs @ v


class PrefixLM(Variant):
    name = "prefix_lm"
    description = "bidirectional prefix + causal rest (kv <= q or kv < prefix); SDPA via bool mask tensor"
    sdpa_form = "mask tensor"
    program = staticmethod(attention)

    def setup(self, prefix: int = 1024, **options):
        self.prefix = int(prefix)

    def program_args(self):
        return (self.prefix,)

    def mask_mod(self):
        prefix = self.prefix

        def prefix_lm(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx) | (kv_idx < prefix)

        return prefix_lm

    def sdpa_kwargs(self, q):
        S = q.shape[-2]
        i = torch.arange(S, device=q.device)
        keep = (i[None, :] <= i[:, None]) | (i[None, :] < self.prefix)
        return {"attn_mask": keep}
