"""The block table's cost on the GPU: ``flashlight_block_table`` + ``block_table_compact`` for
bench_attention's document mask (ids ``[B, S]``, causal inside documents), per launch's tiles and
``BlockTable.span`` (rows or keys a program classifies) and ``BlockTable.warps``. Each table is checked first against the tiles
a dense mask keeps (counts of whole and partial tiles per outer tile). Usage: python
benchmarks/bench_block_table.py [--batch 4] [--seqlen 4096] [--spans 128 256 512] [--warps 4 8]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import triton.testing  # noqa: E402

from benchmarks.variants.document_mask import attention, random_document_ids  # noqa: E402
from flashlight_hf.compiler import driver  # noqa: E402
from flashlight_hf.compiler.runtime.block_table import BlockTable  # noqa: E402
from flashlight_hf.compiler.runtime.loader import load_kernel  # noqa: E402
from flashlight_hf.compiler.runtime.tune import gpu_ms  # noqa: E402


def dense_counts(ids: torch.Tensor, bm: int, bn: int, key_major: bool) -> torch.Tensor:
    """Per (batch row, outer tile) the number of whole and of partial inner tiles: [B*outer, 2]."""
    b, s = ids.shape
    i = torch.arange(s, device=ids.device)
    keep = (ids[:, :, None] == ids[:, None, :]) & (i[None, None, :] <= i[None, :, None])  # [B, S, S]
    nm, nn = -(-s // bm), -(-s // bn)
    pad = torch.zeros(b, nm * bm, nn * bn, dtype=torch.bool, device=ids.device)
    pad[:, :s, :s] = keep
    tiles = pad.reshape(b, nm, bm, nn, bn)
    any_ = tiles.any(dim=(2, 4))
    all_ = tiles.all(dim=(2, 4))
    inside = torch.zeros(nm, nn, dtype=torch.bool, device=ids.device)
    inside[: s // bm, : s // bn] = True
    whole = all_ & inside
    part = any_ & ~whole
    if key_major:
        whole, part = whole.transpose(1, 2), part.transpose(1, 2)
    return torch.stack([whole.sum(-1), part.sum(-1)], -1).reshape(-1, 2).int()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=4096)
    p.add_argument("--spans", type=int, nargs="*", default=[128, 256, 512])
    p.add_argument("--warps", type=int, nargs="*", default=[4, 8])
    a = p.parse_args()
    b, h, s, d = a.batch, a.heads, a.seqlen, 64
    q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    ids = random_document_ids(b, s, 8, 0).cuda()
    build = driver.build(attention, (q, k, v, ids), {})
    table = BlockTable(build.kernel.program, build.kernel.source.table, load_kernel)
    inputs = build.kernel.bound_inputs([q, k, v, ids])
    print("| tiles (bm, bn) | key major | span | warps | wall µs | GPU µs | counts ok |")
    print("|---|---|---:|---:|---:|---:|---|")
    for bm, bn, km in [(128, 64, False), (128, 128, False), (64, 64, False), (128, 32, False),
                       (32, 128, True), (64, 128, True), (16, 64, True), (64, 64, True)]:
        want = dense_counts(ids, bm, bn, km)
        for span, warps in [(sp, w) for sp in a.spans for w in a.warps]:
            table.span, table.warps = span, warps
            got = table(inputs, bm, bn, km)
            ok = bool(torch.equal(got[:, :2].cpu(), want.cpu()))
            us = triton.testing.do_bench(lambda: table(inputs, bm, bn, km), warmup=20, rep=100) * 1e3
            gpu = gpu_ms(lambda: table(inputs, bm, bn, km), reps=20) * 1e3
            print(f"| ({bm}, {bn}) | {km} | {span} | {warps} | {us:.1f} | {gpu:.1f} | {ok} |", flush=True)


if __name__ == "__main__":
    main()
