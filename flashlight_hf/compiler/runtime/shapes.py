"""Whether a call's input shapes are shapes the traced program holds for.

Checked before a set of shapes gets its first plan (:class:`~.kernel.CompiledKernel`) and by
the driver before it lets a build serve new shapes: a kernel launched on other shapes would
read past the end of a tensor or mix rows of different batches.
"""

from __future__ import annotations

from typing import Any, Sequence

import sympy
import torch

from flashlight_hf.compiler.ir import Program


def shape_mismatch(program: Program, inputs: Sequence[torch.Tensor]) -> str | None:
    """Why these inputs are not shapes the traced program holds for, or None when they are.

    The program's input shapes are ints (fixed at trace time) or size symbols: the same symbol
    is the same size wherever it appears (K's and V's key length, Q's and K's batch), within the
    range the trace holds for (sizes 0 and 1 specialise). A kernel launched on other shapes
    would read past the end of a tensor or mix rows of different batches."""
    if len(inputs) != len(program.input_shapes):
        return f"the program takes {len(program.input_shapes)} tensors, got {len(inputs)}"
    bound: dict[Any, tuple[int, int, int]] = {}
    device = None
    for k, (t, want) in enumerate(zip(inputs, program.input_shapes)):
        if t.dim() != len(want):
            return f"input {k} has {t.dim()} dimensions, the program was traced with {len(want)}"
        if t.dtype != program.input_dtypes[k]:
            return f"input {k} is {t.dtype}, the program was traced with {program.input_dtypes[k]}"
        if device is None:
            device = t.device
        elif t.device != device:
            return f"input {k} is on {t.device}, input 0 on {device}"
        for a, (got, w) in enumerate(zip(t.shape, want)):
            got = int(got)
            if isinstance(w, int):
                if got != w:
                    return f"input {k} {tuple(t.shape)}: axis {a} must be {w}"
            elif isinstance(w, sympy.Symbol):
                if w in bound:
                    k0, a0, size = bound[w]
                    if size != got:
                        return (f"input {k} {tuple(t.shape)} axis {a} and input {k0} "
                                f"{tuple(inputs[k0].shape)} axis {a0} must be the same size")
                else:
                    lo, hi = program.size_ranges.get(w, (2, None))
                    if got < lo or (hi is not None and got > hi):
                        return f"input {k} {tuple(t.shape)}: axis {a} is outside the traced range [{lo}, {hi}]"
                    bound[w] = (k, a, got)
    for k, (t, want) in enumerate(zip(inputs, program.input_shapes)):  # sizes derived from symbols
        for a, (got, w) in enumerate(zip(t.shape, want)):
            if not isinstance(w, (int, sympy.Symbol)):
                try:
                    value = int(sympy.sympify(w).subs({s: v[2] for s, v in bound.items()}))
                except (TypeError, ValueError):
                    return f"input {k} {tuple(t.shape)}: axis {a} has a size ({w}) that cannot be checked"
                if value != int(got):
                    return f"input {k} {tuple(t.shape)}: axis {a} must be {value} ({w})"
    return None


class ShapeError(ValueError):
    """Inputs whose shapes do not satisfy what the traced program imposes."""
