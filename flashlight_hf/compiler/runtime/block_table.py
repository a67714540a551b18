"""The block table's launch: before a kernel that walks one, per tile the tiles its masks keep.

Why its own module: the forward, the training forward and both backward kernels each need the
table for their own tile sizes (``codegen/block_table.py`` says what it holds), built per call
because the masks are read from the call's data (document ids). One small launch per kernel
launch; the backward also hands its kernels a per grid point flag "a row here every mask drops"
(:func:`dead_rows`), so that they give eager's NaN gradients for such rows.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from flashlight_hf.compiler.abi import BLOCK_M, BLOCK_N, DECODE_MAX_ROWS
from flashlight_hf.compiler.codegen import KernelSource
from flashlight_hf.compiler.ir import Program
from flashlight_hf.compiler.runtime.hooks import launch_hooks
from flashlight_hf.compiler.runtime.launch import Launcher
from flashlight_hf.compiler.runtime.plan import tensor_args
from flashlight_hf.compiler.runtime.sizes import SizeFunction


class BlockTable:
    """``table(inputs, block_m, block_n, key_major)``: the int32 block table for one launch's
    tiles (rows then keys; ``key_major``: per key tile its query tiles, for dK/dV)."""

    def __init__(self, program: Program, source: KernelSource, load: Callable[[KernelSource], Any]):
        self.source = source
        self.launcher = Launcher(load(source))
        self.compact = Launcher(_compact_kernel())
        self._static: dict[tuple, torch.Tensor] = {}  # decode steps' tables, per shape
        # keys a program classifies, and its warps: 256 and 4 were the fastest (RESULTS.md, session 13)
        self.span = 256
        self.warps = 4
        self._n_grid = len(source.grid_extents)
        self._sizes = SizeFunction(program, [*source.grid_extents, source.row_extent, source.loop_extent,
                                             *source.runtime_sizes])

    def __call__(self, inputs: Sequence[torch.Tensor], block_m: int, block_n: int, key_major: bool) -> torch.Tensor:
        sizes = self._sizes(list(inputs))
        n = self._n_grid
        points = 1
        for g in sizes[:n]:
            points *= g
        rows, keys, runtime = sizes[n], sizes[n + 1], sizes[n + 2:]
        row_tiles, key_tiles = -(-rows // block_m), -(-keys // block_n)
        outer, inner = (key_tiles, row_tiles) if key_major else (row_tiles, key_tiles)
        device = inputs[0].device
        if not key_major and rows <= DECODE_MAX_ROWS:
            return self._every_tile(points * outer, inner, device)
        table = torch.empty((points * outer, inner + 2), dtype=torch.int32, device=device)
        if table.numel() == 0 or inner == 0:
            table.zero_()
            return table
        # states per (grid point, row tile, key tile); the dK/dV kernel's table reads them by key tile
        state = torch.empty(points * row_tiles * key_tiles, dtype=torch.int8, device=device)
        args = tensor_args(list(inputs), self.source.input_args) + [state, *runtime]
        for hook in launch_hooks():
            hook(self.source.name)
        # a program classifies one row tile against a run of key tiles ``span`` keys long
        tiles = max(1, min(self.span // block_n, 1 << (key_tiles - 1).bit_length()))
        programs = points * row_tiles * -(-key_tiles // tiles)
        self.launcher(programs, args, ((BLOCK_M, block_m), (BLOCK_N, block_n), ("TILES", tiles)), self.warps, 1)
        width = max(16, 1 << (inner - 1).bit_length())
        along_outer, along_inner = (1, key_tiles) if key_major else (key_tiles, 1)
        self.compact(points * outer, [state, table, outer, inner, along_outer, along_inner], (("INNER", width),),
                     4 if width <= 2048 else 8, 1)
        return table

    def _every_tile(self, n_outer: int, inner: int, device: torch.device) -> torch.Tensor:
        """A decode step's table: every key tile listed as partial (the masks applied), made once
        per shape and kept. Why: a decode step's few rows are one row tile per grid point, so
        the table would save little, and its two launches per call would add host time to every
        layer of every step (the masks still drop what they drop, tile by tile)."""
        key = (n_outer, inner, device)
        table = self._static.get(key)
        if table is None:
            table = torch.zeros((n_outer, inner + 2), dtype=torch.int32, device=device)
            table[:, 1] = inner
            table[:, 2:] = torch.arange(inner - 1, -1, -1, dtype=torch.int32, device=device)
            if len(self._static) >= 64:
                self._static.clear()
            self._static[key] = table
        return table


_COMPACT: Any = None


def _compact_kernel() -> Any:
    """Per outer tile, its inner tiles' states (int8: 0 none kept, 1 some, 2 whole; laid out per
    grid point as [row tiles, key tiles], read along ``along_inner`` for key-major tables) into the
    table's row: the counts, the whole tiles in order from the front, the partial ones from the
    back (exclusive prefix sums give each tile its slot). Built on first use: ``triton.jit``
    reads ``TRITON_INTERPRET`` when it wraps the function."""
    global _COMPACT
    if _COMPACT is None:
        import triton
        import triton.language as tl

        @triton.jit
        def block_table_compact(state_ptr, tbl_ptr, n_outer, n_inner, along_outer, along_inner,
                                INNER: tl.constexpr):
            pid = tl.program_id(0)
            u = tl.arange(0, INNER)
            states = state_ptr + (pid // n_outer) * n_outer * n_inner + (pid % n_outer) * along_outer
            state = tl.load(states + u * along_inner, mask=u < n_inner, other=0).to(tl.int32)
            full = tl.where(state == 2, 1, 0)
            part = tl.where(state == 1, 1, 0)
            at_full = tl.cumsum(full, 0) - full
            at_part = tl.cumsum(part, 0) - part
            row = tbl_ptr + pid * (n_inner + 2)
            tl.store(row + 2 + at_full, u, mask=full != 0)
            tl.store(row + 1 + n_inner - at_part, u, mask=part != 0)
            tl.store(row, tl.sum(full, 0))
            tl.store(row + 1, tl.sum(part, 0))
        _COMPACT = block_table_compact
    return _COMPACT


def dead_rows(maxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per grid point, int8: whether some row's running max (``[grid..., rows]``, any stream) is
    −inf, i.e. every mask drops the whole row. Contiguous: the kernels index it by grid point."""
    dead = None
    for mx in maxes:
        d = (mx == float("-inf")).any(dim=-1)
        dead = d if dead is None else dead | d
    return dead.to(torch.int8).contiguous()
