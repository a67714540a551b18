"""What every family patch shares: installing a forward on attention-module instances, undoing it,
one warning per fallback reason, and the mask conversions the families' own code expects.

A family patch replaces ``forward`` on the *instances* of one attention class inside one model
(never the class), so two models of the same family — one patched, one not — coexist. The
replacement is a method bound to the instance, so ``copy.deepcopy`` of a patched model gives a
patched copy running its own weights. It is dormant unless the model's config says
``"flashlight"``: the masks a family's model builds depend on ``config._attn_implementation``
(Transformers' mask interface), so the patched code only runs when it knows which mask format
it receives.
"""

from __future__ import annotations

import importlib
import types
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

from flashlight_hf.transformers.masks import as_dense

NAME = "flashlight"

# Key of the per-instance record: the instance's own ``forward`` entry before patching (or
# _MISSING), the implementation the model had before it was switched to flashlight, the patch,
# the model's config. Kept on the instance so that ``copy.deepcopy(model)`` copies it along.
_STATE = "_flashlight_patch_state"
_MISSING = object()

_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """One warning per distinct fallback reason per process (a 24-layer model warns once, not 24 times)."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


# The signature of a family's patched forward: (module, original bound forward, model config,
# *the module's own forward arguments) -> whatever the original forward returns.
ForwardImpl = Callable[..., Any]


@dataclass(frozen=True)
class FamilyPatch:
    """One family: which attention class of which Transformers module gets the fused forward."""

    model_type: str
    module: str  # e.g. "transformers.models.bloom.modeling_bloom"
    attention_class: str  # the exact class whose instances are patched (subclasses are not)
    forward: ForwardImpl
    about: str = ""
    # Extra instance-level hooks a family needs on the model (MPT: its layers never see
    # output_attentions); both idempotent, both given the model being patched / restored.
    install_model_hooks: Callable[[torch.nn.Module], None] | None = None
    remove_model_hooks: Callable[[torch.nn.Module], None] | None = None

    def cls(self) -> type:
        return getattr(importlib.import_module(self.module), self.attention_class)


def _original_forward(module: torch.nn.Module) -> Callable:
    own = module.__dict__[_STATE]["own"]
    return type(module).forward.__get__(module) if own is _MISSING else own


def _dispatch(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The patched ``forward``, bound to the instance: the family's fused forward while the config
    says flashlight, the original forward otherwise (a config switched behind the patch's back).

    A bound method, not a closure: ``copy.deepcopy`` rebinds it to the copied module, so a copy
    of a patched model runs its own weights."""
    state = module.__dict__[_STATE]
    original = _original_forward(module)
    if getattr(state["config"], "_attn_implementation", None) != NAME:
        return original(*args, **kwargs)
    # These families' programs take the boolean keep-mask as a tensor (their model code also does
    # arithmetic on it): a structured mask reaching them is made dense here, once per forward.
    args = tuple(as_dense(a) for a in args)
    kwargs = {k: as_dense(v) for k, v in kwargs.items()}
    return state["patch"].forward(module, original, state["config"], *args, **kwargs)



def attention_modules(model: torch.nn.Module, patch: FamilyPatch) -> list[torch.nn.Module]:
    cls = patch.cls()
    return [m for m in model.modules() if type(m) is cls]


def install_on(module: torch.nn.Module, patch: FamilyPatch, config: Any, previous_impl: str) -> bool:
    """Patch one instance; False when it already carries the patch."""
    if _STATE in module.__dict__:
        return False
    own = module.__dict__.get("forward", _MISSING)  # e.g. a wrapper someone installed before us
    module.__dict__[_STATE] = {"own": own, "previous": previous_impl, "patch": patch, "config": config}
    module.forward = types.MethodType(_dispatch, module)
    return True


def remove_from(module: torch.nn.Module) -> str | None:
    """Undo :func:`install_on`; returns the implementation recorded before patching (None if unpatched)."""
    state = module.__dict__.pop(_STATE, None)
    if state is None:
        return None
    if state["own"] is _MISSING:
        del module.forward
    else:
        module.forward = state["own"]
    return state["previous"]


def is_patched_module(module: torch.nn.Module) -> bool:
    return _STATE in module.__dict__


def previous_implementation(module: torch.nn.Module) -> str:
    """The attention implementation the model had before this (patched) module was patched."""
    return module.__dict__[_STATE]["previous"]


# -- masks ------------------------------------------------------------------------------------
# Under "flashlight" the models build masks through the flashlight mask function (a boolean
# keep-mask, True = attend). The fused programs take that boolean mask and turn it into the
# family's additive mask inside the kernel; the fallbacks (the family's original code) need the
# mask in the format the family's eager code expects, which these helpers produce.

def additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Boolean keep-mask -> the eager 0 / finfo.min float mask (what ``eager_mask`` builds)."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.where(mask, torch.zeros((), dtype=dtype, device=mask.device), torch.finfo(dtype).min)


def fallback(key: str, reason: str, model_type: str, call: Callable[[], Any]) -> Any:
    """Run the family's original code for an option the fused program does not cover, saying so once."""
    warn_once(f"{model_type}:{key}", f"flashlight: {reason}; running {model_type}'s original (eager) attention "
              "for these calls")
    return call()


def mask_kind(mask: torch.Tensor) -> str:
    """How a fused program must apply ``mask``: a boolean keep-mask or an additive float mask."""
    return "keep" if mask.dtype == torch.bool else "add"


def apply_mask(scores: torch.Tensor, mask: torch.Tensor, kind: str, min_dtype: torch.dtype) -> torch.Tensor:
    """``scores + additive_mask`` exactly as the eager code adds it, the conversion done in-kernel."""
    if kind == "keep":
        return scores + torch.where(mask, 0.0, torch.finfo(min_dtype).min).to(min_dtype)
    return scores + mask
