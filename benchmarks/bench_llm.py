#!/usr/bin/env python
"""Model-level benchmark: a real-sized Llama (random weights) under each attention implementation.

Issue 5's GPU bar: on ``llama-1b`` (Llama-3.2-1B's shape, random weights, bf16) prefill at
2k / 8k / 32k tokens and decode at batch 1 and 32, with flashlight vs sdpa vs flex_attention.
Bar: prefill within 10% of sdpa or faster, and faster than flex_attention; decode within 15%
of sdpa.

One model is built (seeded random weights) and switched between implementations
(``set_attn_implementation``; same weights for every impl). Then:

1. **Gate**: logits of a short random batch (a full forward, and a decode step against a
   cache of the prefix) per impl against sdpa's in the same dtype (max |Δ|, relative error)
   and against sdpa's on a float32 copy of the model. An impl whose float32 error exceeds
   ``--tol-factor`` × sdpa's own is marked FAIL and not timed.
2. **Prefill**: batch 1 at each ``--prefill`` length, a full forward with ``use_cache=False``
   keeping only the last position's logits (as ``generate``'s prefill does).
3. **Decode**: per ``--decode-batch`` and ``--cache`` kind, a KV cache of ``--context`` random
   tokens is filled once (with sdpa) and shared by every impl; a timed call is one
   single-token step against it, after which the cache is put back to ``--context`` tokens.

Each timed call gets one untimed first call (compilation, autotuning), then
``triton.testing.do_bench(..., return_mode="median")`` on CUDA (a perf_counter median on CPU).
Cases are run case by case with the impls back to back, so ×sdpa / ×flex compare like with
like. An impl that raises (OOM, compile error) gets an error row and the run goes on; past
``--budget-s`` the remaining rows are marked skipped. ``results.json`` is rewritten after every
row (a run cut short still leaves its rows); ``results.md`` and ``llm.png`` are written last and
the Markdown is printed.

    python -m benchmarks.bench_llm --out $OUT
    python -m benchmarks.bench_llm --prefill 2048,8192 --decode-batch 1 --impls sdpa,flashlight --out $OUT
    TRITON_INTERPRET=1 python -m benchmarks.bench_llm --quick --device cpu --out /tmp/llm   # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `flashlight_hf` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import llm_cases as cases  # noqa: E402
from benchmarks.bench_attention import _free, _short, environment, log, time_fn  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEFAULT_IMPLS = ("sdpa", "flex_attention", "flashlight")
REFERENCE = "sdpa"
GATE_FIELDS = ("prefill_max_abs", "prefill_rel_err", "decode_max_abs", "decode_rel_err", "prefill_err_fp32",
               "decode_err_fp32")
# Issue 5's bar, as the minimum ×sdpa / ×flex (baseline time ÷ flashlight time) per phase.
BAR = {"prefill": {"x_sdpa": 1 / 1.10, "x_flex": 1.0}, "decode": {"x_sdpa": 1 / 1.15}}
# Defaults of the options that --quick shrinks.
FULL = {"model": "llama-1b", "prefill": [2048, 8192, 32768], "decode_batch": [1, 32], "context": 4096,
        "gate_batch": 2, "gate_len": 256, "warmup": 25.0, "rep": 100.0}
QUICK = {"model": "llama-tiny", "prefill": [64, 128], "decode_batch": [1, 2], "context": 64,
         "gate_batch": 1, "gate_len": 24, "warmup": 5.0, "rep": 20.0}


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.replace(" ", ",").split(",") if x.strip()]


def _str_list(text: str) -> list[str]:
    return [x for x in text.replace(" ", ",").split(",") if x]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model zoo config (default llama-1b; --quick: llama-tiny)")
    p.add_argument("--impls", type=_str_list, default=list(DEFAULT_IMPLS),
                   help="comma-separated attention implementations (default sdpa,flex_attention,flashlight); "
                        "sdpa is always the gate's reference")
    p.add_argument("--prefill", type=_int_list, default=None,
                   help="prefill lengths at batch 1 (default 2048,8192,32768; empty string: none)")
    p.add_argument("--decode-batch", type=_int_list, default=None,
                   help="decode batch sizes (default 1,32; empty string: none)")
    p.add_argument("--context", type=int, default=None, help="decode context length in tokens (default 4096)")
    p.add_argument("--cache", type=_str_list, default=["dynamic"],
                   help="decode KV cache kinds: dynamic (DynamicCache, generate's default), static (StaticCache)")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gate-batch", type=int, default=None, help="gate batch size (default 2)")
    p.add_argument("--gate-len", type=int, default=None, help="gate sequence length (default 256)")
    p.add_argument("--tol-factor", type=float, default=2.0,
                   help="gate: an impl passes when its logits' relative error against sdpa in float32 is at most "
                        "this many times sdpa's own (default 2)")
    p.add_argument("--time-failing", action="store_true",
                   help="time impls that failed the gate too (their rows say so); default: not timed")
    p.add_argument("--warmup", type=float, default=None, help="do_bench warm-up time, ms (default 25)")
    p.add_argument("--rep", type=float, default=None, help="do_bench repetition time, ms (default 100)")
    p.add_argument("--min-reps", type=int, default=5,
                   help="timed calls at least, however long one call takes (default 5)")
    p.add_argument("--rounds", type=int, default=1,
                   help="decode: after each impl's first timing, this many more rounds that time the impls "
                        "in turn; a row's ms is the median over its rounds (a host-bound decode step drifts "
                        "with the host's load over a run: interleaving puts every impl under the same drift)")
    p.add_argument("--budget-s", type=float, default=480.0,
                   help="wall-time budget: rows not started by then are skipped (default 480: with the longest "
                        "row, a 32k prefill, still inside a 10-minute command)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes for a CPU smoke test: llama-tiny, prefill 64,128, decode batch 1,2 at context 64")
    p.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).resolve().parent / "out" / "llm"))
    p.add_argument("--no-plot", action="store_true", help="skip the PNG chart")
    args = p.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for kind in args.cache:
        if kind not in ("dynamic", "static"):
            p.error(f"unknown --cache kind {kind!r}; use dynamic, static")
    if not args.impls:
        p.error("--impls is empty")
    return args


# --------------------------------------------------------------------------- rows
def _row(phase: str, impl: str, **fields: Any) -> dict[str, Any]:
    row = {"phase": phase, "impl": impl, "batch": None, "tokens": None, "cache": None, "ms": None,
           "tokens_per_s": None, "first_call_s": None, "peak_gib": None, "status": None, "error": None}
    row.update(fields)
    return row


class Run:
    """The run's state: budget, rows, and ``results.json`` rewritten after every row."""

    def __init__(self, args: argparse.Namespace, device: torch.device, meta: dict[str, Any]) -> None:
        self.args, self.device, self.meta = args, device, meta
        self.gate: list[dict[str, Any]] = []
        self.rows: list[dict[str, Any]] = []
        self.passed: set[str] = set()  # impls that passed the gate
        self.t0 = time.perf_counter()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "errors.log").unlink(missing_ok=True)  # this run's tracebacks only

    def over_budget(self) -> bool:
        return time.perf_counter() - self.t0 > self.args.budget_s

    def save(self) -> None:
        self.meta["wall_s"] = round(time.perf_counter() - self.t0, 1)
        add_ratios(self.rows)
        data = {"meta": self.meta, "gate": self.gate, "rows": self.rows}
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        tmp.replace(self.out / "results.json")

    def error(self, row: dict[str, Any], e: BaseException, where: str) -> None:
        """Record ``e`` in ``row``; its full traceback goes to ``errors.log`` in ``--out`` (the
        row keeps one line), and to the console as well with ``BENCH_TRACEBACK=1``."""
        row.update(status="error", error=_short(e))
        log(f"{where}: ERROR {_short(e, 400)}")
        with open(self.out / "errors.log", "a") as f:
            f.write(f"=== {where}\n{traceback.format_exc()}\n")
        if os.environ.get("BENCH_TRACEBACK"):
            traceback.print_exc()


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def median_ms(fn: Callable[[], Any], device: torch.device, warmup_ms: float, rep_ms: float, min_reps: int) -> float:
    """Median milliseconds per call of ``fn`` (already called once). On CUDA ``do_bench``, with its
    warm-up and repetition times stretched to at least one call / ``min_reps`` calls: a 32k-token
    prefill takes longer than the default 100 ms, and do_bench would then time it only once."""
    if device.type != "cuda":
        return time_fn(fn, device, warmup_ms, rep_ms)
    from triton.testing import do_bench

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    estimate = start.elapsed_time(end)
    return float(do_bench(fn, warmup=max(warmup_ms, estimate), rep=max(rep_ms, (min_reps + 0.5) * estimate),
                          return_mode="median"))


