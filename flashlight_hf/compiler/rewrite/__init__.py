"""Stage 3 — rewrites: from the reduction IR to a fused loop nest (a :class:`KernelPlan`).

The paper's three transformations, applied to the IR of :mod:`flashlight_hf.compiler.ir`:

* **Dimension demotion** (:mod:`.loop_roles`): the key variable ``j``, parallel in ``QKᵀ`` but
  reduced by everything downstream, becomes the kernel's sequential loop.
* **Homomorphic (online) rewrite** (:mod:`.online`): every softmax stream's key sums become
  running accumulators rescaled when their running max grows.
* **Tiling-aware elimination**: every other reduced variable (head dims) has a static extent
  that fits one tile (checked in :mod:`.loop_roles`); masks bound the key loop per row tile
  (:mod:`.mask_bounds`), after additive masks are read as selects (:mod:`.masks_as_selects`).

:func:`plan` is the roles, then :data:`PASSES` in order: a new rewrite is a module with a
``KernelPlan -> KernelPlan`` function and one line in that tuple. Anything that does not fit
raises :class:`~flashlight_hf.compiler.ir.Unsupported` naming the node, and the caller runs
the program unfused.
"""

from __future__ import annotations

from flashlight_hf.compiler.ir import Acc, Program, RunningMax, RuntimeOffset, mul_factors, walk
from flashlight_hf.compiler.rewrite.kernel_plan import KernelPlan, Pass
from flashlight_hf.compiler.rewrite.loop_roles import (MAX_TILE_EXTENT, assign_roles, rename_bound,
                                                       rows_and_value_dims)
from flashlight_hf.compiler.rewrite.mask_bounds import (key_bounds, key_bounds_pass, tile_skip_pass,
                                                        tile_skip_predicates)
from flashlight_hf.compiler.rewrite.masks_as_selects import additive_masks_as_selects, masks_as_selects_pass
from flashlight_hf.compiler.rewrite.online import online, online_softmax_pass

PASSES: tuple[Pass, ...] = (
    masks_as_selects_pass,  # s + where(keep, 0, -inf) -> where(keep, s, -inf): masks the bounds can read
    online_softmax_pass,    # key reductions -> loop accumulators (running max, rescaled sums)
    key_bounds_pass,        # affine masks -> the key range each row tile visits; interior tiles unmasked
    tile_skip_pass,         # other cheap key masks -> a run-time skip of fully masked key tiles
)


def plan(program: Program) -> KernelPlan:
    """Classify variables, demote the key axis and rewrite every softmax stream to online form."""
    kp = assign_roles(program)  # grid, rows, key loop, tile-sized contractions
    for rewrite in PASSES:
        kp = rewrite(kp)
    return kp


__all__ = [
    "Acc", "KernelPlan", "MAX_TILE_EXTENT", "PASSES", "Pass", "RunningMax", "RuntimeOffset",
    "additive_masks_as_selects", "assign_roles", "key_bounds", "online", "plan", "rename_bound",
    "rows_and_value_dims", "tile_skip_predicates", "walk",
]
