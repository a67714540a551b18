#!/usr/bin/env python
"""Kernel-level attention benchmark: variants × head dims × implementations.

For every (variant, head dim): fresh random q, k, v; a float64 reference of the variant's
eager program on a slice (first ``--check-batch`` batch rows, first ``--check-heads`` heads);
then per implementation: set-up (masks, torch.compile) outside timing, one call whose output
slice is checked against the reference with ``flashlight_hf.testing.rel_error`` and
``tolerance(dtype)`` (a failing implementation is marked FAIL and not timed), then timing —
``triton.testing.do_bench(..., return_mode="median")`` on CUDA, a perf_counter median on CPU.
An implementation that cannot express a variant is "n/a"; one that raises is recorded with its
error and the run goes on.

Writes ``results.json``, ``table.md`` and ``tflops.png`` into ``--out`` (default ``$OUT``,
else ``benchmarks/out``) and prints the Markdown table last.

    python benchmarks/bench_attention.py --out $OUT
    python benchmarks/bench_attention.py --variants causal,alibi --head-dim 128 --impls sdpa,flex,sdpa_cudnn
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `flashlight_hf` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.impls import DEFAULT_IMPLS, IMPLS, OPTIONS  # noqa: E402
from benchmarks.variants import VARIANTS, NotApplicable, Variant  # noqa: E402
from flashlight_hf.testing import rel_error, tolerance  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
          "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}
BASELINES = {"x_flex": "flex", "x_sdpa": "sdpa"}


def log(msg: str) -> None:
    print(msg, flush=True)


def _split_list(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for v in values or []:
        out += [x for x in v.split(",") if x]
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=4096)
    p.add_argument("--head-dim", type=int, nargs="+", default=[64, 128], help="one or more head dims")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS),
                   help=f"comma/space separated; available: {', '.join(VARIANTS)}")
    p.add_argument("--impls", nargs="+", default=list(DEFAULT_IMPLS),
                   help=f"comma/space separated; available: {', '.join(IMPLS)}")
    p.add_argument("--warmup", type=float, default=25, help="do_bench warmup time, ms")
    p.add_argument("--rep", type=float, default=100, help="do_bench repetition time, ms")
    p.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).resolve().parent / "out"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check-batch", type=int, default=1, help="batch rows in the float64 correctness check")
    p.add_argument("--check-heads", type=int, default=2, help="heads in the float64 correctness check")
    p.add_argument("--window", type=int, default=1024, help="sliding_window: window size")
    p.add_argument("--softcap", type=float, default=30.0, help="softcap: cap")
    p.add_argument("--num-docs", type=int, default=8, help="document_mask: documents per sequence")
    p.add_argument("--prefix", type=int, default=1024, help="prefix_lm: bidirectional prefix length")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode for flex / eager_compiled (default: torch's default)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG chart")
    p.add_argument("--backward", action="store_true",
                   help="time forward + backward (out.backward(seed)); gradients of q, k, v checked too; "
                        "FLOPs counted as 3.5x the forward's")
    args = p.parse_args(argv)
    args.variants = _split_list(args.variants)
    args.impls = _split_list(args.impls)
    for v in args.variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}; available: {', '.join(VARIANTS)}")
    for i in args.impls:
        if i not in IMPLS:
            p.error(f"unknown impl {i!r}; available: {', '.join(IMPLS)}")
    return args


# --------------------------------------------------------------------------- environment
def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host_cpu": platform.processor() or platform.machine(),
    }
    try:
        import triton
        env["triton"] = triton.__version__
    except Exception as e:  # noqa: BLE001
        env["triton"] = f"unavailable ({type(e).__name__})"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update({
            "device": torch.cuda.get_device_name(device),
            "capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
            "memory_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "driver_gpus": torch.cuda.device_count(),
        })
    else:
        env["device"] = f"cpu ({env['host_cpu']}, {torch.get_num_threads()} threads)"
    return env


# --------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn, device: torch.device, warmup_ms: float, rep_ms: float) -> float:
    """Median milliseconds per call."""
    if device.type == "cuda":
        from triton.testing import do_bench
        return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    # CPU: a plain perf_counter median (do_bench needs a GPU driver).
    t_end = time.perf_counter() + warmup_ms / 1e3
    while time.perf_counter() < t_end:
        fn()
    times: list[float] = []
    t_end = time.perf_counter() + rep_ms / 1e3
    while len(times) < 3 or (time.perf_counter() < t_end and len(times) < 1000):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _free(device: torch.device) -> None:
    if device.type == "cuda":  # on CPU reference counting frees the tensors; gc.collect costs ~0.1 s
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _short(e: BaseException, limit: int = 200) -> str:
    msg = f"{type(e).__name__}: {e}".strip().replace("\n", " ").replace("|", "/")
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def _reset_compiler() -> None:
    # One torch.compile(flex_attention) per (variant, D): without a reset they all count against
    # the recompile limit of flex_attention's code object (8 by default) and later ones would
    # silently fall back to the unfused eager path.
    try:
        torch._dynamo.reset()
    except Exception:  # noqa: BLE001
        pass


# --------------------------------------------------------------------------- one (variant, D)
def run_case(variant: Variant, head_dim: int, args, device: torch.device, dtype: torch.dtype,
             case_no: int, n_cases: int) -> list[dict[str, Any]]:
    B, H, S, D = variant.batch, variant.heads, variant.seqlen, head_dim
    tag = f"[{case_no}/{n_cases}] {variant.name} D{D}"
    rows: list[dict[str, Any]] = []
    _reset_compiler()
    g = torch.Generator(device=device).manual_seed(args.seed * 1000 + D)
    q, k, v = (torch.randn(B, H, S, D, generator=g, device=device, dtype=torch.float32).to(dtype)
               for _ in range(3))
    cb, ch = min(args.check_batch, B), min(args.check_heads, H)
    t0 = time.perf_counter()
    backward = getattr(args, "backward", False)
    if backward:
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        seed = torch.randn(B, H, S, D, generator=g, device=device, dtype=torch.float32).to(dtype)
        leaves = [t[:cb, :ch].detach().double().requires_grad_() for t in (q, k, v)]
        ref = variant.sliced(cb, ch).reference(*leaves)
        ref_grads = torch.autograd.grad(ref, leaves, seed[:cb, :ch].to(ref.dtype))
        ref = ref.detach()
        check_seed = torch.zeros_like(seed)
        check_seed[:cb, :ch] = seed[:cb, :ch]
    else:
        ref = variant.sliced(cb, ch).reference(q[:cb, :ch], k[:cb, :ch], v[:cb, :ch])
    _sync(device)
    log(f"{tag}: float64 reference on [{cb},{ch},{S},{D}] in {time.perf_counter() - t0:.1f}s")
    tol = tolerance(dtype, tf32=(device.type == "cuda" and dtype == torch.float32))
    density = variant.density()
    flops = variant.flops(D, density) * (3.5 if backward else 1.0)

    for name in args.impls:
        row: dict[str, Any] = {
            "variant": variant.name, "head_dim": D, "impl": name, "label": name,
            "batch": B, "heads": H, "seqlen": S, "dtype": str(dtype).replace("torch.", ""),
            "density": density, "flops": flops, "tol": tol,
            "status": None, "error": None, "note": None, "ms": None, "tflops": None, "rel_err": None, "setup_s": None,
        }
        rows.append(row)
        fn = out = None
        try:
            t0 = time.perf_counter()
            fn = IMPLS[name].make(variant, q, k, v)
            note = getattr(fn, "note", None)
            if note:
                row["label"], row["note"] = f"{name} ({note})", note
            out = fn()  # first call: compiles where the impl compiles
            _sync(device)
            row["setup_s"] = time.perf_counter() - t0
            err = rel_error(out[:cb, :ch].detach(), ref)
            timed = fn
            if backward:
                q.grad = k.grad = v.grad = None
                out.backward(check_seed)
                _sync(device)
                err = max([err] + [rel_error(t.grad[:cb, :ch], r) for t, r in zip((q, k, v), ref_grads)])

                def timed() -> None:
                    q.grad = k.grad = v.grad = None
                    fn().backward(seed)
            row["rel_err"] = err
            del out
            out = None
            if not (err <= tol):
                row["status"] = "FAIL"
                log(f"{tag} {row['label']}: FAIL rel err {err:.2e} > tol {tol:.0e} (not timed)")
                continue
            ms = time_fn(timed, device, args.warmup, args.rep)
            row.update(status="ok", ms=ms, tflops=flops / (ms * 1e-3) / 1e12)
            log(f"{tag} {row['label']}: setup {row['setup_s']:.1f}s, rel err {err:.1e}, "
                f"{ms:.3f} ms, {row['tflops']:.1f} TFLOP/s")
        except NotApplicable as e:
            row.update(status="n/a", error=str(e))
            log(f"{tag} {name}: n/a ({e})")
        except Exception as e:  # noqa: BLE001 - one impl failing must not stop the run
            row.update(status="error", error=_short(e))
            log(f"{tag} {name}: ERROR {_short(e, 400)}")
            if os.environ.get("BENCH_TRACEBACK"):
                traceback.print_exc()
        finally:
            del fn, out
            _free(device)
    del q, k, v, ref
    if backward:
        del seed, leaves, ref_grads, check_seed
    _free(device)
    return rows


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """×flex / ×sdpa: baseline median time / this row's median time (>1 = faster than baseline)."""
    by_key = {(r["variant"], r["head_dim"], r["impl"]): r for r in rows}
    for r in rows:
        for col, base in BASELINES.items():
            b = by_key.get((r["variant"], r["head_dim"], base))
            r[col] = (b["ms"] / r["ms"]) if (b and b.get("ms") and r.get("ms")) else None


