#!/usr/bin/env python
"""First-call latency (issue 14, item 4): from a cold process to the first result of a new program.

Each case runs in a fresh Python process, twice: first with empty caches (flashlight's disk
cache and Triton's binary cache both in new folders), then again in another fresh process with
the caches the first left (a warm disk cache). Each child prints one JSON line: seconds to import
torch and flashlight, the build's stages (``Build.timings``: trace, disk cache lookup, IR +
plan, the symbolic trace, codegen, loading the source) and the first launch (Triton's compile of
every candidate, autotuning, and the kernel itself, synchronised), and the total from the
call to its result. ``--llm`` adds a Llama's first forward through
``attn_implementation="flashlight"`` (``llama-1b`` on CUDA, ``llama-tiny`` elsewhere).

The issue's bars (GPU): a new program's first result <= 2 s, a Llama-1B's first forward <= 3 s,
with a warm disk cache <= 0.3 s. FlexAttention's first call is printed beside ours when
``--flex`` is given (same process discipline).

    python benchmarks/first_call.py                      # CUDA when present
    TRITON_INTERPRET=1 python benchmarks/first_call.py --device cpu --llm   # CPU: interpreter
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ["causal", "alibi_closure", "softcap", "document_ids"]


def _child(case: str, device: str, dtype_name: str, seqlen: int) -> None:
    """Runs inside the fresh process: one first call, timed by stage; prints one JSON line."""
    t0 = time.perf_counter()
    import torch
    t_torch = time.perf_counter()
    import flashlight_hf
    t_fl = time.perf_counter()
    dtype = getattr(torch, dtype_name)
    row: dict = {"case": case, "import_torch": t_torch - t0, "import_flashlight": t_fl - t_torch}
    if case == "llm":
        row.update(_llm_first_forward(device, dtype))
    else:
        fn, inputs = _program(case, device, dtype, seqlen)
        if case.startswith("flex:"):
            t = time.perf_counter()
            fn(*inputs)
            torch.cuda.synchronize() if device == "cuda" else None
            row["total"] = time.perf_counter() - t
        else:
            compiled = flashlight_hf.compile(fn)
            t = time.perf_counter()
            compiled(*inputs)
            if device == "cuda":
                torch.cuda.synchronize()
            row["total"] = time.perf_counter() - t
            (b,) = compiled.builds()
            row["stages"] = dict(b.timings)
            row["fused"] = b.kernel is not None
            row["from_disk"] = b.from_disk
    print("ROW " + json.dumps(row), flush=True)


def _program(case: str, device: str, dtype, seqlen: int):
    import torch
    flex = case.startswith("flex:")
    name = case.split(":", 1)[-1]
    b, h, d = 4, 16, 64
    q, k, v = (torch.randn(b, h, seqlen, d, device=device, dtype=dtype) for _ in range(3))
    slopes = torch.exp2(-torch.arange(1, h + 1, device=device, dtype=torch.float32) * 8 / h)
    docs = torch.sort(torch.randint(0, 8, (b, seqlen), device=device), dim=-1).values

    def ij():
        return (torch.arange(seqlen, device=device)[:, None], torch.arange(seqlen, device=device)[None, :])

    if flex:  # FlexAttention's spelling of the same programs
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        compiled_flex = torch.compile(flex_attention)
        mods = {
            "causal": (None, lambda b_, h_, i, j: j <= i),
            "alibi_closure": (lambda s, b_, h_, i, j: s - slopes[h_] * (i - j).abs(), None),
            "softcap": (lambda s, b_, h_, i, j: 30 * torch.tanh(s / 30), None),
            "document_ids": (None, lambda b_, h_, i, j: (docs[b_, i] == docs[b_, j]) & (j <= i)),
        }
        score_mod, mask_mod = mods[name]

        def run(q, k, v):
            bm = create_block_mask(mask_mod, b, None, seqlen, seqlen, device=device) if mask_mod else None
            return compiled_flex(q, k, v, score_mod=score_mod, block_mask=bm)
        return run, (q, k, v)

    def causal(q, k, v):
        i, j = ij()
        return torch.softmax((q @ k.mT * d ** -0.5).masked_fill(j > i, float("-inf")), -1) @ v

    def alibi_closure(q, k, v):  # the slopes are closed over (issue 14, item 1)
        i, j = ij()
        return torch.softmax(q @ k.mT * d ** -0.5 - slopes[:, None, None] * (i - j).abs(), -1) @ v

    def softcap(q, k, v):
        s = q @ k.mT * d ** -0.5
        return torch.softmax(30 * torch.tanh(s / 30), -1) @ v

    def document_ids(q, k, v):
        i, j = ij()
        same = docs[:, None, :, None] == docs[:, None, None, :]
        return torch.softmax((q @ k.mT * d ** -0.5).masked_fill(~(same & (j <= i)), float("-inf")), -1) @ v

    return {"causal": causal, "alibi_closure": alibi_closure, "softcap": softcap,
            "document_ids": document_ids}[name], (q, k, v)


def _llm_first_forward(device: str, dtype) -> dict:
    import torch
    sys.path.insert(0, str(ROOT))
    from benchmarks.llm_cases import build_model
    name = "llama-1b" if device == "cuda" else "llama-tiny"
    model = build_model(name, dtype=dtype, device=torch.device(device), seed=0)
    model.set_attn_implementation("flashlight")
    ids = torch.randint(0, model.config.vocab_size, (1, 2048 if device == "cuda" else 64), device=device)
    t = time.perf_counter()
    with torch.no_grad():
        model(ids)
    if device == "cuda":
        torch.cuda.synchronize()
    return {"total": time.perf_counter() - t, "model": name}


def _run(case: str, env: dict, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", case, "--device", args.device, "--dtype", args.dtype,
           "--seqlen", str(args.seqlen)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t
    rows = [line[4:] for line in proc.stdout.splitlines() if line.startswith("ROW ")]
    if proc.returncode != 0 or not rows:
        return {"case": case, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1], "process": wall}
    row = json.loads(rows[-1])
    row["process"] = wall
    return row


def _fmt(row: dict, cache: str) -> str:
    if "error" in row:
        return f"| {row['case']} | {cache} | error: {row['error'][:80]} |"
    st = row.get("stages", {})
    cols = [st.get(k) for k in ("trace", "disk_cache", "ir_plan", "trace_symbolic", "codegen", "load", "first_launch")]
    cells = " | ".join("—" if c is None else f"{c * 1e3:.0f}" for c in cols)
    return (f"| {row['case']} | {cache} | {row['import_torch'] + row['import_flashlight']:.2f} | {cells} | "
            f"{row['total']:.2f} | {row['process']:.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--seqlen", type=int, default=None)
    p.add_argument("--programs", nargs="*", default=PROGRAMS)
    p.add_argument("--llm", action="store_true", help="also a Llama's first forward with flashlight")
    p.add_argument("--flex", action="store_true", help="also FlexAttention's first call (CUDA)")
    p.add_argument("--out", default=None, help="write results.json here")
    a = p.parse_args()
    if a.device is None:
        import torch
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    a.dtype = a.dtype or ("bfloat16" if a.device == "cuda" else "float32")
    a.seqlen = a.seqlen or (4096 if a.device == "cuda" else 128)
    if a.child:
        _child(a.child, a.device, a.dtype, a.seqlen)
        return
    cases = list(a.programs) + (["llm"] if a.llm else []) + ([f"flex:{n}" for n in a.programs] if a.flex else [])
    print("| case | caches | imports s | trace ms | disk ms | IR+plan ms | symbolic trace ms | codegen ms | "
          "load ms | first launch ms | first result s | process s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    results = []
    for case in cases:
        with tempfile.TemporaryDirectory() as fl_cache, tempfile.TemporaryDirectory() as tr_cache:
            env = dict(os.environ, FLASHLIGHT_CACHE_DIR=fl_cache, TRITON_CACHE_DIR=tr_cache,
                       PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
            for cache in ("empty", "warm"):
                row = _run(case, env, a)
                row["caches"] = cache
                results.append(row)
                print(_fmt(row, cache), flush=True)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "first_call.json").write_text(json.dumps({"device": a.device, "rows": results}, indent=1))


if __name__ == "__main__":
    main()
