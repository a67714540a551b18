"""Stage 5 — runtime: load generated source as a Triton kernel and launch it with real tensors.

Generated source is executed from memory (never from a file: a file could have been changed
by someone else since it was written); ``triton.jit`` reads it back through :mod:`linecache`.
Before a call's first launch, its input shapes are checked against the relations the traced
program imposes (:func:`shape_mismatch`), once per set of shapes.
"""

from __future__ import annotations

import functools
import hashlib
import linecache
import math
import os
import sys
import threading
import time
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import sympy
from sympy.printing.pycode import PythonCodePrinter
import torch

from flashlight_hf.compiler._triton_launch import Launcher, current_stream
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


def load_kernel(src: KernelSource, filename: str | None = None) -> Any:
    """Execute the generated source from memory and return its jit function.

    ``triton.jit`` reads the source of the function it wraps (``inspect.getsource``), which
    reads it through :mod:`linecache`; the source is registered there under ``filename`` (a
    readable copy the driver keeps, or a name of its own), so nothing is ever executed from a
    file another process could have changed. A kernel is loaded once per process."""
    digest = hashlib.sha256(src.source.encode()).hexdigest()[:24]
    key = (digest, src.name)
    with _lock:
        fn = _loaded.get(key)
        if fn is not None:
            return fn
        filename = filename or f"<flashlight kernel fl_{digest}>"
        lines = src.source.splitlines(keepends=True)
        linecache.cache[filename] = (len(src.source), None, lines, filename)  # mtime None: never re-read
        module = types.ModuleType(f"flashlight_hf_kernels.fl_{digest}")
        module.__file__ = filename
        sys.modules[module.__name__] = module  # Triton resolves the kernel's globals through its module
        exec(compile(src.source, filename, "exec"), module.__dict__)
        fn = _loaded[key] = getattr(module, src.name)
        return fn


