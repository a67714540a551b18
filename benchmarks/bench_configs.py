"""Launch configurations one by one: what each tile shape (and warp specialisation) gives.

The runtime autotunes over ``flashlight_hf.compiler.runtime.CONFIGS``; this script times each
candidate alone (``FLASHLIGHT_CONFIGS`` forces one) for a few programs, with and without
``FLASHLIGHT_WARP_SPECIALIZE=1``, next to the program's best peer measured in the same run, so a
change to the candidate list or the code generator is decided on numbers.

    python benchmarks/bench_configs.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flashlight_hf  # noqa: E402
from flashlight_hf import settings  # noqa: E402
from benchmarks.bench_programs import diff_attention, diff_attention_two_sdpa  # noqa: E402
from flashlight_hf.compiler.runtime import CONFIGS  # noqa: E402
from flashlight_hf.testing import rel_error  # noqa: E402


def full(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1) @ v


def causal(q, k, v):
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    return torch.softmax(s.masked_fill(j > i, float("-inf")), dim=-1) @ v


def programs(b: int, h: int, s: int, d: int, device: str, dtype: torch.dtype) -> dict:
    """name -> (program, peer, inputs, flops)."""
    g = torch.Generator(device=device).manual_seed(0)
    r = lambda *sh: torch.randn(*sh, generator=g, device=device).to(dtype)  # noqa: E731
    qkv = [r(b, h, s, d) for _ in range(3)]
    diff_in = (r(b, 2 * h, s, 2 * d), r(b, 2 * h, s, 2 * d), r(b, 2 * h, s, d),
               (torch.rand(2 * h, generator=g, device=device) * 0.8).to(dtype))
    sdpa = lambda q, k, v: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
    sdpa_causal = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    return {
        "differential": (diff_attention, diff_attention_two_sdpa, diff_in, 2 * 4 * b * 2 * h * s * s * d),
        "full": (full, sdpa, qkv, 4 * b * h * s * s * d),
        "causal": (causal, sdpa_causal, qkv, 2 * b * h * s * s * d),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=int, nargs=4, default=[4, 16, 4096, 64], metavar=("B", "H", "S", "D"),
                   help="differential uses 2H heads of q,k width 2D (B4 H32 S4096 D64 by default)")
    p.add_argument("--programs", default="differential,full,causal")
    p.add_argument("--warp-specialize", default="0,1")
    p.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/out")
    args = p.parse_args(argv)
    from triton.testing import do_bench

    os.environ["FLASHLIGHT_DISK_CACHE"] = "0"  # the whole run, whoever reads it
    settings.reload()
    dtype, device = torch.bfloat16, "cuda"
    rows = []
    progs = programs(*args.shape, device, dtype)
    for name in args.programs.split(","):
        fn, peer, inputs, flops = progs[name]
        ref = peer(*inputs)
        ms = do_bench(lambda: peer(*inputs), warmup=25, rep=100, return_mode="median")
        rows.append(dict(program=name, impl="peer", ws="-", config="-", ms=ms, tflops=flops / ms * 1e-9, err=0.0))
        for ws in args.warp_specialize.split(","):
            os.environ["FLASHLIGHT_WARP_SPECIALIZE"] = ws  # read where kernels are generated
            settings.reload()
            for cfg in CONFIGS:
                label = f"{cfg.block_m}x{cfg.block_n} w{cfg.num_warps} s{cfg.num_stages}"
                tiles = ((cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages),)
                try:
                    with settings.override(configs=tiles):
                        compiled = flashlight_hf.compile(fn)
                        out = compiled(*inputs)
                        err = rel_error(out, ref)
                        ms = do_bench(lambda: compiled(*inputs), warmup=25, rep=100, return_mode="median")
                    rows.append(dict(program=name, impl="flashlight", ws=ws, config=label, ms=ms,
                                     tflops=flops / ms * 1e-9, err=err))
                except Exception as e:  # noqa: BLE001 - a config that does not fit is a row, not a crash
                    rows.append(dict(program=name, impl="flashlight", ws=ws, config=label, ms=None, tflops=None,
                                     err=None, error=f"{type(e).__name__}: {str(e)[:80]}"))
                print(rows[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "configs.json").write_text(json.dumps(rows, indent=1))
    lines = [f"- device: {torch.cuda.get_device_name()}; torch {torch.__version__}; shape {args.shape} bf16", "",
             "| program | impl | warp spec. | config | ms | TFLOP/s | × peer | rel err |", "|---|---|---|---|---:|---:|---:|---:|"]
    peer_ms = {r["program"]: r["ms"] for r in rows if r["impl"] == "peer"}
    for r in rows:
        if r["ms"] is None:
            lines.append(f"| {r['program']} | {r['impl']} | {r['ws']} | {r['config']} | — | — | — | {r.get('error')} |")
        else:
            lines.append(f"| {r['program']} | {r['impl']} | {r['ws']} | {r['config']} | {r['ms']:.3f} | "
                         f"{r['tflops']:.1f} | {peer_ms[r['program']] / r['ms']:.2f}× | {r['err']:.1e} |")
    (out / "configs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
