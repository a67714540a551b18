"""Whole attention *programs* no template kernel expresses, against their best peers.

* differential attention (two softmax streams sharing V, ``o1 − λ[h]·o2``): flashlight vs the
  same program written as two SDPA calls, and vs ``torch.compile`` of the eager program;
* the same in DiffLlama's layout (``diffllama``): the streams are the two halves of the query /
  key heads (head dim d), both read one V of width 2d, λ a scalar — the model's own shapes,
  and the shape the issue's peer figure (two SDPA calls, 1.84 ms at B4 H32 S4096 D64) fits;
* Evoformer gated row attention (two broadcast biases, a sigmoid gate on the output):
  flashlight vs ``torch.compile`` of the eager program (FlexAttention cannot compile it).

Correctness first (float64 eager on a slice of the batch), then ``triton.testing.do_bench``
medians; the table is printed last and written to ``--out``. ``--backward``: forward + backward
(``out.backward(seed)``, every floating input — λ, the biases, the gate — wanting a gradient;
the gradients are checked against float64 autograd too; FLOPs counted as 3.5× the forward's).

    python benchmarks/bench_programs.py --out $OUT [--backward]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flashlight_hf.testing import gradients, rel_error, tolerance  # noqa: E402


def diff_attention(q, k, v, lam):
    """q, k: [B, H, S, 2d]; v: [B, H, S, e]; lam: [H]."""
    d = q.shape[-1] // 2
    c = d ** -0.5
    a1 = torch.softmax(q[..., :d] @ k[..., :d].transpose(-2, -1) * c, dim=-1)
    a2 = torch.softmax(q[..., d:] @ k[..., d:].transpose(-2, -1) * c, dim=-1)
    return a1 @ v - lam[None, :, None, None] * (a2 @ v)


def diff_attention_two_sdpa(q, k, v, lam):
    d = q.shape[-1] // 2
    o1 = F.scaled_dot_product_attention(q[..., :d], k[..., :d], v)
    o2 = F.scaled_dot_product_attention(q[..., d:], k[..., d:], v)
    return o1 - lam[None, :, None, None] * o2


def diffllama_attention(q, k, v, lam):
    """DiffLlama's layout. q, k: [B, 2h, S, d], the first h heads one stream, the last h the
    other; v: [B, h, S, 2d], shared; lam: a 0-d tensor."""
    h = v.shape[1]
    c = q.shape[-1] ** -0.5
    a1 = torch.softmax(q[:, :h] @ k[:, :h].transpose(-2, -1) * c, dim=-1)
    a2 = torch.softmax(q[:, h:] @ k[:, h:].transpose(-2, -1) * c, dim=-1)
    return a1 @ v - lam * (a2 @ v)


def diffllama_two_sdpa(q, k, v, lam):
    h = v.shape[1]
    return F.scaled_dot_product_attention(q[:, :h], k[:, :h], v) - lam * F.scaled_dot_product_attention(
        q[:, h:], k[:, h:], v)


def evoformer(q, k, v, mask_bias, pair_bias, gate):
    """q, k, v, gate: [B, N, S, H, D]; mask_bias: [B, N, 1, 1, S]; pair_bias: [B, 1, H, S, S]."""
    q, k, v = (t.transpose(-2, -3) for t in (q, k, v))
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5 + mask_bias + pair_bias
    o = torch.softmax(s, dim=-1) @ v
    return torch.sigmoid(gate) * o.transpose(-2, -3)


def evoformer_flex(q, k, v, mask_bias, pair_bias, gate):
    from torch.nn.attention.flex_attention import flex_attention

    b, n, s, h, d = q.shape
    qf, kf, vf = (t.permute(0, 1, 3, 2, 4).reshape(b * n, h, s, d) for t in (q, k, v))
    mb = mask_bias.reshape(b, n, s)
    pb = pair_bias.reshape(b, h, s, s)

    def score_mod(score, bn, hh, qi, kv):
        return score + mb[bn // n, bn % n, kv] + pb[bn // n, hh, qi, kv]

    o = flex_attention(qf, kf, vf, score_mod=score_mod)
    return torch.sigmoid(gate) * o.reshape(b, n, h, s, d).permute(0, 1, 3, 2, 4)


PROGRAMS = {"differential": diff_attention, "diffllama": diffllama_attention, "evoformer": evoformer}  # the eager programs


def _inputs(name: str, args: argparse.Namespace, device: str, dtype: torch.dtype) -> tuple:
    g = torch.Generator(device=device).manual_seed(args.seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=device) * scale).to(dtype)

    if name == "differential":
        b, h, s, d = args.diff_shape
        return (rand(b, h, s, 2 * d), rand(b, h, s, 2 * d), rand(b, h, s, d),
                (torch.rand(h, generator=g, device=device) * 0.8).to(dtype))
    if name == "diffllama":
        b, h, s, d = args.diff_shape
        return (rand(b, h, s, d), rand(b, h, s, d), rand(b, h // 2, s, 2 * d),
                (torch.rand((), generator=g, device=device) * 0.8).to(dtype))
    b, n, s, h, d = args.evo_shape
    return (rand(b, n, s, h, d), rand(b, n, s, h, d), rand(b, n, s, h, d), rand(b, n, 1, 1, s),
            rand(b, 1, h, s, s), rand(b, n, s, h, d))


def _flops(name: str, args: argparse.Namespace) -> float:
    if name == "differential":
        b, h, s, d = args.diff_shape
        return 2 * (2 * b * h * s * s * d) + 2 * (2 * b * h * s * s * d)  # two streams: QKᵀ (d) and PV (d)
    if name == "diffllama":
        b, h, s, d = args.diff_shape
        return 2 * (2 * b * (h // 2) * s * s * (d + 2 * d))  # two streams of h/2 heads: QKᵀ (d), PV (2d)
    b, n, s, h, d = args.evo_shape
    return 4.0 * b * n * h * s * s * d


def _slice(name: str, inputs: tuple) -> tuple:
    if name in ("differential", "diffllama"):
        q, k, v, lam = inputs
        return q[:1], k[:1], v[:1], lam
    return tuple(t[:1] for t in inputs)


def _check_backward(fn, ref_fn, small: tuple, inputs: tuple) -> tuple[float, object]:
    """(the worst relative error of the output and every floating input's gradient on the
    slice, against float64 autograd; a forward + backward step on the full inputs)."""
    ref = ref_fn(*[t.double() for t in small])
    seed = torch.randn(ref.shape, device=ref.device, dtype=torch.float64)
    got, want = gradients(fn, small, seed), gradients(ref_fn, small, seed, dtype=torch.float64)
    errs = [rel_error(fn(*small), ref)] + [rel_error(a, b) for a, b in zip(got, want)
                                          if b is not None and float(b.norm()) > 0]
    full = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]
    big_seed = torch.randn_like(fn(*full))

    def step() -> None:
        for t in full:
            t.grad = None
        fn(*full).backward(big_seed)
    step()  # compile / autotune the backward for the timed shape outside the timing
    return max(errs), step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--diff-shape", type=int, nargs=4, default=[4, 32, 4096, 64], metavar=("B", "H", "S", "D"))
    p.add_argument("--evo-shape", type=int, nargs=5, default=[4, 256, 256, 4, 64], metavar=("B", "N", "S", "H", "D"))
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--programs", default="differential,diffllama,evoformer")
    p.add_argument("--warmup", type=int, default=25)
    p.add_argument("--rep", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/out")
    p.add_argument("--backward", action="store_true", help="time forward + backward; check the gradients")
    p.add_argument("--impls", default=None, help="comma-separated impls to run (default: every one of a program)")
    args = p.parse_args(argv)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    device = args.device

    import flashlight_hf

    impls = {
        "differential": {"flashlight": flashlight_hf.compile(diff_attention),
                         "two_sdpa": diff_attention_two_sdpa,
                         "eager_compiled": torch.compile(diff_attention, dynamic=False)},
        "diffllama": {"flashlight": flashlight_hf.compile(diffllama_attention),
                      "two_sdpa": diffllama_two_sdpa,
                      "eager_compiled": torch.compile(diffllama_attention, dynamic=False)},
        "evoformer": {"flashlight": flashlight_hf.compile(evoformer),
                      "eager_compiled": torch.compile(evoformer, dynamic=False),
                      "flex": torch.compile(evoformer_flex, dynamic=False)},
    }
    rows = []
    for name in args.programs.split(","):
        inputs = _inputs(name, args, device, dtype)
        ref_fn = PROGRAMS[name]
        small = _slice(name, inputs)
        ref = ref_fn(*[t.double() for t in small])
        for impl, fn in impls[name].items():
            if args.impls and impl not in args.impls.split(","):
                continue
            row = {"program": name, "impl": impl, "ms": None, "tflops": None, "rel_err": None, "status": "ok"}
            try:
                t0 = time.perf_counter()
                if args.backward:
                    err, step = _check_backward(fn, ref_fn, small, inputs)
                else:
                    out_small = fn(*small)
                    fn(*inputs)  # compile / autotune for the timed shape outside the timing
                    err, step = rel_error(out_small, ref), (lambda fn=fn: fn(*inputs))
                row["setup_s"] = round(time.perf_counter() - t0, 1)
                row["rel_err"] = err
                if not err <= tolerance(dtype, tf32=True):
                    row["status"] = f"FAIL: rel err {err:.2e}"
                    rows.append(row)
                    continue
                if device == "cuda":
                    from triton.testing import do_bench

                    ms = do_bench(step, warmup=args.warmup, rep=args.rep, return_mode="median")
                else:
                    t0 = time.perf_counter()
                    fn(*inputs)
                    ms = (time.perf_counter() - t0) * 1e3
                row["ms"] = ms
                row["tflops"] = _flops(name, args) * (3.5 if args.backward else 1.0) / (ms * 1e-3) / 1e12
            except Exception as exc:  # an impl that cannot run this program: recorded, the rest go on
                row["status"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            rows.append(row)
            ms = f"{row['ms']:.3f} ms" if row["ms"] else ""
            print(f"{name:12s} {impl:15s} {row['status']} {ms} rel err {row['rel_err']}", flush=True)
            Path(args.out).mkdir(parents=True, exist_ok=True)  # after every row: a call cut short keeps it
            (Path(args.out) / "programs.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1,
                                                                     default=str))
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
    lines = ["| program | impl | ms | TFLOP/s | × flashlight | rel err | status |", "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        base = next((x for x in rows if x["program"] == r["program"] and x["impl"] == "flashlight"), None)
        ratio = f"{r['ms'] / base['ms']:.2f}×" if r["ms"] and base and base["ms"] else "—"
        ms = f"{r['ms']:.3f}" if r["ms"] else "—"
        tf = f"{r['tflops']:.1f}" if r["tflops"] else "—"
        err = f"{r['rel_err']:.1e}" if r["rel_err"] is not None else "—"
        lines.append(f"| {r['program']} | {r['impl']} | {ms} | {tf} | {ratio} | {err} | {r['status']} |")
    table = "\n".join(lines)
    header = (f"- device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}; torch {torch.__version__}\n"
              f"- shapes: differential B,H,S,D={args.diff_shape}, evoformer B,N,S,H,D={args.evo_shape}, {args.dtype}"
              f"{'; forward + backward' if args.backward else ''}\n"
              f"- × flashlight: the impl's time over flashlight's (above 1: flashlight is faster)\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "programs.md").write_text(header + "\n" + table + "\n")
    (out / "programs.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1, default=str))
    print(header)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
