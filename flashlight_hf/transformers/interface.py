"""The Transformers front door (first step): ``attn_implementation="flashlight"``.

Registers ``"flashlight"`` in **both** of Transformers' public interfaces:

* ``AttentionMaskInterface``: where a backend name is missing there, Transformers hands the
  attention function no mask at all (no causal, no padding) and raises nothing. The mask
  function registered here returns the mask as **structure** (:mod:`flashlight_hf.transformers.masks`: a
  memory-less ``StructuredMask`` holding offsets, the mask function and padding), which the
  generated kernel evaluates as index predicates and loop bounds; where the pieces cannot be
  traced, a boolean tensor (Transformers' own SDPA builder, never "skipped" for causal). The
  attention function refuses to run without a mask.
* ``AttentionInterface``: the attention function traces the **family's own eager attention
  code** (found in the family table, :mod:`flashlight_hf.transformers.registry`: the family's
  ``eager_attention_forward``, with its ``repeat_kv``, scaling, softcap, sinks and float32
  softmax) with the layer's real arguments, and runs it through :func:`flashlight_hf.compile`
  (:mod:`flashlight_hf.transformers.layers`) — one generated kernel per layer configuration,
  cached. Families whose attention spans the module's forward (DiffLlama) get a layer override
  named in the table, installed by :func:`enable` and removed by :func:`disable`.

``import flashlight_hf`` calls :func:`enable` as soon as Transformers' ``modeling_utils`` has
loaded (:mod:`flashlight_hf.transformers.hook`); calling it again is harmless. This module
imports the compiler only when the attention function first runs.

``docs/transformers.md`` follows one call through all of it (decoding included).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable

import torch

from flashlight_hf.transformers import hook, registry
from flashlight_hf.transformers.masks import MaskSpec, NotStructural, StructuredMask, as_additive, closure_signature

NAME = "flashlight"


def flashlight_mask(*args: Any, **kwargs: Any) -> torch.Tensor:
    """The mask as structure (a :class:`flashlight_hf.transformers.masks.StructuredMask`: offsets, mask
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
    if q_offset is None:  # the first query position, kept on the device (no sync)
        q_offset = cache_position[0] if cache_position is not None and q_length else 0
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
                    q_offset=_snapshot(q_offset), kv_offset=kv_offset, mask_function=fn, padding=pad,
                    device=torch.device(device))


def _snapshot(offset: Any) -> int | torch.Tensor:
    """The query offset as it is *now*. A static cache hands its own position tensor, which
    its layers advance in place before attention runs: copy it on the device (no host sync)."""
    return offset.detach().clone() if isinstance(offset, torch.Tensor) else int(offset)