def time_case(run: Run, row: dict[str, Any], make: Callable[[], Callable[[], Any]], where: str) -> None:
    """Fill ``row`` with the first-call time, the median time and the peak memory of ``make()``'s call."""
    args, device = run.args, run.device
    fn = None
    try:
        _peak_reset(device)
        t0 = time.perf_counter()
        fn = make()
        fn()  # first call: compiles / autotunes where the impl does
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        row["first_call_s"] = round(time.perf_counter() - t0, 2)
        ms = median_ms(fn, device, args.warmup, args.rep, args.min_reps)
        tokens = row["batch"] * (row["tokens"] if row["phase"] == "prefill" else 1)
        row.update(status="ok" if row["impl"] in run.passed else "timed, but failed the gate", ms=ms,
                   tokens_per_s=tokens / (ms * 1e-3), peak_gib=_peak_gib(device))
        log(f"{where}: first call {row['first_call_s']:.1f}s, {ms:.3f} ms, {row['tokens_per_s']:,.0f} tok/s")
    except Exception as e:  # noqa: BLE001 - one impl failing (OOM, compile error) must not stop the run
        run.error(row, e, where)
    finally:
        del fn
        _free(device)


# --------------------------------------------------------------------------- phases
def run_gate(run: Run, model, vocab: int) -> Any:
    """Gate every impl against sdpa into ``run.gate`` / ``run.passed``; returns the model (possibly
    rebuilt).

    Pass rule: the impl's relative error against sdpa's float32 logits is at most ``--tol-factor``
    times sdpa's own error in the run's dtype (its rounding noise), or within the dtype's tolerance
    (``flashlight_hf.testing.tolerance``), whichever is larger, for prefill and decode alike."""
    from flashlight_hf.testing import tolerance

    args, device = run.args, run.device
    impls = [REFERENCE] + [i for i in args.impls if i != REFERENCE]
    try:
        ids = cases.random_ids(args.gate_batch, args.gate_len, vocab, seed=args.seed + 1, device=device)
        ref = cases.make_reference(model, ids)
        model = cases.use_impl(model, REFERENCE)
        noise = cases.check_logits(model, ref)
    except Exception as e:  # noqa: BLE001 - without a reference nothing passes; rows say why
        for impl in impls:
            run.gate.append({"impl": impl, "limit": None, "status": None, "error": None,
                             **dict.fromkeys(GATE_FIELDS)})
            run.error(run.gate[-1], e, f"gate reference (sdpa) for {impl}")
        _free(device)
        run.save()
        return model
    limit = max(args.tol_factor * max(noise["prefill_err_fp32"], noise["decode_err_fp32"]),
                tolerance(DTYPES[args.dtype]))
    run.meta["gate_limit"] = limit
    log(f"gate: sdpa {args.dtype} vs float32 rel err prefill {noise['prefill_err_fp32']:.2e}, decode "
        f"{noise['decode_err_fp32']:.2e} -> limit {limit:.2e}")
    for impl in impls:
        row = {"impl": impl, "batch": args.gate_batch, "tokens": args.gate_len, "limit": limit,
               **dict.fromkeys(GATE_FIELDS), "status": None, "error": None}
        run.gate.append(row)
        try:
            model = cases.use_impl(model, impl)
            row.update(noise if impl == REFERENCE else cases.check_logits(model, ref))
            worst = max(row["prefill_err_fp32"], row["decode_err_fp32"])
            row["status"] = "ok" if worst <= limit else "FAIL"
            if row["status"] == "ok":
                run.passed.add(impl)
            log(f"gate {impl}: vs sdpa max |Δ| {row['prefill_max_abs']:.3g} / {row['decode_max_abs']:.3g}, "
                f"rel err vs float32 prefill {row['prefill_err_fp32']:.2e}, decode {row['decode_err_fp32']:.2e} "
                f"-> {row['status']}")
        except Exception as e:  # noqa: BLE001
            run.error(row, e, f"gate {impl}")
        finally:
            _free(device)
        run.save()
    del ref
    return model