# --------------------------------------------------------------------------- output
def _fmt(x: float | None, spec: str, suffix: str = "") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:{spec}}{suffix}"


def _fmt_tflops(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.1f}" if x >= 1 else f"{x:.3g}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = "| variant | D | impl | ms | TFLOP/s | ×flex | ×sdpa | rel err | status |"
    sep = "|---|---:|---|---:|---:|---:|---:|---:|---|"
    lines = [head, sep]
    for r in rows:
        status = r["status"] or "?"
        if r.get("error"):
            status = f"{status}: {r['error']}"
        lines.append("| " + " | ".join([
            r["variant"], str(r["head_dim"]), r["label"], _fmt(r["ms"], ".3f"), _fmt_tflops(r["tflops"]),
            _fmt(r.get("x_flex"), ".2f", "×"), _fmt(r.get("x_sdpa"), ".2f", "×"),
            _fmt(r["rel_err"], ".1e"), status,
        ]) + " |")
    return "\n".join(lines)


def header_md(meta: dict[str, Any]) -> str:
    env, cfg = meta["env"], meta["config"]
    gpu = env["device"]
    if "capability" in env:
        gpu += f" (sm {env['capability']}, {env['memory_gib']} GiB, CUDA {env['cuda']}, cuDNN {env['cudnn']})"
    return "\n".join([
        f"- date: {env['date']}",
        f"- device: {gpu}",
        f"- torch {env['torch']}, triton {env['triton']}, python {env['python']}",
        f"- shape: B{cfg['batch']} H{cfg['heads']} S{cfg['seqlen']} {cfg['dtype']}, head dims "
        f"{', '.join(map(str, cfg['head_dim']))}; timing: "
        + ("triton do_bench median" if env.get("capability") else "perf_counter median (CPU)")
        + f", warmup {cfg['warmup']} ms, rep {cfg['rep']} ms",
        f"- command: `{meta['command']}`",
    ])


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001
        return f"no plot ({_short(e)})"
    cases = list(dict.fromkeys((r["variant"], r["head_dim"]) for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    by_key = {(r["variant"], r["head_dim"], r["impl"]): r for r in rows}
    width = 0.8 / max(1, len(impls))
    fig, ax = plt.subplots(figsize=(min(24.0, max(6.0, len(cases) * (0.3 * len(impls) + 0.4) + 1.5)), 4.5))
    for j, impl in enumerate(impls):
        xs, ys = [], []
        for i, c in enumerate(cases):
            r = by_key.get((*c, impl))
            x = i + (j - (len(impls) - 1) / 2) * width
            xs.append(x)
            ys.append(r["tflops"] if r and r.get("tflops") else 0.0)
            if r and not r.get("tflops"):  # say why there is no bar
                ax.text(x, 0, f" {r.get('status') or '?'}", rotation=90, ha="center", va="bottom", fontsize=6)
        bars = ax.bar(xs, ys, width, label=impl)
        for bar, c in zip(bars, cases):  # hatch SDPA bars that needed a dense mask tensor
            r = by_key.get((*c, impl))
            if r and r.get("note"):
                bar.set_hatch("//")
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([f"{v}\nD{d}" for v, d in cases], fontsize=8)
    ax.set_ylabel("TFLOP/s (forward)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, title="hatched: sdpa (mask tensor)" if any(r.get("note") for r in rows) else None,
              title_fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device; use --device cpu")
    dtype = DTYPES[args.dtype]
    OPTIONS["compile_mode"] = args.compile_mode
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    env = environment(device)
    command = shlex.join(["python", "benchmarks/bench_attention.py",
                          *(sys.argv[1:] if argv is None else argv)])
    meta = {"env": env, "command": command, "config": {
        "batch": args.batch, "heads": args.heads, "seqlen": args.seqlen, "head_dim": args.head_dim,
        "dtype": args.dtype, "variants": args.variants, "impls": args.impls, "warmup": args.warmup,
        "rep": args.rep, "seed": args.seed, "check_batch": args.check_batch, "check_heads": args.check_heads,
        "window": args.window, "softcap": args.softcap, "num_docs": args.num_docs, "prefix": args.prefix,
        "compile_mode": args.compile_mode, "device": str(device), "backward": args.backward}}
    log(f"bench_attention: {env['device']}, torch {env['torch']}, triton {env['triton']}")
    log(f"  B{args.batch} H{args.heads} S{args.seqlen} {args.dtype} D{args.head_dim} "
        f"variants={args.variants} impls={args.impls} -> {out_dir}")

    rows: list[dict[str, Any]] = []
    n_cases = len(args.variants) * len(args.head_dim)
    case_no = 0
    t_start = time.perf_counter()
    for vname in args.variants:
        try:
            variant = VARIANTS[vname](args.batch, args.heads, args.seqlen, device, seed=args.seed,
                                      window=args.window, softcap=args.softcap, num_docs=args.num_docs,
                                      prefix=args.prefix)
        except Exception as e:  # noqa: BLE001
            log(f"{vname}: set-up failed: {_short(e, 400)}")
            for D in args.head_dim:
                case_no += 1
                rows += [{"variant": vname, "head_dim": D, "impl": i, "label": i, "status": "error",
                          "error": f"variant set-up: {_short(e)}", "ms": None, "tflops": None,
                          "rel_err": None} for i in args.impls]
            continue
        for D in args.head_dim:
            case_no += 1
            try:
                rows += run_case(variant, D, args, device, dtype, case_no, n_cases)
            except Exception as e:  # noqa: BLE001 - e.g. OOM building inputs / reference
                log(f"[{case_no}/{n_cases}] {vname} D{D}: case failed: {_short(e, 400)}")
                rows += [{"variant": vname, "head_dim": D, "impl": i, "label": i, "status": "error",
                          "error": f"case: {_short(e)}", "ms": None, "tflops": None, "rel_err": None}
                         for i in args.impls]
                _free(device)
        del variant
        _free(device)
    meta["wall_s"] = round(time.perf_counter() - t_start, 1)

    add_ratios(rows)
    table = markdown_table(rows)
    header = header_md(meta)
    results = {"meta": meta, "rows": rows}
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    legend = ("ms: median " + ("forward + backward time; TFLOP/s: 3.5·" if args.backward else "forward time; TFLOP/s: ")
              + "4·B·H·S²·D·density / time; ×flex, ×sdpa: "
              "that baseline's time / this row's time in the same run (>1 = faster); rel err: "
              "‖out−ref‖/‖ref‖ vs the float64 eager program on the checked slice.")
    (out_dir / "table.md").write_text(f"{header}\n\n{table}\n\n{legend}\n")
    if not args.no_plot:
        why = plot(rows, out_dir / "tflops.png",
                   f"{env['device']} | B{args.batch} H{args.heads} S{args.seqlen} {args.dtype} | torch {env['torch']}")
        if why:
            log(why)
    log(f"\nwrote {out_dir / 'results.json'}, {out_dir / 'table.md'}"
        + ("" if args.no_plot else f", {out_dir / 'tflops.png'}") + f" ({meta['wall_s']} s)\n")
    log(header + "\n\n" + table)
    return results


if __name__ == "__main__":
    main()
