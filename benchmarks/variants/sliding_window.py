"""Causal sliding-window attention (Mistral style): query i sees keys i-window+1 .. i.

window defaults to 1024 (``--window``). Flex: mask_mod. SDPA: a dense bool [S, S]
``attn_mask`` -> "sdpa (mask tensor)". Density = sum_i min(i+1, window) / S², about
window/S for window << S (counted exactly by :meth:`Variant.density`).
"""

from __future__ import annotations

import torch

from .base import Variant


def attention(q, k, v, window):
    scale = q.shape[-1] ** -0.5
    scores = q @ k.transpose(-2, -1) * scale
    q_idx = torch.arange(scores.shape[-2], device=q.device)[:, None]
    kv_idx = torch.arange(scores.shape[-1], device=q.device)[None, :]
    keep = (kv_idx <= q_idx) & (q_idx - kv_idx < window)
    scores = scores.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return probs @ v


class SlidingWindow(Variant):
    name = "sliding_window"
    description = "causal sliding window (q-kv < window); SDPA via bool mask tensor"
    sdpa_form = "mask tensor"
    program = staticmethod(attention)

    def setup(self, window: int = 1024, **options):
        self.window = int(window)

    def program_args(self):
        return (self.window,)

    def mask_mod(self):
        window = self.window

        def sliding_window_causal(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & (q_idx - kv_idx < window)

        return sliding_window_causal

    def sdpa_kwargs(self, q):
        S = q.shape[-2]
        i = torch.arange(S, device=q.device)
        keep = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < self.window)
        return {"attn_mask": keep}
