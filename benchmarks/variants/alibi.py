"""ALiBi as the ALiBi model families run it (BLOOM, MPT): causal mask plus a per-head linear bias.

``score[h, i, j] += slope[h] * (j - i)`` for j <= i (the bias is 0 on the diagonal and
negative behind it), slopes ``2^(-8(h+1)/H)`` (the paper's geometric sequence, with its
non-power-of-two rule). Flex: score_mod adds the bias, mask_mod is causal. SDPA cannot add a
bias natively: it gets the bias (with -inf above the diagonal) as a dense B-broadcast
``attn_mask`` of shape [1, H, S, S] in the input dtype -> "sdpa (mask tensor)".
Density: causal, (S+1)/(2S).
"""

from __future__ import annotations

import math

import torch

from .base import Variant


def alibi_slopes(heads: int) -> torch.Tensor:
    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start ** i for i in range(n)]

    if math.log2(heads).is_integer():
        slopes = power_of_2(heads)
    else:
        closest = 2 ** math.floor(math.log2(heads))
        slopes = power_of_2(closest) + power_of_2(2 * closest)[0::2][: heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def attention(q, k, v, slopes):
    scale = q.shape[-1] ** -0.5
    scores = q @ k.transpose(-2, -1) * scale
    q_idx = torch.arange(scores.shape[-2], device=q.device)[:, None]
    kv_idx = torch.arange(scores.shape[-1], device=q.device)[None, :]
    bias = slopes[:, None, None] * (kv_idx - q_idx)          # [H, Sq, Sk]
    scores = scores + bias.to(scores.dtype)
    scores = scores.masked_fill(kv_idx > q_idx, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return probs @ v


class Alibi(Variant):
    name = "alibi"
    description = "causal + ALiBi bias slope[h]*(kv-q); SDPA via dense bias tensor"
    sdpa_form = "mask tensor"
    head_aux = ("slopes",)
    program = staticmethod(attention)

    def setup(self, **options):
        self.slopes = alibi_slopes(self.heads).to(self.device)

    def program_args(self):
        return (self.slopes,)

    def score_mod(self):
        slopes = self.slopes

        def alibi(score, b, h, q_idx, kv_idx):
            return score + slopes[h] * (kv_idx - q_idx)

        return alibi

    def mask_mod(self):
        def causal(b, h, q_idx, kv_idx):
            return q_idx >= kv_idx

        return causal

    def sdpa_kwargs(self, q):
        S = q.shape[-2]
        i = torch.arange(S, device=q.device)
        rel = i[None, :] - i[:, None]                              # kv - q
        bias = self.slopes[:, None, None].to(torch.float32) * rel   # [H, S, S]
        bias = bias.masked_fill(rel > 0, float("-inf"))
        return {"attn_mask": bias.to(q.dtype).unsqueeze(0)}

    def density(self, q_chunk: int = 512) -> float:
        S = self.seqlen
        return (S + 1) / (2 * S)
