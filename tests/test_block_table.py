"""The block table of data-dependent masks (codegen/block_table.py, runtime/block_table.py).

The table kernel's lists are checked against the tiles a dense mask keeps (every tile some pair
survives in, split into whole tiles and partial ones, nothing else); then programs whose masks
are read from the data run forward and backward through the table-walking kernels and match
float64 autograd: ids out of order (kept tiles not contiguous), a document mask with a causal
one, separate query and key ids with q_len ≠ kv_len, GQA, key padding.
"""

from __future__ import annotations

import pytest
import torch

from flashlight_hf.compiler import driver
from flashlight_hf.compiler.abi import KERNEL_BLOCK_TABLE
from flashlight_hf.compiler.runtime.hooks import add_launch_hook
from flashlight_hf.compiler.runtime.block_table import BlockTable, dead_rows
from flashlight_hf.compiler.runtime.loader import load_kernel
from tests.test_backward import _qkv, _scores, check_generated_gradients, document_ids
from tests.test_generator import repeat_kv


def causal_documents(q, k, v, doc):
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    keep = (doc[:, None] == doc[None, :]) & (j <= i)
    return torch.softmax(_scores(q, k).masked_fill(~keep, float("-inf")), dim=-1) @ v


def gqa_documents(q, k, v, doc):
    g = q.shape[1] // k.shape[1]
    same = doc[:, None] == doc[None, :]
    return torch.softmax(_scores(q, repeat_kv(k, g)).masked_fill(~same, float("-inf")), dim=-1) @ repeat_kv(v, g)


def padded_keys(q, k, v, keep):  # keep: [B, N] bool, a key-padding mask read from the data
    return torch.softmax(_scores(q, k).masked_fill(~keep[:, None, None, :], float("-inf")), dim=-1) @ v


def _dense_keep(q_doc: torch.Tensor, k_doc: torch.Tensor) -> torch.Tensor:
    return q_doc[:, None] == k_doc[None, :]


