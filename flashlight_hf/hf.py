"""The Transformers front door (first step): ``attn_implementation="flashlight"``.

Registers ``"flashlight"`` in **both** of Transformers' public interfaces:

* ``AttentionMaskInterface``: where a backend name is missing there, Transformers hands the
  attention function no mask at all (no causal, no padding) and raises nothing. The mask
  function registered here always returns a boolean mask (Transformers' own SDPA mask builder,
  never "skipped" for causal), and the attention function refuses to run without one.
* ``AttentionInterface``: the attention function traces the **family's own eager attention
  code** (the module's ``eager_attention_forward``, with its ``repeat_kv``, scaling, softcap and
  float32 softmax) with the layer's real arguments, and runs it through :func:`flashlight_hf.compile`
  — one generated kernel per layer configuration, cached.

This step passes the mask as a tensor (loaded per key tile); masks as index structure, the
decode kernel, patches and the model zoo come with the rest of issue 5.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, Callable

import torch

from flashlight_hf.api import CompiledAttention, compile as fl_compile

NAME = "flashlight"
_compiled: dict[Any, CompiledAttention] = {}
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


def flashlight_mask(*args: Any, **kwargs: Any) -> torch.Tensor:
    """A boolean [B, 1, Q, K] mask (True = attend), built by Transformers' SDPA mask function."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    kwargs["allow_is_causal_skip"] = False  # never hand the kernel "no mask, assume causal"
    kwargs.pop("allow_is_bidirectional_skip", None)
    return ALL_MASK_ATTENTION_FUNCTIONS["sdpa"](*args, **kwargs)


def _eager_forward_of(module: torch.nn.Module) -> Callable:
    """The eager attention forward the module's own family defines (Llama-style by default)."""
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if fn is None:
        from transformers.models.llama.modeling_llama import eager_attention_forward as fn

        _warn_once(type(module).__name__, f"flashlight: {type(module).__name__} has no eager_attention_forward "
                   "in its modeling file; using Llama's (repeat_kv, scaled softmax)")
    return fn


def flashlight_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                                 value: torch.Tensor, attention_mask: torch.Tensor | None,
                                 scaling: float | None = None, dropout: float = 0.0,
                                 **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Transformers' attention signature: q [B,H,Q,D], k/v [B,Hk,K,D] -> ([B,Q,H,D], None)."""
    eager = _eager_forward_of(module)
    if dropout and module.training:
        _warn_once("dropout", "flashlight: attention dropout > 0 in training is not fused; running the "
                   "family's eager attention")
        return eager(module, query, key, value, _additive(attention_mask, query.dtype), scaling=scaling,
                     dropout=dropout, **kwargs)
    if attention_mask is None:
        raise RuntimeError("flashlight: the attention function received no mask. Transformers passes none "
                           "when the backend's mask function is not registered: call flashlight_hf.enable() "
                           "(importing flashlight_hf.hf registers both) before building the model's masks.")
    # Every keyword argument reaches the family's own eager code, which is what gets traced: tensors
    # (sinks as s_aux, position biases) become kernel inputs, plain values become constants of
    # the trace (and of the cache key). Nothing is dropped silently: objects that are neither
    # raise, except the cache objects layers consume before calling attention.
    tensor_kwargs = {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
    const_kwargs = {k: v for k, v in kwargs.items()
                    if k not in tensor_kwargs and k not in _CONSUMED_BEFORE_ATTENTION}
    odd = [k for k, v in const_kwargs.items() if not isinstance(v, (int, float, bool, str, type(None)))]
    if odd:
        raise NotImplementedError(f"flashlight: attention keyword arguments {sorted(odd)} of type "
                                  f"{sorted({type(const_kwargs[k]).__name__ for k in odd})} are not handled yet; "
                                  "use attn_implementation='sdpa' or 'eager' for this model")
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    names = tuple(sorted(tensor_kwargs))
    key_ = (type(module), eager, float(scaling), getattr(module, "num_key_value_groups", 1), names,
            tuple(sorted((k, repr(v)) for k, v in const_kwargs.items())))
    fn = _compiled.get(key_)
    if fn is None:
        def program(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                    *extra: torch.Tensor) -> torch.Tensor:
            return eager(module, q, k, v, bias, scaling=scaling, dropout=0.0, **const_kwargs,
                         **dict(zip(names, extra)))[0]

        program.__name__ = f"{type(module).__name__}_attention"
        fn = _compiled[key_] = fl_compile(program)
    extra = [tensor_kwargs[n] for n in names]
    return fn(query, key, value, _additive(attention_mask, query.dtype), *extra), None


# Layers hand these to attention but consume them themselves (the KV cache is already applied).
_CONSUMED_BEFORE_ATTENTION = {"past_key_values", "past_key_value"}


_last_additive: list = [None, None, None, None]  # (bool mask, its version, dtype, additive mask)


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Boolean keep-mask -> the additive float mask the families' eager code expects.

    Every layer of a forward pass receives the same mask object; it is converted once."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    version = mask._version  # bumped by in-place writes: a mask edited in place is converted again
    if _last_additive[0] is mask and _last_additive[1] == version and _last_additive[2] == dtype:
        return _last_additive[3]
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    _last_additive[:] = [mask, version, dtype, out]
    return out


def _not_flash_attention(original: Callable) -> Callable:
    def is_flash_attention_requested(config: Any = None, requested_attention_implementation: str | None = None,
                                     version: Any = None) -> bool:
        impl = requested_attention_implementation if config is None else getattr(config, "_attn_implementation", None)
        if impl == NAME:
            return False
        return original(config=config, requested_attention_implementation=requested_attention_implementation,
                        version=version)

    is_flash_attention_requested.__wrapped__ = original  # type: ignore[attr-defined]
    return is_flash_attention_requested


def _patch_flash_name_check() -> None:
    """Transformers treats every implementation name containing "flash" as FlashAttention
    (``transformers.utils.generic.is_flash_attention_requested``: ``"flash" in name``), which
    would send "flashlight" down the flash-attn loading and unpadding paths. Exclude our name,
    in the defining module and in every module that imported the function (a private API:
    ``tests/test_hf_front_door.py`` fails loudly if it moves)."""
    import transformers.utils.generic as generic

    original = getattr(generic, "is_flash_attention_requested", None)
    if original is None or getattr(original, "__wrapped__", None) is not None:
        return  # a Transformers without the name check, or already patched
    patched = _not_flash_attention(original)
    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("transformers") and \
                getattr(mod, "is_flash_attention_requested", None) is original:
            mod.is_flash_attention_requested = patched


def enable() -> None:
    """Register ``"flashlight"`` with Transformers' attention and mask interfaces (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    _patch_flash_name_check()
    AttentionInterface.register(NAME, flashlight_attention_forward)
    AttentionMaskInterface.register(NAME, flashlight_mask)
    from flashlight_hf.patches import install as install_patches  # families outside the interface

    install_patches()


def disable() -> None:
    """Remove ``"flashlight"`` from both interfaces (models already using it must switch impl)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    for iface in (AttentionInterface, AttentionMaskInterface):
        iface._global_mapping.pop(NAME, None)
    from flashlight_hf.patches import uninstall as uninstall_patches

    uninstall_patches()


enable()
