"""Split-KV decoding: a few query rows against a long KV cache run as shares of the key axis.

Each share stores a partial result (its accumulators, running max and sum); the partials are
merged by their log-sum-exp, either by the last share of each row tile to finish (the
one-launch kernel, the default) or by a separate combine kernel (the partials + combine pair,
``FLASHLIGHT_FUSED_SPLIT=0``). How many shares: enough programs to fill the GPU
(:func:`num_splits`), or the forced ``FLASHLIGHT_SPLIT_KV``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import torch

from flashlight_hf.compiler.abi import DECODE_MAX_ROWS
from flashlight_hf.compiler.codegen import KernelSource
from flashlight_hf.compiler.ir import Program
from flashlight_hf.compiler.runtime.launch import Launcher, current_stream
from flashlight_hf.compiler.runtime.plan import ShapePlan, constexprs, row_tiles, tensor_args
from flashlight_hf.compiler.runtime.sizes import SizeFunction
from flashlight_hf.compiler.runtime.switches import LaunchSwitches
from flashlight_hf.compiler.runtime.tune import DECODE_CONFIG, LaunchConfig

MAX_SPLITS = 64  # at most this many shares of the key axis

# the combine kernel's (num_warps, num_stages): it merges a few rows of partials, no key loop
COMBINE_LAUNCH = (4, 1)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_splits(rows: int, keys: int, n_grid: int, device: torch.device) -> int:
    """How many shares of the key axis, unforced: enough programs to fill the GPU when a few
    query rows (at most ``DECODE_MAX_ROWS``) meet a long KV cache (a decode step), each share
    at least two key tiles; a power of two, at most :data:`MAX_SPLITS`. Off a GPU: as if it
    had 4 multiprocessors."""
    if rows > DECODE_MAX_ROWS:
        return 1
    sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else 4
    programs = row_tiles(rows, DECODE_CONFIG, n_grid)
    want = (2 * sms) // max(programs, 1)
    by_keys = keys // (2 * DECODE_CONFIG.block_n)
    n = min(want, by_keys, MAX_SPLITS)
    return 1 << (n.bit_length() - 1) if n >= 2 else 1


class PartialsLayout:
    """The split-KV partials: one float32 ``[splits, n_grid, rows, *width]`` block per
    accumulator, carved out of one allocation (a decode step allocates them at every layer),
    each block 16-byte aligned. Direct launches take the blocks' pointers, no views."""

    def __init__(self, splits: int, n_grid: int, rows: int, widths: list):
        self.shapes = [(splits, n_grid, rows, *w) for w in widths]
        self.sizes = [math.prod(sh) for sh in self.shapes]
        self.starts = [0]
        for n in self.sizes:
            self.starts.append(self.starts[-1] + n + (-n) % 4)
        self.total = self.starts[-1]
        self.byte_offsets = [4 * at for at in self.starts[:-1]]

    def alloc(self, device: torch.device) -> torch.Tensor:
        """One flat float32 block holding every partial."""
        return torch.empty(self.total, dtype=torch.float32, device=device)

    def carve(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """The partials as views of ``flat`` (for launches through Triton)."""
        return [flat[at:at + n].view(sh) for at, n, sh in zip(self.starts, self.sizes, self.shapes)]

    def pointers(self, flat: torch.Tensor) -> list[int]:
        """The partials' addresses in ``flat`` (for direct launches)."""
        base = flat.data_ptr()
        return [base + off for off in self.byte_offsets]


class SplitKV:
    """One generated kernel's split-KV kernels (the partials + combine pair and the one-launch
    kernel), compiled by Triton on first use only, with their sizes and launches."""

    def __init__(self, program: Program, source: KernelSource, load: Callable[[KernelSource], Any]):
        self.source = source
        self.pair = None  # ((Launcher, SizeFunction) of the partials kernel, of the combine kernel)
        if source.split is not None:
            self.pair = tuple((Launcher(load(k)), SizeFunction(program, list(k.runtime_sizes))) for k in source.split)
        self.fused = None  # (Launcher, SizeFunction) of the one-launch kernel
        if source.split_fused is not None:
            fused = source.split_fused
            self.fused = (Launcher(load(fused)), SizeFunction(program, list(fused.runtime_sizes)))
        self._counters: dict = {}

    def num_splits(self, rows: int, keys: int, n_grid: int, device: torch.device, switches: LaunchSwitches) -> int:
        """Key shares for a call of these sizes: the forced count, else :func:`num_splits`."""
        if self.pair is None:
            return 1
        if switches.split_kv is not None:
            return switches.split_kv
        return num_splits(rows, keys, n_grid, device)

    def fill_sizes(self, plan: ShapePlan, inputs: list[torch.Tensor]) -> None:
        """The split kernels' run-time sizes for ``plan``'s shapes."""
        if self.pair is not None:
            (_, part_sizes), (_, comb_sizes) = self.pair
            plan.part_sizes, plan.comb_sizes = list(part_sizes(inputs)), list(comb_sizes(inputs))
        if self.fused is not None:
            plan.fused_sizes = list(self.fused[1](inputs))

    def runner(self, switches: LaunchSwitches) -> tuple[Callable[..., None], list[str]]:
        """The split-KV launcher a call uses (the one-launch kernel by default, the partials +
        combine pair under ``FLASHLIGHT_FUSED_SPLIT=0``) and its kernels' names."""
        if switches.fused_split and self.fused is not None:
            return self.run_fused, [self.source.split_fused.name]
        return self.run_pair, [k.name for k in self.source.split]

    def fused_args(self, inputs: list[torch.Tensor], out: torch.Tensor, plan: ShapePlan,
                   partials: list[torch.Tensor], counts: torch.Tensor) -> list[Any]:
        """The one-launch split kernel's arguments (its launches and its direct relaunches)."""
        return tensor_args(inputs, self.source.split_fused.input_args) + partials + \
            [plan.n_grid, counts, out, *out.stride()] + plan.fused_sizes

    def pair_args(self, inputs: list[torch.Tensor], out: torch.Tensor, plan: ShapePlan,
                  partials: list[torch.Tensor]) -> tuple[list[Any], list[Any]]:
        """The partials kernel's and the combine kernel's arguments."""
        part_src, comb_src = self.source.split
        return (tensor_args(inputs, part_src.input_args) + partials + [plan.n_grid] + plan.part_sizes,
                tensor_args(inputs, comb_src.input_args) + partials + [plan.n_grid, out, *out.stride()] +
                plan.comb_sizes)

    def counts(self, dev: torch.device, tiles: int) -> torch.Tensor:
        """The one-launch split's ticket counters for the current stream of ``dev``: zeroed once,
        left zeroed by every launch (the merging program resets its tile's count)."""
        stream = current_stream(dev.index) if dev.type == "cuda" else 0
        counts = self._counters.get((dev, stream))
        if counts is None or counts.numel() < tiles:
            counts = self._counters[(dev, stream)] = torch.zeros(max(tiles, 1024), dtype=torch.int32, device=dev)
        return counts

    def run_pair(self, inputs: list, out: torch.Tensor, plan: ShapePlan, splits: int,
                 cfg: LaunchConfig = DECODE_CONFIG) -> None:
        """The partials kernel over ``splits`` shares of the keys, then the combine kernel."""
        (part_fn, _), (comb_fn, _) = self.pair
        layout = PartialsLayout(splits, plan.n_grid, plan.rows, self.source.split[0].acc_widths)
        part_args, comb_args = self.pair_args(inputs, out, plan, layout.carve(layout.alloc(out.device)))
        tiles = constexprs(cfg, splits)
        n_tiles = row_tiles(plan.rows, cfg, plan.n_grid)
        part_fn(n_tiles * splits, part_args, tiles, cfg.num_warps, cfg.num_stages)
        comb_fn(n_tiles, comb_args, tiles, *COMBINE_LAUNCH)

    def run_fused(self, inputs: list, out: torch.Tensor, plan: ShapePlan, splits: int,
                  cfg: LaunchConfig = DECODE_CONFIG) -> None:
        """The split-KV kernel whose last share per row tile merges the shares: one launch.

        Its per-tile tickets live in a zeroed int32 buffer per (device, stream) that the merging
        program resets, so a launch leaves it as it found it."""
        launcher, _ = self.fused
        n_tiles = row_tiles(plan.rows, cfg, plan.n_grid)
        layout = PartialsLayout(splits, plan.n_grid, plan.rows, self.source.split_fused.acc_widths)
        args = self.fused_args(inputs, out, plan, layout.carve(layout.alloc(out.device)),
                               self.counts(out.device, n_tiles))
        launcher(n_tiles * splits, args, constexprs(cfg, splits), cfg.num_warps, cfg.num_stages)

    def direct(self, inputs: list[torch.Tensor], out: torch.Tensor, plan: ShapePlan,
               switches: LaunchSwitches) -> Callable[[list, torch.Tensor], bool] | None:
        """``direct(inputs, out) -> bool`` for a plan that splits (see
        :meth:`~flashlight_hf.compiler.runtime.kernel.CompiledKernel`'s direct launches): fresh
        partials and this stream's tickets at each call, every integer argument kept."""
        cfg, splits = plan.choice
        n_tiles = row_tiles(plan.rows, cfg, plan.n_grid)
        tiles = constexprs(cfg, splits)
        dev = out.device
        if switches.fused_split and self.fused is not None:
            launcher, _ = self.fused
            src = self.source.split_fused
            layout = PartialsLayout(splits, plan.n_grid, plan.rows, src.acc_widths)
            args = self.fused_args(inputs, out, plan, layout.carve(layout.alloc(dev)), self.counts(dev, n_tiles))
            fused = launcher.direct(args, tiles, cfg.num_warps, cfg.num_stages)
            if fused is None:
                return None
            which = src.input_args

            def run_fused(ins: list, o: torch.Tensor) -> bool:
                c = self.counts(o.device, n_tiles)  # this stream's tickets
                return fused(n_tiles * splits, [ins[k].data_ptr() for k in which] +
                             layout.pointers(layout.alloc(o.device)) + [c.data_ptr(), o.data_ptr()])

            return run_fused
        (part_fn, _), (comb_fn, _) = self.pair
        part_src, comb_src = self.source.split
        layout = PartialsLayout(splits, plan.n_grid, plan.rows, part_src.acc_widths)
        part_args, comb_args = self.pair_args(inputs, out, plan, layout.carve(layout.alloc(dev)))
        part = part_fn.direct(part_args, tiles, cfg.num_warps, cfg.num_stages)
        comb = comb_fn.direct(comb_args, tiles, *COMBINE_LAUNCH)
        if part is None or comb is None:
            return None
        part_in, comb_in = part_src.input_args, comb_src.input_args

        def run_pair(ins: list, o: torch.Tensor) -> bool:
            ptrs = layout.pointers(layout.alloc(o.device))
            return part(n_tiles * splits, [ins[k].data_ptr() for k in part_in] + ptrs) and \
                comb(n_tiles, [ins[k].data_ptr() for k in comb_in] + ptrs + [o.data_ptr()])

        return run_pair
