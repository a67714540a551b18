"""Model families the project evaluates, with the attention features each one exercises.

A family is the unit the rest of the project reasons about: the registry picks a family's eager
attention forward, the tests build a tiny random model of each, and the evaluation reports per
family. ``attention`` names the features a family's attention program needs (what the compiler
must express for that family to run fused), so adding a family is adding one entry here plus
its tiny config in :mod:`configs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["causal", "encoder"]


@dataclass(frozen=True)
class FamilySpec:
    """One Transformers model family (one ``model_type``) and what its attention does."""

    model_type: str
    kind: Kind
    attention: tuple[str, ...]
    about: str = ""


FAMILIES: dict[str, FamilySpec] = {
    "llama": FamilySpec(
        model_type="llama",
        kind="causal",
        attention=("causal-mask", "rope", "gqa", "kv-cache"),
        about="Llama-style decoder: SmolLM2, Llama 3.x. GQA repeats each KV head over a query group.",
    ),
    "bert": FamilySpec(
        model_type="bert",
        kind="encoder",
        attention=("bidirectional", "padding-mask", "absolute-positions"),
        about="BERT encoder: all-MiniLM-L6-v2. No causal mask; padding is the only mask.",
    ),
}


def family(model_type: str) -> FamilySpec:
    """The family of a ``model_type``; a clear error naming the known ones otherwise."""
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise KeyError(f"no model-zoo family {model_type!r}; known: {', '.join(sorted(FAMILIES))}") from None
