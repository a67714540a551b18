"""One decode step's attention alone: a query row per (batch, head) against a long KV cache.

A 1B model's batch-1 decode step through Transformers is bound by host overhead (see
RESULTS.md), which hides what the kernels do. This measures the attention call only, on the
GPU, with the shapes of a Llama-style GQA layer:

* ``sdpa``: ``F.scaled_dot_product_attention(..., enable_gqa=True)`` (PyTorch picks the kernel);
* ``flashlight``: the generated kernel of the eager program (``repeat_kv``, scaled softmax),
  one program per query head (split-KV when the programs are too few);
* ``flashlight_gqa_rows``: what the front door runs for a decode step — the query heads of one
  KV head's group as the rows of one program, the cache read once per KV head.

Every implementation is checked against a float64 reference first; timings are
``triton.testing.do_bench`` medians (``--timer events``: a batch-1 call is then bound by its
host time, which this measures) or ``do_bench_cudagraph`` medians (``--timer cudagraph``: the
calls replayed from a CUDA graph, GPU time only — and a check that the call can be captured), with the bytes of K and V read per call turned into GB/s
and each row's ratio to sdpa measured in the same run. The table is printed last and written
to ``--out``.

    python benchmarks/bench_decode.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flashlight_hf.testing import rel_error, tolerance  # noqa: E402


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, hk, s, d = x.shape
    return x[:, :, None].expand(b, hk, groups, s, d).reshape(b, hk * groups, s, d)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q [B, H, 1, D], k/v [B, Hk, K, D]: Llama's eager attention for one new token."""
    groups = q.shape[1] // k.shape[1]
    s = q @ repeat_kv(k, groups).transpose(-2, -1) * q.shape[-1] ** -0.5
    return torch.softmax(s.float(), dim=-1).to(q.dtype) @ repeat_kv(v, groups)


def grouped_rows_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q [B, Hk, G, D] (a group's query heads as rows), k/v [B, Hk, K, D]: no repeat."""
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    return torch.softmax(s.float(), dim=-1).to(q.dtype) @ v


def implementations(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """name -> a zero-argument call returning [B, H, 1, D]."""
    import flashlight_hf

    b, h, _, d = q.shape
    hk = k.shape[1]
    plain = flashlight_hf.compile(decode_attention)
    rows = flashlight_hf.compile(grouped_rows_attention)
    out: dict[str, Callable[[], torch.Tensor]] = {
        "flashlight": lambda: plain(q, k, v),
        "flashlight_gqa_rows": lambda: rows(q.reshape(b, hk, h // hk, d), k, v).reshape(b, h, 1, d),
    }
    if q.is_cuda:
        out = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), **out}
    return out


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--context", type=int, nargs="+", default=[4096, 32768])
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--warmup", type=float, default=25)
    p.add_argument("--rep", type=float, default=100)
    p.add_argument("--timer", default="events", choices=["events", "cudagraph"],
                   help="events: do_bench (host time shows where it exceeds the GPU's); "
                        "cudagraph: do_bench_cudagraph (GPU time only)")
    p.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/out/decode")
    args = p.parse_args(argv)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    dev = torch.device(args.device)
    rows: list[dict[str, Any]] = []
    for b in args.batch:
        for ctx in args.context:
            g = torch.Generator(device=dev).manual_seed(b * 100003 + ctx)
            q = torch.randn(b, args.heads, 1, args.head_dim, generator=g, device=dev).to(dtype)
            k = torch.randn(b, args.kv_heads, ctx, args.head_dim, generator=g, device=dev).to(dtype)
            v = torch.randn(b, args.kv_heads, ctx, args.head_dim, generator=g, device=dev).to(dtype)
            ref = decode_attention(q.double(), k.double(), v.double())
            kv_bytes = 2 * k.numel() * k.element_size()
            for name, fn in implementations(q, k, v).items():
                row: dict[str, Any] = dict(batch=b, context=ctx, impl=name, us=None, gbps=None, err=None,
                                           status="ok")
                try:
                    out = fn()
                    row["err"] = rel_error(out, ref)
                    if row["err"] > tolerance(dtype):
                        row["status"] = f"wrong: rel err {row['err']:.2e}"
                    elif dev.type == "cuda":
                        from triton.testing import do_bench, do_bench_cudagraph

                        if args.timer == "cudagraph":
                            ms = do_bench_cudagraph(fn, rep=args.rep, return_mode="median")
                        else:
                            ms = do_bench(fn, warmup=args.warmup, rep=args.rep, return_mode="median")
                        row["us"], row["gbps"] = ms * 1e3, kv_bytes / (ms * 1e-3) / 1e9
                except Exception as e:  # noqa: BLE001 - one failing impl is a row, not a crash
                    row["status"] = f"error: {type(e).__name__}: {str(e)[:80]}"
                rows.append(row)
                print(row, flush=True)
    base = {(r["batch"], r["context"]): r["us"] for r in rows if r["impl"] == "sdpa" and r["us"]}
    lines = [f"- device: {torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu (interpreter: no timing)'}; "
             f"torch {torch.__version__}; H{args.heads} Hk{args.kv_heads} D{args.head_dim} {args.dtype}; "
             f"timer: {args.timer}", "",
             "| B | context | impl | µs | K+V GB/s | × sdpa | rel err | status |", "|---:|---:|---|---:|---:|---:|---:|---|"]
    for r in rows:
        sd = base.get((r["batch"], r["context"]))
        ratio = f"{sd / r['us']:.2f}×" if sd and r["us"] else "—"
        us = f"{r['us']:.1f}" if r["us"] else "—"
        gbps = f"{r['gbps']:.0f}" if r["gbps"] else "—"
        err = f"{r['err']:.1e}" if r["err"] is not None else "—"
        lines.append(f"| {r['batch']} | {r['context']} | {r['impl']} | {us} | {gbps} | {ratio} | {err} | {r['status']} |")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "decode.json").write_text(json.dumps(rows, indent=1))
    (out_dir / "decode.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
