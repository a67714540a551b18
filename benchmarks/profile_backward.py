"""Where a fused forward + backward spends its GPU time: per CUDA kernel (torch.profiler), for
a few variants of bench_attention at one shape and bench_programs' programs. Usage: python
benchmarks/profile_backward.py [--variants full causal ...] [--head-dim 64] [--programs diffllama
evoformer]. Prints one table per variant (kernel, calls, µs) and the backward tiles chosen."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import flashlight_hf  # noqa: E402
from benchmarks.variants import VARIANTS  # noqa: E402


def training_step(name: str, batch: int, heads: int, seqlen: int, head_dim: int, device: str) -> Callable[[], None]:
    """One forward + backward of variant ``name`` through ``flashlight_hf.compile`` on fresh bf16
    q, k, v (gradients reset each call): the step this script profiles and
    ``host_overhead.py`` times on the host."""
    var = VARIANTS[name](batch, heads, seqlen, device, seed=0)
    q, k, v = (torch.randn(batch, heads, seqlen, head_dim, device=device, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    seed = torch.randn_like(q)
    fn = flashlight_hf.compile(var.program)
    args = var.program_args()

    def step(marks: list | None = None) -> None:
        q.grad = k.grad = v.grad = None
        out = fn(q, k, v, *args)
        if marks is not None:
            marks.append(time.perf_counter())
        out.backward(seed)
    return step


def program_step(name: str, device: str, diff_shape: tuple = (4, 32, 4096, 64),
                 evo_shape: tuple = (4, 256, 256, 4, 64)) -> Callable[[], None]:
    """One forward + backward of bench_programs' program ``name`` (its default shapes, bf16,
    every floating input wanting a gradient) through ``flashlight_hf.compile``."""
    from benchmarks import bench_programs as bp

    args = argparse.Namespace(diff_shape=list(diff_shape), evo_shape=list(evo_shape), seed=0)
    inputs = [t.detach().requires_grad_(t.is_floating_point()) for t in bp._inputs(name, args, device, torch.bfloat16)]
    fn = flashlight_hf.compile(bp.PROGRAMS[name])
    seed = torch.randn_like(fn(*inputs))

    def step(marks: list | None = None) -> None:
        for t in inputs:
            t.grad = None
        out = fn(*inputs)
        if marks is not None:
            marks.append(time.perf_counter())
        out.backward(seed)
    return step


def _profile(label: str, step: Callable[[], None], cprofile: bool = False) -> None:
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step()
        torch.cuda.synchronize()
    rows: dict = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            r = rows.setdefault(e.name[:70], [0, 0.0])
            r[0] += 1
            r[1] += e.device_time / 5
    total = sum(r[1] for r in rows.values())
    print(f"\n{label}: {total:.0f} µs of GPU time per step", flush=True)
    for n, (c, t) in sorted(rows.items(), key=lambda x: -x[1][1])[:12]:
        print(f"  {t:8.1f} µs  {c // 5:3d}×  {n}", flush=True)
    _host_report(step)
    if cprofile:
        _cprofile(step)
    print(f"  backward tiles chosen: {_chosen_tiles()}", flush=True)
    for key, timed in _tuning_times():
        print(f"  tuned {key}: " + ", ".join(f"({c.block_m},{c.block_n},{c.num_warps},{c.num_stages}) "
                                             + ("fail" if ms is None else f"{ms * 1e3:.0f}") for c, ms in timed))


def _host_report(step: Callable, n: int = 20) -> None:
    """Host time of a step against its wall time, each step started on an idle GPU: the time
    until the forward returns, until the backward returns (no synchronisation inside, so this is
    the host's own work), and until the GPU is done. Then one step under CUDA's sync debug mode:
    any operation that waits for the GPU inside the step is named (it serialises host and GPU)."""
    fwd, host, wall = [], [], []
    for _ in range(n):
        torch.cuda.synchronize()
        marks = [time.perf_counter()]
        step(marks)
        marks.append(time.perf_counter())
        torch.cuda.synchronize()
        marks.append(time.perf_counter())
        fwd.append(marks[1] - marks[0])
        host.append(marks[2] - marks[0])
        wall.append(marks[3] - marks[0])
    med = lambda xs: statistics.median(xs) * 1e6  # noqa: E731
    print(f"  host: forward returns at {med(fwd):.0f} µs, backward at {med(host):.0f} µs; "
          f"GPU done at {med(wall):.0f} µs (median of {n}, each from an idle GPU)", flush=True)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [f"{w.filename}:{w.lineno}: {str(w.message).splitlines()[0][:120]}" for w in caught
             if "synchroniz" in str(w.message).lower()]
    print(f"  synchronising calls inside one step: {len(syncs)}" + "".join(f"\n    {m}" for m in syncs), flush=True)


def _cprofile(step: Callable, n: int = 20) -> None:
    """Where the host time of a step goes (real launches, nothing stubbed): cProfile over ``n``
    steps, the top functions by own time and by cumulative time."""
    import cProfile
    import pstats

    torch.cuda.synchronize()
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(n):
        step()
    pr.disable()
    torch.cuda.synchronize()
    st = pstats.Stats(pr)
    st.sort_stats("tottime").print_stats(30)
    st.sort_stats("cumtime").print_stats(50)


def _backwards() -> list:
    """Every generated backward alive now (the autotuner's choices and timings live on them)."""
    import gc

    from flashlight_hf.compiler.runtime.backward import GeneratedBackward

    return [o for o in gc.get_objects() if isinstance(o, GeneratedBackward)]


def _chosen_tiles() -> list:
    """The launch configurations the backward autotuner picked so far (for the report)."""
    return [o.chosen_tiles() for o in _backwards() if o.chosen_tiles()]


def _tuning_times() -> list:
    """(key, [(config, ms)]) of every backward launch the autotuner timed since the last report."""
    got = []
    for o in _backwards():
        for key, timed in o.tuning_times().items():
            if (id(o), key) not in _REPORTED:
                _REPORTED.add((id(o), key))
                got.append((key, timed))
    return got


_REPORTED: set = set()  # (backward, key) already printed: each table shows its own variant's tuning


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--variants", nargs="*", default=["full", "causal", "sliding_window"])
    p.add_argument("--programs", nargs="*", default=[], help="bench_programs programs to profile too")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=4096)
    p.add_argument("--cprofile", action="store_true", help="also print where the host time goes")
    a = p.parse_args()
    for name in a.variants:
        _profile(f"{name} D{a.head_dim}", training_step(name, a.batch, a.heads, a.seqlen, a.head_dim, "cuda"),
                 a.cprofile)
    for name in a.programs:
        _profile(name, program_step(name, "cuda"), a.cprofile)


if __name__ == "__main__":
    main()