def _skip(run: Run, row: dict[str, Any]) -> bool:
    if run.over_budget():
        row.update(status="skipped", error=f"time budget ({run.args.budget_s:.0f} s) spent")
    elif row["impl"] not in run.passed and not run.args.time_failing:
        gate = next((g for g in run.gate if g["impl"] == row["impl"]), None)
        why = "failed the correctness gate" if gate and gate["status"] == "FAIL" else "the correctness gate raised"
        row.update(status="skipped", error=why)
    else:
        return False
    log(f"{row['phase']} B{row['batch']} S{row['tokens']} {row['impl']}: {row['error']}")
    return True


def run_prefill(run: Run, model, vocab: int, progress) -> Any:
    args = run.args
    for length in args.prefill:
        ids = cases.random_ids(1, length, vocab, seed=args.seed + length, device=run.device)
        for impl in args.impls:
            row = _row("prefill", impl, batch=1, tokens=length)
            run.rows.append(row)
            if not _skip(run, row):
                try:
                    model = cases.use_impl(model, impl)
                    time_case(run, row, lambda: cases.prefill_call(model, ids), f"prefill S{length} {impl}")
                except Exception as e:  # noqa: BLE001
                    run.error(row, e, f"prefill S{length} {impl}")
            run.save()
            progress.update(1)
        del ids
        _free(run.device)
    return model


