"""Where a batch-1 decode step's host time goes: cProfile and CUDA sync detection per impl.

A 1B model's batch-1 decode step is bound by the host (Python and kernel launches), so the
attention backend's per-layer host cost decides the step time. This prints, for each impl, the
functions with the most own time over ``--steps`` steps, and every synchronising CUDA call
one step makes (``torch.cuda.set_sync_debug_mode``): a sync per layer drains the launch queue
and serialises host and GPU. Without the profiler's overhead, it then times (perf_counter, no
sync) each layer's attention function and the kernel launches inside it, per call.

    python -m benchmarks.profile_decode --out $OUT
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import llm_cases as cases  # noqa: E402


class HostTimes:
    """Wraps callables to add up their host time per call (no CUDA sync: launches are async)."""

    def __init__(self) -> None:
        self.total: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._undo: list = []

    def timed(self, fn: Any, label: str) -> Any:
        """``fn``, adding its host time per call under ``label``."""

        def timed(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.total[label] = self.total.get(label, 0.0) + time.perf_counter() - t0
                self.calls[label] = self.calls.get(label, 0) + 1

        return timed

    def wrap(self, owner: Any, attr: str, label: str) -> None:
        original = getattr(owner, attr)
        setattr(owner, attr, self.timed(original, label))
        self._undo.append((owner, attr, original))

    def restore(self) -> None:
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)
        self._undo.clear()

    def table(self, steps: int) -> list[str]:
        rows = ["| function | calls per step | µs per call | µs per step |", "|---|---:|---:|---:|"]
        for label, t in self.total.items():
            n = self.calls[label]
            rows.append(f"| {label} | {n / steps:.0f} | {t / n * 1e6:.1f} | {t / steps * 1e6:.0f} |")
        return rows


def host_breakdown(model, state: Any, impl: str, steps: int) -> list[str]:
    """Host µs per call of the attention function, the flashlight runtime and Triton's launch."""
    import triton.runtime.jit as tjit
    from transformers import AttentionInterface

    from flashlight_hf.compiler import runtime

    times = HostTimes()
    mapping = AttentionInterface._global_mapping  # bench-only: wrap the registered function in place
    fn = mapping[impl]
    mapping[impl] = times.timed(fn, "attention function")
    if impl == "flashlight":
        from flashlight_hf.transformers import layers as registry
        from flashlight_hf.compiler import compiled as api

        times.wrap(registry, "run_layer_structured", "layers.run_layer_structured")
        times.wrap(api.CompiledAttention, "into", "CompiledAttention.into")
        times.wrap(runtime.CompiledKernel, "__call__", "CompiledKernel.__call__")
        times.wrap(runtime.Tuner, "choose", "Tuner.choose")
        times.wrap(runtime.CompiledKernel, "launch_single", "CompiledKernel.launch_single (one kernel)")
        times.wrap(runtime.SplitKV, "run_pair", "SplitKV.run_pair (split-KV pair)")
        times.wrap(tjit.JITFunction, "run", "triton JITFunction.run")
        times.wrap(torch, "empty", "torch.empty")
    step = cases.decode_call(model, state)
    try:
        for _ in range(3):
            step()
        times.total.clear()
        times.calls.clear()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / steps * 1e3
    finally:
        mapping[impl] = fn
        times.restore()
    return [f"host time per call ({impl}, {wall:.3f} ms per step with the wrappers):", "", *times.table(steps), ""]


def launch_costs(n: int = 500) -> list[str]:
    """Host µs per launch, back to back without a sync: what one more kernel per layer costs."""
    import triton
    import triton.language as tl

    from flashlight_hf.compiler.runtime import Launcher

    @triton.jit
    def copy(x_ptr, y_ptr, n_elem, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n_elem), mask=offs < n_elem)

    x = torch.randn(1024, device="cuda")
    y = torch.empty_like(x)
    launcher = Launcher(copy)
    cases = {
        "torch.add (one ATen kernel)": lambda: torch.add(x, 1.0, out=y),
        "triton fn[grid](...) (JITFunction.run)": lambda: copy[(8,)](x, y, 1024, BLOCK=128),
        "flashlight Launcher (kept CompiledKernel)": lambda: launcher(8, [x, y, 1024], (("BLOCK", 128),), 4, 2),
        "torch.empty (no launch)": lambda: torch.empty(1024, device="cuda"),
    }
    rows = ["| launch | µs per call |", "|---|---:|"]
    for name, fn in cases.items():
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        us = (time.perf_counter() - t0) / n * 1e6
        torch.cuda.synchronize()
        rows.append(f"| {name} | {us:.1f} |")
    return ["host cost per launch on this machine:", "", *rows, ""]


