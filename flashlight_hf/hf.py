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

import os
import sys
import warnings
from typing import Any, Callable

import torch

from flashlight_hf.api import CompiledAttention, compile as fl_compile
from flashlight_hf.masks import (MaskSpec, NotStructural, SafeSoftmax, StructuredMask, closure_signature,
                                 keep_from_structure)

NAME = "flashlight"
_compiled: dict[Any, CompiledAttention] = {}
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


def flashlight_mask(*args: Any, **kwargs: Any) -> torch.Tensor:
    """The mask as structure (a :class:`flashlight_hf.masks.StructuredMask`: offsets, mask
    function, padding, no memory) for the generated kernel to evaluate as index predicates; a
    boolean ``[B, 1, Q, K]`` tensor (Transformers' SDPA builder, never "skipped") where the pieces
    cannot be traced."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, causal_mask_function

    kwargs["allow_is_causal_skip"] = False  # never hand the kernel "no mask, assume causal"
    kwargs.pop("allow_is_bidirectional_skip", None)
    build = lambda: ALL_MASK_ATTENTION_FUNCTIONS["sdpa"](*args, **kwargs)  # noqa: E731
    spec = _mask_spec(kwargs, causal_mask_function) if not args else None
    if spec is not None:
        return StructuredMask(spec, build)
    return build()


def _mask_spec(kw: dict, default_fn: Callable) -> MaskSpec | None:
    """The mask interface's keyword arguments as a MaskSpec, or None (then a tensor is built)."""
    if kw.get("use_vmap") or "batch_size" not in kw or "kv_length" not in kw:
        return None  # a custom mask function that needs vmap: not index arithmetic we can trace
    fn = kw.get("mask_function") or default_fn
    try:
        closure_signature(fn)
    except NotStructural:
        return None
    q_length, q_offset = kw.get("q_length"), kw.get("q_offset")
    cache_position = kw.get("cache_position")
    if q_length is None:  # Transformers versions that pass cache_position instead
        if cache_position is None:
            return None
        q_length = int(cache_position.shape[0])
    if q_offset is None:
        q_offset = int(cache_position[0]) if cache_position is not None and q_length else 0
    kv_length, kv_offset = int(kw["kv_length"]), int(kw.get("kv_offset") or 0)
    pad = kw.get("attention_mask")
    device = kw.get("device") or (pad.device if pad is not None else torch.device("cpu"))
    if pad is not None:
        if pad.dim() != 2:
            return None
        short = kv_offset + kv_length - pad.shape[-1]
        if short > 0:  # the 2-D mask may be shorter than the cache: missing keys are not real tokens
            pad = torch.nn.functional.pad(pad.to(torch.bool), (0, short), value=False)
    return MaskSpec(batch_size=int(kw["batch_size"]), q_length=int(q_length), kv_length=kv_length,
                    q_offset=int(q_offset), kv_offset=kv_offset, mask_function=fn, padding=pad,
                    device=torch.device(device))


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
    extra = [tensor_kwargs[n] for n in names]
    if isinstance(attention_mask, StructuredMask):
        return _structured(module, eager, query, key, value, attention_mask.spec, float(scaling), names,
                           extra, const_kwargs), None
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
    return fn(query, key, value, _additive(attention_mask, query.dtype), *extra), None


