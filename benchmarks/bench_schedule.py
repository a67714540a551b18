"""Statement schedules and exp2 lowering of the generated loop, tried on the GPU before codegen
adopts them.

Each variant is a text transform of the kernel the code generator emits today (applied through
a wrapper around ``flashlight_hf.compiler.driver.generate``), timed per launch configuration next to the
program's peer measured in the same run:

* ``generated``: the source as emitted;
* ``mma_first``: in every key loop, the tile loads and the score contractions (``tl.dot``
  without an accumulator) move to the top of the body, so the second stream's ``Q·Kᵀ`` is
  issued before the first stream's softmax waits on its own (the overlap FlashAttention-3 gets
  from two warpgroups);
* ``exp_mixed``: the online-softmax ``exp2`` runs one element in four as a polynomial on the
  FMA pipe (Cody-Waite range reduction, degree-4 fit, relative error 3.6e-6) and three on the
  MUFU unit, whose 16 ops/clock/SM bound a head-dim-64 softmax (FlashAttention-4's trick);
* ``mma_first+exp_mixed``: both;
* ``stream_order``: each key loop finishes one softmax stream (scores, exp, ``P·V``) before
  the next one's ``Q·Kᵀ``: one score tile live at a time (the generated order keeps both
  streams' score tiles live, and 128×128 tiles spill registers);
* ``tma_kv``: the interior key loop reads K and V tiles through TMA tensor descriptors
  (``tl.make_tensor_descriptor``, one per program over its ``[keys, width]`` slice) instead of
  pointer arithmetic.

    python benchmarks/bench_schedule.py --out $OUT
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flashlight_hf  # noqa: E402
import flashlight_hf.compiler.driver as api  # noqa: E402
from flashlight_hf import settings  # noqa: E402
from benchmarks.bench_configs import programs  # noqa: E402
from flashlight_hf.testing import rel_error, tolerance  # noqa: E402

# x -> 2^x, four elements per call: three on MUFU (ex2.approx), the fourth as
# 2^round(x) * p(x - round(x)) on the FMA pipe; below -125 -> 0 (as ex2 gives), NaN -> NaN.
EXP2_MIXED_ASM = """{
.reg .pred pl, pn;
.reg .b32 t, r, q, f, e;
ex2.approx.ftz.f32 $0, $4;
ex2.approx.ftz.f32 $1, $5;
ex2.approx.ftz.f32 $2, $6;
max.f32 t, $7, 0fC2FA0000;
add.rn.f32 r, t, 0f4B400000;
sub.rn.f32 q, r, 0f4B400000;
sub.rn.f32 f, t, q;
fma.rn.f32 q, f, 0f3C1E883E, 0f3D650E81;
fma.rn.f32 q, q, f, 0f3E75FC83;
fma.rn.f32 q, q, f, 0f3F317061;
fma.rn.f32 q, q, f, 0f3F800001;
shl.b32 e, r, 23;
add.s32 q, q, e;
setp.lt.f32 pl, $7, 0fC2FA0000;
selp.b32 q, 0, q, pl;
setp.nan.f32 pn, $7, $7;
selp.b32 $3, $7, q, pn;
}"""

HELPER = f'''

@triton.jit
def exp2_mixed(x):
    # a jit function reads no plain Python globals: the assembly is a literal here
    return tl.inline_asm_elementwise({EXP2_MIXED_ASM!r}, "=r,=r,=r,=r,r,r,r,r", [x], dtype=tl.float32,
                                     is_pure=True, pack=4)
'''


def _reorder_key_loops(src: str, reorder: Any) -> str:
    """``src`` with the body of each ``for start_j`` key loop replaced by ``reorder(body)``
    (the body's lines, blank ones included, in order)."""
    lines = src.split("\n")
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        if not line.strip().startswith("for start_j in range("):
            continue
        indent = len(line) - len(line.lstrip()) + 4
        body = []
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) >= indent):
            body.append(lines[i])
            i += 1
        out += reorder(body)
    return "\n".join(out)