def flashlight_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                                 value: torch.Tensor, attention_mask: torch.Tensor | None,
                                 scaling: float | None = None, dropout: float = 0.0,
                                 **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Transformers' attention signature: q [B,H,Q,D], k/v [B,Hk,K,D] -> ([B,Q,H,D], None).

    The family's eager attention (:func:`flashlight_hf.transformers.registry.attention_for`) is
    traced with this layer's arguments; :func:`flashlight_hf.transformers.layers.classify_kwargs`
    decides, per keyword argument, how the program honours it (never silently dropped)."""
    from flashlight_hf.transformers import layers  # the compiler: loaded on the first call, not on registration

    fam = registry.attention_for(module)
    if dropout and module.training:
        # attention dropout runs inside the generated training kernels where the program allows
        try:
            if isinstance(attention_mask, StructuredMask):
                return layers.run_layer_structured(module, fam, query, key, value, attention_mask.spec, scaling,
                                                   kwargs, dropout=dropout), None
            if attention_mask is not None:
                return layers.run_layer(module, fam, query, key, value, as_additive(attention_mask, query.dtype),
                                        scaling, kwargs, dropout=dropout), None
            why = "no mask was passed"
        except NotImplementedError as exc:
            why = str(exc)
        registry.warn_once("dropout", f"flashlight: attention dropout > 0 in training is not fused ({why}); running "
                           "the family's eager attention")
        eager = fam.transformers_eager or fam.eager
        return eager(module, query, key, value, as_additive(attention_mask, query.dtype), scaling=scaling,
                     dropout=dropout, **kwargs)
    if attention_mask is None:
        raise RuntimeError("flashlight: the attention function received no mask. Transformers passes none "
                           "when the backend's mask function is not registered: call flashlight_hf.enable() "
                           "(importing flashlight_hf registers both) before building the model's masks.")
    if isinstance(attention_mask, StructuredMask):
        return layers.run_layer_structured(module, fam, query, key, value, attention_mask.spec, scaling,
                                             kwargs), None
    out = layers.run_layer(module, fam, query, key, value, as_additive(attention_mask, query.dtype), scaling, kwargs)
    return out, None


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
        # __dict__, not getattr: Transformers' lazy modules import submodules on attribute access
        # (5.17's top-level module would import vision processors that need torchvision)
        if getattr(mod, "__name__", "").startswith("transformers") and \
                getattr(mod, "__dict__", {}).get("is_flash_attention_requested") is original:
            mod.is_flash_attention_requested = patched


def _register_attention(modeling_utils: Any) -> None:
    _patch_flash_name_check()
    modeling_utils.AttentionInterface.register(NAME, flashlight_attention_forward)


def _register_mask(masking_utils: Any) -> None:
    masking_utils.AttentionMaskInterface.register(NAME, flashlight_mask)


def _now_or_once_loaded(name: str, callback: Callable[[Any], None]) -> None:
    """``callback(module)`` now, importing ``name`` if needed; after its import if it is half-way
    (``enable`` called from the import hook while that module is still loading)."""
    if name not in sys.modules:
        importlib.import_module(name)
    hook.when_imported(name, callback)


def enable() -> None:
    """Register ``"flashlight"`` with Transformers' attention and mask interfaces (idempotent),
    route the table's layer overrides (each once its modeling file is imported), and install
    the patches for families outside the interface."""
    _now_or_once_loaded("transformers.modeling_utils", _register_attention)
    _now_or_once_loaded("transformers.masking_utils", _register_mask)
    for fam in registry.FAMILIES.values():
        if fam.layer_override is not None and fam.eager is not None:
            hook.when_imported(fam.eager, _install_layer_override)
    from flashlight_hf.patches import install as install_patches  # families outside the interface

    install_patches()


def disable() -> None:
    """Remove ``"flashlight"`` from both interfaces (models already using it must switch impl)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    for callback in (_register_attention, _register_mask, _install_layer_override):
        hook.cancel(callback)
    for iface in (AttentionInterface, AttentionMaskInterface):
        iface._global_mapping.pop(NAME, None)
    remove_layer_overrides()
    from flashlight_hf.patches import uninstall as uninstall_patches

    uninstall_patches()


# --------------------------------------------------------------------------------------------
# Layer overrides: families whose attention math spans the module's forward
# --------------------------------------------------------------------------------------------

_installed: dict[tuple[str, str], Callable] = {}


def _install_layer_override(modeling: Any) -> None:
    """Route the attention class the family table names in ``layer_override`` for this modeling
    module to its flashlight forward while the module's config selects "flashlight"; any other
    implementation runs the class's original forward."""
    for fam in registry.FAMILIES.values():
        if fam.layer_override is None or fam.eager != modeling.__name__:
            continue
        cls_name, forward_module = fam.layer_override
        if (fam.eager, cls_name) in _installed:
            continue
        cls = getattr(modeling, cls_name, None)
        if cls is None:
            raise RuntimeError(f"flashlight: cannot find {fam.eager}.{cls_name} to route its attention; this "
                               "Transformers version moved it: update flashlight_hf.transformers.registry")
        make = importlib.import_module(forward_module).flashlight_forward
        original = cls.forward
        _installed[(fam.eager, cls_name)] = original
        cls.forward = _dispatching(original, make(original), NAME)


def remove_layer_overrides() -> None:
    """Restore every overridden class's original forward."""
    for (path, cls_name), original in list(_installed.items()):
        setattr(getattr(importlib.import_module(path), cls_name), "forward", original)
        del _installed[(path, cls_name)]


def _dispatching(original: Callable, fused: Callable, impl_name: str) -> Callable:
    def forward(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if getattr(self.config, "_attn_implementation", None) == impl_name:
            return fused(self, *args, **kwargs)
        return original(self, *args, **kwargs)

    forward.__wrapped__ = original  # type: ignore[attr-defined]
    forward.__doc__ = original.__doc__
    return forward
