"""Patches for Transformers families whose attention bypasses ``AttentionInterface``.

Each family module replaces the core of one attention class's ``forward`` (scores, bias, mask,
softmax, times V) with a program written in plain PyTorch that reproduces the family's eager
math, compiled by :func:`flashlight_hf.compile` into one fused kernel per layer configuration.
The patch goes on the model's *instances* (never the class) and is undone cleanly.

Entry points for the front door (``flashlight_hf.hf``) and users:

* :func:`install` / :func:`uninstall` — hook Transformers so that loading a patched family with
  ``attn_implementation="flashlight"`` or calling ``model.set_attn_implementation(...)`` applies
  or undoes the patch (``flashlight_hf.hf.enable()`` calls :func:`install`);
* :func:`apply` / :func:`remove` / :func:`is_patched` — the same by hand, on one model;
* :data:`PATCHED_MODEL_TYPES` — the ``config.model_type`` values handled here.

A family is patched only where the installed Transformers' modeling file bypasses the interface:
GPT-J does on 5.17 (patched there) but goes through ``AttentionInterface`` from 5.2x, where the
front door's interface registration serves it and "gptj" is not in :data:`PATCHED_MODEL_TYPES`.
"""

from __future__ import annotations

import torch

from . import _transformers
from ._base import (NAME, FamilyPatch, attention_modules, install_on, is_patched_module, previous_implementation,
                    remove_from)
from .bloom import PATCH as _BLOOM
from .deberta_v2 import PATCH as _DEBERTA_V2
from .falcon import PATCH as _FALCON
from .gpt_neo import PATCH as _GPT_NEO
from .gptj import PATCH as _GPTJ
from .mpt import PATCH as _MPT

PATCHES: dict[str, FamilyPatch] = {
    p.model_type: p for p in (_BLOOM, _MPT, _FALCON, _GPT_NEO, _DEBERTA_V2, _GPTJ)
    if _transformers.bypasses_attention_interface(p.module)
}
PATCHED_MODEL_TYPES: frozenset[str] = frozenset(PATCHES)

# Implementations a patched model can be switched back to without reloading: its attention
# modules were built as the family's eager class, which also serves these names at run time.
_SWITCHABLE: dict[str, tuple[str, ...]] = {"falcon": ("eager", "sdpa")}


def family_patch(model: torch.nn.Module) -> FamilyPatch | None:
    """The patch for ``model``'s family, or None when its family is not patched here."""
    return PATCHES.get(getattr(getattr(model, "config", None), "model_type", None))


def is_patched(model: torch.nn.Module) -> bool:
    return any(is_patched_module(m) for m in model.modules())


def apply(model: torch.nn.Module) -> bool:
    """Patch ``model``'s attention layers and switch its config to "flashlight".

    Returns False (and changes nothing) when the model's family is not one of
    :data:`PATCHED_MODEL_TYPES`; applying twice is a no-op."""
    patch = family_patch(model)
    if patch is None:
        return False
    import flashlight_hf.hf  # noqa: F401 - "flashlight" must be in both interfaces before masks are built

    modules = attention_modules(model, patch)
    if not modules:
        raise ValueError(
            f"flashlight: {type(model).__name__} has no {patch.attention_class} layers to patch (its attention "
            f"modules were built for attn_implementation={model.config._attn_implementation!r}); load the model "
            "with attn_implementation='flashlight' or 'eager'")
    previous = model.config._attn_implementation
    previous = "eager" if previous in (None, NAME) else previous
    for m in modules:
        install_on(m, patch, model.config, previous)
    if patch.install_model_hooks is not None:
        patch.install_model_hooks(model)
    _transformers.set_config_implementation(model.config, NAME)
    return True


def remove(model: torch.nn.Module, attn_implementation: str | None = None) -> bool:
    """Undo :func:`apply`: the original ``forward`` on every layer and ``attn_implementation``
    (default: the one the model had before it was patched, "eager" for a model loaded with
    "flashlight") in its config. Returns False when the model was not patched."""
    patch = family_patch(model)
    if patch is None or not is_patched(model):
        return False
    first = next(m for m in model.modules() if is_patched_module(m))
    target = attn_implementation or previous_implementation(first)
    allowed = _SWITCHABLE.get(patch.model_type, ("eager",))
    if target not in allowed:
        raise ValueError(
            f"flashlight: cannot switch this {type(model).__name__} from 'flashlight' to {target!r}: its attention "
            f"modules were built as {patch.model_type}'s eager class, which runs only {list(allowed)}. Use one of "
            f"those, or reload the model with attn_implementation={target!r}")
    for m in model.modules():
        remove_from(m)
    if patch.remove_model_hooks is not None:
        patch.remove_model_hooks(model)
    _transformers.set_config_implementation(model.config, target)
    return True


def switch(model: torch.nn.Module, attn_implementation: str) -> bool:
    """``set_attn_implementation`` for patched families; False when Transformers' own method applies."""
    if family_patch(model) is None:
        return False
    if attn_implementation == NAME:
        return apply(model)
    if is_patched(model):
        return remove(model, attn_implementation)
    return False


def install() -> None:
    """Apply the patches on load / switch (idempotent; ``flashlight_hf.hf.enable()`` calls it)."""
    _transformers.install(apply, switch)


def uninstall() -> None:
    """Stop applying patches on load / switch (models already patched stay patched: :func:`remove`)."""
    _transformers.uninstall()


__all__ = ["PATCHED_MODEL_TYPES", "PATCHES", "FamilyPatch", "apply", "family_patch", "install", "is_patched",
           "remove", "switch", "uninstall"]