def run_decode(run: Run, model, vocab: int, progress) -> Any:
    args = run.args
    for kind in args.cache:
        for batch in args.decode_batch:
            rows = [_row("decode", impl, batch=batch, tokens=args.context, cache=kind) for impl in args.impls]
            run.rows.extend(rows)
            state = None
            try:
                if not run.over_budget():
                    model = cases.use_impl(model, REFERENCE)
                    state = cases.prefill_cache(model, batch=batch, context=args.context, kind=kind, vocab=vocab,
                                                seed=args.seed + 7 * batch)
            except Exception as e:  # noqa: BLE001 - e.g. OOM filling the cache: every impl's row says so
                for row in rows:
                    run.error(row, e, f"decode B{batch} {kind} cache fill ({row['impl']})")
            for row in rows:
                if row["status"] is None and not _skip(run, row):
                    impl = row["impl"]
                    try:
                        model = cases.use_impl(model, impl)
                        time_case(run, row, lambda: cases.checked_decode_call(model, state),
                                  f"decode B{batch} ctx{args.context} {kind} {impl}")
                    except Exception as e:  # noqa: BLE001
                        run.error(row, e, f"decode B{batch} {kind} {impl}")
                run.save()
                progress.update(1)
            if state is not None and args.rounds > 1:
                model = time_rounds(run, model, rows, state, f"decode B{batch} {kind}")
            del state
            _free(run.device)
    return model


