"""The training-mode forward's launch: the output plus each softmax stream's per-row log-sum-exp.

Why its own module: it is the first kernel of the generated backward (issue 13) and nothing
calls it in an ordinary forward, so it is compiled by Triton on first use only and keeps none of
the ordinary launch's fast paths (plans per shape, direct relaunches, split-KV). One launch per
call, with the tile configuration the ordinary forward chose for that shape bucket (or the
untuned default).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from flashlight_hf.compiler.codegen import KernelSource
from flashlight_hf.compiler.codegen.source import LN2
from flashlight_hf.compiler.ir import Program
from flashlight_hf.compiler.runtime.block_table import BlockTable
from flashlight_hf.compiler.runtime.hooks import launch_hooks
from flashlight_hf.compiler.runtime.launch import Launcher
from flashlight_hf.compiler.runtime.plan import constexprs, row_tiles, tensor_args
from flashlight_hf.compiler.runtime.sizes import SizeFunction
from flashlight_hf.compiler.runtime.tune import LaunchConfig


class TrainingForward:
    """One program's training-mode kernel (``KernelSource.train``) with its sizes and launch."""

    def __init__(self, program: Program, source: KernelSource, load: Callable[[KernelSource], Any]):
        self.source = source
        self.launcher = Launcher(load(source))
        self._table = BlockTable(program, source.table, load) if source.table is not None else None
        # the LSE tensors' shape [grid..., rows], then the kernel's run-time sizes
        self._n_shape = len(source.grid_extents) + 1
        self._sizes = SizeFunction(program, [*source.grid_extents, source.row_extent, *source.runtime_sizes])

    def stats_shape(self, inputs: list[torch.Tensor]) -> torch.Size:
        """The shape of every per-row statistic for these inputs: ``[grid..., rows]``."""
        return torch.Size(self._sizes(inputs)[:self._n_shape])

    def __call__(self, inputs: list[torch.Tensor], out: torch.Tensor, cfg: LaunchConfig,
                 into: list[torch.Tensor] | None = None, dropout: tuple[int, float] | None = None) -> list[torch.Tensor]:
        """Launch on the (bound) ``inputs``, writing ``out``; returns what the backward reads: per
        softmax stream its running max (log2 units) and log2 denominator, fp32 ``[grid..., rows]``,
        then each normalised accumulator ``[grid..., rows(, width)]`` (``source.train_accs``)."""
        sizes = self._sizes(inputs)
        shape, runtime = sizes[:self._n_shape], sizes[self._n_shape:]
        saved = [torch.empty(shape, dtype=torch.float32, device=out.device)
                 for _ in range(2 * len(self.source.lse_accs))]
        for k, rank, width in self.source.train_accs:
            width = [width] if rank == 2 else []
            saved.append(torch.empty([*shape, *width], dtype=torch.float32, device=out.device))
        if into is not None:
            if len(into) != len(saved) or any(a.shape != b.shape or a.dtype != b.dtype or a.device != b.device
                                              for a, b in zip(into, saved)):
                raise ValueError(f"flashlight: the training buffers must be {[tuple(t.shape) for t in saved]} "
                                 f"float32 on {out.device}")
            saved = list(into)
        if out.numel() == 0:
            return saved
        n_grid = 1
        for g in shape[:-1]:
            n_grid *= g
        args = tensor_args(inputs, self.source.input_args) + [out, *out.stride()]
        n = len(self.source.lse_accs)
        for s in range(n):
            args += [saved[2 * s], saved[2 * s + 1], *saved[2 * s].stride()]
        for t in saved[2 * n:]:
            args += [t, *t.stride()]
        if self._table is not None:  # data-dependent masks: the key tiles each row tile visits
            args.append(self._table(inputs, cfg.block_m, cfg.block_n, False))
        if self.source.dropout:
            if dropout is None:
                raise ValueError("flashlight: this training kernel drops out attention: pass dropout=(seed, p)")
            args += [int(dropout[0]), float(dropout[1])]
        args += list(runtime)
        for hook in launch_hooks():
            hook(self.source.name)
        self.launcher(row_tiles(shape[-1], cfg, n_grid), args, constexprs(cfg), cfg.num_warps, cfg.num_stages)
        return saved


def lse_of(saved: list[torch.Tensor], streams: int) -> list[torch.Tensor]:
    """Per softmax stream the natural log-sum-exp ``(m + log2 D)·ln 2`` from the saved statistics."""
    return [(saved[2 * n] + saved[2 * n + 1]) * LN2 for n in range(streams)]
