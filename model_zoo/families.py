"""Model families the project evaluates, with the attention features each one exercises.

A family is the unit the rest of the project reasons about: the tests build a tiny random model
of each and the evaluation reports per family. The families and their facts live in one table,
the front door's (:data:`flashlight_hf.transformers.registry.FAMILIES`): a zoo family is an
entry there with a ``kind``; ``attention`` names the features its attention program needs (what
the compiler must express for that family to run fused). Adding a family is adding one entry
there plus its tiny config in :mod:`configs` (or :mod:`patched` for families ``patches/``
serves).
"""

from __future__ import annotations

from flashlight_hf.transformers.registry import FAMILIES as _TABLE
from flashlight_hf.transformers.registry import FEATURES, Family, Kind

# A zoo family is the table's entry itself (the name the zoo has always used for it).
FamilySpec = Family

FAMILIES: dict[str, FamilySpec] = {name: fam for name, fam in _TABLE.items() if fam.kind is not None}


def family(model_type: str) -> FamilySpec:
    """The family of a ``model_type``; a clear error naming the known ones otherwise."""
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise KeyError(f"no model-zoo family {model_type!r}; known: {', '.join(sorted(FAMILIES))}") from None


__all__ = ["FAMILIES", "FEATURES", "FamilySpec", "Kind", "family"]
