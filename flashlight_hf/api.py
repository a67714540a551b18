"""Public entry points: :func:`compile` and :func:`explain`.

The pipeline per specialisation (dtypes, ranks, static sizes, non-tensor arguments):
trace with concrete shapes → IR → plan (names the row, key and batch axes) → trace again with
those axes symbolic → IR → plan → codegen → load. A program that cannot be fused runs through
its own eager code, with one warning naming the node and the reason — never a wrong answer.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from flashlight_hf.compiler import capture as cap
from flashlight_hf.compiler import cache as diskcache
from flashlight_hf.compiler.guards import Guards
from flashlight_hf.compiler.codegen import KernelSource, generate
from flashlight_hf.compiler.ir import Program, Unsupported, Var, build_ir
from flashlight_hf.compiler.rewrite import KernelPlan, plan
from flashlight_hf.compiler.runtime import CompiledKernel, register_kernel, shape_mismatch


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass
class Build:
    """The outcome of compiling one specialisation: a kernel, or the reason it fell back."""

    kernel: CompiledKernel | None
    program: Program | None
    kernel_plan: KernelPlan | None
    source: KernelSource | None
    fallback: tuple[str, str] | None = None
    symbolic: bool = False
    dynamic_axes: list[dict[int, str]] | None = None
    op_key: str | None = None  # the kernel's key for the flashlight::fused custom op
    from_disk: bool = False  # loaded from the on-disk build cache
    launched: bool = False  # its kernel has run once (launch errors after that are the caller's)


def _dynamic_axes(p: KernelPlan) -> list[dict[int, str]]:
    """Per input, the axes that may vary between calls (rows, keys, undivided batch axes).

    Axes read by several variables (``doc[:, None] == doc[None, :]`` reads rows and keys) tie
    those variables to one size name.
    """
    prog = p.program
    derived_from = set()
    for e in prog.defs.values():
        derived_from |= e.vars()
    dynamic = {p.row_var, p.loop_var} | {g for g in p.grid_vars if g not in derived_from}
    group: dict[Var, Var] = {}

    def find(v: Var) -> Var:
        while v in group:
            v = group[v]
        return v

    for per_input in prog.input_axis_vars:
        for vs in per_input:
            roots = [find(v) for v in vs]
            for r in roots[1:]:
                if r is not roots[0]:
                    group[r] = roots[0]
    # an axis read by several variables (two softmax streams each reading the keys) is dynamic
    # when its variables are tied to a dynamic one
    dynamic_roots = {find(v) for v in dynamic}
    out: list[dict[int, str]] = []
    for k, b in enumerate(prog.bindings):
        if not isinstance(b, int):
            continue
        axes = {}
        for a, vs in enumerate(prog.input_axis_vars[k]):
            if vs and all(find(v) in dynamic_roots and v not in prog.defs for v in vs):
                axes[a] = f"S_{find(vs[0]).name}"
        while len(out) <= b:
            out.append({})
        out[b] = axes
    return out


def _device_problem(tensors: list[torch.Tensor], interpret: bool) -> str | None:
    """Why generated kernels cannot run on these tensors' devices, or None."""
    allowed = ("cpu", "cuda") if interpret else ("cuda",)
    for t in tensors:
        if t.device.type not in allowed:
            where = "Triton's interpreter (TRITON_INTERPRET=1) runs CPU tensors" if interpret else \
                "generated kernels run on CUDA tensors (CPU tensors need TRITON_INTERPRET=1)"
            return f"an input is on {t.device}: {where}"
    return None


def build(fn: Callable, args: tuple, kwargs: dict, *, interpret: bool | None = None) -> Build:
    """Compile ``fn`` for the specialisation of ``(args, kwargs)``; never raises on unsupported programs.

    Whatever goes wrong inside the compiler (a program outside what it handles, or an error of
    its own) becomes a fallback naming the node or stage: the program then runs as written.
    ``interpret``: generate for Triton's interpreter or for a GPU (default: what this process
    runs; ``benchmarks/kernel_stats.py`` builds GPU source on a machine without one)."""
    tensors, constants, spec = cap.split_args(args, kwargs)
    if any(t.numel() == 0 for t in tensors):
        return Build(None, None, None, None, None)  # nothing to compute: eager's answer, no warning
    # an explicit ``interpret`` builds source for that target (kernel_stats: GPU source on a CPU
    # machine); by default the build is for running here, on these tensors' devices
    problem = _device_problem(tensors, _interpret()) if interpret is None else None
    interpret = _interpret() if interpret is None else interpret
    if problem is not None:
        return Build(None, None, None, None, ("inputs", problem))
    try:
        return _build(fn, args, kwargs, tensors, constants, spec, interpret)
    except Unsupported as exc:
        return Build(None, None, None, None, (exc.node, exc.reason))
    except Exception as exc:  # noqa: BLE001 - an error of the compiler's own: never the user's problem
        return Build(None, None, None, None, ("compiler", f"internal error: {type(exc).__name__}: {exc}"))