def _expected(keep: torch.Tensor, bm: int, bn: int, key_major: bool) -> list[tuple[list[int], list[int]]]:
    """Per outer tile (whole tiles, partial tiles) from a dense [rows, keys] mask."""
    rows, keys = keep.shape
    nm, nn = -(-rows // bm), -(-keys // bn)
    out = []
    for t in range(nn if key_major else nm):
        whole, part = [], []
        for u in range(nm if key_major else nn):
            tm, tn = (u, t) if key_major else (t, u)
            block = keep[tm * bm:(tm + 1) * bm, tn * bn:(tn + 1) * bn]
            in_range = (tm + 1) * bm <= rows and (tn + 1) * bn <= keys
            if bool(block.all()) and in_range:
                whole.append(u)
            elif bool(block.any()):
                part.append(u)
        out.append((whole, part))
    return out


@pytest.mark.parametrize("order", ["sorted", "shuffled"])
@pytest.mark.parametrize("key_major", [False, True])
@pytest.mark.parametrize("tiles", [(16, 16), (32, 16), (16, 32)])
@pytest.mark.parametrize("lengths", [(83, 71), (610, 590)], ids=["short", "long"])  # long: several runs per program
def test_table_lists_exactly_the_tiles_the_mask_keeps(order: str, key_major: bool, tiles: tuple[int, int],
                                                      lengths: tuple[int, int], device: str):
    sq, sk = lengths
    q_doc = torch.randint(0, 4, (sq,), device=device)
    k_doc = torch.randint(0, 4, (sk,), device=device)
    if order == "sorted":
        q_doc, k_doc = q_doc.sort().values, k_doc.sort().values
    inputs = _qkv(sq, sk, device=device) + [q_doc, k_doc]
    build = driver.build(document_ids, tuple(inputs), {})
    assert build.kernel is not None and build.kernel.source.table is not None, build
    table = BlockTable(build.kernel.program, build.kernel.source.table, load_kernel)
    got = table(build.kernel.bound_inputs(inputs), *tiles, key_major).cpu()
    expected = _expected(_dense_keep(q_doc, k_doc).cpu(), *tiles, key_major)
    assert got.shape[0] == len(expected)  # the ids have no batch: one table for every grid point
    inner = got.shape[1] - 2
    for t, (whole, part) in enumerate(expected):
        n_full, n_part = int(got[t, 0]), int(got[t, 1])
        assert got[t, 2:2 + n_full].tolist() == whole, (t, got[t])
        assert sorted(got[t, 2 + inner - n_part:].tolist()) == part, (t, got[t])


def test_dead_rows_flags_grid_points_with_a_row_every_mask_drops():
    mx = torch.zeros(2, 3, 5)
    mx[1, 2, 4] = float("-inf")
    other = torch.zeros(2, 3, 5)
    other[0, 0, 0] = float("-inf")
    assert dead_rows([mx, other]).tolist() == [[1, 0, 0], [0, 0, 1]]


def test_kernels_walk_the_table_and_the_split_kernels_keep_the_tile_test(device: str):
    s = 70
    doc = torch.arange(s, device=device) // 20
    inputs = _qkv(s, s, device=device) + [doc, doc]
    build = driver.build(document_ids, tuple(inputs), {}, training=True)
    src = build.kernel.source
    kernels = [src.source, src.train.source] + [bs.source for bs in src.backward.kernels]
    for text in kernels:
        assert "tl.load(tbl + 2 + t)" in text and "tile_keeps" not in text, text
    if src.split is not None:
        assert "tile_keeps" in src.split[0].source


def _through_table(fn, inputs: list[torch.Tensor]) -> None:
    """check_generated_gradients, and the block table was built for the forward and both
    backward kernels."""
    launched: list[str] = []
    remove = add_launch_hook(launched.append)
    try:
        check_generated_gradients(fn, inputs)
    finally:
        remove()
    assert launched.count(KERNEL_BLOCK_TABLE) >= 3, launched


@pytest.mark.parametrize("case", ["shuffled", "causal", "separate_ids", "gqa", "padded_keys", "batched_ids"])
def test_gradients_through_the_table(case: str, device: str):
    """Forward and backward of each program equal float64 autograd (check_generated_gradients:
    every float input, the backward as generated kernels, no fallback warning)."""
    if case == "shuffled":  # kept tiles far from contiguous
        s = 75
        doc = torch.randint(0, 3, (s,), device=device)
        _through_table(document_ids, _qkv(s, s, device=device) + [doc, doc])
    elif case == "causal":
        s = 81
        doc = torch.arange(s, device=device) // 23
        _through_table(causal_documents, _qkv(s, s, device=device) + [doc])
    elif case == "separate_ids":  # q_len != kv_len, every query row keeps some key
        sq, sk = 45, 67
        q_doc = torch.arange(sq, device=device) * 3 // sq
        k_doc = torch.arange(sk, device=device) * 3 // sk
        _through_table(document_ids, _qkv(sq, sk, device=device) + [q_doc, k_doc])
    elif case == "gqa":
        s = 50
        doc = torch.arange(s, device=device) // 17
        _through_table(gqa_documents, _qkv(s, s, hk=2, device=device) + [doc])
    elif case == "padded_keys":
        s = 66
        keep = torch.ones(2, s, dtype=torch.bool, device=device)
        keep[0, 40:] = False
        keep[1, 10:30] = False
        _through_table(padded_keys, _qkv(s, s, device=device) + [keep])
    else:  # ids per batch element: the table has a grid (the batch), not the heads
        s = 58
        doc = torch.stack([torch.arange(s, device=device) // 19, torch.arange(s, device=device) // 29])

        def batched(q, k, v, doc):
            same = doc[:, None, :, None] == doc[:, None, None, :]
            return torch.softmax(_scores(q, k).masked_fill(~same, float("-inf")), dim=-1) @ v

        _through_table(batched, _qkv(s, s, device=device) + [doc])


def test_forward_through_the_table_poisoned_output(device: str):
    """Every output element is written (the output buffer starts as NaN) and equals float64."""
    s = 77
    doc = torch.randint(0, 4, (s,), device=device).sort().values
    q, k, v = _qkv(s, s, device=device)
    build = driver.build(document_ids, (q, k, v, doc, doc), {})
    assert build.kernel is not None and build.kernel.source.table is not None
    out = torch.full((2, 4, s, q.shape[-1]), float("nan"), device=device)
    build.kernel([q, k, v, doc, doc], out=out)
    ref = document_ids(q.double(), k.double(), v.double(), doc, doc)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_decode_steps_launch_no_table(device: str):
    """A decode step (a few query rows) walks every key tile with the masks applied, from a table
    made once per shape: no table launch per call, and the output still equals float64."""
    s_k = 90
    keep = torch.ones(2, s_k, dtype=torch.bool, device=device)
    keep[0, 50:] = False
    q, k, v = _qkv(3, s_k, device=device)
    build = driver.build(padded_keys, (q, k, v, keep), {})
    assert build.kernel is not None and build.kernel.source.table is not None
    launched: list[str] = []
    remove = add_launch_hook(launched.append)
    try:
        for _ in range(2):
            out = build.kernel([q, k, v, keep])
    finally:
        remove()
    assert KERNEL_BLOCK_TABLE not in launched, launched
    ref = padded_keys(q.double(), k.double(), v.double(), keep)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