def time_rounds(run: Run, model, rows: list[dict[str, Any]], state: Any, where: str) -> Any:
    """``--rounds - 1`` more timings of every timed row, the impls in turn each round; each row's
    ``ms`` becomes the median over all its rounds (``round_ms`` keeps them)."""
    args = run.args
    timed = [r for r in rows if r.get("ms") is not None]
    for r in timed:
        r["round_ms"] = [r["ms"]]
    for _ in range(args.rounds - 1):
        if run.over_budget():
            break
        for r in timed:
            try:
                model = cases.use_impl(model, r["impl"])
                fn = cases.decode_call(model, state)
                fn()
                r["round_ms"].append(median_ms(fn, run.device, args.warmup, args.rep, args.min_reps))
            except Exception as e:  # noqa: BLE001 - keep the rounds already measured
                run.error(r, e, f"{where} {r['impl']} (rounds)")
                break
    for r in timed:
        r["ms"] = statistics.median(r["round_ms"])
        r["tokens_per_s"] = r["batch"] / (r["ms"] * 1e-3)
    log(f"{where}: medians over {len(timed[0]['round_ms']) if timed else 0} rounds: "
        + ", ".join(f"{r['impl']} {r['ms']:.3f} ms" for r in timed))
    run.save()
    return model


# --------------------------------------------------------------------------- ratios and output
def add_ratios(rows: list[dict[str, Any]]) -> None:
    """×sdpa / ×flex: the baseline's median time ÷ this row's (>1 = faster), same case, same run;
    and, for flashlight rows, whether issue 5's bar is met."""
    by_key = {(r["phase"], r["batch"], r["tokens"], r["cache"], r["impl"]): r for r in rows}
    for r in rows:
        for col, base in (("x_sdpa", "sdpa"), ("x_flex", "flex_attention")):
            b = by_key.get((r["phase"], r["batch"], r["tokens"], r["cache"], base))
            r[col] = b["ms"] / r["ms"] if b and b.get("ms") and r.get("ms") else None
        r["bar"] = None
        if r["impl"] == "flashlight" and r.get("ms"):
            needs = BAR[r["phase"]]
            if all(r.get(col) is not None for col in needs):
                r["bar"] = "met" if all(r[col] >= floor for col, floor in needs.items()) else "missed"


def _fmt(x: float | None, spec: str, suffix: str = "") -> str:
    return "—" if x is None else f"{x:{spec}}{suffix}"


def gate_table(gate: list[dict[str, Any]]) -> str:
    lines = ["| impl | max abs Δ vs sdpa (prefill / decode) | rel err vs sdpa | rel err vs sdpa fp32 | limit "
             "| status |", "|---|---:|---:|---:|---:|---|"]

    def pair(g: dict[str, Any], a: str, b: str, spec: str) -> str:
        return f"{_fmt(g[a], spec)} / {_fmt(g[b], spec)}"

    for g in gate:
        status = g["status"] or "?"
        if g.get("error"):
            status += f": {g['error']}"
        lines.append(f"| {g['impl']} | {pair(g, 'prefill_max_abs', 'decode_max_abs', '.3g')} | "
                     f"{pair(g, 'prefill_rel_err', 'decode_rel_err', '.2e')} | "
                     f"{pair(g, 'prefill_err_fp32', 'decode_err_fp32', '.2e')} | {_fmt(g['limit'], '.2e')} "
                     f"| {status} |")
    return "\n".join(lines)