def mma_first(src: str) -> str:
    """Move loads and accumulator-free dots to the top of each key loop's body."""

    def reorder(body: list[str]) -> list[str]:
        head = [b for b in body if re.match(r"\s*(offs_j|mask_j) =", b)]
        early = [b for b in body if b not in head and ("= tl.load(" in b or (
            "= tl.dot(" in b and "acc" not in b.split("=", 1)[1]))]
        rest = [b for b in body if b not in head and b not in early]
        return head + early + rest

    return _reorder_key_loops(src, reorder)


def stream_order(src: str) -> str:
    """Reorder each key loop's body so one softmax stream finishes (scores, exp, ``P·V``) before
    the next one's ``Q·Kᵀ`` starts: one score tile live at a time instead of two."""

    def reorder(body: list[str]) -> list[str]:
        stmts = [b for b in body if b.strip()]
        target = [b.strip().split(" = ", 1)[0] for b in stmts]
        finals = [k for k, b in enumerate(stmts) if re.match(r"\s*acc\d+ = m_new_acc\d+$", b.split("  #")[0])]
        updates = [k for k, t in enumerate(target) if re.fullmatch(r"acc\d+", t) and k not in finals]
        done: list[int] = []

        def visit(k: int) -> None:
            if k in done:
                return
            expr = stmts[k].split(" = ", 1)[1].split("  #")[0] if " = " in stmts[k] else stmts[k]
            for d in range(k):
                if d not in finals and re.search(rf"\b{re.escape(target[d])}\b", expr):
                    visit(d)
            done.append(k)

        for k in updates:
            visit(k)
        for k in range(len(stmts)):  # whatever no update needs (none expected), then the finals
            if k not in finals:
                visit(k)
        return [stmts[k] for k in done] + [stmts[k] for k in finals] + [""]

    return _reorder_key_loops(src, reorder)


def exp_mixed(src: str) -> str:
    body = re.sub(r"^(\s*exp_\d+ = )tl\.exp2\(", r"\1exp2_mixed(", src, flags=re.M)
    assert body != src, "no online-softmax exp2 found"
    first_jit = body.index("@triton.jit")
    return body[:first_jit] + HELPER.lstrip("\n") + "\n\n" + body[first_jit:]


_LOAD = re.compile(r"tl\.load\((in\d+)_ptr \+ \((\w+)\) \* \1_s0 \+ \((\w+)\) \* \1_s1 \+ "
                   r"\(offs_j\[:, None\]\) \* \1_s2 \+ \(\(?(offs_\w+)\[None, :\](?: \+ (\d+))?\)?\) \* \1_s3\)")


def tma_kv(src: str) -> str:
    """Unmasked key-tile loads [BLOCK_N, w] of a 4-D input -> a TMA descriptor load."""
    widths = {m.group(1): int(m.group(2)) for m in re.finditer(r"(offs_\w+) = tl\.arange\(0, (\d+)\)", src)}
    key_hi = re.search(r"^\s*key_hi = (.+)$", src, flags=re.M).group(1)
    descs: dict[str, tuple[str, str, int, int]] = {}

    def load(m: re.Match) -> str:
        name, b, h, offs, col = m.group(1), m.group(2), m.group(3), m.group(4), int(m.group(5) or 0)
        w = widths[offs]
        prev = descs.get(name)
        descs[name] = (b, h, max(col + w, prev[2] if prev else 0), w)
        return f"desc_{name}.load([start_j, {col}])"

    lines = [(_LOAD.sub(load, ln) if "tl.load(" in ln and "mask=" not in ln and "offs_j" in ln else ln)
             for ln in src.split("\n")]
    at = next(i for i, ln in enumerate(lines) if ln.strip().startswith("interior_hi = tl.minimum("))
    indent = " " * (len(lines[at]) - len(lines[at].lstrip()))
    made = [f"{indent}desc_{n} = tl.make_tensor_descriptor({n}_ptr + ({b}) * {n}_s0 + ({h}) * {n}_s1, "
            f"shape=[{key_hi}, {width}], strides=[{n}_s2, {n}_s3], block_shape=[BLOCK_N, {w}])"
            for n, (b, h, width, w) in descs.items()]
    assert made, "no key-tile load to put on TMA"
    return "\n".join(lines[:at + 1] + made + lines[at + 1:])


