"""What codegen hands the runtime (:class:`KernelSource`) and the constants its rules share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

LOG2E = 1.4426950408889634  # softmax streams run in base 2: exp(x) = exp2(x·log2 e)
LN2 = 0.6931471805599453
FLT_MAX = 3.4028234663852886e38

TL_DTYPE = {torch.float32: "tl.float32", torch.float16: "tl.float16", torch.bfloat16: "tl.bfloat16",
            torch.float64: "tl.float64", torch.int32: "tl.int32", torch.int64: "tl.int64", torch.bool: "tl.int1"}


@dataclass
class KernelSource:
    """Generated source plus what the runtime needs to launch it.

    The kernel's parameters, in order: per input in ``input_args`` its pointer and one stride per
    axis; for split-KV kernels one pointer per accumulator's partials and ``n_grid`` (the fused
    kernel then its ticket counters); the output pointer and strides (kernels that store the
    output); training mode (:data:`~flashlight_hf.compiler.abi.KERNEL_TRAIN`), per softmax stream
    an fp32 log-sum-exp tensor ``[grid..., rows]``: its pointer, one stride per grid variable, the
    row stride; the run-time sizes ``runtime_sizes``; the constexprs ``BLOCK_M``, ``BLOCK_N`` and,
    split-KV, ``NUM_SPLITS`` (names in :mod:`flashlight_hf.compiler.abi`)."""

    name: str
    source: str
    input_args: list[int]          # program inputs passed as pointers, in order
    runtime_sizes: list[Any]       # sympy expressions / ints evaluated per call (args z0, z1, ...)
    grid_extents: list[Any]        # extents of the grid variables (sizes)
    row_extent: Any
    loop_extent: Any
    tile_pads: dict[str, int]
    acc_widths: list = field(default_factory=list)  # per accumulator: its columns per row (partials)
    split: "tuple[KernelSource, KernelSource] | None" = None  # split-KV (partials, combine) pair
    split_fused: "KernelSource | None" = None  # split-KV in one launch: the last share combines
    # training mode (built on request only): the forward that also stores the log-sum-exps
    train: "KernelSource | None" = None
    train_error: str | None = None  # why no training kernel was generated, when one was asked for
    # a training kernel's log-sum-exp tensors, in launch order: the index in the plan's
    # accumulators of the max accumulator each belongs to (non-softmax streams have none)
    lse_accs: list = field(default_factory=list)
    # a training kernel's normalised sum accumulators (index in the plan's accumulators, rank),
    # in launch order after the statistics; empty when the epilogue is the identity
    train_accs: list = field(default_factory=list)
    # the generated backward (on request, with the training kernel): what the runtime needs to
    # run it (a BackwardInfo), or why there is none
    backward: Any = None
    backward_error: str | None = None
    # attention dropout in training (on request, with the training kernel): the training forward
    # whose value contractions are dropped out (a KernelSource with its own ``backward``)
    train_dropout: "KernelSource | None" = None
    dropout: bool = False  # this kernel takes dropout_seed, dropout_p before its sizes
    # the block-table kernel (codegen/block_table.py) this kernel's key tiles come from: the
    # kernel then takes the table's pointer after its output (and statistics), before dropout
    table: "KernelSource | None" = None


def pow2(n: int) -> int:
    """The power-of-two tile width (at least 16, what ``tl.dot`` takes) that holds ``n`` columns."""
    return max(16, 1 << (int(n) - 1).bit_length())
