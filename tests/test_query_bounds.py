"""Per key tile, the query rows the masks let meet it: the inverse of the forward's key bounds.

Plans come from real programs (causal with a KV offset, sliding windows, PrefixLM's OR, a
lower bound alone); the row ranges are checked against the dense keep-mask of each program,
for random tile edges: every row that keeps a key of the tile is visited (soundness), the
visited range is the tightest one (no wasted tiles for these affine masks), and every row of
the interior range keeps every key of the tile.
"""

from __future__ import annotations

import random

import pytest
import torch

from flashlight_hf.compiler import capture
from flashlight_hf.compiler.ir import build_ir
from flashlight_hf.compiler.rewrite import plan
from flashlight_hf.compiler.rewrite.query_bounds import integers, row_range

SQ, SK, W, P = 37, 53, 9, 13


def _attend(q, k, v, keep):
    s = (q @ k.transpose(-1, -2)).masked_fill(~keep, float("-inf"))
    return torch.softmax(s, -1) @ v


def _ij(q, k):
    return torch.arange(q.shape[-2])[:, None], torch.arange(k.shape[-2])[None, :]


def causal_offset(q, k, v):
    i, j = _ij(q, k)
    return _attend(q, k, v, j <= i + (k.shape[-2] - q.shape[-2]))


def window(q, k, v):
    i, j = _ij(q, k)
    return _attend(q, k, v, (j <= i) & (j > i - W))


def prefix_lm(q, k, v):
    i, j = _ij(q, k)
    return _attend(q, k, v, (j <= i) | (j < P))


def recent_only(q, k, v):
    i, j = _ij(q, k)
    return _attend(q, k, v, j >= i - W)


KEEP = {
    "causal_offset": lambda i, j: j <= i + (SK - SQ),
    "window": lambda i, j: (j <= i) & (j > i - W),
    "prefix_lm": lambda i, j: (j <= i) | (j < P),
    "recent_only": lambda i, j: j >= i - W,
}
PROGRAMS = {f.__name__: f for f in (causal_offset, window, prefix_lm, recent_only)}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_row_ranges_match_the_dense_mask(name: str):
    q, k, v = torch.randn(1, 2, SQ, 16), torch.randn(1, 2, SK, 16), torch.randn(1, 2, SK, 16)
    kp = plan(build_ir(capture.trace_static(PROGRAMS[name], (q, k, v), {})))
    assert kp.key_bounds, "the program's mask must be analysed into key bounds"
    i, j = torch.arange(SQ)[:, None], torch.arange(SK)[None, :]
    keep = KEEP[name](i, j)
    ar = integers(rows=SQ)
    rng = random.Random(0)
    tiles = [(lo, min(lo + n - 1, SK - 1)) for n in (1, 8, 16, 64) for lo in range(0, SK, n)]
    tiles += [tuple(sorted(rng.sample(range(SK), 2))) for _ in range(50)]
    for key_lo, key_hi in tiles:
        r = row_range(kp.key_bounds, key_lo, key_hi, ar)
        tile = keep[:, key_lo:key_hi + 1]
        rows = torch.nonzero(tile.any(1)).flatten().tolist()
        lo, hi = max(r.visit_lo, 0), min(r.visit_hi, SQ - 1)
        if rows:
            assert (lo, hi) == (rows[0], rows[-1]), (name, key_lo, key_hi, r)
        else:
            assert lo > hi, (name, key_lo, key_hi, r)
        ilo, ihi = max(r.interior_lo, 0), min(r.interior_hi, SQ - 1)
        if ilo <= ihi:
            assert tile[ilo:ihi + 1].all(), (name, key_lo, key_hi, r)
        full = torch.nonzero(tile.all(1)).flatten().tolist()
        if full:  # one contiguous run of fully kept rows: the interior range is exactly it
            assert (ilo, ihi) == (full[0], full[-1]), (name, key_lo, key_hi, r)


def test_no_bounds_meet_every_row():
    r = row_range([], 5, 20, integers(rows=10))
    assert (max(r.visit_lo, 0), min(r.visit_hi, 9)) == (0, 9)
    assert (max(r.interior_lo, 0), min(r.interior_hi, 9)) == (0, 9)


def test_an_unknown_bound_kind_raises():
    with pytest.raises(ValueError, match="mid"):
        row_range([("mid", ((1, 0),))], 0, 3, integers(rows=4))


@pytest.mark.parametrize("name", ["causal_offset", "prefix_lm"])
def test_the_triton_expressions_compute_the_same_ranges(name: str, device: str):
    """The ranges as Triton source, run in a kernel (one program per key tile), equal the
    Python integers for every tile."""
    import linecache

    from flashlight_hf.compiler.rewrite.query_bounds import triton_expressions

    q, k, v = torch.randn(1, 2, SQ, 16), torch.randn(1, 2, SK, 16), torch.randn(1, 2, SK, 16)
    kp = plan(build_ir(capture.trace_static(PROGRAMS[name], (q, k, v), {})))
    r = row_range(kp.key_bounds, "key_lo", "key_hi", triton_expressions(str, rows="n_rows"))
    src = "\n".join([
        "import triton", "import triton.language as tl", "", "",
        "@triton.jit",
        "def row_ranges(lo_ptr, hi_ptr, out_ptr, n_rows):",
        "    t = tl.program_id(0)",
        "    key_lo = tl.load(lo_ptr + t)",
        "    key_hi = tl.load(hi_ptr + t)",
        f"    tl.store(out_ptr + 4 * t + 0, {r.visit_lo})",
        f"    tl.store(out_ptr + 4 * t + 1, {r.visit_hi})",
        f"    tl.store(out_ptr + 4 * t + 2, {r.interior_lo})",
        f"    tl.store(out_ptr + 4 * t + 3, {r.interior_hi})", ""])
    filename = f"<query-bounds {name}>"
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    scope: dict = {}
    exec(compile(src, filename, "exec"), scope)
    tiles = [(lo, min(lo + 15, SK - 1)) for lo in range(0, SK, 16)] + [(3, 40), (0, SK - 1), (20, 20)]
    tiles += [(a, b) for a in range(P - 3, P + 2) for b in (a, P + 5)]  # at PrefixLM's constant edge
    lo = torch.tensor([a for a, _ in tiles], dtype=torch.int32, device=device)
    hi = torch.tensor([b for _, b in tiles], dtype=torch.int32, device=device)
    out = torch.full((len(tiles), 4), -7, dtype=torch.int32, device=device)
    scope["row_ranges"][(len(tiles),)](lo, hi, out, SQ)
    ar = integers(rows=SQ)
    want = [[*vars(row_range(kp.key_bounds, a, b, ar)).values()] for a, b in tiles]
    assert out.cpu().tolist() == want
