"""The driver: one program through every stage, for one specialisation.

The pipeline per specialisation (dtypes, ranks, static sizes, non-tensor arguments):
trace with concrete shapes → IR → plan (names the row, key and batch axes) → trace again with
those axes symbolic → IR → plan → codegen → load. A program that cannot be fused runs through
its own eager code, with one warning naming the node and the reason — never a wrong answer.
:mod:`flashlight_hf.compiler.compiled` keeps the builds of one function and calls them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from flashlight_hf import settings
from flashlight_hf.compiler import cache as diskcache
from flashlight_hf.compiler import capture as cap
from flashlight_hf.compiler import guards
from flashlight_hf.compiler.codegen import KernelSource, generate
from flashlight_hf.compiler.ir import Program, Unsupported, Var, build_ir
from flashlight_hf.compiler.rewrite import KernelPlan, plan
from flashlight_hf.compiler.runtime import CompiledKernel, autocast, register_kernel


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
    # the autocast state it was traced in (its program holds that region's casts)
    autocast_state: autocast.AutocastState = ()
    # seconds per stage of this build (trace, disk_cache, ir_plan, trace_symbolic, codegen, load, and
    # first_launch: Triton's compile and any tuning, once it ran): what benchmarks/first_call.py prints
    timings: dict[str, float] = field(default_factory=dict)


def dynamic_axes(p: KernelPlan) -> list[dict[int, str]]:
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


def build(fn: Callable, args: tuple, kwargs: dict, *, interpret: bool | None = None,
          training: bool = False) -> Build:
    """Compile ``fn`` for the specialisation of ``(args, kwargs)``; never raises on unsupported programs.

    Whatever goes wrong inside the compiler (a program outside what it handles, or an error of
    its own) becomes a fallback naming the node or stage: the program then runs as written.
    ``interpret``: generate for Triton's interpreter or for a GPU (default: what this process
    runs; ``benchmarks/kernel_stats.py`` builds GPU source on a machine without one).
    ``training``: also generate the training-mode forward (``kernel.forward_with_lse``: the
    output and each softmax stream's log-sum-exp; the first piece of the generated backward)."""
    tensors, constants, spec = cap.split_args(args, kwargs)
    if any(t.numel() == 0 for t in tensors):
        return Build(None, None, None, None, None)  # nothing to compute: eager's answer, no warning
    # an explicit ``interpret`` builds source for that target (kernel_stats: GPU source on a CPU
    # machine); by default the build is for running here, on these tensors' devices
    problem = _device_problem(tensors, settings.current().interpret) if interpret is None else None
    interpret = settings.current().interpret if interpret is None else interpret
    if problem is not None:
        return Build(None, None, None, None, ("inputs", problem))
    state = autocast.of_tensors(tensors)  # both traces run in it and record its casts
    timings: dict[str, float] = {}
    try:
        b = _build(fn, args, kwargs, tensors, constants, spec, interpret, training, state, timings)
    except Unsupported as exc:
        b = Build(None, None, None, None, (exc.node, exc.reason))
    except Exception as exc:  # noqa: BLE001 - an error of the compiler's own: never the user's problem
        b = Build(None, None, None, None, ("compiler", f"internal error: {type(exc).__name__}: {exc}"))
    b.autocast_state = state
    b.timings = timings
    return b


class _Stage:
    """Times one stage into ``timings[name]`` (added up where a stage runs twice)."""

    def __init__(self, timings: dict[str, float], name: str):
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.timings[self.name] = self.timings.get(self.name, 0.0) + time.perf_counter() - self.t0


def _build(fn: Callable, args: tuple, kwargs: dict, tensors: list, constants: list, spec: Any,
           interpret: bool, training: bool, state: autocast.AutocastState, timings: dict[str, float]) -> Build:
    try:
        with _Stage(timings, "trace"):
            static = cap.trace_static(fn, args, kwargs)
    except cap.CaptureError as exc:
        return Build(None, None, None, None, ("capture", str(exc)))
    tf32 = torch.backends.cuda.matmul.allow_tf32
    ws = settings.current().warp_specialize and not interpret
    arg_names = cap.argument_names(fn, args, kwargs)
    disk_key = diskcache.build_key(static, tensors, constants, interpret=interpret, allow_tf32=tf32,
                                   warp_specialize=ws, names=arg_names, training=training,
                                   code=guards.code_fingerprint(fn)) \
        if diskcache.enabled() else None
    with _Stage(timings, "disk_cache"):
        cached = diskcache.load(disk_key) if disk_key else None
    # the program as written, for the op's shape fallback and the recompute backward: re-run in
    # the autocast state it was traced in (the disk key needs no state: the graph holds the casts)
    eager = autocast.replaying(state, cap.tensor_function(fn, constants, spec))
    if cached is not None:
        kernel = CompiledKernel(cached["program"], cached["source"], name_file=diskcache.kernel_file,
                                choices=diskcache.tuning_choices())
        op_key = register_kernel(kernel, eager)
        return Build(kernel, cached["program"], None, cached["source"], None, cached["symbolic"],
                     cached["dynamic_axes"], op_key, from_disk=True)
    try:
        with _Stage(timings, "ir_plan"):
            prog = build_ir(static)
            kplan = plan(prog)
    except Unsupported as exc:
        return Build(None, None, None, None, (exc.node, exc.reason))
    symbolic = False
    dyn = dynamic_axes(kplan)
    dyn += [{}] * (len(tensors) - len(dyn))
    if any(dyn):
        try:
            with _Stage(timings, "trace_symbolic"):
                sym = cap.trace_symbolic(fn, args, kwargs, dyn)
            with _Stage(timings, "ir_plan"):
                prog2 = build_ir(sym)
                kplan2 = plan(prog2)
            prog, kplan, symbolic = prog2, kplan2, True
        except (cap.CaptureError, Unsupported):
            pass  # keep the static specialisation: exact shapes become part of the cache key
    try:
        names = [arg_names[b] if isinstance(b, int) else None for b in prog.bindings]
        with _Stage(timings, "codegen"):
            src = generate(kplan, interpret=interpret, allow_tf32=tf32, warp_specialize=ws, input_names=names,
                           training=training)
        with _Stage(timings, "load"):
            kernel = CompiledKernel(prog, src, name_file=diskcache.kernel_file, choices=diskcache.tuning_choices())
    except Unsupported as exc:
        return Build(None, prog, kplan, None, (exc.node, exc.reason))
    if disk_key:
        diskcache.store(disk_key, {"program": prog, "source": src, "symbolic": symbolic, "dynamic_axes": dyn})
    op_key = register_kernel(kernel, eager)
    return Build(kernel, prog, kplan, src, None, symbolic, dyn, op_key)