_loaded: dict[tuple[str, str], Any] = {}


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
    never recompiles the source. A decode step's bucket also decides between one launch and
    the split-KV pair. What a call's input shapes imply (sizes, grid, splits) is computed once
    per set of shapes: a decode loop repeats them at every layer of every step.
    """

    program: Program
    source: KernelSource
    # the file name each generated source is known by (the driver's readable copy), or None
    name_file: Callable[[str], str | None] | None = None
    _fn: Any = None
    _tuned: dict = field(default_factory=dict)
    _plans: dict = field(default_factory=dict)
    _counters: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._fn = self._load(self.source)
        self._launcher = Launcher(self._fn)
        self._direct = all(isinstance(b, int) for b in self.program.bindings)  # no constant inputs
        out_extents = [sum_extent(ax) for ax in self.program.out_axes]
        src = self.source
        exprs = out_extents + list(src.runtime_sizes) + [src.row_extent, src.loop_extent] + list(src.grid_extents)
        self._sizes = SizeFunction(self.program, exprs)
        self._n_out, self._n_rt = len(out_extents), len(src.runtime_sizes)
        self._split = None
        if src.split is not None:  # the split-KV pair: compiled by Triton on first use only
            part, combine = src.split
            self._split = tuple((self._load(k), SizeFunction(self.program, list(k.runtime_sizes)))
                                for k in (part, combine))
            self._split_launchers = tuple(Launcher(fn) for fn, _ in self._split)
        self._fused = None
        if src.split_fused is not None:  # split-KV in one launch (the default; FLASHLIGHT_FUSED_SPLIT=0: the pair)
            fn = self._load(src.split_fused)
            self._fused = (Launcher(fn), SizeFunction(self.program, list(src.split_fused.runtime_sizes)))

    def _load(self, src: KernelSource) -> Any:
        return load_kernel(src, self.name_file(src.source) if self.name_file is not None else None)

    def bound_inputs(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        bindings = self.program.bindings
        if self._direct:
            return [tensors[b] for b in bindings]
        device = tensors[0].device if tensors else torch.device("cpu")
        return [tensors[b] if isinstance(b, int) else b.to(device) for b in bindings]

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
        self._launcher(_row_tiles(rows, cfg, n_grid), args, _constexprs(cfg), cfg.num_warps, cfg.num_stages)

    def _plan(self, inputs: list[torch.Tensor]) -> _ShapePlan:
        """Everything a call with these input shapes launches, but the launch configuration.

        Made once per set of shapes, after checking the shapes fit the program."""
        why = shape_mismatch(self.program, inputs)
        if why is not None:
            raise ShapeError(f"flashlight: {self.source.name} cannot run on inputs of shapes "
                             f"{[tuple(t.shape) for t in inputs]}: {why}")
        sizes = self._sizes(inputs)
        n_out, n_rt = self._n_out, self._n_rt
        n_grid = 1
        for g in sizes[n_out + n_rt + 2:]:
            n_grid *= g
        rows, keys = sizes[n_out + n_rt], sizes[n_out + n_rt + 1]
        out_shape = torch.Size(sizes[:n_out])
        plan = _ShapePlan(out_shape=out_shape, runtime=list(sizes[n_out:n_out + n_rt]), rows=rows,
                          keys=keys, n_grid=n_grid, splits=self._num_splits(rows, keys, n_grid, inputs[0].device),
                          empty=out_shape.numel() == 0)
        if self._split is not None:
            (_, part_sizes), (_, comb_sizes) = self._split
            plan.part_sizes, plan.comb_sizes = list(part_sizes(inputs)), list(comb_sizes(inputs))
        if self._fused is not None:
            plan.fused_sizes = list(self._fused[1](inputs))
        return plan

    def _choose(self, args: list, inputs: list[torch.Tensor], out: torch.Tensor, plan: _ShapePlan,
                env: tuple[str | None, ...]) -> tuple[LaunchConfig, int]:
        """(tile configuration, key splits) for this call, tuned once per shape bucket.

        Prefill-sized calls time tile configurations with ``do_bench``. A decode step (at most
        ``DECODE_MAX_ROWS`` rows) also chooses between one launch and the split-KV launch, timed
        on the GPU alone (:func:`_gpu_ms`): a single decode call costs more host time than GPU
        time, so host-inclusive timings rank options by their bookkeeping, not by the kernel
        (at batch 1 with 4k keys they picked a 37 µs single launch over a 15 µs split). Both
        relaunch directly afterwards, at nearly the same host cost."""
        rows, keys, n_grid, device = plan.rows, plan.keys, plan.n_grid, out.device
        forced_splits, decode = env[0] is not None, rows <= DECODE_MAX_ROWS and not env[1]
        # forced splits / configurations are part of the key: a choice made under them is not
        # the tuned choice once they are unset
        key = (_bucket(rows), _bucket(keys), env) + ((_bucket(n_grid),) if decode else ())
        if key in self._tuned:
            cfg, splits = self._tuned[key]
            return cfg, (plan.splits if splits > 1 or forced_splits else 1)
        cands = DECODE_CONFIGS if decode else self._candidates()
        if device.type != "cuda" or os.environ.get("FLASHLIGHT_AUTOTUNE", "1") == "0":
            best = (LaunchConfig(64, 64, 4, 2) if cands is CONFIGS else
                    cands[0] if cands is DECODE_CONFIGS else cands[-1])
            choice = (DECODE_CONFIG, plan.splits) if plan.splits > 1 else (best, 1)
        elif decode:
            options: list[tuple[LaunchConfig, int]] = []
            if not forced_splits or plan.splits <= 1:
                options += [(c, 1) for c in cands]
            if plan.splits > 1:
                options += [(c, plan.splits) for c in DECODE_CONFIGS]  # the split's tiles are tuned too
            timings = []
            split_run, _ = self._split_runner(env)
            for cfg, splits in options:
                run = (lambda c=cfg: self._launch(c, args, rows, n_grid)) if splits == 1 else \
                    (lambda c=cfg, s=splits: split_run(inputs, out, plan, s, c))
                try:
                    timings.append((_gpu_ms(run), (cfg, splits)))
                except Exception:  # noqa: BLE001 - a tile that does not fit this GPU: skip it
                    continue
            if not timings:
                raise RuntimeError("flashlight: no launch configuration fits this kernel on this GPU")
            choice = min(timings, key=lambda t: t[0])[1]
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
            choice = (min(timings, key=lambda t: t[0])[1], 1)
        self._tuned[key] = choice
        return choice[0], (plan.splits if choice[1] > 1 else 1)

    def __call__(self, tensors: Sequence[torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
        """Launch on ``tensors`` (the program's inputs); the result goes to a new tensor, or into
        ``out`` (any strides) when given: the caller's final layout, with no copy after."""
        inputs = self.bound_inputs(tensors)
        env = _env()
        first = inputs[0]
        # strides and dtypes too: a plan's direct launches hold every integer argument
        shape_key = (tuple([(t.shape, t.stride(), t.dtype, t.device) for t in inputs]),
                     None if out is None else out.stride(), first.get_device(), env)
        plan = self._plans.get(shape_key)
        if plan is None:
            if len(self._plans) >= 256:  # a dynamic cache's decode loop: one new shape per step
                self._plans.clear()
            plan = self._plans[shape_key] = self._plan(inputs)
        if out is None:
            out = torch.empty(plan.out_shape, dtype=self.program.out_dtype, device=first.device)
        elif out.shape != plan.out_shape or out.dtype != self.program.out_dtype or \
                out.get_device() != first.get_device():
            raise ValueError(f"flashlight: out= is {tuple(out.shape)} {out.dtype} on {out.device}; this call "
                             f"writes {tuple(plan.out_shape)} {self.program.out_dtype} on {first.device}")
        if plan.empty:
            return out
        if plan.choice is None:  # tuned (or looked up) once per set of shapes
            plan.choice = self._choose(self._args(inputs, out, plan), inputs, out, plan, env)
        cfg, splits = plan.choice
        for hook in _launch_hooks:
            for name in plan.kernel_names or self._kernel_names(plan, env):
                hook(name)
        if plan.direct is not None and plan.direct(inputs, out):
            return out
        if splits > 1:
            split_run, _ = self._split_runner(env)
            split_run(inputs, out, plan, splits, cfg)
        else:
            self._launch(cfg, self._args(inputs, out, plan), plan.rows, plan.n_grid)
        if plan.direct is None and not plan.no_direct:  # launched (compiled) once: relaunch directly
            plan.direct = self._direct_launch(inputs, out, plan, env)
            plan.no_direct = plan.direct is None
        return out

    def _kernel_names(self, plan: "_ShapePlan", env: tuple[str | None, ...]) -> list[str]:
        """The generated kernels one call with this plan launches (for launch hooks)."""
        plan.kernel_names = self._split_runner(env)[1] if plan.choice[1] > 1 else [self.source.name]
        return plan.kernel_names

    def _direct_launch(self, inputs: list[torch.Tensor], out: torch.Tensor, plan: "_ShapePlan",
                       env: tuple[str | None, ...]) -> Callable[[list, torch.Tensor], bool] | None:
        """``direct(inputs, out) -> bool``: this plan's launches with only the pointers new
        (:class:`flashlight_hf.compiler._triton_launch.DirectLaunch`), for a decode loop that
        repeats one set of shapes at every layer. None where Triton's path must stay (the
        interpreter, fast launches off, unaligned pointers); False from a call: launch the
        usual way (a pointer not aligned, a launch hook set)."""
        cfg, splits = plan.choice
        n_tiles = _row_tiles(plan.rows, cfg, plan.n_grid)
        if splits <= 1:
            single = self._launcher.direct(self._args(inputs, out, plan), _constexprs(cfg), cfg.num_warps,
                                           cfg.num_stages)
            if single is None:
                return None
            which = self.source.input_args
            return lambda ins, o: single(n_tiles, [ins[k].data_ptr() for k in which] + [o.data_ptr()])
        tiles = _constexprs(cfg, splits)
        dev = out.device
        if env[2] != "0" and self._fused is not None:
            launcher, _ = self._fused
            src = self.source.split_fused
            layout = _PartialsLayout(splits, plan.n_grid, plan.rows, src.acc_widths)
            args = self._fused_args(inputs, out, plan, layout.carve(layout.alloc(dev)), self._counts(dev, n_tiles))
            fused = launcher.direct(args, tiles, cfg.num_warps, cfg.num_stages)
            if fused is None:
                return None
            which = src.input_args

            def run_fused(ins: list, o: torch.Tensor) -> bool:
                c = self._counts(o.device, n_tiles)  # this stream's tickets
                return fused(n_tiles * splits, [ins[k].data_ptr() for k in which] +
                             layout.pointers(layout.alloc(o.device)) + [c.data_ptr(), o.data_ptr()])

            return run_fused
        part_fn, comb_fn = self._split_launchers
        part_src, comb_src = self.source.split
        layout = _PartialsLayout(splits, plan.n_grid, plan.rows, part_src.acc_widths)
        part_args, comb_args = self._pair_args(inputs, out, plan, layout.carve(layout.alloc(dev)))
        part = part_fn.direct(part_args, tiles, cfg.num_warps, cfg.num_stages)
        comb = comb_fn.direct(comb_args, tiles, *_COMBINE_LAUNCH)
        if part is None or comb is None:
            return None
        part_in, comb_in = part_src.input_args, comb_src.input_args

        def run_pair(ins: list, o: torch.Tensor) -> bool:
            ptrs = layout.pointers(layout.alloc(o.device))
            return part(n_tiles * splits, [ins[k].data_ptr() for k in part_in] + ptrs) and \
                comb(n_tiles, [ins[k].data_ptr() for k in comb_in] + ptrs + [o.data_ptr()])

        return run_pair

    def _args(self, inputs: list[torch.Tensor], out: torch.Tensor, plan: _ShapePlan) -> list[Any]:
        """The kernel's arguments: each input with its strides, the output with its, the sizes."""
        return tensor_args(inputs, self.source.input_args) + [out, *out.stride(), *plan.runtime]

    def _fused_args(self, inputs: list[torch.Tensor], out: torch.Tensor, plan: _ShapePlan,
                    partials: list[torch.Tensor], counts: torch.Tensor) -> list[Any]:
        """The one-launch split kernel's arguments (its launches and its direct relaunches)."""
        return tensor_args(inputs, self.source.split_fused.input_args) + partials + \
            [plan.n_grid, counts, out, *out.stride()] + plan.fused_sizes

    def _pair_args(self, inputs: list[torch.Tensor], out: torch.Tensor, plan: _ShapePlan,
                   partials: list[torch.Tensor]) -> tuple[list[Any], list[Any]]:
        """The partials kernel's and the combine kernel's arguments."""
        part_src, comb_src = self.source.split
        return (tensor_args(inputs, part_src.input_args) + partials + [plan.n_grid] + plan.part_sizes,
                tensor_args(inputs, comb_src.input_args) + partials + [plan.n_grid, out, *out.stride()] +
                plan.comb_sizes)

    def _split_runner(self, env: tuple[str | None, ...]) -> tuple[Callable[..., None], list[str]]:
        """The split-KV launcher this call uses (the one-launch kernel by default, the partials
        + combine pair under ``FLASHLIGHT_FUSED_SPLIT=0``) and its kernels' names."""
        if env[2] != "0" and self._fused is not None:
            return self._run_split_fused, [self.source.split_fused.name]
        return self._run_split, [k.name for k in self.source.split]

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
        programs = _row_tiles(rows, DECODE_CONFIG, n_grid)
        want = (2 * sms) // max(programs, 1)
        by_keys = keys // (2 * DECODE_CONFIG.block_n)
        n = min(want, by_keys, MAX_SPLITS)
        return 1 << (n.bit_length() - 1) if n >= 2 else 1

    def _run_split(self, inputs: list, out: torch.Tensor, plan: _ShapePlan, splits: int,
                   cfg: LaunchConfig = DECODE_CONFIG) -> None:
        """The partials kernel over ``splits`` shares of the keys, then the combine kernel."""
        part_fn, comb_fn = self._split_launchers
        layout = _PartialsLayout(splits, plan.n_grid, plan.rows, self.source.split[0].acc_widths)
        part_args, comb_args = self._pair_args(inputs, out, plan, layout.carve(layout.alloc(out.device)))
        tiles = _constexprs(cfg, splits)
        n_tiles = _row_tiles(plan.rows, cfg, plan.n_grid)
        part_fn(n_tiles * splits, part_args, tiles, cfg.num_warps, cfg.num_stages)
        comb_fn(n_tiles, comb_args, tiles, *_COMBINE_LAUNCH)

    def _counts(self, dev: torch.device, tiles: int) -> torch.Tensor:
        """The one-launch split's ticket counters for the current stream of ``dev``: zeroed once,
        left zeroed by every launch (the merging program resets its tile's count)."""
        stream = current_stream(dev.index) if dev.type == "cuda" else 0
        counts = self._counters.get((dev, stream))
        if counts is None or counts.numel() < tiles:
            counts = self._counters[(dev, stream)] = torch.zeros(max(tiles, 1024), dtype=torch.int32, device=dev)
        return counts

    def _run_split_fused(self, inputs: list, out: torch.Tensor, plan: _ShapePlan, splits: int,
                         cfg: LaunchConfig = DECODE_CONFIG) -> None:
        """The split-KV kernel whose last share per row tile merges the shares: one launch.

        Its per-tile tickets live in a zeroed int32 buffer per (device, stream) that the merging
        program resets, so a launch leaves it as it found it."""
        launcher, _ = self._fused
        n_tiles = _row_tiles(plan.rows, cfg, plan.n_grid)
        layout = _PartialsLayout(splits, plan.n_grid, plan.rows, self.source.split_fused.acc_widths)
        args = self._fused_args(inputs, out, plan, layout.carve(layout.alloc(out.device)),
                                self._counts(out.device, n_tiles))
        launcher(n_tiles * splits, args, _constexprs(cfg, splits), cfg.num_warps, cfg.num_stages)


@dataclass
class _ShapePlan:
    """A call's sizes for one set of input shapes, computed once (a decode loop repeats them)."""

    out_shape: tuple
    runtime: list
    rows: int
    keys: int
    n_grid: int
    splits: int
    part_sizes: list = field(default_factory=list)
    comb_sizes: list = field(default_factory=list)
    fused_sizes: list = field(default_factory=list)
    empty: bool = False  # the output has no elements: nothing to launch
    choice: tuple | None = None  # (LaunchConfig, splits), once chosen
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


# the combine kernel's (num_warps, num_stages): it merges a few rows of partials, no key loop
_COMBINE_LAUNCH = (4, 1)


def _row_tiles(rows: int, cfg: LaunchConfig, n_grid: int) -> int:
    """Programs per key share: row tiles times grid points (integer ceil-div: ``triton.cdiv`` is a
    jit function, ~1.5 µs per host call)."""
    return -(-rows // cfg.block_m) * n_grid


def _constexprs(cfg: LaunchConfig, splits: int | None = None) -> tuple[tuple[str, int], ...]:
    """A launch's constexpr arguments: the tile sizes, and the share count of a split launch."""
    tiles = (("BLOCK_M", cfg.block_m), ("BLOCK_N", cfg.block_n))
    return tiles if splits is None else tiles + (("NUM_SPLITS", splits),)


class _PartialsLayout:
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
        return torch.empty(self.total, dtype=torch.float32, device=device)

    def carve(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [flat[at:at + n].view(sh) for at, n, sh in zip(self.starts, self.sizes, self.shapes)]

    def pointers(self, flat: torch.Tensor) -> list[int]:
        base = flat.data_ptr()
        return [base + off for off in self.byte_offsets]


def _env() -> tuple[str | None, ...]:
    """The environment switches a call's launch depends on (split count, forced tiles, the
    one-launch split, fast launches): part of every plan's and tuning choice's key, so a plan
    made under one setting (its direct launches included) never serves another."""
    get = os.environ.get
    return (get("FLASHLIGHT_SPLIT_KV"), get("FLASHLIGHT_CONFIGS"), get("FLASHLIGHT_FUSED_SPLIT"),
            get("FLASHLIGHT_FAST_LAUNCH"))


def _gpu_ms(fn: Callable[[], None], reps: int = 10) -> float:
    """Milliseconds of GPU time per call of ``fn`` (median of 3 runs): the launches are queued
    behind a GPU busy-wait (:func:`_hold_gpu`), so the events time the kernels back to back and
    none of the host time it takes to issue them; without the busy-wait, the wall clock."""
    fn()
    torch.cuda.synchronize()
    if not _hold_gpu(0):
        return _wall_clock_ms(fn)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        _hold_gpu(20_000_000)  # ~10 ms on a ~2 GHz GPU: longer than issuing the calls below
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        issued_ms = (time.perf_counter() - t0) * 1e3
        torch.cuda.synchronize()
        if issued_ms > 5.0:  # the busy-wait may have ended first: the events would see host gaps
            return _wall_clock_ms(fn)
        runs.append(start.elapsed_time(end) / reps)
    return sorted(runs)[1]


def _hold_gpu(cycles: int) -> bool:
    """Keep the current stream busy for ``cycles`` GPU clock cycles (``torch.cuda._sleep``, a
    private PyTorch API: ``tests/test_runtime_calls.py`` fails if it moves); False where it
    does not exist (then callers fall back to wall-clock timing)."""
    sleep = getattr(torch.cuda, "_sleep", None)
    if sleep is None:
        return False
    if cycles:
        sleep(cycles)
    return True


def _wall_clock_ms(fn: Callable[[], None], reps: int = 20) -> float:
    """Milliseconds per call of ``fn`` run back to back, host included (median of 3 runs)."""
    fn()
    torch.cuda.synchronize()
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        runs.append((time.perf_counter() - t0) / reps * 1e3)
    return sorted(runs)[1]


def sum_extent(ax: list) -> Any:
    out: Any = 1
    for _, e in ax:
        out = out * e
    return out
