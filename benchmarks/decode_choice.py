"""What the runtime chooses for one decode step, against every option timed alone.

For the front door's decode program (a GQA group's query heads as the rows of one program,
Llama-1B's H32 Hk8 D64, bf16) at batch 1 and each context: the launch the runtime's decode
tuning picks, its GPU time, and the GPU time of each option forced by the environment (one
launch; the one-launch split; the two-launch pair), all from CUDA graphs
(``triton.testing.do_bench_cudagraph``: GPU time only, no host time). Tells whether the
tuning ranks options by what the kernels cost.

    python -m benchmarks.decode_choice --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_decode import grouped_rows_attention  # noqa: E402

OPTIONS = {  # settings.override(...) of each option
    "tuned": {},
    "one launch": {"split_kv": 1},
    "split, one launch": {"split_kv": 32},
    "split, pair": {"split_kv": 32, "fused_split": False},
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--context", type=int, nargs="+", default=[4096, 32768])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/out/decode_choice")
    args = p.parse_args(argv)
    import flashlight_hf
    from flashlight_hf import settings
    from flashlight_hf.compiler.runtime import launch_switches
    from triton.testing import do_bench_cudagraph

    rows = []
    b, hk, g, d = args.batch, 8, 4, 64
    for ctx in args.context:
        q = torch.randn(b, hk, g, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(b, hk, ctx, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(b, hk, ctx, d, device="cuda", dtype=torch.bfloat16)
        for name, option in OPTIONS.items():
            with settings.override(**{"split_kv": None, "fused_split": True, **option}):
                fn = flashlight_hf.compile(grouped_rows_attention)
                fn(q, k, v)
                plans = fn.builds()[0].kernel.plans()
                plan = next(pl for pl in plans if pl.switches == launch_switches())  # this option's plan
                us = do_bench_cudagraph(lambda: fn(q, k, v), rep=50, return_mode="median") * 1e3
                cfg, splits = plan.choice
                rows.append(dict(context=ctx, option=name, us=us, splits=splits,
                                 config=f"{cfg.block_m}x{cfg.block_n} w{cfg.num_warps} s{cfg.num_stages}"))
            print(rows[-1], flush=True)
    lines = [f"- device: {torch.cuda.get_device_name()}; B{args.batch} H32 Hk8 D64 bf16, GQA rows; "
             "GPU µs from CUDA graphs", "", "| context | option | splits | config | GPU µs |", "|---:|---|---:|---|---:|"]
    lines += [f"| {r['context']} | {r['option']} | {r['splits']} | {r['config']} | {r['us']:.1f} |" for r in rows]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode_choice.json").write_text(json.dumps(rows, indent=1))
    (out / "decode_choice.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
