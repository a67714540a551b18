"""The family table: everything flashlight knows about a Transformers model family, in one place.

A Transformers family computes attention with the eager function of its own modeling file
(``eager_attention_forward``: its ``repeat_kv``, scaling, softcap, sinks, float32 softmax…).
Tracing *that* function with a layer's real arguments is what makes the generated kernel exact
for the family. :data:`FAMILIES` holds one :class:`Family` per ``model_type``; adding a family
is adding one entry here (plus a patch module in ``patches/`` where its modeling file bypasses
``AttentionInterface``). Everything else reads the table:

* :func:`attention_for` (the attention function of :mod:`.interface`): the modeling module
  whose ``eager_attention_forward`` is traced (``eager``), or a program of :mod:`.programs`
  traced instead (``program``: a spelling the generator fuses where the literal one does not;
  none today). A family without ``eager`` warns once, naming it, and traces the
  ``eager_attention_forward`` its own modeling file defines or, where there is none,
  :func:`~flashlight_hf.transformers.programs.generic_attention` (Llama-style);
* :mod:`.layers`: ``gqa_rows`` (a decode step may fold a GQA group's query heads into rows) and
  ``rows_never_empty`` (attention sinks: the softmax is traced as written, not as SafeSoftmax);
* :func:`flashlight_hf.transformers.interface.enable`: ``layer_override``, for families whose
  attention math spans the module's forward, not one interface call (DiffLlama: two interface
  calls combined ``o1 - λ·o2`` and group-normed in its forward; :mod:`.differential` runs that
  as one program);
* :mod:`flashlight_hf.patches`: ``patch``, the family's patch module (families outside the
  interface on the installed Transformers);
* :mod:`flashlight_hf.model_zoo`: the families with a ``kind`` are the zoo's, with their
  ``attention`` features (what the compiler must express for the family to run fused).

Module paths are strings, imported on first use: reading the table imports no Transformers
modeling file. ``tests/test_zoo_families.py`` and ``tests/test_transformers_interface.py`` check
that every module named here exists.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal

from flashlight_hf.transformers import programs

if TYPE_CHECKING:
    import torch

Kind = Literal["causal", "encoder", "encoder-decoder"]

# The attention features a Family may name; a typo in a new entry fails at import.
FEATURES: frozenset[str] = frozenset({
    "causal-mask",        # queries see earlier keys only
    "bidirectional",      # encoder self-attention: padding is the only mask
    "padding-mask",       # per-sequence key padding
    "kv-cache",           # decoding with a growing (dynamic) or preallocated (static) cache
    "rope",               # rotary positions, applied before attention (not part of the kernel)
    "absolute-positions",  # learned position embeddings, outside attention
    "gqa",                # fewer KV heads than query heads (repeat_kv inside the eager program)
    "mqa",                # one K/V head for all query heads
    "sliding-window",     # local attention on some or all layers (mask structure)
    "softcap",            # tanh logit soft-capping inside the scores
    "sinks",              # learned per-head sink logits joining the softmax (s_aux)
    "qk-norm",            # RMSNorm on queries and keys (outside attention)
    "custom-scaling",     # a softmax scale other than head_dim ** -0.5
    "relative-bias",      # an additive [1, H, Q, K] position bias tensor (T5)
    "alibi",              # linear position biases per head
    "local-attention",    # a fixed local window on some layers (GPT-Neo)
    "disentangled",       # content/position terms gathered from relative embeddings (DeBERTa-v2)
    "gather",             # index gathers inside the scores
    "differential",       # two softmax streams combined o1 - λ·o2, then a group norm
    "cross-attention",    # decoder queries over encoder keys/values
    "packing",            # several sequences per row, separated by position_ids resets
})


@dataclass(frozen=True)
class Family:
    """One Transformers model family (one ``model_type``) and every fact flashlight keeps on it."""

    model_type: str
    # "causal" / "encoder" / "encoder-decoder": a model-zoo family (a tiny config, tested);
    # None: a fact-only entry (not in the zoo, untested)
    kind: Kind | None = None
    attention: tuple[str, ...] = ()  # the attention features (FEATURES) it exercises
    about: str = ""
    # the modeling module whose ``eager_attention_forward`` the interface traces (private
    # Transformers layout, checked by tests/test_zoo_families.py); None: not verified
    eager: str | None = None
    # a function of flashlight_hf.transformers.programs traced instead of the family's own eager
    # function (same math, a spelling the generator fuses)
    program: str | None = None
    # the module of flashlight_hf.patches (e.g. "bloom") serving the family where its modeling
    # file bypasses AttentionInterface (patches/ decides per Transformers version)
    patch: str | None = None
    # Llama-pattern eager code (repeat_kv, scaled scores, mask, softmax, · V), nothing per head
    # besides: a decode step may fold a GQA group's query heads into rows
    gqa_rows: bool = False
    # every softmax row holds a finite logit besides the keys (attention sinks): a query that
    # sees no key attends to the sink only, never 0/0, so the softmax is traced as written
    rows_never_empty: bool = False
    # (attention class of ``eager``'s module, module whose ``flashlight_forward(original)`` is
    # that class's forward under "flashlight"): attention that spans the module's forward
    layer_override: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        unknown = set(self.attention) - FEATURES
        if unknown:
            raise ValueError(f"family {self.model_type!r} names unknown attention features {sorted(unknown)}; "
                             f"known: {', '.join(sorted(FEATURES))}")

    @property
    def supports_packing(self) -> bool:
        """Whether Transformers builds a packed-sequence mask from ``position_ids`` for this family."""
        return "packing" in self.attention


def _modeling(name: str) -> str:
    return f"transformers.models.{name}.modeling_{name}"


_DECODER = ("causal-mask", "rope", "kv-cache", "packing")

_ENTRIES = (
    # -- through AttentionInterface: the family's own eager function is traced -----------------
    Family("llama", "causal", (*_DECODER, "gqa"), eager=_modeling("llama"), gqa_rows=True,
           about="Llama-style decoder: SmolLM2, Llama 3.x. GQA repeats each KV head over a query group."),
    Family("mistral", "causal", (*_DECODER, "gqa", "sliding-window"), eager=_modeling("mistral"), gqa_rows=True,
           about="Mistral 7B: Llama attention with a sliding window on every layer."),
    Family("qwen2", "causal", (*_DECODER, "gqa", "sliding-window"), eager=_modeling("qwen2"), gqa_rows=True,
           about="Qwen2/2.5: biased QKV projections; optional sliding window on the upper layers."),
    Family("qwen3", "causal", (*_DECODER, "gqa", "qk-norm", "sliding-window"), eager=_modeling("qwen3"),
           gqa_rows=True,
           about="Qwen3: RMSNorm on queries and keys per head; optional sliding window on the upper layers."),
    Family("gemma2", "causal", (*_DECODER, "gqa", "sliding-window", "softcap", "custom-scaling"),
           eager=_modeling("gemma2"), gqa_rows=True,
           about="Gemma 2: tanh soft-capped scores, sliding and global layers alternating, "
           "scale query_pre_attn_scalar ** -0.5."),
    Family("gemma3_text", "causal", (*_DECODER, "gqa", "qk-norm", "sliding-window", "custom-scaling"),
           eager=_modeling("gemma3"), gqa_rows=True,
           about="Gemma 3 (text): QK-norm instead of softcap, five sliding layers per global one."),
    Family("gpt_oss", "causal", ("causal-mask", "rope", "kv-cache", "gqa", "sliding-window", "sinks"),
           eager=_modeling("gpt_oss"), rows_never_empty=True,
           about="GPT-OSS: a learned sink logit per head joins each softmax (s_aux), sliding and full "
           "layers alternating, mixture-of-experts MLP. No packing: its model builds masks without "
           "position_ids."),
    Family("phi3", "causal", (*_DECODER, "gqa"), eager=_modeling("phi3"), gqa_rows=True,
           about="Phi-3: fused QKV projection, partial rotary possible."),
    Family("gpt_neox", "causal", _DECODER, eager=_modeling("gpt_neox"),
           about="GPT-NeoX / Pythia: fused QKV, rotary on a fraction of each head, parallel residual."),
    Family("gpt2", "causal", ("causal-mask", "absolute-positions", "kv-cache", "packing"), eager=_modeling("gpt2"),
           about="GPT-2: learned absolute positions, Conv1D projections, multi-head attention."),
    Family("diffllama", "causal", (*_DECODER, "gqa", "differential"), eager=_modeling("diffllama"),
           layer_override=("DiffLlamaAttention", "flashlight_hf.transformers.differential"),
           about="DiffLlama (Differential Transformer): one softmax over shared Q/K applied to two halves "
           "of V, combined o1 - λ·o2 per head pair, then a group RMSNorm; traced as one program."),
    Family("bert", "encoder", ("bidirectional", "padding-mask", "absolute-positions"), eager=_modeling("bert"),
           about="BERT encoder: all-MiniLM-L6-v2. No causal mask; padding is the only mask."),
    Family("modernbert", "encoder", ("bidirectional", "padding-mask", "rope", "sliding-window"),
           eager=_modeling("modernbert"),
           about="ModernBERT: rotary encoder, local (sliding-window) and global layers alternating."),
    Family("t5", "encoder-decoder", ("bidirectional", "causal-mask", "padding-mask", "kv-cache", "relative-bias",
                                     "custom-scaling", "cross-attention"), eager=_modeling("t5"),
           about="T5: bucketed relative position bias added to unscaled scores (position_bias), "
           "encoder-decoder with cross-attention."),
    Family("bart", "encoder-decoder", ("bidirectional", "causal-mask", "padding-mask", "kv-cache",
                                       "absolute-positions", "cross-attention"), eager=_modeling("bart"),
           about="BART: encoder-decoder with learned positions and cross-attention."),
    # -- outside AttentionInterface: a patch module of flashlight_hf.patches each --------------
    Family("bloom", "causal", ("alibi", "causal-mask", "padding-mask", "kv-cache"), patch="bloom",
           about="BLOOM: ALiBi from the padding mask's cumulative positions, float32 softmax (patches.bloom)."),
    Family("mpt", "causal", ("alibi", "causal-mask", "padding-mask", "kv-cache"), patch="mpt",
           about="MPT: ALiBi as a per-key bias table, boolean mask filled with finfo.min (patches.mpt)."),
    Family("falcon", "causal", ("alibi", "rope", "mqa", "gqa", "causal-mask", "padding-mask", "kv-cache"),
           patch="falcon",
           about="Falcon: ALiBi (bias before the 1/sqrt(d) scaling) or rotary, multi-query or grouped K/V "
           "(patches.falcon)."),
    Family("gpt_neo", "causal", ("sliding-window", "causal-mask", "padding-mask", "kv-cache"), patch="gpt_neo",
           about="GPT-Neo: alternating global and local (sliding-window) layers, unscaled float32 scores "
           "(patches.gpt_neo)."),
    # through the interface from Transformers 5.2x; on 5.17 it bypasses it and patches/gptj.py
    # serves it (the eager entry is then never consulted)
    Family("gptj", "causal", ("rope", "causal-mask", "padding-mask", "kv-cache"), eager=_modeling("gptj"),
           patch="gptj",
           about="GPT-J: partial rotary, float32 scores. Patched (patches.gptj) only on Transformers versions "
           "where it bypasses AttentionInterface (5.17); from 5.2x the front door's interface serves it."),
    Family("deberta-v2", "encoder", ("bidirectional", "padding-mask", "relative-bias", "gather"),
           patch="deberta_v2",
           about="DeBERTa-v2: disentangled attention, c2p / p2c terms gathered with bucketed relative "
           "positions (patches.deberta_v2)."),
    # -- fact-only entries: untested families whose eager code is the Llama pattern ------------
    *(Family(name, gqa_rows=True) for name in ("gemma", "gemma3", "granite", "olmo", "olmo2", "starcoder2",
                                                "smollm3", "cohere", "helium")),
)

FAMILIES: dict[str, Family] = {f.model_type: f for f in _ENTRIES}
assert len(FAMILIES) == len(_ENTRIES), "a model_type is listed twice in the family table"

_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """One warning per ``key`` per process (messages start with "flashlight:")."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


