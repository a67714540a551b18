"""Registers, spills and shared memory of the generated backward's kernels, without a GPU.

``kernel_stats.py`` does this for the forward; the backward's launch arguments come from the
runtime, so this script first runs one small forward + backward under Triton's interpreter
(recording each launch's arguments), then compiles the *GPU* source of the same kernels ahead of
time for ``sm_<arch>`` with those arguments' specialisation, once per tile configuration. A
configuration whose accumulators do not fit in registers shows as ``STL``/``LDL`` (spills):
screen tiles here before spending GPU time on them.

    python benchmarks/backward_stats.py --programs diffllama,full --configs "64,64,4,3;32,128,4,3"

(run it with ``TRITON_INTERPRET`` unset: it sets the interpreter itself for the recording run.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def examples(dtype: torch.dtype) -> dict[str, tuple[Callable, tuple]]:
    """name -> (program, small CPU example inputs whose kernels are the benchmark's)."""
    from benchmarks import bench_programs as bp
    from benchmarks.variants import VARIANTS

    out: dict[str, tuple[Callable, tuple]] = {}
    for name in ("full", "causal", "document_mask", "alibi", "softcap"):
        var = VARIANTS[name](1, 2, 256, "cpu", seed=0)
        qkv = tuple(torch.randn(1, 2, 256, 64, dtype=dtype) for _ in range(3))
        out[name] = (var.program, qkv + tuple(var.program_args()))
    ns = argparse.Namespace(diff_shape=[1, 4, 256, 64], evo_shape=[1, 2, 128, 2, 64], seed=0)
    for name in ("diffllama", "evoformer"):
        out[name] = (bp.PROGRAMS[name], bp._inputs(name, ns, "cpu", dtype))
    return out


def record_launches(name: str) -> dict[str, list[Any]]:
    """Kernel name -> its launch's arguments (tensors as one-element stand-ins of their dtype),
    from one forward + backward of example ``name`` under the interpreter. In a subprocess:
    Triton decides at import whether its own ``@jit`` helpers (``tl.cdiv``) are interpreted."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "FLASHLIGHT_DISK_CACHE": "0"}
    out = subprocess.run([sys.executable, __file__, "--record", name], env=env, capture_output=True, text=True,
                         check=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    return {k: [torch.empty(1, dtype=getattr(torch, a[1])) if isinstance(a, list) else a for a in args]
            for k, args in got.items()}


def _record(name: str) -> None:
    """The subprocess's side of :func:`record_launches`: prints the launches as one JSON line."""
    from flashlight_hf.compiler.runtime import launch as launch_mod

    import flashlight_hf

    fn, example = examples(torch.bfloat16)[name]
    seen: dict[str, list[Any]] = {}
    original = launch_mod.Launcher.__call__

    def spy(self: Any, grid: int, args: list, *rest: Any) -> None:
        seen[getattr(self.fn, "__name__", "?")] = [["tensor", str(a.dtype).split(".")[1]]
                                                   if isinstance(a, torch.Tensor) else a for a in args]
        return original(self, grid, args, *rest)

    launch_mod.Launcher.__call__ = spy
    inputs = [t.detach().requires_grad_(t.is_floating_point()) for t in example]
    out = flashlight_hf.compile(fn)(*inputs)
    out.backward(torch.randn_like(out))
    print(json.dumps(seen))


def gpu_sources(fn: Callable, example: tuple) -> dict[str, str]:
    """Kernel name -> its GPU source (built as for a GPU, on this machine)."""
    import re

    from flashlight_hf.compiler import driver as api

    build = api.build(fn, example, {}, interpret=False, training=True)
    if build.source is None or build.source.backward is None:
        raise RuntimeError(f"{getattr(fn, '__name__', fn)} has no generated backward: "
                           f"{build.fallback or build.source.backward_error}")
    out = {}
    for text in [build.source.train.source] + [k.source for k in build.source.backward.kernels]:
        out[re.search(r"^def (flashlight_\w+)\(", text, re.M).group(1)] = text
    return out


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--programs", default="full,diffllama,evoformer")
    p.add_argument("--configs", default="32,128,4,3;64,128,8,3;64,64,4,3;32,64,4,3;128,128,8,2")
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--record", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.record:
        _record(a.record)
        return []
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("run backward_stats with TRITON_INTERPRET unset: it records under the interpreter itself")
    from flashlight_hf import settings

    os.environ["FLASHLIGHT_DISK_CACHE"] = "0"
    settings.reload()
    from benchmarks.kernel_stats import compile_stats

    progs = examples(torch.bfloat16)
    recorded = {name: record_launches(name) for name in a.programs.split(",")}

    rows = []
    for name in a.programs.split(","):
        sources = gpu_sources(*progs[name])
        for kname, args in recorded[name].items():
            if kname not in sources or "bwd" not in kname:
                continue
            for cfg in a.configs.split(";"):
                config = tuple(int(x) for x in cfg.split(","))
                row: dict[str, Any] = {"program": name, "kernel": kname, "config": cfg}
                try:
                    row.update(compile_stats(sources[kname], args, config, a.arch))
                except Exception as e:  # noqa: BLE001 - a configuration that does not compile is a row
                    row["error"] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:100]}"
                rows.append(row)
                keep = ("regs", "shared", "HGMMA", "STL", "LDL", "error")
                print(name, kname, cfg, {k: row[k] for k in keep if k in row}, flush=True)
    return rows


if __name__ == "__main__":
    main()
