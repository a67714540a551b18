"""DiffLlama's differential attention as one traced program (one fused kernel per layer).

Transformers' ``DiffLlamaAttention.forward`` calls the attention interface twice — one softmax
over the shared Q/K, applied once to each half of V (split along the KV heads) — and then, in
the module, concatenates the two outputs, splits the heads into two halves, combines them
``o1 - λ·o2`` and applies a group RMSNorm scaled by ``1 - λ_init``. Routed call by call, that is
two kernels plus eager glue; and the second call cannot be fused with the first because the
combination mixes heads ``j`` and ``j + H/2`` of *different* calls.

Writing head pair ``j`` out: with ``g`` query heads per KV head and ``m = j // g``,

    out_j = A(q_j, k_m) · [v_m ‖ v_{m+Hk/2}]  -  λ · A(q_{j+H/2}, k_{m+Hk/2}) · [v_m ‖ v_{m+Hk/2}]

(``A`` the family's softmax, ``‖`` concatenation along the head dim): two softmax streams sharing
one value tile — the differential-attention program the generator fuses. :func:`differential_attention`
is that program in plain PyTorch with the family's dtype handling (scores and V in the input
dtype, softmax in float32 cast back, λ computed in float32 then cast, RMSNorm in float32 cast
back as ``torch.nn.RMSNorm`` does). The two V halves are concatenated before the kernel (the
generator rejects expanding a concatenated tensor; see the report of issue 5).

:func:`flashlight_forward` is the module forward that runs it; the family table
(:mod:`flashlight_hf.transformers.registry`, DiffLlama's ``layer_override``) names it, and
:func:`flashlight_hf.transformers.interface.enable` installs it on ``DiffLlamaAttention`` for
models whose config selects ``"flashlight"``.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any, Callable

import torch

from flashlight_hf.compiler import compile as fl_compile
from flashlight_hf.transformers.layers import classify_kwargs
from flashlight_hf.transformers.masks import as_additive
from flashlight_hf.transformers.programs import repeat_kv
from flashlight_hf.transformers.registry import attention_for


def _stream(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scaling: float,
            groups: int) -> torch.Tensor:
    scores = torch.matmul(q, repeat_kv(k, groups).transpose(2, 3)) * scaling + mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(weights, repeat_kv(v, groups))


def differential_attention(query: torch.Tensor, key: torch.Tensor, value_pairs: torch.Tensor,
                           mask: torch.Tensor, lambda_full: torch.Tensor, scaling: float, groups: int,
                           lambda_init: float, eps: float) -> torch.Tensor:
    """DiffLlama's attention output before ``o_proj``: ``[B, Q, H/2, 2D]``.

    ``query`` [B, H, Q, D], ``key`` [B, Hk, K, D], ``value_pairs`` [B, Hk/2, K, 2D] (the two
    halves of V side by side), ``mask`` additive [B, 1, Q, K], ``lambda_full`` a 0-d tensor."""
    h, hk = query.shape[1] // 2, key.shape[1] // 2
    o1 = _stream(query[:, :h], key[:, :hk], value_pairs, mask, scaling, groups)
    o2 = _stream(query[:, h:], key[:, hk:], value_pairs, mask, scaling, groups)
    out = (o1 - lambda_full * o2).transpose(1, 2)
    x = out.float()
    normed = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)).to(out.dtype)
    return (1 - lambda_init) * normed


_program = fl_compile(differential_attention)


def flashlight_forward(original: Callable) -> Callable:
    """The flashlight forward of ``DiffLlamaAttention`` (``original`` is the class's own forward,
    read only to match the cache-update convention of the installed Transformers version)."""
    # Transformers >= 5.2x names the cache argument ``cache`` and hands ``kwargs`` to
    # ``Cache.update``; 5.17 names it ``past_key_values`` and passes nothing else.
    new_cache_api = "cache" in inspect.signature(getattr(original, "__wrapped__", original)).parameters

    def forward(self: torch.nn.Module, hidden_states: torch.Tensor,
                position_embeddings: tuple[torch.Tensor, torch.Tensor], attention_mask: torch.Tensor | None = None,
                past_key_values: Any = None, cache: Any = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
        cache = cache if cache is not None else past_key_values
        fam = attention_for(self)
        if attention_mask is None:
            raise RuntimeError("flashlight: DiffLlama attention received no mask. Transformers passes none when "
                               "the backend's mask function is not registered: call flashlight_hf.enable() before "
                               "building the model's masks.")
        # DiffLlama's eager attention reads none of the remaining keyword arguments (position ids,
        # flags); classify them anyway so an unknown one is reported, never dropped silently.
        classify_kwargs(fam, kwargs)
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        query, key = sys.modules[type(self).__module__].apply_rotary_pos_emb(query, key, cos, sin)
        if cache is not None:
            if new_cache_api:
                key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)
            else:
                key, value = cache.update(key, value, self.layer_idx)
        value_pairs = torch.cat(torch.chunk(value, 2, dim=1), dim=-1)
        lambda_1 = torch.exp(torch.sum(self.lambda_q1 * self.lambda_k1, dim=-1, dtype=torch.float32)).to(query.dtype)
        lambda_2 = torch.exp(torch.sum(self.lambda_q2 * self.lambda_k2, dim=-1, dtype=torch.float32)).to(query.dtype)
        lambda_full = lambda_1 - lambda_2 + self.lambda_init
        eps = self.groupnorm.eps if self.groupnorm.eps is not None else torch.finfo(query.dtype).eps
        out = _program(query, key, value_pairs, as_additive(attention_mask, query.dtype), lambda_full,
                       float(self.scaling), int(self.num_key_value_groups), float(self.lambda_init), float(eps))
        return self.o_proj(out.reshape(*input_shape, -1)), None

    return forward
