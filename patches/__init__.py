"""Patches for Transformers families whose attention bypasses ``AttentionInterface``.

Each family module replaces the core of one attention class's ``forward`` (scores, bias, mask,
softmax, times V) with a program written in plain PyTorch that reproduces the family's eager
math, compiled by :func:`flashlight_hf.compile` into one fused kernel per layer configuration.
The patch goes on the model's *instances* (never the class) and is undone cleanly.

Which families have a patch, and in which module, is the family table's ``patch`` field
(:data:`flashlight_hf.transformers.registry.FAMILIES`); a new family is one entry there plus one
module here defining ``PATCH``, a :class:`FamilyPatch`.

Entry points for the front door (:mod:`flashlight_hf.transformers.interface`) and users:

* :func:`install` / :func:`uninstall` — hook Transformers so that loading a patched family with
  ``attn_implementation="flashlight"`` or calling ``model.set_attn_implementation(...)`` applies
  or undoes the patch (``flashlight_hf.enable()`` calls :func:`install`);
* :func:`apply` / :func:`remove` / :func:`is_patched` — the same by hand, on one model;
* :data:`PATCHES` / :data:`PATCHED_MODEL_TYPES` — the patches, by ``config.model_type``, that
  apply on the installed Transformers. Computed on first use (it imports the family modules,
  hence the compiler, and reads the modeling files' source): :func:`install` stays cheap, so
  registering the backend leaves Transformers' import time as it was.

A family is patched only where the installed Transformers' modeling file bypasses the interface:
GPT-J does on 5.17 (patched there) but goes through ``AttentionInterface`` from 5.2x, where the
front door's interface registration serves it and "gptj" is not in :data:`PATCHED_MODEL_TYPES`.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from flashlight_hf.transformers.registry import FAMILIES

from . import _transformers
from ._base import (NAME, FamilyPatch, attention_modules, install_on, is_patched_module, previous_implementation,
                    remove_from)

_patches: dict[str, FamilyPatch] | None = None


def patches() -> dict[str, FamilyPatch]:
    """``model_type -> FamilyPatch`` for the table's families whose modeling file, in the
    installed Transformers, bypasses the interface (loaded once)."""
    global _patches
    if _patches is None:
        found: dict[str, FamilyPatch] = {}
        for fam in FAMILIES.values():
            if fam.patch is None:
                continue
            patch: FamilyPatch = importlib.import_module(f"{__name__}.{fam.patch}").PATCH
            if patch.model_type != fam.model_type:
                raise ValueError(f"patches.{fam.patch}.PATCH is for {patch.model_type!r}, the family table "
                                 f"names it for {fam.model_type!r}")
            if _transformers.bypasses_attention_interface(patch.module):
                found[fam.model_type] = patch
        _patches = found
    return _patches


def __getattr__(name: str) -> Any:
    if name == "PATCHES":
        return patches()
    if name == "PATCHED_MODEL_TYPES":
        return frozenset(patches())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# Implementations a patched model can be switched back to without reloading: its attention
# modules were built as the family's eager class, which also serves these names at run time.
_SWITCHABLE: dict[str, tuple[str, ...]] = {"falcon": ("eager", "sdpa")}


def family_patch(model: torch.nn.Module) -> FamilyPatch | None:
    """The patch for ``model``'s family, or None when its family is not patched here."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    fam = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if fam is None or fam.patch is None:
        return None  # no need to load the patches for a family the table patches nowhere
    return patches().get(model_type)


def is_patched(model: torch.nn.Module) -> bool:
    return any(is_patched_module(m) for m in model.modules())


def apply(model: torch.nn.Module) -> bool:
    """Patch ``model``'s attention layers and switch its config to "flashlight".

    Returns False (and changes nothing) when the model's family is not one of
    :data:`PATCHED_MODEL_TYPES`; applying twice is a no-op."""
    patch = family_patch(model)
    if patch is None:
        return False
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
    """Apply the patches on load / switch (idempotent; ``flashlight_hf.enable()`` calls it)."""
    _transformers.install(apply, switch)


def uninstall() -> None:
    """Stop applying patches on load / switch (models already patched stay patched: :func:`remove`)."""
    _transformers.uninstall()


__all__ = ["PATCHED_MODEL_TYPES", "PATCHES", "FamilyPatch", "apply", "family_patch", "install", "is_patched",
           "patches", "remove", "switch", "uninstall"]
