"""Every private Transformers API the patches touch, in one place (``tests/test_patches.py``
checks each of them and fails loudly when one moves).

How Transformers 5.x treats an implementation name for a family outside the attention interface:

* Loading (``from_pretrained`` / ``from_config``): ``get_correct_attn_implementation`` accepts
  any name registered in ``AttentionInterface`` — "flashlight" included — for every model, and
  writes it to ``config._attn_implementation``. BLOOM, MPT and DeBERTa-v2 then build their eager
  modules; Falcon, GPT-Neo (and GPT-J on 5.17) index a module-level dict of attention classes by
  that name (``FALCON_ATTENTION_CLASSES`` / ``GPT_NEO_ATTENTION_CLASSES`` / ``GPTJ_ATTENTION_CLASSES``) and would raise ``KeyError``:
  :func:`install` maps "flashlight" to their eager class there, once each modeling file is imported.
* Switching (``set_attn_implementation``): for a class whose modeling source never calls
  ``ALL_ATTENTION_FUNCTIONS.get_interface(`` (``_can_set_attn_implementation``), Transformers
  logs a warning and changes nothing. :func:`install` wraps ``PreTrainedModel.set_attn_implementation``
  so that, for the patched families only, "flashlight" applies the patch and any other name
  undoes it and sets that name; every other model goes straight to Transformers' own method.
* Nothing in Transformers runs after a model is built with "flashlight", so :func:`install`
  wraps ``PreTrainedModel.post_init`` (the public hook every model calls at the end of its
  ``__init__``) to apply the patch to the new model.

The implementation name is written to ``config._attn_implementation_internal``, the attribute
Transformers' own ``set_attn_implementation`` writes.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any, Callable

import torch

from flashlight_hf.transformers import hook

from ._base import NAME

# model_type -> (module, dict name) of the per-implementation attention-class tables that must know
# "flashlight" (GPT-J's exists only where GPT-J bypasses the interface: Transformers 5.17)
CLASS_TABLES = {
    "falcon": ("transformers.models.falcon.modeling_falcon", "FALCON_ATTENTION_CLASSES"),
    "gpt_neo": ("transformers.models.gpt_neo.modeling_gpt_neo", "GPT_NEO_ATTENTION_CLASSES"),
    "gptj": ("transformers.models.gptj.modeling_gptj", "GPTJ_ATTENTION_CLASSES"),
}

_installed: dict[str, Any] = {}


def set_config_implementation(config: Any, name: str) -> None:
    """What Transformers' ``set_attn_implementation`` does to the config, without its refusal."""
    config._attn_implementation_internal = name


def bypasses_attention_interface(module_name: str) -> bool:
    """Whether a modeling file computes attention itself: the same source test Transformers'
    ``_can_set_attn_implementation`` uses."""
    source = inspect.getsource(importlib.import_module(module_name))
    return "ALL_ATTENTION_FUNCTIONS.get_interface(" not in source


def _register_table(modeling: Any) -> None:
    for module_name, table_name in CLASS_TABLES.values():
        if module_name != modeling.__name__:
            continue
        table = getattr(modeling, table_name, None)
        if table is not None and NAME not in table:
            table[NAME] = table["eager"]
            _installed.setdefault("tables", []).append(table)


def _register_in_class_tables() -> None:
    """Each table learns "flashlight" as soon as its modeling file has been imported (now, if it
    has): importing one here would load every such model file with Transformers."""
    for module_name, _ in CLASS_TABLES.values():
        hook.when_imported(module_name, _register_table)


def _unregister_from_class_tables() -> None:
    hook.cancel(_register_table)
    for table in _installed.pop("tables", []):
        table.pop(NAME, None)


def install(apply: Callable[[torch.nn.Module], bool], switch: Callable[[torch.nn.Module, str], bool]) -> None:
    """Hook loading and switching (idempotent). ``apply(model)`` patches a model built with
    "flashlight"; ``switch(model, name)`` handles ``set_attn_implementation`` for a patched family
    and returns False when Transformers' own method should run."""
    if "post_init" in _installed:
        return
    from transformers import PreTrainedModel

    _register_in_class_tables()
    post_init = PreTrainedModel.post_init
    set_impl = PreTrainedModel.set_attn_implementation

    @functools.wraps(post_init)
    def post_init_then_patch(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = post_init(self, *args, **kwargs)
        if getattr(self.config, "_attn_implementation", None) == NAME:
            apply(self)
        return out

    @functools.wraps(set_impl)
    def set_attn_implementation(self: Any, attn_implementation: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(attn_implementation, str) and switch(self, attn_implementation):
            return None
        return set_impl(self, attn_implementation, *args, **kwargs)

    post_init_then_patch._flashlight_original = post_init  # type: ignore[attr-defined]
    set_attn_implementation._flashlight_original = set_impl  # type: ignore[attr-defined]
    PreTrainedModel.post_init = post_init_then_patch
    PreTrainedModel.set_attn_implementation = set_attn_implementation
    _installed["post_init"] = post_init
    _installed["set_attn_implementation"] = set_impl


def uninstall() -> None:
    """Undo :func:`install`: Transformers' own methods and tables again (patched models stay patched)."""
    from transformers import PreTrainedModel

    if "post_init" in _installed:
        PreTrainedModel.post_init = _installed.pop("post_init")
        PreTrainedModel.set_attn_implementation = _installed.pop("set_attn_implementation")
    _unregister_from_class_tables()


def installed() -> bool:
    return "post_init" in _installed