VARIANTS = {
    "generated": lambda s: s,
    "mma_first": mma_first,
    "exp_mixed": exp_mixed,
    "mma_first+exp_mixed": lambda s: exp_mixed(mma_first(s)),
    "stream_order": stream_order,
    "tma_kv": tma_kv,
    "tma_kv+exp_mixed": lambda s: exp_mixed(tma_kv(s)),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=int, nargs=4, default=[4, 16, 4096, 64], metavar=("B", "H", "S", "D"))
    p.add_argument("--programs", default="differential,full")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--configs", default="128,128,8,3;128,64,8,3;128,64,4,3")
    p.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/out")
    args = p.parse_args(argv)
    from triton.testing import do_bench

    os.environ["FLASHLIGHT_DISK_CACHE"] = "0"  # the whole run, whoever reads it
    settings.reload()
    import triton

    # TMA descriptors made inside a kernel live in a global scratch buffer the caller provides
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    original = api.generate
    dtype, device = torch.bfloat16, "cuda"
    progs = programs(*args.shape, device, dtype)
    rows = []
    for name in args.programs.split(","):
        fn, peer, inputs, flops = progs[name]
        small = [t[:1] if t.dim() == 4 else t for t in inputs]  # one batch element (λ is per head)
        ref = fn(*[t.double() for t in small])
        ms = do_bench(lambda: peer(*inputs), warmup=25, rep=100, return_mode="median")
        rows.append(dict(program=name, variant="peer", config="-", ms=ms, tflops=flops / ms * 1e-9, err=0.0))
        print(rows[-1], flush=True)
        for vname in args.variants.split(","):
            transform = VARIANTS[vname]

            def generate(*a, _t=transform, **k):
                src = original(*a, **k)
                return dataclasses.replace(src, source=_t(src.source))

            api.generate = generate
            for cfg in args.configs.split(";"):
                row = dict(program=name, variant=vname, config=cfg)
                try:
                    with settings.override(configs=cfg):
                        compiled = flashlight_hf.compile(fn)
                        compiled(*inputs)  # autotune-free: one forced configuration
                        row["err"] = rel_error(compiled(*small), ref)
                        row["ms"] = do_bench(lambda: compiled(*inputs), warmup=25, rep=100, return_mode="median")
                    row["tflops"] = flops / row["ms"] * 1e-9
                    if not row["err"] <= tolerance(dtype):
                        row["error"] = f"rel err {row['err']:.1e} over {tolerance(dtype):.0e}"
                except Exception as e:  # noqa: BLE001 - a variant that fails to compile is a row
                    row.update(ms=None, tflops=None, error=f"{type(e).__name__}: {str(e)[-300:]}")
                rows.append(row)
                print(row, flush=True)
            api.generate = original
    peer_ms = {r["program"]: r["ms"] for r in rows if r["variant"] == "peer"}
    lines = [f"- device: {torch.cuda.get_device_name()}; torch {torch.__version__}; shape {args.shape} bf16", "",
             "| program | variant | config | ms | TFLOP/s | × peer | rel err | note |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        if r.get("ms") is None:
            lines.append(f"| {r['program']} | {r['variant']} | {r['config']} | — | — | — | — | {r.get('error')} |")
        else:
            lines.append(f"| {r['program']} | {r['variant']} | {r['config']} | {r['ms']:.3f} | {r['tflops']:.1f} | "
                         f"{peer_ms[r['program']] / r['ms']:.3f}× | {r['err']:.1e} | {r.get('error', '')} |")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "schedule.json").write_text(json.dumps(rows, indent=1))
    (out_dir / "schedule.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
