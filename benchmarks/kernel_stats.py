"""Registers, spills, shared memory and instruction mix of a generated kernel, without a GPU.

Triton compiles ahead of time for a target it does not have (with the ``ptxas`` its wheel
bundles), so what ``flashlight_hf.explain`` shows as source can be read as SASS on any machine:
per program, loop-schedule variant (``benchmarks/bench_schedule.py``) and launch configuration,
this prints the registers per thread, the spill traffic (``STL``/``LDL`` instructions), the
dynamic shared memory, and counts of the instructions that decide an attention kernel's speed
(``HGMMA`` tensor-core MMAs, ``MUFU.EX2`` exponentials, ``LDGSTS``/``UTMALDG`` asynchronous
copies, …). It compiles with the specialisation a real launch gets: each integer argument equal
to 1 becomes a constant, pointers and integers divisible by 16 say so (without that, Triton
cannot vectorise the loads and does not pipeline them, and the numbers mean nothing).

Run it with ``TRITON_INTERPRET`` unset or 0. Counts are static (instructions in the binary, not executed); the GPU box runs Triton 3.6, this
machine may have another version. Use it to screen variants before spending GPU time on them.

    python benchmarks/kernel_stats.py --programs differential,full --variants generated,stream_order
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

OPS = ("HGMMA", "MUFU.EX2", "FFMA", "FMUL", "FADD", "FMNMX", "F2FP", "LDGSTS", "UTMALDG", "LDG", "STS", "LDS",
       "STL", "LDL", "ATOMG", "MEMBAR")
DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int64: "i64",
          torch.int32: "i32", torch.int8: "i8", torch.bool: "i1"}


def programs(b: int, h: int, s: int, d: int, dtype: torch.dtype) -> dict[str, tuple]:
    """name -> (program, CPU example inputs of the benchmark's shape family)."""
    from benchmarks.bench_configs import causal, full
    from benchmarks.bench_programs import diff_attention

    r = lambda *sh: torch.randn(*sh, dtype=dtype)  # noqa: E731
    return {
        "differential": (diff_attention, (r(b, 2 * h, s, 2 * d), r(b, 2 * h, s, 2 * d), r(b, 2 * h, s, d),
                                          torch.rand(2 * h, dtype=dtype))),
        "full": (full, (r(b, h, s, d), r(b, h, s, d), r(b, h, s, d))),
        "causal": (causal, (r(b, h, s, d), r(b, h, s, d), r(b, h, s, d))),
    }


def launch_args(fn: Any, example: tuple) -> tuple[Any, list[Any]]:
    """The GPU kernel source of ``fn`` (built as for a GPU, on this machine) and its launch
    arguments for ``example``, as the runtime would pass them."""
    from flashlight_hf.compiler import driver as api

    build = api.build(fn, example, {}, interpret=False)
    if build.kernel is None:
        raise RuntimeError(f"{getattr(fn, '__name__', fn)} does not fuse: {build.fallback}")
    kernel = build.kernel
    inputs = kernel.bound_inputs(list(example))
    plan = kernel.make_plan(inputs)
    out = torch.empty(plan.out_shape, dtype=kernel.program.out_dtype)
    return build.source, kernel.launch_args(inputs, out, plan)


def fused_split_stats(fn: Any, example: tuple, splits: int = 16, arch: int = 90) -> dict[str, Any]:
    """Stats of ``fn``'s one-launch split-KV kernel (``flashlight_fwd_split_fused``) for a decode
    ``example``: the interpreter runs it, but only a real compile checks that Triton accepts
    its atomics, fences and cache modifiers."""
    from flashlight_hf.compiler import driver as api
    from flashlight_hf.compiler.runtime import DECODE_CONFIG, PartialsLayout, tensor_args

    build = api.build(fn, example, {}, interpret=False)
    if build.kernel is None or build.source.split_fused is None:
        raise RuntimeError(f"{getattr(fn, '__name__', fn)} has no split-KV kernel")
    kernel, src = build.kernel, build.source.split_fused
    inputs = kernel.bound_inputs(list(example))
    plan = kernel.make_plan(inputs)
    out = torch.empty(plan.out_shape, dtype=kernel.program.out_dtype)
    args = tensor_args(inputs, src.input_args)
    layout = PartialsLayout(splits, plan.n_grid, plan.rows, src.acc_widths)
    args += layout.carve(layout.alloc(torch.device("cpu")))
    args += [plan.n_grid, torch.zeros(1024, dtype=torch.int32), out, *out.stride(), *plan.fused_sizes]
    cfg = DECODE_CONFIG
    return compile_stats(src.source, args, (cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages), arch,
                         {"NUM_SPLITS": splits})


def compile_stats(source: str, args: list[Any], config: tuple[int, int, int, int], arch: int,
                  constexprs: dict[str, Any] | None = None) -> dict[str, Any]:
    """AOT-compile ``source``'s kernel for ``sm_<arch>`` with ``args``' specialisation; its stats.
    ``constexprs``: values of constexpr parameters besides the tile sizes (``NUM_SPLITS``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel_stats_src.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("kernel_stats_src", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        name = re.search(r"^def (flashlight_\w+)\(", source, re.M).group(1)  # not a helper it calls
        fn = getattr(module, name)
        names = list(fn.arg_names)
        signature: dict[str, str] = {}
        constexprs = {"BLOCK_M": config[0], "BLOCK_N": config[1], **(constexprs or {})}
        attrs: dict[tuple, list] = {}
        for k, (n, a) in enumerate(zip(names, args)):
            if isinstance(a, torch.Tensor):
                signature[n] = "*" + DTYPES[a.dtype]
                attrs[(k,)] = [["tt.divisibility", 16]]  # allocations are 16-byte aligned on a GPU
            elif isinstance(a, int) and a == 1:
                signature[n] = "constexpr"
                constexprs[n] = 1
            else:
                signature[n] = "i32" if isinstance(a, int) else "fp32"
                if isinstance(a, int) and a % 16 == 0:
                    attrs[(k,)] = [["tt.divisibility", 16]]
        for n in names[len(args):]:
            signature[n] = "constexpr"
        compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
                                  target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": config[2], "num_stages": config[3]})
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
        usage = subprocess.run([str(tools / "cuobjdump"), "-res-usage", str(cubin)], capture_output=True,
                               text=True, check=True).stdout
        sass = subprocess.run([str(tools / "cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True,
                              check=True).stdout
    regs = re.search(r"REG:(\d+)", usage)
    stats: dict[str, Any] = {"regs": int(regs.group(1)) if regs else None, "shared": compiled.metadata.shared}
    for op in OPS:
        stats[op] = len(re.findall(r"\b" + re.escape(op) + r"\b", sass))
    return stats


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=int, nargs=4, default=[1, 2, 256, 64], metavar=("B", "H", "S", "D"),
                   help="example shape (sizes are run-time arguments: any length gives the same kernel)")
    p.add_argument("--programs", default="differential,full")
    p.add_argument("--variants", default="generated")
    p.add_argument("--configs", default="128,128,8,3;128,64,8,3;128,64,4,3")
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("kernel_stats compiles real kernels: run it with TRITON_INTERPRET=0 (or unset); "
                         "under the interpreter triton.jit makes functions that cannot be compiled")
    from benchmarks.bench_schedule import VARIANTS
    from flashlight_hf import settings

    os.environ["FLASHLIGHT_DISK_CACHE"] = "0"  # the whole run, whoever reads it
    settings.reload()
    progs = programs(*args.shape, torch.bfloat16)
    rows = []
    for pname in args.programs.split(","):
        fn, example = progs[pname]
        source, launch = launch_args(fn, example)
        for vname in args.variants.split(","):
            text = VARIANTS[vname](source.source)
            for cfg in args.configs.split(";"):
                config = tuple(int(x) for x in cfg.split(","))
                row = {"program": pname, "variant": vname, "config": cfg}
                try:
                    row.update(compile_stats(text, launch, config, args.arch))
                except Exception as e:  # noqa: BLE001 - a variant that does not compile is a row
                    row["error"] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}"
                rows.append(row)
                print(row, flush=True)
    cols = ["regs", "shared", *OPS]
    lines = [f"sm_{args.arch}, Triton {__import__('triton').__version__}, static instruction counts",
             "", "| program | variant | config | " + " | ".join(cols) + " |", "|---|---|---|" + "---:|" * len(cols)]
    for r in rows:
        cells = [str(r.get(c, "—")) for c in cols] if "error" not in r else [r["error"]] + [""] * (len(cols) - 1)
        lines.append(f"| {r['program']} | {r['variant']} | {r['config']} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "kernel_stats.md").write_text("\n".join(lines) + "\n")
        (out / "kernel_stats.json").write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
