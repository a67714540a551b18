"""Host time of a fused forward + backward with every kernel launch stubbed out (CPU only):
what Python, the dispatcher and autograd cost per training step, apart from the GPU.

Why: on the GPU the masked variants' wall time is bound by host work (RESULTS.md, session 8),
and device time is scarce. With launches replaced by no-ops (``Launcher.__call__`` and the
Δ kernel), a CPU run times exactly the rest of the path: plans, size functions, buffers,
custom-op dispatch, autograd. Usage: ``python benchmarks/host_overhead.py [--variants full causal]
[--profile]`` prints µs per step (median of 50) and, with ``--profile``, the top functions."""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.profile_backward import training_step  # noqa: E402
from flashlight_hf.compiler.runtime import backward as rt_backward  # noqa: E402
from flashlight_hf.compiler.runtime.launch import Launcher  # noqa: E402


def stub_launches() -> None:
    """Every generated kernel launch and the Δ kernel become no-ops (outputs stay uninitialised)."""
    Launcher.__call__ = lambda self, *a, **k: None
    rt_backward._row_dot_kernel = lambda: _NoGrid()


class _NoGrid:
    def __getitem__(self, grid):  # noqa: ANN001, ANN204
        return lambda *a, **k: None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--variants", nargs="+", default=["full", "causal", "sliding_window"])
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--shape", type=int, nargs=3, default=[4, 16, 4096], metavar=("B", "H", "S"))
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--sort", default="tottime")
    p.add_argument("--top", type=int, default=25)
    a = p.parse_args()
    stub_launches()
    b, h, s = a.shape
    for name in a.variants:
        step = training_step(name, b, h, s, a.head_dim, "cpu")
        for _ in range(3):
            step()
        times = []
        for _ in range(a.steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        print(f"{name} D{a.head_dim}: {statistics.median(times) * 1e6:.0f} µs host per step")
        if a.profile:
            pr = cProfile.Profile()
            pr.enable()
            for _ in range(20):
                step()
            pr.disable()
            pstats.Stats(pr).sort_stats(a.sort).print_stats(a.top)


if __name__ == "__main__":
    main()
