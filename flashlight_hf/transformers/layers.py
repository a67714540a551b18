"""The compiled program of one attention layer: what the attention function runs.

Given a layer's family (:func:`flashlight_hf.transformers.registry.attention_for`) and its call,
this module decides what happens to each keyword argument the layer passes to attention
(:func:`classify_kwargs`: never dropped silently), builds the traced program for a layer
configuration (:func:`layer_program`), with the module's own parameters (GPT-OSS sinks) as
kernel inputs, caches it, and runs it (:func:`run_layer` with a dense mask,
:func:`run_layer_structured` with the mask as structure; a decode step of a grouped-query layer
folds a group's query heads into rows where the family table allows it).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from flashlight_hf import settings
from flashlight_hf.compiler.compiled import CompiledAttention
from flashlight_hf.compiler.runtime import autocast
from flashlight_hf.transformers.masks import MaskSpec, SafeSoftmax, keep_from_structure
from flashlight_hf.transformers.registry import FamilyAttention, warn_once

# --------------------------------------------------------------------------------------------
# Keyword arguments a layer passes to attention
# --------------------------------------------------------------------------------------------

# Carried by the mask Transformers builds through the "flashlight" mask function (sliding
# window, causal vs bidirectional, packed-sequence boundaries from position_ids), or meaningful
# only to FlashAttention's varlen path. They reach the traced eager function only when it names
# them as parameters: a changing position_ids tensor as an unused kernel input would only cost
# a new specialisation per length.
MASK_CARRIED = frozenset({"sliding_window", "is_causal", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k",
                          "max_length_q", "max_length_k"})
# Flags with no effect on the attention output.
NO_EFFECT = frozenset({"use_cache", "output_hidden_states", "output_router_logits", "deterministic", "return_dict",
                       "cache_position"})
# Consumed by the layer before it calls attention (the KV cache is already applied; encoder
# states are already projected to K/V).
CONSUMED_BEFORE = frozenset({"past_key_values", "past_key_value", "cache", "encoder_hidden_states",
                             "encoder_attention_mask"})
# Passed to the family's eager code and traced: tensors become kernel inputs, plain values
# constants of the trace (and of the cache key).
TRACED = frozenset({"softcap", "s_aux", "position_bias", "head_mask", "layer_head_mask"})
KNOWN_KWARGS = MASK_CARRIED | NO_EFFECT | CONSUMED_BEFORE | TRACED | {"output_attentions"}


@dataclass
class LayerKwargs:
    """A layer's attention keyword arguments, sorted by what the traced program does with them."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # kernel inputs
    constants: dict[str, Any] = field(default_factory=dict)  # constants of the trace


def classify_kwargs(fam: FamilyAttention, kwargs: dict[str, Any]) -> LayerKwargs:
    """Decide, per keyword argument, how the traced program honours it; never drop one silently.

    Unknown names are passed to the family's eager code like known traced ones, with one warning
    naming them; values that are neither tensors nor plain Python values raise."""
    params = _parameters(fam.eager)
    out = LayerKwargs()
    for name, value in kwargs.items():
        if name == "output_attentions":
            if value:
                warn_once("output_attentions", "flashlight: output_attentions=True: the fused kernel never "
                          "materialises attention weights, so the layers return None for them; use "
                          "attn_implementation='eager' to inspect weights")
            continue
        if name in CONSUMED_BEFORE or ((name in MASK_CARRIED or name in NO_EFFECT) and name not in params):
            continue
        if name not in KNOWN_KWARGS:
            warn_once(f"kwarg:{fam.family}:{name}", f"flashlight: {fam.family} passes the attention keyword "
                      f"argument {name!r}, which flashlight does not know; it is passed to {fam.source} as is and "
                      "traced into the kernel. Check the result against attn_implementation='eager'.")
        if isinstance(value, torch.Tensor):
            out.tensors[name] = value
        elif isinstance(value, (int, float, bool, str, type(None))):
            out.constants[name] = value
        else:
            raise NotImplementedError(f"flashlight: {fam.family} passes the attention keyword argument {name!r} "
                                      f"of type {type(value).__name__}, which cannot become part of a traced "
                                      "kernel; use attn_implementation='sdpa' or 'eager' for this model")
    return out


