"""DeBERTa-v2: disentangled attention — content-to-content scores plus content-to-position (c2p)
and position-to-content (p2c) terms gathered from relative-position embeddings.

Eager (``DisentangledSelfAttention``) builds ``c2p = q @ pos_kᵀ`` ``[B·H, Q, 2·span]`` and
``p2c = k @ pos_qᵀ`` ``[B·H, K, 2·span]``, then gathers N×N terms from them with the bucketed
relative position ``δ(i, j) = bucket(i − j)``. Those two products are per-query / per-key and
small (``2·span`` columns), so they run as plain torch before the fused program; the program
gathers ``c2p[bh, i, T_c2p[i − j + K − 1]]`` and ``p2c[bh, j, T_p2c[j − i + K − 1]]`` with
indices computed from ``arange`` inside the kernel (``T`` are 1-D tables of length Q + K − 1:
the bucketed, clamped index for every distance), so the N×N scores and the N×N gathered terms
never exist in memory. The relative positions the layer receives are checked once per forward
to be the standard bucketed ones (anything else falls back to the original code, with a warning).
"""

from __future__ import annotations

import sys
import weakref
from typing import Any, Callable

import torch

from flashlight_hf.compiler import compile as fl_compile

from ._base import FamilyPatch, fallback


def deberta_v2_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                         c2p: torch.Tensor, c2p_index: torch.Tensor, p2c: torch.Tensor, p2c_index: torch.Tensor,
                         scale: float, heads: int, span2: int, terms: str) -> torch.Tensor:
    """q: [B·H, Q, D]; k, v: [B·H, K, D]; mask: [B, 1, Q, K] (nonzero = attend);
    c2p: [B·H·Q·2span] flat; p2c: [B·H·K·2span] flat; *_index: [Q + K − 1] -> [B·H, Q, D].

    ``terms`` names the relative terms present ("c2p", "p2c", "c2p+p2c" or "" for none)."""
    bh, q_len, _ = q.shape
    k_len = k.shape[-2]
    scores = torch.bmm(q, k.transpose(-1, -2) / scale)
    if terms:
        b = torch.arange(bh, device=q.device)[:, None, None]
        i = torch.arange(q_len, device=q.device)[None, :, None]
        j = torch.arange(k_len, device=q.device)[None, None, :]
        rel = 0
        if "c2p" in terms:
            rel = rel + c2p[(b * q_len + i) * span2 + c2p_index[i - j + (k_len - 1)]] / scale
        if "p2c" in terms:
            rel = rel + p2c[(b * k_len + j) * span2 + p2c_index[j - i + (k_len - 1)]] / scale
        scores = scores + rel
    scores = scores.view(-1, heads, q_len, k_len)
    scores = scores.masked_fill(~mask.bool(), torch.finfo(q.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    return torch.bmm(probs.view(-1, q_len, k_len), v)


_program = fl_compile(deberta_v2_attention)

# (weak reference to the relative_pos tensor, its version, (q_len, k_len)) of the last check that
# passed: every layer of a forward pass receives the same tensor, checked once. Weak, so a large
# [1, N, N] position tensor is not kept alive after the forward pass.
_checked: list = [None, None, None]


def _distance_tables(module: torch.nn.Module, q_len: int, k_len: int, device: torch.device
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per distance d (offset by K − 1): the clamped c2p index, the clamped p2c index, bucket(d)."""
    modeling = sys.modules[type(module).__module__]
    span = module.pos_ebd_size
    dist = torch.arange(-(k_len - 1), q_len, dtype=torch.long, device=device)  # i − j, or j − i
    rel = dist
    if module.position_buckets > 0 and module.max_relative_positions > 0:
        rel = modeling.make_log_bucket_position(dist, module.position_buckets, module.max_relative_positions)
    rel = rel.to(torch.long)
    c2p_index = torch.clamp(rel + span, 0, span * 2 - 1)
    p2c_index = torch.clamp(-rel + span, 0, span * 2 - 1)
    return c2p_index, p2c_index, rel


def _standard_relative_pos(relative_pos: torch.Tensor | None, rel: torch.Tensor, q_len: int, k_len: int) -> bool:
    """Whether ``relative_pos`` is ``rel[i − j + K − 1]`` (what ``build_relative_position`` gives).

    A Toeplitz test plus its first row and column — no N×N index tensor — once per tensor."""
    if relative_pos is None:
        return True
    if _checked[0] is not None and _checked[0]() is relative_pos and \
            _checked[1:] == [relative_pos._version, (q_len, k_len)]:
        return True
    rp = relative_pos
    while rp.dim() > 2:
        if rp.shape[0] != 1:
            return False
        rp = rp[0]
    if rp.dim() != 2 or tuple(rp.shape) != (q_len, k_len):
        return False
    rp = rp.to(torch.long)
    rel = rel.to(rp.device)
    ok = (torch.equal(rp[0, :], rel[:k_len].flip(0))  # i = 0: d = −j
          and torch.equal(rp[:, 0], rel[k_len - 1:])  # j = 0: d = i
          and torch.equal(rp[1:, 1:], rp[:-1, :-1]))  # constant along every diagonal
    if ok:
        _checked[:] = [weakref.ref(relative_pos), relative_pos._version, (q_len, k_len)]
    return ok


def forward(module: torch.nn.Module, original: Callable, config: Any, hidden_states: torch.Tensor,
            attention_mask: torch.Tensor, output_attentions: bool = False, query_states: torch.Tensor | None = None,
            relative_pos: torch.Tensor | None = None, rel_embeddings: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, None]:
    """``DisentangledSelfAttention.forward`` with scores, relative terms, mask, softmax and V fused."""
    def eager() -> Any:
        return original(hidden_states, attention_mask, output_attentions=output_attentions,
                        query_states=query_states, relative_pos=relative_pos, rel_embeddings=rel_embeddings)

    if output_attentions:
        return fallback("output_attentions", "output_attentions=True needs the attention probabilities, which "
                        "the fused kernel never materialises", "deberta-v2", eager)
    if module.training and module.dropout.p > 0:
        return fallback("dropout", "attention dropout > 0 in training is not fused", "deberta-v2", eager)

    heads = module.num_attention_heads
    query_layer = module.transpose_for_scores(module.query_proj(hidden_states if query_states is None
                                                                else query_states), heads)
    key_layer = module.transpose_for_scores(module.key_proj(hidden_states), heads)
    value_layer = module.transpose_for_scores(module.value_proj(hidden_states), heads)
    q_len, k_len = query_layer.shape[-2], key_layer.shape[-2]
    if q_len != k_len and module.relative_attention and "p2c" in module.pos_att_type:
        return fallback("q!=k", "queries and keys of different lengths take another relative-position path",
                        "deberta-v2", eager)

    scale_factor = 1 + ("c2p" in module.pos_att_type) + ("p2c" in module.pos_att_type)
    modeling = sys.modules[type(module).__module__]
    scale = float(modeling.scaled_size_sqrt(query_layer, scale_factor).to(dtype=query_layer.dtype))
    terms = [t for t in ("c2p", "p2c") if module.relative_attention and t in module.pos_att_type]
    span2 = 0
    c2p = p2c = c2p_index = p2c_index = torch.zeros(1, dtype=query_layer.dtype, device=query_layer.device)
    if terms:
        c2p_index, p2c_index, rel = _distance_tables(module, q_len, k_len, query_layer.device)
        if not _standard_relative_pos(relative_pos, rel, q_len, k_len):
            return fallback("relative_pos", "the layer received relative positions other than the standard "
                            "bucketed i - j", "deberta-v2", eager)
        span = module.pos_ebd_size
        span2 = 2 * span
        rel_embeddings = module.pos_dropout(rel_embeddings)[0:span2, :].unsqueeze(0)
        repeat = query_layer.size(0) // heads
        if "c2p" in terms:
            proj = module.key_proj if module.share_att_key else module.pos_key_proj
            pos_key = module.transpose_for_scores(proj(rel_embeddings), heads).repeat(repeat, 1, 1)
            c2p = torch.bmm(query_layer, pos_key.transpose(-1, -2)).reshape(-1)  # [B·H·Q·2span]
        if "p2c" in terms:
            proj = module.query_proj if module.share_att_key else module.pos_query_proj
            pos_query = module.transpose_for_scores(proj(rel_embeddings), heads).repeat(repeat, 1, 1)
            p2c = torch.bmm(key_layer, pos_query.transpose(-1, -2)).reshape(-1)  # [B·H·K·2span]
    out = _program(query_layer, key_layer, value_layer, attention_mask, c2p, c2p_index, p2c, p2c_index,
                   scale, heads, span2, "+".join(terms))
    context = out.view(-1, heads, q_len, out.size(-1)).permute(0, 2, 1, 3).contiguous()
    return context.view(context.size()[:-2] + (-1,)), None


PATCH = FamilyPatch(
    model_type="deberta-v2",
    module="transformers.models.deberta_v2.modeling_deberta_v2",
    attention_class="DisentangledSelfAttention",
    forward=forward,
    about="disentangled attention: c2p / p2c terms gathered in-kernel from per-query / per-key products with "
          "bucketed relative-distance indices from arange; padding mask",
)