def timing_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| phase | B | tokens | impl | ms | tok/s | ×sdpa | ×flex | issue-5 bar | first call s | peak GiB "
             "| status |", "|---|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---|"]
    for r in rows:
        phase = r["phase"] if r["phase"] == "prefill" else f"decode ({r['cache']})"
        tokens = str(r["tokens"]) if r["phase"] == "prefill" else f"ctx {r['tokens']}"
        status = r["status"] or "?"
        if r.get("error"):
            status += f": {r['error']}"
        lines.append("| " + " | ".join([
            phase, str(r["batch"]), tokens, r["impl"], _fmt(r["ms"], ".3f"), _fmt(r["tokens_per_s"], ",.0f"),
            _fmt(r.get("x_sdpa"), ".2f", "×"), _fmt(r.get("x_flex"), ".2f", "×"), r.get("bar") or "—",
            _fmt(r["first_call_s"], ".1f"), _fmt(r["peak_gib"], ".1f"), status]) + " |")
    return "\n".join(lines)


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def header_md(meta: dict[str, Any]) -> str:
    env, cfg, model = meta["env"], meta["config"], meta.get("model", {})
    gpu = env["device"]
    if "capability" in env:
        gpu += f" (sm {env['capability']}, {env['memory_gib']} GiB, CUDA {env['cuda']}, cuDNN {env['cudnn']})"
    timer = "triton do_bench median" if env.get("capability") else "perf_counter median (CPU)"
    return "\n".join([
        f"- date: {env['date']}",
        f"- device: {gpu}",
        f"- torch {env['torch']}, triton {env['triton']}, transformers {env.get('transformers')}, "
        f"python {env['python']}; flashlight-hf {env.get('commit') or 'commit unknown'}",
        f"- model: {cfg['model']} ({_count(model.get('parameters', 0))} parameters, random weights, seed "
        f"{cfg['seed']}), {cfg['dtype']}",
        f"- prefill: batch 1, full forward, use_cache=False, logits of the last position only; decode: one "
        f"token per row per step against a {cfg['context']}-token cache (put back after each step)",
        f"- timing: {timer}, warmup {cfg['warmup']} ms, rep {cfg['rep']} ms (at least {cfg['min_reps']} calls)",
        f"- gate: logits of B{cfg['gate_batch']}×{cfg['gate_len']} random tokens (full forward / decode step of "
        f"the last token) vs sdpa in {cfg['dtype']} and in float32; pass: rel err vs float32 ≤ "
        f"max({cfg['tol_factor']:g} × sdpa's own, the dtype's tolerance)",
        f"- command: `{meta['command']}` ({meta.get('wall_s')} s from the model build)",
    ])


LEGEND = ("ms: median time of one prefill forward / one decode step; tok/s: batch × tokens / time "
          "(decode: batch / time per step); ×sdpa, ×flex: that impl's time ÷ this row's, same case, same run "
          "(>1 = faster); issue-5 bar (flashlight rows): prefill ×sdpa ≥ 1/1.10 and ×flex ≥ 1, decode ×sdpa ≥ "
          "1/1.15; first call: the untimed first call incl. compilation / autotuning; peak GiB: "
          "torch.cuda.max_memory_allocated over that case (weights included).")