def family_name(module: torch.nn.Module) -> str:
    """The module's ``model_type`` (from its config), else its modeling module's name."""
    config = getattr(module, "config", None)
    model_type = getattr(config, "model_type", None)
    if isinstance(model_type, str):
        return model_type
    return type(module).__module__.rsplit(".", 1)[-1].removeprefix("modeling_")


@dataclass(frozen=True)
class FamilyAttention:
    """The eager attention function one family runs, and where it came from (for messages)."""

    family: str
    eager: Callable  # the program traced into the kernel
    source: str
    verified: bool  # the table names its eager module (tested), or a fallback
    transformers_eager: Callable | None = None  # the family's own eager function, where it has one
    entry: Family | None = None  # its entry in FAMILIES, where it has one

    @property
    def gqa_rows(self) -> bool:
        return self.entry is not None and self.entry.gqa_rows

    @property
    def rows_never_empty(self) -> bool:
        return self.entry is not None and self.entry.rows_never_empty


_by_class: dict[type, FamilyAttention] = {}


def attention_for(module: torch.nn.Module) -> FamilyAttention:
    """The eager attention function of ``module``'s family (looked up once per module class)."""
    cls = type(module)
    found = _by_class.get(cls)
    if found is None:
        found = _by_class[cls] = _resolve(module)
    return found


