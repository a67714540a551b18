"""Attention variants for the kernel benchmark, one small file each (attention-gym style).

To add a variant: write ``benchmarks/variants/<name>.py`` with a :class:`~.base.Variant`
subclass (eager ``program``, ``score_mod``/``mask_mod``, ``sdpa_form``/``sdpa_kwargs``,
density if not countable from the mask) and list it in ``VARIANTS`` below.
"""

from __future__ import annotations

from .alibi import Alibi
from .base import NotApplicable, Variant, flex_emulate
from .causal import Causal
from .document_mask import DocumentMask
from .full import Full
from .prefix_lm import PrefixLM
from .sliding_window import SlidingWindow
from .softcap import Softcap

VARIANTS: dict[str, type[Variant]] = {
    cls.name: cls for cls in (Full, Causal, Alibi, Softcap, SlidingWindow, DocumentMask, PrefixLM)
}

__all__ = ["VARIANTS", "Variant", "NotApplicable", "flex_emulate"]