def _tok_s(x: float) -> str:
    return f"{x / 1e3:.0f}k" if x >= 1e4 else f"{x:.0f}"


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> str | None:
    """Two panels, prefill per length and decode per (batch, cache): each impl's speed relative to
    sdpa in that case (sdpa = 1; absolute tokens/s on the bars), with issue 5's bar dashed.
    Relative, because decode at batch 1 and 32 differ thirtyfold in tokens/s."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001
        return f"no plot ({_short(e)})"
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    panels = [("prefill", lambda r: f"S {r['tokens']}"), ("decode", lambda r: f"B{r['batch']} {r['cache']}")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (phase, label) in zip(axes, panels):
        sel = [r for r in rows if r["phase"] == phase]
        groups = list(dict.fromkeys(label(r) for r in sel))
        width = 0.8 / max(1, len(impls))
        for j, impl in enumerate(impls):
            for i, g in enumerate(groups):
                r = next((r for r in sel if r["impl"] == impl and label(r) == g), None)
                x = i + (j - (len(impls) - 1) / 2) * width
                value = r.get("x_sdpa") or 0.0 if r else 0.0
                ax.bar(x, value, width, color=f"C{j}", label=impl if i == 0 else None)
                if r and value:
                    ax.text(x, value, _tok_s(r["tokens_per_s"]), ha="center", va="bottom", fontsize=6)
                elif r:  # say why there is no bar
                    ax.text(x, 0, f" {r.get('status') or '?'}", rotation=90, ha="center", va="bottom", fontsize=6)
        ax.axhline(BAR[phase]["x_sdpa"], color="k", ls="--", lw=0.8)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, fontsize=8)
        ax.set_title(f"{phase}: speed ÷ sdpa's (labels: tokens/s; dashed: issue 5's bar)", fontsize=9)
        ax.set_ylabel("× sdpa (higher is faster)")
        ax.grid(axis="y", alpha=0.3)
        if sel:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


# --------------------------------------------------------------------------- main
def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except Exception:  # noqa: BLE001 - a copy without .git
        return None


def _raise_recompile_limit() -> None:
    # flex_attention is one torch.compile'd function for every layer and shape of the run; past
    # dynamo's recompile limit it would silently run unfused (and run out of memory at 32k).
    import torch._dynamo.config as dyn

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dyn, name):
            setattr(dyn, name, max(getattr(dyn, name), 64))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from tqdm import tqdm
    import transformers

    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device; use --device cpu")
    dtype = DTYPES[args.dtype]
    _raise_recompile_limit()
    env = environment(device)
    env.update(transformers=transformers.__version__, commit=_commit())
    command = shlex.join(["python", "-m", "benchmarks.bench_llm", *(sys.argv[1:] if argv is None else argv)])
    config = {k: v for k, v in vars(args).items() if k not in ("out",)}
    meta: dict[str, Any] = {"env": env, "command": command, "config": config}
    run = Run(args, device, meta)
    log(f"bench_llm: {env['device']}, torch {env['torch']}, triton {env['triton']}, transformers "
        f"{env['transformers']} -> {run.out}")

    t0 = time.perf_counter()
    model = cases.build_model(args.model, dtype=dtype, device=device, seed=args.seed)
    vocab = model.config.vocab_size
    meta["model"] = {"name": args.model, "parameters": sum(p.numel() for p in model.parameters()),
                     "build_s": round(time.perf_counter() - t0, 1), "class": type(model).__name__}
    log(f"built {args.model} ({_count(meta['model']['parameters'])} parameters, {args.dtype}) "
        f"in {meta['model']['build_s']} s")

    n_rows = len(args.impls) * (len(args.prefill) + len(args.decode_batch) * len(args.cache))
    with tqdm(total=n_rows, desc="bench_llm", unit="row", mininterval=5, file=sys.stdout) as progress:
        model = run_gate(run, model, vocab)
        model = run_prefill(run, model, vocab, progress)
        model = run_decode(run, model, vocab, progress)
    run.save()
    del model
    _free(device)

    header = header_md(meta)
    tables = f"### Correctness gate\n\n{gate_table(run.gate)}\n\n### Timings\n\n{timing_table(run.rows)}"
    (run.out / "results.md").write_text(f"{header}\n\n{tables}\n\n{LEGEND}\n")
    written = [run.out / "results.json", run.out / "results.md"]
    if not args.no_plot:
        try:
            why = plot(run.rows, run.out / "llm.png",
                       f"{env['device']} | {args.model} {args.dtype} | torch {env['torch']}")
        except Exception as e:  # noqa: BLE001 - the tables are written already; a chart is not worth a crash
            why = f"no plot ({_short(e)})"
        if why:
            log(why)
        else:
            written.append(run.out / "llm.png")
    log(f"\nwrote {', '.join(map(str, written))} ({meta['wall_s']} s)\n")
    log(header + "\n\n" + tables)
    return {"meta": meta, "gate": run.gate, "rows": run.rows}


if __name__ == "__main__":
    main()