def _host_us(fn: Any, n: int = 40, rounds: int = 15) -> float:
    """Host µs per call of ``fn``: ``n`` calls issued after a sync (the launch queue never fills,
    so the GPU's own time is not measured), median over ``rounds``."""
    runs = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t0) / n * 1e6)
    torch.cuda.synchronize()
    return sorted(runs)[len(runs) // 2]


def isolated_attention(model, state: Any, impl: str) -> list[str]:
    """Host µs of one layer's attention function called on its own, again and again with one
    decode step's arguments: the backend's cost without the rest of the model around it."""
    from transformers import AttentionInterface

    mapping = AttentionInterface._global_mapping
    fn = mapping[impl]
    captured: list = []

    def grab(*a: Any, **k: Any) -> Any:
        if not captured:
            captured.append((a, k))
        return fn(*a, **k)

    mapping[impl] = grab
    try:
        cases.decode_call(model, state)()
    finally:
        mapping[impl] = fn
    a, k = captured[0]
    with torch.no_grad():
        us = _host_us(lambda: fn(*a, **k))
    return [f"{impl}: one layer's attention function alone, {us:.1f} µs host per call", ""]


def launch_anatomy(model, state: Any) -> list[str]:
    """Host µs of one decode layer's kernel launch, peeled layer by layer: the runtime call, our
    ``Launcher`` (specialisation key + kept kernel), Triton's runner, its ``run`` called directly,
    and the same with raw pointers instead of tensors. Tells which layer costs what."""
    from flashlight_hf.compiler.runtime import launch as tlaunch
    from flashlight_hf.compiler import runtime

    seen: dict[str, Any] = {}
    original = runtime.CompiledKernel.__call__

    def record(self: Any, tensors: Any, out: Any = None) -> Any:
        seen["call"] = (self, list(tensors), out)
        return original(self, tensors, out=out)

    launched: dict[str, Any] = {}
    original_launch = tlaunch.Launcher.__call__

    def record_launch(self: Any, grid: int, args: list, constexprs: Any, nw: int, ns: int) -> None:
        launched[id(self)] = (self, grid, list(args), constexprs, nw, ns)
        return original_launch(self, grid, args, constexprs, nw, ns)

    runtime.CompiledKernel.__call__ = record  # type: ignore[method-assign]
    tlaunch.Launcher.__call__ = record_launch  # type: ignore[method-assign]
    try:
        step = cases.decode_call(model, state)
        step()
        step()
    finally:
        runtime.CompiledKernel.__call__ = original  # type: ignore[method-assign]
        tlaunch.Launcher.__call__ = original_launch  # type: ignore[method-assign]
    kernel, tensors, out = seen["call"]
    rows = ["| what | arguments | µs per call |", "|---|---:|---:|",
            f"| CompiledKernel call (whole runtime path; {len(launched)} launch(es) went through Launcher) | | "
            f"{_host_us(lambda: kernel(tensors, out=out)):.1f} |"]
    inputs = kernel.bound_inputs(tensors)
    plans = [p for p in kernel.plans() if p.direct is not None]
    if plans:
        rows.append(f"| the plan's direct launch(es) alone | | {_host_us(lambda: plans[-1].direct(inputs, out)):.1f} |")
    for launcher, grid, args, constexprs, nw, ns in launched.values():
        name = getattr(launcher.fn, "__name__", "kernel")
        key = (tlaunch.specialization_key(args), constexprs, nw, ns)
        kept = launcher.kernels.get(key)
        rows.append(f"| {name}: Launcher (key + kept kernel) | {len(args)} | "
                    f"{_host_us(lambda: launcher(grid, args, constexprs, nw, ns)):.1f} |")
        rows.append(f"| {name}: specialization_key alone | {len(args)} | "
                    f"{_host_us(lambda: tlaunch.specialization_key(args)):.1f} |")
        if kept is None:
            continue
        compiled, tail = kept
        full = [*args, *tail]
        rows.append(f"| {name}: Triton runner `compiled[grid](*args)` | {len(full)} | "
                    f"{_host_us(lambda: compiled[(grid, 1, 1)](*full)):.1f} |")
        stream = torch.cuda.current_stream().cuda_stream

        def direct(a: list = full) -> None:
            compiled.run(grid, 1, 1, stream, compiled.function, compiled.packed_metadata, None, None, None, *a)

        try:
            rows.append(f"| {name}: `compiled.run` direct, stream given | {len(full)} | {_host_us(direct):.1f} |")
            ptrs = [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in full]
            rows.append(f"| {name}: `compiled.run` direct, raw pointers | {len(full)} | "
                        f"{_host_us(lambda: direct(ptrs)):.1f} |")
        except Exception as exc:  # noqa: BLE001 - a Triton whose run takes other arguments: say so
            rows.append(f"| {name}: `compiled.run` direct | | failed: {type(exc).__name__}: {exc} |")
    return ["one decode layer's launch, peeled (host µs, 40 calls after a sync, median of 15):", "", *rows, ""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama-1b")
    p.add_argument("--impls", default="sdpa,flashlight")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--cache", default="dynamic")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--host-breakdown", action="store_true", help="also on CPU (always on CUDA)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/out")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = cases.build_model(args.model, dtype=dtype, device=device, seed=0)
    state = cases.prefill_cache(model, batch=args.batch, context=args.context, kind=args.cache,
                                vocab=model.config.vocab_size, seed=1)
    report = []
    for impl in args.impls.split(","):
        model = cases.use_impl(model, impl)
        step = cases.decode_call(model, state)
        for _ in range(5):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                step()
                torch.cuda.set_sync_debug_mode(0)
            syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
        else:
            syncs = []
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) / args.steps * 1e3
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(args.top)
        report += [f"## {impl}: {ms:.3f} ms per step (B{args.batch}, ctx {args.context}, {args.cache} cache)",
                   f"synchronising calls in one step: {len(syncs)}", *[f"  - {s}" for s in syncs[:10]],
                   "```", buf.getvalue().strip(), "```", ""]
        if device.type == "cuda" or args.host_breakdown:
            report += host_breakdown(model, state, impl, args.steps)
        if device.type == "cuda":
            report += isolated_attention(model, state, impl)
        if impl == "flashlight" and device.type == "cuda":
            report += launch_anatomy(model, state)
        print("\n".join(report[-6 - len(syncs[:10]):]), flush=True)
    if device.type == "cuda":
        report += launch_costs()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile_decode.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
