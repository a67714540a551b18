"""Stage 5 — runtime: load generated source as a Triton kernel and launch it with real tensors.

Generated source is written to a file before import because ``triton.jit`` reads the source of
the function it wraps (``inspect.getsource``); a file also lets users open what ran. The file
name is the hash of the source, written atomically (temp file + ``os.replace``), so concurrent
processes never see a half-written kernel.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import sympy
import torch
import triton

from flashlight_hf.compiler.codegen import KernelSource
from flashlight_hf.compiler.ir import Program

_launch_hooks: list[Callable[[str], None]] = []
_lock = threading.Lock()


def add_launch_hook(fn: Callable[[str], None]) -> Callable[[], None]:
    """Call ``fn(kernel_name)`` at every generated-kernel launch; returns a remover.

    Tests use it to prove a generated kernel actually ran (not a silent fallback).
    """
    _launch_hooks.append(fn)
    return lambda: _launch_hooks.remove(fn)


def cache_dir() -> Path:
    root = os.environ.get("FLASHLIGHT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "flashlight_hf")
    path = Path(root) / "kernels"
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_kernel(src: KernelSource) -> Any:
    """Import the generated source (from the on-disk cache when already written) and return the jit fn."""
    digest = hashlib.sha256(src.source.encode()).hexdigest()[:24]
    path = cache_dir() / f"fl_{digest}.py"
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(src.source)
        os.replace(tmp, path)
    mod_name = f"flashlight_hf_kernels.fl_{digest}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, src.name)


def _symbol_values(program: Program, tensors: Sequence[torch.Tensor]) -> dict[sympy.Symbol, int]:
    values: dict[sympy.Symbol, int] = {}
    for k, shape in enumerate(program.input_shapes):
        t = tensors[k]
        for a, s in enumerate(shape):
            if isinstance(s, sympy.Symbol):
                values[s] = int(t.shape[a])
    return values


def _evaluate(x: Any, values: dict) -> Any:
    if isinstance(x, int):
        return x
    r = sympy.sympify(x).subs(values)
    if r.is_integer:
        return int(r)
    return float(r)


@dataclass
class CompiledKernel:
    """A generated forward kernel bound to its program; call with the flat tensor inputs."""

    program: Program
    source: KernelSource
    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2
    _fn: Any = None

    def __post_init__(self) -> None:
        self._fn = load_kernel(self.source)

    def bound_inputs(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        device = tensors[0].device if tensors else torch.device("cpu")
        out = []
        for b in self.program.bindings:
            out.append(tensors[b] if isinstance(b, int) else b.to(device))
        return out

    def __call__(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        inputs = self.bound_inputs(tensors)
        values = _symbol_values(self.program, inputs)
        out_shape = [int(_evaluate(sum_extent(ax), values)) for ax in self.program.out_axes]
        device = inputs[0].device
        out = torch.empty(out_shape, dtype=self.program.out_dtype, device=device)
        if out.numel() == 0:
            return out
        args: list[Any] = []
        for k in self.source.input_args:
            t = inputs[k]
            args.append(t)
            args += list(t.stride())
        args.append(out)
        args += list(out.stride())
        args += [_evaluate(s, values) for s in self.source.runtime_sizes]
        rows = int(_evaluate(self.source.row_extent, values))
        n_grid = 1
        for g in self.source.grid_extents:
            n_grid *= int(_evaluate(g, values))
        grid = (triton.cdiv(rows, self.block_m) * n_grid,)
        for hook in list(_launch_hooks):
            hook(self.source.name)
        self._fn[grid](*args, BLOCK_M=self.block_m, BLOCK_N=self.block_n,
                       num_warps=self.num_warps, num_stages=self.num_stages)
        return out


def sum_extent(ax: list) -> Any:
    out: Any = 1
    for _, e in ax:
        out = out * e
    return out
