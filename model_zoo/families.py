"""Model families the project evaluates, with the attention features each one exercises.

A family is the unit the rest of the project reasons about: the registry
(:mod:`flashlight_hf.registry`) picks a family's eager attention forward, the tests build a tiny
random model of each, and the evaluation reports per family. ``attention`` names the features a
family's attention program needs (what the compiler must express for that family to run fused),
so adding a family is adding one entry here plus its tiny config in :mod:`configs`.

Families routed into the attention interface by ``patches/`` (BLOOM, MPT, Falcon, GPT-J, GPT-Neo,
DeBERTa-v2) live in their own zoo module and are merged in by :func:`merge_families` (see the
extension point in ``model_zoo/__init__.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["causal", "encoder", "encoder-decoder"]

# The attention features a FamilySpec may name; a typo in a new entry fails at import. A zoo
# extension module (see model_zoo/__init__.py) with features of its own calls add_features()
# before defining its FamilySpecs.
FEATURES: set[str] = {
    "causal-mask",        # queries see earlier keys only
    "bidirectional",      # encoder self-attention: padding is the only mask
    "padding-mask",       # per-sequence key padding
    "kv-cache",           # decoding with a growing (dynamic) or preallocated (static) cache
    "rope",               # rotary positions, applied before attention (not part of the kernel)
    "absolute-positions",  # learned position embeddings, outside attention
    "gqa",                # fewer KV heads than query heads (repeat_kv inside the eager program)
    "sliding-window",     # local attention on some or all layers (mask structure)
    "softcap",            # tanh logit soft-capping inside the scores
    "sinks",              # learned per-head sink logits joining the softmax (s_aux)
    "qk-norm",            # RMSNorm on queries and keys (outside attention)
    "custom-scaling",     # a softmax scale other than head_dim ** -0.5
    "relative-bias",      # an additive [1, H, Q, K] position bias tensor (T5)
    "alibi",              # linear position biases per head
    "local-attention",    # a fixed local window on some layers (GPT-Neo)
    "disentangled",       # content/position terms gathered from relative embeddings (DeBERTa-v2)
    "differential",       # two softmax streams combined o1 - λ·o2, then a group norm
    "cross-attention",    # decoder queries over encoder keys/values
    "packing",            # several sequences per row, separated by position_ids resets
}


def add_features(*names: str) -> None:
    """Admit new feature names (for zoo extension modules whose families need them)."""
    FEATURES.update(names)


@dataclass(frozen=True)
class FamilySpec:
    """One Transformers model family (one ``model_type``) and what its attention does."""

    model_type: str
    kind: Kind
    attention: tuple[str, ...]
    about: str = ""

    def __post_init__(self) -> None:
        unknown = set(self.attention) - FEATURES
        if unknown:
            raise ValueError(f"family {self.model_type!r} names unknown attention features {sorted(unknown)}; "
                             f"known: {', '.join(sorted(FEATURES))}")

    @property
    def supports_packing(self) -> bool:
        """Whether Transformers builds a packed-sequence mask from ``position_ids`` for this family."""
        return "packing" in self.attention


_DECODER = ("causal-mask", "rope", "kv-cache", "packing")

FAMILIES: dict[str, FamilySpec] = {
    "llama": FamilySpec(
        model_type="llama",
        kind="causal",
        attention=(*_DECODER, "gqa"),
        about="Llama-style decoder: SmolLM2, Llama 3.x. GQA repeats each KV head over a query group.",
    ),
    "mistral": FamilySpec(
        model_type="mistral",
        kind="causal",
        attention=(*_DECODER, "gqa", "sliding-window"),
        about="Mistral 7B: Llama attention with a sliding window on every layer.",
    ),
    "qwen2": FamilySpec(
        model_type="qwen2",
        kind="causal",
        attention=(*_DECODER, "gqa", "sliding-window"),
        about="Qwen2/2.5: biased QKV projections; optional sliding window on the upper layers.",
    ),
    "qwen3": FamilySpec(
        model_type="qwen3",
        kind="causal",
        attention=(*_DECODER, "gqa", "qk-norm", "sliding-window"),
        about="Qwen3: RMSNorm on queries and keys per head; optional sliding window on the upper layers.",
    ),
    "gemma2": FamilySpec(
        model_type="gemma2",
        kind="causal",
        attention=(*_DECODER, "gqa", "sliding-window", "softcap", "custom-scaling"),
        about="Gemma 2: tanh soft-capped scores, sliding and global layers alternating, "
        "scale query_pre_attn_scalar ** -0.5.",
    ),
    "gemma3_text": FamilySpec(
        model_type="gemma3_text",
        kind="causal",
        attention=(*_DECODER, "gqa", "qk-norm", "sliding-window", "custom-scaling"),
        about="Gemma 3 (text): QK-norm instead of softcap, five sliding layers per global one.",
    ),
    "gpt_oss": FamilySpec(
        model_type="gpt_oss",
        kind="causal",
        attention=("causal-mask", "rope", "kv-cache", "gqa", "sliding-window", "sinks"),
        about="GPT-OSS: a learned sink logit per head joins each softmax (s_aux), sliding and full "
        "layers alternating, mixture-of-experts MLP. No packing: its model builds masks without "
        "position_ids.",
    ),
    "phi3": FamilySpec(
        model_type="phi3",
        kind="causal",
        attention=(*_DECODER, "gqa"),
        about="Phi-3: fused QKV projection, partial rotary possible.",
    ),
    "gpt_neox": FamilySpec(
        model_type="gpt_neox",
        kind="causal",
        attention=_DECODER,
        about="GPT-NeoX / Pythia: fused QKV, rotary on a fraction of each head, parallel residual.",
    ),
    "gpt2": FamilySpec(
        model_type="gpt2",
        kind="causal",
        attention=("causal-mask", "absolute-positions", "kv-cache", "packing"),
        about="GPT-2: learned absolute positions, Conv1D projections, multi-head attention.",
    ),
    "diffllama": FamilySpec(
        model_type="diffllama",
        kind="causal",
        attention=(*_DECODER, "gqa", "differential"),
        about="DiffLlama (Differential Transformer): one softmax over shared Q/K applied to two halves "
        "of V, combined o1 - λ·o2 per head pair, then a group RMSNorm; traced as one program.",
    ),
    "bert": FamilySpec(
        model_type="bert",
        kind="encoder",
        attention=("bidirectional", "padding-mask", "absolute-positions"),
        about="BERT encoder: all-MiniLM-L6-v2. No causal mask; padding is the only mask.",
    ),
    "modernbert": FamilySpec(
        model_type="modernbert",
        kind="encoder",
        attention=("bidirectional", "padding-mask", "rope", "sliding-window"),
        about="ModernBERT: rotary encoder, local (sliding-window) and global layers alternating.",
    ),
    "t5": FamilySpec(
        model_type="t5",
        kind="encoder-decoder",
        attention=("bidirectional", "causal-mask", "padding-mask", "kv-cache", "relative-bias",
                   "custom-scaling", "cross-attention"),
        about="T5: bucketed relative position bias added to unscaled scores (position_bias), "
        "encoder-decoder with cross-attention.",
    ),
    "bart": FamilySpec(
        model_type="bart",
        kind="encoder-decoder",
        attention=("bidirectional", "causal-mask", "padding-mask", "kv-cache", "absolute-positions",
                   "cross-attention"),
        about="BART: encoder-decoder with learned positions and cross-attention.",
    ),
}


def merge_families(extra: dict[str, FamilySpec], source: str) -> None:
    """Add the families another zoo module defines; a name already taken is an error naming both."""
    clash = sorted(set(extra) & set(FAMILIES))
    if clash:
        raise ValueError(f"model_zoo.{source} redefines families {clash} already in the zoo; "
                         "give them other names or remove one definition")
    for name, spec in extra.items():
        if name != spec.model_type:
            raise ValueError(f"model_zoo.{source}: family key {name!r} differs from its model_type "
                             f"{spec.model_type!r}")
    FAMILIES.update(extra)


def family(model_type: str) -> FamilySpec:
    """The family of a ``model_type``; a clear error naming the known ones otherwise."""
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise KeyError(f"no model-zoo family {model_type!r}; known: {', '.join(sorted(FAMILIES))}") from None