def _resolve(module: torch.nn.Module) -> FamilyAttention:
    name = family_name(module)
    entry = FAMILIES.get(name)
    path = entry.eager if entry is not None else None
    if path is not None:
        fn = getattr(importlib.import_module(path), "eager_attention_forward", None)
        if fn is None:
            raise RuntimeError(f"flashlight: the registry expects {path}.eager_attention_forward for family "
                               f"{name!r}, and this Transformers version has none; use "
                               "attn_implementation='sdpa' or 'eager', or update flashlight_hf.transformers.registry")
        if entry.program is not None:
            program = getattr(programs, entry.program)
            return FamilyAttention(name, program, f"flashlight_hf.transformers.programs.{entry.program}", True, fn,
                                   entry)
        return FamilyAttention(name, fn, f"{path}.eager_attention_forward", True, fn, entry)
    own_module = type(module).__module__
    fn = getattr(sys.modules.get(own_module), "eager_attention_forward", None)
    if fn is not None:
        warn_once(f"family:{name}", f"flashlight: model family {name!r} is not in flashlight's registry (untested); "
                  f"tracing the eager_attention_forward of its modeling file ({own_module})")
        return FamilyAttention(name, fn, f"{own_module}.eager_attention_forward", False, fn, entry)
    warn_once(f"family:{name}", f"flashlight: model family {name!r} is not in flashlight's registry and its "
              f"modeling file ({own_module}) defines no eager_attention_forward; using the generic Llama-style "
              "program (repeat_kv, scaled scores, float32 softmax). Compare against attn_implementation='eager'.")
    return FamilyAttention(name, programs.generic_attention, "flashlight_hf.transformers.programs.generic_attention",
                           False, entry=entry)


def eager_forward_of(module: torch.nn.Module) -> Callable:
    """The eager attention forward of ``module``'s family (see :func:`attention_for`)."""
    return attention_for(module).eager
