"""Issue 13's training bars on the GPU, peers in the same run.

1. **Training step** (``--step``): a Llama-1B-shaped model (the zoo's ``llama-1b``, random
   weights, the same for each impl), bf16, B2 S4096: forward with ``labels`` (the loss), backward,
   ``AdamW.step()``, ``zero_grad``. Per attention implementation (sdpa, flashlight): the first
   step's loss (the correctness gate: the impls must agree), the median step time over
   ``--steps`` timed steps after ``--warmup`` (CUDA events), tokens/s and the peak memory
   (``torch.cuda.max_memory_allocated``) over the timed steps.
2. **Memory at long context** (``--long``): a causal forward + backward through
   ``flashlight_hf.compile`` at B1 H16 S32768 D128 bf16, and SDPA's on the same inputs: the peak
   memory above what the inputs, the output and the gradients themselves take, and the time.
   A backward that kept the N×N scores would need 32 GiB here; the generated one keeps O(S).

    python benchmarks/bench_training.py --out $OUT [--step] [--long]

The table is printed last and written to ``--out`` (``training.md``, ``training.json``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import llm_cases  # noqa: E402


def _gib(n: int) -> float:
    return n / 2 ** 30


def training_step(args: argparse.Namespace, impl: str) -> dict:
    """One impl's training-step row (see the module docstring)."""
    import flashlight_hf  # noqa: F401  registers "flashlight"

    device = torch.device("cuda")
    model = llm_cases.build_model(args.model, dtype=torch.bfloat16, device=device, seed=args.seed,
                                  attn_implementation=impl).train()
    vocab = model.config.vocab_size
    ids = llm_cases.random_ids(args.batch, args.seqlen, vocab, seed=args.seed + 1, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)

    def step() -> float:
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    t0 = time.perf_counter()
    first = float(step())  # compiles (flashlight) and allocates the optimizer state
    setup_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        step()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    ms = statistics.median(times)
    row = {"case": "llama-1b step", "impl": impl, "first_loss": first, "ms": ms,
           "tokens_per_s": args.batch * args.seqlen / (ms * 1e-3), "peak_gib": _gib(torch.cuda.max_memory_allocated()),
           "setup_s": round(setup_s, 1)}
    del model, opt
    gc.collect()
    torch.cuda.empty_cache()
    return row


def _causal(q, k, v):
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    s = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).masked_fill(j > i, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def long_context(args: argparse.Namespace) -> list[dict]:
    """Causal forward + backward at 32k tokens: extra memory and time, flashlight and SDPA."""
    import flashlight_hf
    from triton.testing import do_bench

    b, h, s, d = 1, 16, args.long_len, 128
    g = torch.Generator(device="cuda").manual_seed(args.seed)
    q, k, v = (torch.randn(b, h, s, d, device="cuda", generator=g).to(torch.bfloat16).requires_grad_()
               for _ in range(3))
    seed = torch.randn(b, h, s, d, device="cuda", generator=g).to(torch.bfloat16)
    impls = {"flashlight": flashlight_hf.compile(_causal),
             "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)}
    rows = []
    grads = {}
    for name, fn in impls.items():
        def step() -> None:
            q.grad = k.grad = v.grad = None
            fn(q, k, v).backward(seed)
        step()  # compile / autotune outside the measurement
        torch.cuda.synchronize()
        q.grad = k.grad = v.grad = None
        gc.collect()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        grads[name] = [t.grad.float() for t in (q, k, v)]
        own = 4 * q.numel() * q.element_size()  # the output and the three gradients
        extra = torch.cuda.max_memory_allocated() - base - own
        ms = do_bench(step, warmup=5, rep=30, return_mode="median")
        rows.append({"case": f"causal S{s} B{b} H{h} D{d}", "impl": name, "ms": ms,
                     "extra_gib": _gib(extra), "scores_gib": _gib(b * h * s * s * 2)})
    err = max(float((a - r).norm() / r.norm()) for a, r in zip(grads["flashlight"], grads["sdpa"]))
    for r in rows:
        r["grad_rel_vs_sdpa"] = err
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--step", action="store_true", help="the Llama-1B training step")
    p.add_argument("--long", action="store_true", help="the 32k-token memory case")
    p.add_argument("--model", default="llama-1b")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seqlen", type=int, default=4096)
    p.add_argument("--long-len", type=int, default=32768)
    p.add_argument("--impls", default="sdpa,flashlight")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/out")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_training needs a CUDA GPU")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def save() -> None:  # after every row: a call cut short keeps what it measured
        (out / "training.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1, default=str))

    if args.step or not args.long:
        for impl in args.impls.split(","):
            rows.append(training_step(args, impl))
            print(rows[-1], flush=True)
            save()
    if args.long:
        rows += long_context(args)
        save()
    lines = ["| case | impl | ms | tokens/s | peak GiB | extra GiB | × sdpa (speed) | note |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        peer = next((x for x in rows if x["case"] == r["case"] and x["impl"] == "sdpa"), None)
        ratio = f"{peer['ms'] / r['ms']:.2f}×" if peer else "—"
        note = f"first loss {r['first_loss']:.4f}" if "first_loss" in r else \
            f"grads vs sdpa {r['grad_rel_vs_sdpa']:.1e}; N×N scores would be {r['scores_gib']:.0f} GiB"
        tok = f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else "—"
        peak = f"{r['peak_gib']:.2f}" if "peak_gib" in r else "—"
        extra = f"{r['extra_gib']:.2f}" if "extra_gib" in r else "—"
        lines.append(f"| {r['case']} | {r['impl']} | {r['ms']:.1f} | {tok} | {peak} | {extra} | {ratio} | {note} |")
    table = "\n".join(lines)
    header = f"- device: {torch.cuda.get_device_name()}; torch {torch.__version__}; bf16\n"
    (out / "training.md").write_text(header + "\n" + table + "\n")
    print(header)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