def _build(fn: Callable, args: tuple, kwargs: dict, tensors: list, constants: list, spec: Any,
           interpret: bool) -> Build:
    try:
        static = cap.trace_static(fn, args, kwargs)
    except cap.CaptureError as exc:
        return Build(None, None, None, None, ("capture", str(exc)))
    tf32 = torch.backends.cuda.matmul.allow_tf32
    ws = os.environ.get("FLASHLIGHT_WARP_SPECIALIZE", "0") == "1" and not interpret
    disk_key = diskcache.build_key(static, tensors, constants, interpret=interpret, allow_tf32=tf32,
                                   warp_specialize=ws) \
        if diskcache.enabled() else None
    cached = diskcache.load(disk_key) if disk_key else None
    if cached is not None:
        kernel = CompiledKernel(cached["program"], cached["source"], name_file=diskcache.kernel_file)
        op_key = register_kernel(kernel, cap.tensor_function(fn, constants, spec))
        return Build(kernel, cached["program"], None, cached["source"], None, cached["symbolic"],
                     cached["dynamic_axes"], op_key, from_disk=True)
    try:
        prog = build_ir(static)
        kplan = plan(prog)
    except Unsupported as exc:
        return Build(None, None, None, None, (exc.node, exc.reason))
    symbolic = False
    dyn = _dynamic_axes(kplan)
    dyn += [{}] * (len(tensors) - len(dyn))
    if any(dyn):
        try:
            sym = cap.trace_symbolic(fn, args, kwargs, dyn)
            prog2 = build_ir(sym)
            kplan2 = plan(prog2)
            prog, kplan, symbolic = prog2, kplan2, True
        except (cap.CaptureError, Unsupported):
            pass  # keep the static specialisation: exact shapes become part of the cache key
    try:
        src = generate(kplan, interpret=interpret, allow_tf32=tf32, warp_specialize=ws)
        kernel = CompiledKernel(prog, src, name_file=diskcache.kernel_file)
    except Unsupported as exc:
        return Build(None, prog, kplan, None, (exc.node, exc.reason))
    if disk_key:
        diskcache.store(disk_key, {"program": prog, "source": src, "symbolic": symbolic, "dynamic_axes": dyn})
    op_key = register_kernel(kernel, cap.tensor_function(fn, constants, spec))
    return Build(kernel, prog, kplan, src, None, symbolic, dyn, op_key)


def _spec_key(args: tuple, kwargs: dict) -> Any:
    tensors, constants, spec = cap.split_args(args, kwargs)
    metas = tuple((t.dtype, t.dim(), t.device.type, tuple(int(s) for s in t.shape)) for t in tensors)
    consts = tuple(repr(c) for c in constants if c is not None)
    return metas, consts, str(spec)


def _symbolic_key(build_: Build, args: tuple, kwargs: dict) -> Any:
    """Key that ignores the sizes a symbolic kernel takes at run time (sizes 0 and 1 specialise:
    they are kept)."""
    tensors, constants, spec = cap.split_args(args, kwargs)
    dyn = build_.dynamic_axes or []
    metas = []
    for k, t in enumerate(tensors):
        axes = dyn[k] if k < len(dyn) else {}
        shape = tuple(("dyn", min(int(s), 2)) if a in axes else int(s) for a, s in enumerate(t.shape))
        metas.append((t.dtype, t.dim(), t.device.type, shape))
    return tuple(metas), tuple(repr(c) for c in constants if c is not None), str(spec)


