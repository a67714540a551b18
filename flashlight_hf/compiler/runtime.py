"""Stage 5 — runtime: load generated source as a Triton kernel and launch it with real tensors.

Generated source is written to a file before import because ``triton.jit`` reads the source of
the function it wraps (``inspect.getsource``); a file also lets users open what ran. The file
name is the hash of the source, written atomically (temp file + ``os.replace``), so concurrent
processes never see a half-written kernel.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import sympy
from sympy.printing.pycode import PythonCodePrinter
import torch
import triton

from flashlight_hf.compiler.codegen import KernelSource
from flashlight_hf.compiler.ir import Program, Unsupported

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


class _SizePrinter(PythonCodePrinter):
    """Python source for size expressions, including the integer functions torch's symbolic
    shapes use (``FloorDiv``, ``CeilDiv``, ``Mod``, true divisions)."""

    def _print_FloorDiv(self, e):  # noqa: ANN001, ANN202
        return f"(({self._print(e.args[0])}) // ({self._print(e.args[1])}))"

    def _print_CeilDiv(self, e):  # noqa: ANN001, ANN202
        return f"(-((-({self._print(e.args[0])})) // ({self._print(e.args[1])})))"

    def _print_PythonMod(self, e):  # noqa: ANN001, ANN202
        return f"(({self._print(e.args[0])}) % ({self._print(e.args[1])}))"

    _print_Mod = _print_PythonMod

    def _print_FloatTrueDiv(self, e):  # noqa: ANN001, ANN202
        return f"(({self._print(e.args[0])}) / ({self._print(e.args[1])}))"

    _print_IntTrueDiv = _print_FloatTrueDiv

    def _print_ToFloat(self, e):  # noqa: ANN001, ANN202
        return f"float({self._print(e.args[0])})"

    def _print_TruncToInt(self, e):  # noqa: ANN001, ANN202
        return f"int({self._print(e.args[0])})"


def _is_float_size(e: sympy.Expr) -> bool:
    """A size expression with a real value (a scale ``1 / n``), not an index extent: printed
    as ``float(...)``; ``int(...)`` would silently truncate it."""
    if e.is_integer is True:
        return False
    if e.is_integer is False or e.atoms(sympy.Float):
        return True
    return any(type(f).__name__ in ("FloatTrueDiv", "ToFloat", "IntTrueDiv") for f in e.atoms(sympy.Function))


class SizeFunction:
    """All run-time sizes of a kernel as one compiled Python function of the input shapes.

    Built once per kernel from the symbolic sizes (sympy), so a launch costs a few integer
    operations instead of symbolic substitution (which alone costs more than a GPU kernel).
    """

    def __init__(self, program: Program, exprs: Sequence[Any]):
        positions: dict[sympy.Symbol, tuple[int, int]] = {}
        for k, shape in enumerate(program.input_shapes):
            for a, s in enumerate(shape):
                if isinstance(s, sympy.Symbol) and s not in positions:
                    positions[s] = (k, a)
        symbols = list(positions)
        self.positions = [positions[s] for s in symbols]
        body = []
        for e in exprs:
            if isinstance(e, int):
                body.append(repr(e))
                continue
            e = sympy.sympify(e)
            try:
                code = _SizePrinter().doprint(e)
            except Exception as exc:  # noqa: BLE001 - an expression we cannot print: the program falls back
                raise Unsupported("sizes", f"a run-time size {e} cannot be computed ({type(exc).__name__})") from None
            body.append(f"float({code})" if _is_float_size(e) else f"int({code})")
        names = [str(s) for s in symbols]
        src = f"def sizes({', '.join(names)}):\n    return ({', '.join(body)}{',' if len(body) == 1 else ''})\n"
        scope: dict[str, Any] = {"math": __import__("math")}
        exec(compile(src, "<flashlight sizes>", "exec"), scope)
        self._fn = scope["sizes"]
        self.source = src

    def __call__(self, tensors: Sequence[torch.Tensor]) -> tuple:
        return self._fn(*[tensors[k].shape[a] for k, a in self.positions])


@dataclass(frozen=True)
class LaunchConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# Candidates tried per shape bucket on a GPU; the interpreter uses the first that fits.
CONFIGS = [
    LaunchConfig(128, 64, 4, 3), LaunchConfig(128, 64, 8, 3), LaunchConfig(128, 128, 8, 3),
    LaunchConfig(128, 128, 4, 3),
    LaunchConfig(64, 64, 4, 3), LaunchConfig(64, 32, 4, 2), LaunchConfig(32, 32, 4, 2),
]


# Decoding (split-KV): few query rows per program, key tiles of 64; at most this many shares.
DECODE_MAX_ROWS = 16
DECODE_CONFIG = LaunchConfig(16, 64, 4, 2)
DECODE_CONFIGS = [DECODE_CONFIG, LaunchConfig(16, 128, 4, 2), LaunchConfig(16, 64, 4, 3), LaunchConfig(16, 32, 4, 2)]
MAX_SPLITS = 64


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _bucket(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@dataclass
class CompiledKernel:
    """A generated forward kernel bound to its program; call with the flat tensor inputs.

    Tile sizes are autotuned per (row-count, key-count) power-of-two bucket on the first call
    that lands in a bucket (GPU only); sequence lengths stay runtime arguments, so a bucket
    never recompiles the source.
    """

    program: Program
    source: KernelSource
    _fn: Any = None
    _tuned: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._fn = load_kernel(self.source)
        out_extents = [sum_extent(ax) for ax in self.program.out_axes]
        src = self.source
        exprs = out_extents + list(src.runtime_sizes) + [src.row_extent, src.loop_extent] + list(src.grid_extents)
        self._sizes = SizeFunction(self.program, exprs)
        self._n_out, self._n_rt = len(out_extents), len(src.runtime_sizes)
        self._split = None
        if src.split is not None:  # the split-KV pair: compiled by Triton on first use only
            part, combine = src.split
            self._split = tuple((load_kernel(k), SizeFunction(self.program, list(k.runtime_sizes)))
                                for k in (part, combine))

    def bound_inputs(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        device = tensors[0].device if tensors else torch.device("cpu")
        out = []
        for b in self.program.bindings:
            out.append(tensors[b] if isinstance(b, int) else b.to(device))
        return out

    def _candidates(self) -> list[LaunchConfig]:
        forced = os.environ.get("FLASHLIGHT_CONFIGS")
        if forced:  # "BLOCK_M,BLOCK_N,num_warps,num_stages;..." : tune over these only
            try:
                return [LaunchConfig(*(int(x) for x in c.split(","))) for c in forced.split(";") if c.strip()]
            except (TypeError, ValueError):
                raise ValueError(f"FLASHLIGHT_CONFIGS={forced!r}: expected 'BLOCK_M,BLOCK_N,num_warps,num_stages' "
                                 "entries separated by ';', e.g. '128,64,4,3;128,128,8,3'") from None
        widest = max(self.source.tile_pads.values(), default=64)
        if widest >= 256:
            return [c for c in CONFIGS if c.block_m * c.block_n <= 64 * 64]
        return CONFIGS

    def _launch(self, cfg: LaunchConfig, args: list, rows: int, n_grid: int) -> None:
        grid = (triton.cdiv(rows, cfg.block_m) * n_grid,)
        self._fn[grid](*args, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                       num_warps=cfg.num_warps, num_stages=cfg.num_stages)

    def _choose(self, args: list, rows: int, keys: int, n_grid: int, device: torch.device) -> LaunchConfig:
        key = (_bucket(rows), _bucket(keys))
        if key in self._tuned:
            return self._tuned[key]
        cands = self._candidates()
        if rows <= DECODE_MAX_ROWS and not os.environ.get("FLASHLIGHT_CONFIGS"):
            cands = DECODE_CONFIGS  # a decode step: row tiles of 16, not 128 rows of which one is real
        if device.type != "cuda" or os.environ.get("FLASHLIGHT_AUTOTUNE", "1") == "0":
            best = (LaunchConfig(64, 64, 4, 2) if cands is CONFIGS else
                    cands[0] if cands is DECODE_CONFIGS else cands[-1])
        else:
            from triton.testing import do_bench
            timings = []
            for cfg in cands:
                try:
                    ms = do_bench(lambda: self._launch(cfg, args, rows, n_grid), warmup=5, rep=20,
                                  return_mode="median")
                    timings.append((ms, cfg))
                except Exception:  # out of shared memory / registers for this tile: skip it
                    continue
            if not timings:
                raise RuntimeError("flashlight: no launch configuration fits this kernel on this GPU")
            best = min(timings, key=lambda t: t[0])[1]
        self._tuned[key] = best
        return best

    def __call__(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        inputs = self.bound_inputs(tensors)
        sizes = self._sizes(inputs)
        n_out, n_rt = self._n_out, self._n_rt
        out_shape = sizes[:n_out]
        runtime = sizes[n_out:n_out + n_rt]
        rows, keys = sizes[n_out + n_rt], sizes[n_out + n_rt + 1]
        n_grid = 1
        for g in sizes[n_out + n_rt + 2:]:
            n_grid *= g
        device = inputs[0].device
        out = torch.empty(out_shape, dtype=self.program.out_dtype, device=device)
        if out.numel() == 0:
            return out
        args: list[Any] = []
        for k in self.source.input_args:
            t = inputs[k]
            args.append(t)
            args += t.stride()
        args.append(out)
        args += out.stride()
        args += runtime
        splits = self._num_splits(rows, keys, n_grid, device)
        if splits > 1:
            return self._launch_split(inputs, out, rows, keys, n_grid, splits)
        cfg = self._choose(args, rows, keys, n_grid, device)
        for hook in _launch_hooks:
            hook(self.source.name)
        self._launch(cfg, args, rows, n_grid)
        return out

    # -- split-KV (decoding) ----------------------------------------------------------------------
    def _num_splits(self, rows: int, keys: int, n_grid: int, device: torch.device) -> int:
        """How many shares of the key axis: enough programs to fill the GPU when a few query
        rows meet a long KV cache (a decode step), each share at least two key tiles."""
        if self._split is None:
            return 1
        forced = os.environ.get("FLASHLIGHT_SPLIT_KV")
        if forced is not None:
            return max(1, int(forced))
        if rows > DECODE_MAX_ROWS:
            return 1
        sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device()) \
            if device.type == "cuda" else 4
        programs = triton.cdiv(rows, DECODE_CONFIG.block_m) * n_grid
        want = (2 * sms) // max(programs, 1)
        by_keys = keys // (2 * DECODE_CONFIG.block_n)
        n = min(want, by_keys, MAX_SPLITS)
        return 1 << (n.bit_length() - 1) if n >= 2 else 1

    def _launch_split(self, inputs: list, out: torch.Tensor, rows: int, keys: int, n_grid: int,
                      splits: int) -> torch.Tensor:
        (part_fn, part_sizes), (comb_fn, comb_sizes) = self._split
        part_src, comb_src = self.source.split
        cfg = DECODE_CONFIG
        dev = out.device
        partials = [torch.empty((splits, n_grid, rows, *w), dtype=torch.float32, device=dev)
                    for w in part_src.acc_widths]
        for hook in _launch_hooks:
            hook(part_src.name)
        args: list[Any] = []
        for k in part_src.input_args:
            args.append(inputs[k])
            args += inputs[k].stride()
        args += partials + [n_grid] + list(part_sizes(inputs))
        grid = (triton.cdiv(rows, cfg.block_m) * n_grid * splits,)
        part_fn[grid](*args, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, NUM_SPLITS=splits,
                      num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        for hook in _launch_hooks:
            hook(comb_src.name)
        args = []
        for k in comb_src.input_args:
            args.append(inputs[k])
            args += inputs[k].stride()
        args += partials + [n_grid, out, *out.stride()] + list(comb_sizes(inputs))
        grid = (triton.cdiv(rows, cfg.block_m) * n_grid,)
        comb_fn[grid](*args, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, NUM_SPLITS=splits,
                      num_warps=4, num_stages=1)
        return out


def sum_extent(ax: list) -> Any:
    out: Any = 1
    for _, e in ax:
        out = out * e
    return out