@functools.lru_cache(maxsize=None)
def _parameters(fn: Callable) -> frozenset[str]:
    """The parameter names of an eager function (cached: asked once per layer call)."""
    try:
        return frozenset(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return frozenset()


# --------------------------------------------------------------------------------------------
# The traced program of one layer configuration
# --------------------------------------------------------------------------------------------

_PLAIN = (int, float, bool, str, type(None))


class _ModuleView:
    """Stands in for the attention module while its family's eager code is traced.

    The module's own parameters (GPT-OSS reads its sinks from ``module.sinks``) are the
    program's inputs, so every layer shares one kernel and gradients reach them; other
    attributes read through to the module, and the plain values read are recorded so a layer
    whose values differ (another head count, another training flag) gets its own program."""

    def __init__(self, module: torch.nn.Module, tensors: dict[str, torch.Tensor], seen: dict[str, Any],
                 overrides: dict[str, Any] | None = None):
        object.__setattr__(self, "_fl_module", module)
        object.__setattr__(self, "_fl_tensors", tensors)
        object.__setattr__(self, "_fl_seen", seen)
        object.__setattr__(self, "_fl_overrides", overrides or {})

    def __getattr__(self, name: str) -> Any:
        overrides = object.__getattribute__(self, "_fl_overrides")
        if name in overrides:  # what the program changes on purpose (GQA groups folded into rows)
            return overrides[name]
        tensors = object.__getattribute__(self, "_fl_tensors")
        if name in tensors:
            return tensors[name]
        value = getattr(object.__getattribute__(self, "_fl_module"), name)
        if isinstance(value, _PLAIN):
            object.__getattribute__(self, "_fl_seen")[name] = value
        return value


@dataclass
class LayerProgram:
    """One compiled program and the module attributes its trace read (to share it safely)."""

    fn: CompiledAttention
    param_names: tuple[str, ...]
    seen: dict[str, Any] = field(default_factory=dict)
    traced: bool = False  # seen is complete only once the program has run (been traced) once

    def fits(self, module: torch.nn.Module) -> bool:
        return self.traced and all(getattr(module, n, _MISSING) == v for n, v in self.seen.items())


_MISSING = object()
_programs: dict[Any, list[LayerProgram]] = {}
# per attention module: call key -> (program, GQA rows?, names of the kwargs it takes as
# tensors), so a layer's repeated calls skip classifying kwargs and building the full program
# key (parameters, sorted constants); weak: models come and go
_layer_memo: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class MaskStructure:
    """How a structured mask enters a program: its signature (what changes the code), the
    family's mask function, how many mask tensors lead the inputs, and whether a decode step's
    rows are a GQA group's query heads."""

    sig: tuple
    # not part of the cache key: each forward builds a new closure; its code and plain values
    # are in ``sig``, its tensors are run-time inputs
    mask_function: Callable = field(compare=False, hash=False)
    n_mask: int = 0
    gqa_rows: bool = False


def layer_program(module: torch.nn.Module, fam: FamilyAttention, scaling: float | None,
                  kw: LayerKwargs, structure: MaskStructure | None = None) -> LayerProgram:
    """The compiled program for this layer configuration, built on first use, then cached.

    Without ``structure``: ``fn(q, k, v, mask, *kw.tensors, *params)`` with the mask a tensor.
    With it: ``fn(q, k, v, *mask_tensors, *kw.tensors, *params)``, the mask built *inside* the
    program from its pieces (:func:`flashlight_hf.transformers.masks.keep_from_structure`) as −inf selects the
    generator reads as loop bounds, the family's softmax run as
    :class:`~flashlight_hf.transformers.masks.SafeSoftmax` (rows that see no key: 0) unless its rows can
    never be empty (sinks)."""
    params = dict(module.named_parameters(recurse=False))
    names = tuple(sorted(kw.tensors))
    key = (type(module), fam.eager, repr(scaling), names, tuple(sorted(params)),
           tuple(sorted((k, repr(v)) for k, v in kw.constants.items())), structure)
    candidates = _programs.setdefault(key, [])
    for prog in candidates:
        if prog.fits(module):
            return prog
    eager, constants, param_names = fam.eager, dict(kw.constants), tuple(sorted(params))
    entry = LayerProgram(fn=None, param_names=param_names)  # type: ignore[arg-type]
    rows = structure is not None and structure.gqa_rows
    overrides = {"num_key_value_groups": 1} if rows else None
    n_mask = 1 if structure is None else structure.n_mask

    def program(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        extra = rest[n_mask:]
        view = _ModuleView(module, dict(zip(param_names, extra[len(names):])), entry.seen, overrides)
        call = dict(scaling=scaling, dropout=0.0, **constants, **dict(zip(names, extra[:len(names)])))
        if structure is None:
            out = eager(view, q, k, v, rest[0], **call)[0]
        else:
            keep = keep_from_structure(structure.sig, structure.mask_function, q, k, list(rest[:n_mask]),
                                       q_rows=1 if rows else None)
            bias = torch.where(keep, 0.0, float("-inf")).to(q.dtype)
            with contextlib.nullcontext() if fam.rows_never_empty else SafeSoftmax():
                out = eager(view, q, k, v, bias, **call)[0]
        entry.traced = True
        return out

    suffix = "" if structure is None else "_structured_mask" + ("_gqa_rows" if rows else "")
    program.__name__ = f"{type(module).__name__}_attention{suffix}"
    entry.fn = CompiledAttention(program, guard=False)  # its outside values are in its key
    candidates.append(entry)
    return entry


def _gqa_rows(fam: FamilyAttention, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
              kw: LayerKwargs) -> bool:
    """A decode step (one query row) of a grouped-query layer: the G query heads that share a KV
    head become G rows of one program, which then reads that KV head's cache once instead of G
    times. Only for families the table marks ``gqa_rows`` (the Llama-pattern eager code) with no
    per-head tensors (sinks, biases); ``settings.current().gqa_rows`` (FLASHLIGHT_GQA_ROWS=0) turns it off."""
    groups = int(getattr(module, "num_key_value_groups", 1) or 1)
    if query.shape[-2] != 1 or groups <= 1 or kw.tensors or key.shape[1] * groups != query.shape[1]:
        return False
    cast = dict(autocast.state([query.device.type])).get(query.device.type)
    if cast is not None and cast != query.dtype:
        return False  # an autocast region changes the output's dtype: the plain layout returns eager's
    if any(True for _ in module.named_parameters(recurse=False)):
        return False
    return fam.gqa_rows and settings.current().gqa_rows


def run_layer_structured(module: torch.nn.Module, fam: FamilyAttention, query: torch.Tensor, key: torch.Tensor,
                         value: torch.Tensor, spec: MaskSpec, scaling: float | None,
                         kwargs: dict[str, Any], dropout: float = 0.0) -> torch.Tensor:
    """The family's attention output ``[B, Q, H, D]`` with the mask passed as structure;
    ``dropout`` > 0: attention dropout inside the kernels (NotImplementedError where it cannot)."""
    sig, mask_tensors = spec.structure()
    # what this layer ran last time with the same call shape: a decode loop repeats it at every
    # step. The key holds the keyword arguments' names, plain values and types (everything
    # classify_kwargs decides on), so a hit skips classifying them again.
    memo = _layer_memo.get(module)
    if memo is None:
        memo = _layer_memo[module] = {}
    memo_key = (fam.eager, scaling, sig, len(mask_tensors),
                tuple([(n, v) if type(v) in _PLAIN else (n, type(v)) for n, v in kwargs.items()]),
                query.shape[1], query.shape[2], key.shape[1], settings.current().gqa_rows,
                autocast.state([query.device.type]))
    hit = memo.get(memo_key)
    if hit is not None and hit[0].fits(module):
        prog, rows, tensor_names = hit
    else:
        kw = classify_kwargs(fam, kwargs)
        rows = _gqa_rows(fam, module, query, key, kw)
        prog = layer_program(module, fam, scaling, kw,
                             MaskStructure(sig, spec.mask_function, len(mask_tensors), rows))
        tensor_names = tuple(sorted(kw.tensors))
        if len(memo) > 64:
            memo.clear()
        memo[memo_key] = (prog, rows, tensor_names)
    params = [getattr(module, n) for n in prog.param_names]
    tensors = [kwargs[n] for n in tensor_names]
    if dropout:
        if rows:
            raise NotImplementedError("flashlight: attention dropout in the one-row GQA decode layout")
        return prog.fn.dropout(dropout)(query, key, value, *mask_tensors, *tensors, *params)
    if not rows:
        return prog.fn(query, key, value, *mask_tensors, *tensors, *params)
    b, h, _, d = query.shape
    hk, dv = key.shape[1], value.shape[-1]
    # the kernel writes [B, 1, H, Dv] (heads KV-major, as repeat_kv orders them) through a
    # [B, G, Hk, Dv] view, the program's output layout: no copy after
    out = torch.empty(b, 1, h, dv, dtype=query.dtype, device=query.device)
    # [B, H, 1, D] -> [B, Hk, G, D]: a view (heads split into KV head and group member)
    prog.fn.into(out.view(b, hk, h // hk, dv).transpose(1, 2), query.reshape(b, hk, h // hk, d), key, value,
                 *mask_tensors, *tensors, *params)
    return out


def run_layer(module: torch.nn.Module, fam: FamilyAttention, query: torch.Tensor, key: torch.Tensor,
              value: torch.Tensor, mask: torch.Tensor | None, scaling: float | None,
              kwargs: dict[str, Any], dropout: float = 0.0) -> torch.Tensor:
    """The family's attention output ``[B, Q, H, D]`` through its compiled program; ``dropout``
    > 0: attention dropout inside the kernels (NotImplementedError where it cannot)."""
    kw = classify_kwargs(fam, kwargs)
    prog = layer_program(module, fam, scaling, kw)
    params = [getattr(module, n) for n in prog.param_names]
    fn = prog.fn.dropout(dropout) if dropout else prog.fn
    return fn(query, key, value, mask, *[kw.tensors[n] for n in sorted(kw.tensors)], *params)