def _tracing() -> bool:
    """Whether torch.compile or torch.export is tracing the caller right now."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return bool(torch.compiler.is_compiling() or exporting())


def _fast_key(args: tuple, kwargs: dict) -> Any | None:
    """Exact-shape key for the common call ``f(t0, t1, ..., scalar...)``; None for nested args."""
    key = []
    for a in args:
        if isinstance(a, torch.Tensor):
            key.append((a.dtype, a.shape, a.device))
        elif isinstance(a, (int, float, bool, str, type(None))):
            key.append((type(a), a))
        else:
            return None
    if kwargs:
        return None
    return tuple(key)


_MEMO_LIMIT = 4096  # exact-shape entries kept per table (a dynamic cache's decode loop: one per step)
_GUARD_TABLES = 16  # sets of guarded values whose builds are kept


class CompiledAttention:
    """What :func:`compile` returns: same signature and results as the wrapped function.

    Builds are looked up by exact shapes first (one dict lookup), then among the symbolic
    builds, which serve a new set of shapes only when :func:`shape_mismatch` finds them inside
    what the traced program holds for (checked once: the exact-shape memo remembers it). Python
    values the function reads from outside (:class:`~flashlight_hf.compiler.guards.Guards`)
    are read at every call; other values select another table of builds.

    ``guard=False`` skips reading them: for programs built by this package whose outside
    values are part of the key they are cached under (the registry's layer programs)."""

    def __init__(self, fn: Callable, *, guard: bool = True):
        self.fn = fn
        self._warned: set[tuple[str, str]] = set()
        self._guards = Guards(fn) if guard else None
        if self._guards is not None and not self._guards:
            self._guards = None
        self._tables: dict[Any, tuple[dict, list, dict, dict]] = {}
        self._guard_vals: Any = None
        self._use_table(self._guards.values() if self._guards is not None else None)
        functools.update_wrapper(self, fn)

    def _use_table(self, vals: Any) -> None:
        table = self._tables.get(vals)
        if table is None:
            if len(self._tables) >= _GUARD_TABLES:
                self._tables.pop(next(iter(self._tables)))
            table = self._tables[vals] = ({}, [], {}, {})
        # builds made (by exact specialisation), symbolic builds, the exact-shape memo of
        # positional calls, and the specialisations a symbolic build was checked to serve
        self._builds, self._symbolic, self._fast, self._checked = table
        self._guard_vals = vals

    def _check_guards(self) -> None:
        vals = self._guards.values()
        if vals != self._guard_vals:
            self._use_table(vals)

    def build_for(self, args: tuple, kwargs: dict) -> Build:
        k = _spec_key(args, kwargs)
        if k in self._builds:
            return self._builds[k]
        if k in self._checked:
            return self._checked[k]
        tensors = None
        for skey, b in self._symbolic:
            if _symbolic_key(b, args, kwargs) == skey:
                tensors = cap.split_args(args, kwargs)[0] if tensors is None else tensors
                if shape_mismatch(b.kernel.program, b.kernel.bound_inputs(tensors)) is None:
                    self._remember(self._checked, k, b)  # these shapes fit it: not checked again
                    return b
        if _tracing():
            raise RuntimeError(
                f"flashlight: {getattr(self.fn, '__name__', 'the program')} has no kernel for these input "
                "shapes yet, and it cannot be generated while torch.compile / torch.export is tracing. "
                "Call the compiled function once eagerly with inputs of the same shapes and dtypes "
                "before compiling or exporting the code that uses it.")
        before = self._guard_vals
        b = build(self.fn, args, kwargs)
        if self._guards is not None:
            after = self._guards.values()
            if after != before:  # tracing itself changed what the function reads: key the table by that
                table = self._tables.pop(before)
                self._tables[after] = table
                self._guard_vals = after
        self._builds[k] = b  # one per build made: bounded by what the caller compiles
        if b.symbolic and b.kernel is not None:
            self._symbolic.append((_symbolic_key(b, args, kwargs), b))
        return b

    @staticmethod
    def _remember(memo: dict, key: Any, b: Build) -> None:
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()
        memo[key] = b

    def _lookup(self, args: tuple, kwargs: dict) -> tuple[Any | None, Build]:
        """(exact-shape fast key or None, the build for these arguments): the fast key's table
        first, then :meth:`build_for`."""
        if self._guards is not None:
            self._check_guards()
        fast = _fast_key(args, kwargs)
        b = self._fast.get(fast) if fast is not None else None
        if b is None:
            b = self.build_for(args, kwargs)
            if fast is not None:
                self._remember(self._fast, fast, b)
        return fast, b

    def _eager(self, b: Build, args: tuple, kwargs: dict) -> Any:
        """The program as written; a fallback warns once, after eager ran (when eager itself
        rejects the inputs, its error is what the caller sees)."""
        out = self.fn(*args, **kwargs)
        if b.fallback is not None and b.fallback not in self._warned:
            self._warned.add(b.fallback)
            warnings.warn(f"flashlight: running {getattr(self.fn, '__name__', 'the program')} unfused "
                          f"(eager PyTorch): node {b.fallback[0]!r}: {b.fallback[1]}", stacklevel=3)
        return out

    def _first_launch(self, b: Build, launch: Callable[[], Any]) -> Any:
        """A build's first launch: an error there (Triton cannot compile the source, a kernel
        rule that fails at run time) turns the build into a fallback instead of a crash."""
        try:
            out = launch()
        except Exception as exc:  # noqa: BLE001 - the generated kernel failed: run the program as written
            b.kernel, b.fallback = None, ("launch", f"the generated kernel failed: {type(exc).__name__}: {exc}")
            return _FAILED
        b.launched = True
        return out

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fast, b = self._lookup(args, kwargs)
        if b.kernel is None:
            return self._eager(b, args, kwargs)
        # the fast key admits only flat positional arguments, so the tensors are those of args
        tensors = [a for a in args if isinstance(a, torch.Tensor)] if fast is not None else \
            cap.split_args(args, kwargs)[0]
        direct = fast is not None and _plain_eager_call(tensors)
        if b.launched:
            # nothing to differentiate, trace or export: launch directly (the custom op's
            # dispatch costs tens of microseconds per call, a decode step's layers add them up)
            return b.kernel(tensors) if direct else torch.ops.flashlight.fused(b.op_key, tensors)
        run = functools.partial(b.kernel, tensors) if direct else \
            functools.partial(torch.ops.flashlight.fused, b.op_key, tensors)
        out = self._first_launch(b, run)
        return self._eager(b, args, kwargs) if out is _FAILED else out

    def into(self, out: torch.Tensor, *args: Any) -> torch.Tensor:
        """``out.copy_(self(*args))`` without the copy where the kernel can write ``out`` itself
        (any strides: a caller's final layout). ``args`` are flat positional arguments."""
        fast, b = self._lookup(args, {})
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if fast is not None and b.kernel is not None and _plain_eager_call(tensors + [out]):
            if b.launched:
                return b.kernel(tensors, out=out)
            if self._first_launch(b, functools.partial(b.kernel, tensors, out=out)) is not _FAILED:
                return out
        return out.copy_(self(*args))


_FAILED = object()


def _plain_eager_call(tensors: list[torch.Tensor]) -> bool:
    """An eager call with real tensors that needs no autograd: the custom op would only add
    dispatch. Under torch.compile / export / fake tensors, or with gradients, the op is used."""
    if torch.compiler.is_compiling():
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if (grad and t.requires_grad) or type(t) is not torch.Tensor and not isinstance(t, torch.nn.Parameter):
            return False
    return True


def compile(fn: Callable) -> CompiledAttention:  # noqa: A001 - the public name the issue asks for
    """Compile an attention function written in plain PyTorch into a fused Triton kernel."""
    return CompiledAttention(fn)


@dataclass
class Explanation:
    """What was fused and why not: see ``str(explanation)``."""

    num_kernels: int
    fallbacks: list[tuple[str, str]] = field(default_factory=list)
    ir: str = ""
    sources: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"kernels: {self.num_kernels}"]
        if self.fallbacks:
            parts.append("fallbacks:\n" + "\n".join(f"  {n}: {r}" for n, r in self.fallbacks))
        if self.ir:
            parts.append("IR:\n" + self.ir)
        for k, s in enumerate(self.sources):
            parts.append(f"kernel {k} source:\n{s}")
        return "\n\n".join(parts)


def explain(fn: Callable, *example_args: Any, **example_kwargs: Any) -> Explanation:
    """Compile ``fn`` for the example inputs and report kernels, fallbacks, IR and sources."""
    b = build(fn if not isinstance(fn, CompiledAttention) else fn.fn, example_args, example_kwargs)
    ir_text = b.program.describe() if b.program is not None else ""
    if b.kernel is None:
        return Explanation(0, [b.fallback] if b.fallback else [], ir_text, [])
    return Explanation(1, [], ir_text, [b.source.source])