def _structured(module: torch.nn.Module, eager: Callable, query: torch.Tensor, key: torch.Tensor,
                value: torch.Tensor, spec: MaskSpec, scaling: float, names: tuple, extra: list,
                const_kwargs: dict) -> torch.Tensor:
    """The family's eager attention with the mask built *inside* the traced program from its
    pieces: the generated kernel evaluates it as index predicates (loop bounds where it can).

    Masked scores are −inf (a select the key-bound analysis reads), so a query row that sees no
    key at all — a left-padding position — would be 0/0; it outputs 0 instead (:class:`SafeSoftmax`),
    as SDPA's and FlashAttention's kernels do (eager's finfo.min mask averages every value there).
    Only such padding rows differ from eager; no other row reads them (their keys are masked too)."""
    sig, mask_tensors = spec.structure()
    n_mask = len(mask_tensors)
    groups = int(getattr(module, "num_key_value_groups", 1) or 1)
    packed = _packs_gqa_groups(eager, query, key, groups, names)
    key_ = (type(module), eager, scaling, groups, names,
            tuple(sorted((k, repr(v)) for k, v in const_kwargs.items())), sig, packed)
    fn = _compiled.get(key_)
    if fn is None:
        mask_function = spec.mask_function
        layer = _GroupsAsRows(module) if packed else module

        def program(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
            keep = keep_from_structure(sig, mask_function, q, k, list(rest[:n_mask]), q_rows=1 if packed else None)
            bias = torch.where(keep, 0.0, float("-inf")).to(q.dtype)
            with SafeSoftmax():  # rows with no visible key: 0, not NaN (forward and backward)
                return eager(layer, q, k, v, bias, scaling=scaling, dropout=0.0, **const_kwargs,
                             **dict(zip(names, rest[n_mask:])))[0]

        program.__name__ = f"{type(module).__name__}_attention_structured_mask{'_gqa_rows' if packed else ''}"
        fn = _compiled[key_] = fl_compile(program)
    if not packed:
        return fn(query, key, value, *mask_tensors, *extra)
    b, h, _, d = query.shape
    hk = key.shape[1]
    # [B, H, 1, D] -> [B, Hk, G, D]: a view (heads split into KV head and group member)
    out = fn(query.reshape(b, hk, h // hk, d), key, value, *mask_tensors, *extra)  # [B, G, Hk, Dv]
    return out.transpose(1, 2).reshape(b, 1, h, out.shape[-1])  # [B, 1, H, Dv], heads KV-major


# Families whose eager attention is the Llama pattern (repeat_kv, scaled scores, mask, softmax,
# · V): a decode step may fold the query heads of a GQA group into one row tile.
_GQA_ROW_FAMILIES = {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3", "granite",
                     "olmo", "olmo2", "starcoder2", "smollm3", "cohere", "glm", "helium"}


def _packs_gqa_groups(eager: Callable, query: torch.Tensor, key: torch.Tensor, groups: int, names: tuple) -> bool:
    """A decode step (one query row) of a grouped-query layer: the G query heads that share a KV
    head become G rows of one program, which then reads that KV head's cache once instead of G
    times. Only for the Llama-pattern eager code and no per-head tensor arguments (sinks)."""
    if query.shape[-2] != 1 or groups <= 1 or key.shape[1] * groups != query.shape[1] or \
            set(names) - {"position_ids", "cache_position"}:  # positions: passed along, per token not per head
        return False
    family = getattr(eager, "__module__", "").rsplit(".", 1)[-1].replace("modeling_", "")
    return family in _GQA_ROW_FAMILIES and os.environ.get("FLASHLIGHT_GQA_ROWS", "1") != "0"


class _GroupsAsRows:
    """The layer as its eager code sees it when a group's query heads are rows: K/V need no
    repeating (one KV head per program). Everything else is the layer's own."""

    def __init__(self, module: torch.nn.Module):
        object.__setattr__(self, "_module", module)

    num_key_value_groups = 1

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_module"), name)


# Layers hand these to attention but consume them themselves (the KV cache is already applied).
_CONSUMED_BEFORE_ATTENTION = {"past_key_values", "past_key_value"}


_last_additive: list = [None, None, None, None]  # (bool mask, its version, dtype, additive mask)


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Boolean keep-mask -> the additive float mask the families' eager code expects.

    Every layer of a forward pass receives the same mask object; it is converted once."""
    if isinstance(mask, StructuredMask):
        mask = mask.dense()
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
        # The module's own namespace, not getattr: on Transformers' lazy modules getattr of a
        # missing name imports submodules (5.17: an image processor that needs torchvision).
        if getattr(mod, "__name__", "").startswith("transformers") and \
                getattr(mod, "__dict__", {}).get("is_flash_attention_requested") is original:
            mod.is_flash_attention_requested = patched


def enable() -> None:
    """Register ``"flashlight"`` with Transformers' attention and mask interfaces (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    _patch_flash_name_check()
    AttentionInterface.register(NAME, flashlight_attention_forward)
    AttentionMaskInterface.register(NAME, flashlight_mask)


def disable() -> None:
    """Remove ``"flashlight"`` from both interfaces (models already using it must switch impl)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    for iface in (AttentionInterface, AttentionMaskInterface):
        iface._global_mapping.pop(NAME, None)


enable()
