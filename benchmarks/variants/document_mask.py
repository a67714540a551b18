"""Document (packed-sequence) masking, causal within each document.

Each batch row packs ``num_docs`` documents (default 8, ``--num-docs``) with random lengths
drawn from a generator seeded by ``--seed`` (cut points uniformly without replacement), given
as an int32 ids tensor [B, S]. Query i sees key j iff ids[b, i] == ids[b, j] and j <= i.
Flex: mask_mod reading the ids (block mask built per batch row). SDPA: a dense bool
[B, 1, S, S] ``attn_mask`` -> "sdpa (mask tensor)". Density depends on the drawn lengths
(sum over docs of L(L+1)/2, over S²), counted exactly.
"""

from __future__ import annotations

import torch

from .base import Variant


def random_document_ids(batch: int, seqlen: int, num_docs: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    num_docs = max(1, min(num_docs, seqlen))
    rows = []
    for _ in range(batch):
        cuts = torch.randperm(seqlen - 1, generator=g)[: num_docs - 1] + 1  # starts of docs 2..n
        starts = torch.zeros(seqlen, dtype=torch.int32)
        starts[cuts] = 1
        rows.append(torch.cumsum(starts, 0).to(torch.int32))
    return torch.stack(rows)


def attention(q, k, v, doc_ids):
    scale = q.shape[-1] ** -0.5
    scores = q @ k.transpose(-2, -1) * scale
    q_idx = torch.arange(scores.shape[-2], device=q.device)[:, None]
    kv_idx = torch.arange(scores.shape[-1], device=q.device)[None, :]
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]          # [B, Sq, Sk]
    keep = same_doc & (kv_idx <= q_idx)
    scores = scores.masked_fill(~keep[:, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return probs @ v


class DocumentMask(Variant):
    name = "document_mask"
    description = "causal within random-length packed documents (ids tensor); SDPA via bool mask tensor"
    sdpa_form = "mask tensor"
    mask_uses_batch = True
    batch_aux = ("doc_ids",)
    program = staticmethod(attention)

    def setup(self, num_docs: int = 8, **options):
        self.num_docs = int(num_docs)
        self.doc_ids = random_document_ids(self.batch, self.seqlen, self.num_docs, self.seed).to(self.device)

    def program_args(self):
        return (self.doc_ids,)

    def mask_mod(self):
        doc_ids = self.doc_ids

        def document_causal(b, h, q_idx, kv_idx):
            return (doc_ids[b, q_idx] == doc_ids[b, kv_idx]) & (q_idx >= kv_idx)

        return document_causal

    def sdpa_kwargs(self, q):
        i = torch.arange(q.shape[-2], device=q.device)
        keep = (self.doc_ids[:, :, None] == self.doc_ids[:, None, :]) & (i[None, :] <= i[:, None])
        return {"attn_mask": keep[:, None]}
