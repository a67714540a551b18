"""Stage 4 — code generation: a :class:`KernelPlan` becomes Triton source text.

The source is meant to be read (``explain``), laid out like Triton's fused-attention tutorial:
the program's coordinates, loads before the key loop, the key-tile body as one ``@triton.jit``
helper that the boundary and interior key ranges call, the epilogue, the store. One statement
per IR node with a named temporary and a comment naming the node.

Modules: ``kernels`` (the loop nest of each kernel kind), ``keyloop`` (the key-tile helper),
``bounds`` (the key range), ``emitter`` (expressions), ``pointwise`` (the op table),
``scores`` (base-2 softmax scaling), ``naming``, ``signature``, ``source`` (:class:`KernelSource`).
"""

from __future__ import annotations

from typing import Sequence

from flashlight_hf.compiler.codegen.kernels import (Options, combine_kernel, single_kernel, split_fused_kernel,
                                                    split_kernel)
from flashlight_hf.compiler.codegen.source import KernelSource
from flashlight_hf.compiler.rewrite import KernelPlan

__all__ = ["KernelSource", "generate"]


def generate(kp: KernelPlan, *, interpret: bool, allow_tf32: bool = False, warp_specialize: bool = False,
             input_names: Sequence[str | None] | None = None) -> KernelSource:
    """Emit the forward kernel for ``kp`` and, where the accumulators allow it, its split-KV pair
    (``KernelSource.split``) and one-launch split-KV kernel (``KernelSource.split_fused``).
    ``input_names``: per program input, the program's name for it where the caller knows it
    (pointers and strides are named after it). Raises :class:`Unsupported` for shapes it cannot
    tile."""
    opt = Options(interpret, allow_tf32, warp_specialize, input_names)
    main = single_kernel(kp, opt)
    try:
        main.split = (split_kernel(kp, opt), combine_kernel(kp, opt))
        main.split_fused = split_fused_kernel(kp, opt)
    except Exception:  # noqa: BLE001 - Unsupported or a rule's error: decode runs the single kernel
        main.split = main.split_fused = None
    return main
