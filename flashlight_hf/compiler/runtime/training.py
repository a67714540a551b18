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
from flashlight_hf.compiler.ir import Program
from flashlight_hf.compiler.runtime.launch import Launcher
from flashlight_hf.compiler.runtime.plan import constexprs, row_tiles, tensor_args
from flashlight_hf.compiler.runtime.sizes import SizeFunction
from flashlight_hf.compiler.runtime.tune import LaunchConfig


class TrainingForward:
    """One program's training-mode kernel (``KernelSource.train``) with its sizes and launch."""

    def __init__(self, program: Program, source: KernelSource, load: Callable[[KernelSource], Any]):
        self.source = source
        self.launcher = Launcher(load(source))
        # the LSE tensors' shape [grid..., rows], then the kernel's run-time sizes
        self._n_shape = len(source.grid_extents) + 1
        self._sizes = SizeFunction(program, [*source.grid_extents, source.row_extent, *source.runtime_sizes])

    def lse_shape(self, inputs: list[torch.Tensor]) -> torch.Size:
        """The shape of every LSE tensor for these inputs: ``[grid..., rows]``."""
        return torch.Size(self._sizes(inputs)[:self._n_shape])

    def __call__(self, inputs: list[torch.Tensor], out: torch.Tensor, cfg: LaunchConfig,
                 lse: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Launch on the (bound) ``inputs``, writing ``out`` and the fp32 LSE tensors (returned,
        one per softmax stream): new contiguous ones, or the caller's ``lse`` (any strides)."""
        sizes = self._sizes(inputs)
        shape, runtime = sizes[:self._n_shape], sizes[self._n_shape:]
        if lse is None:
            lses = [torch.empty(shape, dtype=torch.float32, device=out.device) for _ in self.source.lse_accs]
        else:
            lses = list(lse)
            if len(lses) != len(self.source.lse_accs) or any(
                    t.shape != torch.Size(shape) or t.dtype != torch.float32 or t.device != out.device for t in lses):
                raise ValueError(f"flashlight: lse= must be {len(self.source.lse_accs)} float32 tensors of shape "
                                 f"{tuple(shape)} on {out.device}")
        if out.numel() == 0:
            return lses
        n_grid = 1
        for g in shape[:-1]:
            n_grid *= g
        args = tensor_args(inputs, self.source.input_args) + [out, *out.stride()]
        for t in lses:
            args += [t, *t.stride()]
        args += list(runtime)
        self.launcher(row_tiles(shape[-1], cfg, n_grid), args, constexprs(cfg), cfg.num_warps, cfg.num_stages)
        return lses
