"""A call's plan: what its input shapes imply (sizes, grid, key shares), computed once per set
of shapes and launch switches, and the launch arguments built from it.

A decode loop repeats one set of shapes at every layer of every step, so everything here is
made at a shape's first call and only looked up afterwards."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from flashlight_hf.compiler.abi import BLOCK_M, BLOCK_N, NUM_SPLITS
from flashlight_hf.compiler.runtime.switches import LaunchSwitches
from flashlight_hf.compiler.runtime.tune import LaunchConfig


@dataclass
class ShapePlan:
    """A call's sizes for one set of input shapes, computed once (a decode loop repeats them)."""

    out_shape: tuple
    runtime: list  # the kernel's run-time size arguments
    rows: int  # query rows
    keys: int  # keys per row
    n_grid: int  # grid points besides the row tiles (batch, heads, ...)
    splits: int  # key shares the shapes allow (1: no split)
    switches: LaunchSwitches | None = None  # the launch switches it was made under
    part_sizes: list = field(default_factory=list)
    comb_sizes: list = field(default_factory=list)
    fused_sizes: list = field(default_factory=list)
    empty: bool = False  # the output has no elements: nothing to launch
    choice: tuple | None = None  # (LaunchConfig, splits), once chosen
    provisional: bool = False  # the default tiles while the bucket's tuning waits for a later call
    kernel_names: list | None = None  # what one call launches, for launch hooks
    direct: Callable | None = None  # relaunch with new pointers only (after the first launch)
    no_direct: bool = False  # direct launches are not possible for this plan


def tensor_args(inputs: list[torch.Tensor], which: list[int]) -> list[Any]:
    """The pointer-and-strides arguments of the inputs a kernel reads: ``t, *t.stride()`` each."""
    args: list[Any] = []
    for k in which:
        args.append(inputs[k])
        args.extend(inputs[k].stride())
    return args


def row_tiles(rows: int, cfg: LaunchConfig, n_grid: int) -> int:
    """Programs per key share: row tiles times grid points (integer ceil-div: ``triton.cdiv`` is a
    jit function, ~1.5 µs per host call)."""
    return -(-rows // cfg.block_m) * n_grid


def constexprs(cfg: LaunchConfig, splits: int | None = None) -> tuple[tuple[str, int], ...]:
    """A launch's constexpr arguments: the tile sizes, and the share count of a split launch."""
    tiles = ((BLOCK_M, cfg.block_m), (BLOCK_N, cfg.block_n))
    return tiles if splits is None else tiles + ((NUM_SPLITS, splits),)
