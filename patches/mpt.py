"""MPT: ALiBi as a per-key ``position_bias`` ``[H, 1, max_seq_len]``, a boolean mask filled with
the dtype's minimum, softmax in float32.

``MptAttention.forward`` computes its scores inline. The fused program reproduces it: scaled
``q @ kᵀ`` plus the model's ALiBi bias sliced to the last K keys (as eager slices it), the mask
applied with ``masked_fill(finfo.min)``, softmax of the float32 scores cast back, times V.
Under "flashlight" the model's mask is the boolean keep-mask (True = attend); eager's is the
opposite (True = masked), which the fallback hands the original code.

``MptAttention`` never sees ``output_attentions`` (only ``MptModel.forward`` does, and it
collects the attention weights the layers return), so a forward pre-hook on the model records
the flag for the patched layers: asking for attentions falls back to the original code instead
of returning ``None`` silently.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

from flashlight_hf.compiler import compile as fl_compile

from ._base import FamilyPatch, fallback

_WANTS_ATTENTIONS = "_flashlight_output_attentions"
_HOOK = "_flashlight_output_attentions_hook"


def mpt_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, position_bias: torch.Tensor,
                  keep: torch.Tensor, scale: float) -> torch.Tensor:
    """q, k, v: [B, H, S, D]; position_bias: [H, 1, K]; keep: bool [B, 1, Q, K] -> [B, H, Q, D]."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    scores = scores + position_bias
    scores = scores.masked_fill(~keep, torch.finfo(q.dtype).min)
    probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    return probs @ v


def mpt_attention_no_bias(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor,
                          scale: float) -> torch.Tensor:
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~keep, torch.finfo(q.dtype).min)
    probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    return probs @ v


_program = fl_compile(mpt_attention)
_program_no_bias = fl_compile(mpt_attention_no_bias)


def forward(module: torch.nn.Module, original: Callable, config: Any, hidden_states: torch.Tensor,
            position_bias: torch.Tensor | None, attention_mask: torch.Tensor | None = None,
            **kwargs: Any) -> tuple[torch.Tensor, None]:
    """``MptAttention.forward`` with the scores → softmax → V part as one generated kernel.

    The cache arrives as ``cache=`` (Transformers ≥ 5.2x) or ``past_key_values=`` (5.17)."""
    def eager() -> Any:
        masked = None if attention_mask is None else ~attention_mask  # eager's True = masked
        return original(hidden_states, position_bias, attention_mask=masked, **kwargs)

    if getattr(module, _WANTS_ATTENTIONS, False):
        return fallback("output_attentions", "output_attentions=True needs the attention probabilities, which "
                        "the fused kernel never materialises", "mpt", eager)
    if module.training and module.attn_dropout_p > 0:
        return fallback("dropout", "attention dropout > 0 in training is not fused", "mpt", eager)
    if attention_mask is None or attention_mask.dtype != torch.bool:
        return fallback("mask", "the attention received no boolean mask", "mpt", eager)

    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    batch, seq_len = hidden_states.shape[:2]
    qkv = module.Wqkv(hidden_states)
    if module.clip_qkv:
        qkv = qkv.clamp(min=-module.clip_qkv, max=module.clip_qkv)
    query, key, value = (x.reshape(batch, seq_len, module.n_heads, module.head_dim).transpose(1, 2)
                         for x in qkv.chunk(3, dim=2))
    if cache is not None:
        key, value = cache.update(key, value, module.layer_idx)
    scale = float(module.softmax_scale)
    if position_bias is not None:
        if position_bias.dim() != 3:
            raise ValueError(f"Expecting position_bias shape to be 3 dimensions, got {position_bias.dim()}")
        q_len = seq_len if cache is None else seq_len + cache.get_seq_length()
        bias = position_bias[:, max(0, position_bias.size(1) - q_len):, max(0, position_bias.size(2) - key.shape[-2]):]
        out = _program(query, key, value, bias, attention_mask, scale)
    else:
        out = _program_no_bias(query, key, value, attention_mask, scale)
    context = out.permute(0, 2, 1, 3).reshape(batch, seq_len, -1)
    return module.out_proj(context), None


def install_model_hooks(model: torch.nn.Module) -> None:
    """Record each forward's ``output_attentions`` on the patched layers (see the module docstring)."""
    from transformers.models.mpt.modeling_mpt import MptModel

    for m in model.modules():
        if type(m) is not MptModel or _HOOK in m.__dict__:
            continue

        def record(mod: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            wants = inspect.signature(mod.forward).bind_partial(*args, **kwargs).arguments.get("output_attentions")
            wants = mod.config.output_attentions if wants is None else wants
            for block in mod.blocks:
                setattr(block.attn, _WANTS_ATTENTIONS, bool(wants))

        m.__dict__[_HOOK] = m.register_forward_pre_hook(record, with_kwargs=True)


def remove_model_hooks(model: torch.nn.Module) -> None:
    for m in model.modules():
        handle = m.__dict__.pop(_HOOK, None)
        if handle is not None:
            handle.remove()
        m.__dict__.pop(_WANTS_ATTENTIONS, None)


PATCH = FamilyPatch(
    model_type="mpt",
    module="transformers.models.mpt.modeling_mpt",
    attention_class="MptAttention",
    forward=forward,
    install_model_hooks=install_model_hooks,
    remove_model_hooks=remove_model_hooks,
    about="ALiBi position bias per key (the model's [H, 1, max_seq_len] table, sliced), boolean causal + "
          "padding mask filled with finfo.min, float32 softmax",
)
