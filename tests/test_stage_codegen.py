"""The codegen stage on its own: plans of small programs in, Triton source out, checked for
structure (not only snapshots) — the source compiles and loads under the interpreter, the
signature is the launch contract, the key-tile body is one helper, names come from the program,
and no dead arithmetic reaches the text."""

from __future__ import annotations

import ast
import math
import re

import pytest
import torch

import flashlight_hf
from flashlight_hf.compiler import capture
from flashlight_hf.compiler.abi import (BLOCK_M, BLOCK_N, KERNEL_COMBINE, KERNEL_SINGLE, KERNEL_SPLIT,
                                        KERNEL_SPLIT_FUSED, NUM_SPLITS)
from flashlight_hf.compiler.codegen import KernelSource, generate
from flashlight_hf.compiler.codegen.keyloop import INNER
from flashlight_hf.compiler.ir import build_ir
from flashlight_hf.compiler.rewrite import plan
from flashlight_hf.compiler.runtime import load_kernel
from flashlight_hf.testing import assert_close
from tests.test_generator import causal_kv_offset, document_mask, vanilla


def causal(q, k, v):
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    return torch.softmax(s.masked_fill(j > i, float("-inf")), dim=-1) @ v


def _qkv(dtype=torch.float32, sq=37, sk=53, d=32):
    return torch.randn(2, 4, sq, d, dtype=dtype), torch.randn(2, 4, sk, d, dtype=dtype), \
        torch.randn(2, 4, sk, d, dtype=dtype)


def _generate(fn, args, **kw) -> KernelSource:
    return generate(plan(build_ir(capture.trace_static(fn, args, {}))), interpret=True, **kw)


def _params(src: str, name: str) -> list[str]:
    """The parameter lines of ``def name(`` (asserting one per line)."""
    lines = src.splitlines()
    start = lines.index(f"def {name}(")
    end = lines.index("):", start)
    params = [ln.strip() for ln in lines[start + 1:end]]
    assert all(p.endswith(",") and p.count(",") == 1 for p in params), params  # one per line
    return [p[:-1] for p in params]


def test_source_compiles_loads_and_keeps_the_launch_order():
    ks = _generate(causal_kv_offset, _qkv())
    compile(ks.source, "<flashlight test>", "exec")
    fn = load_kernel(ks)
    params = _params(ks.source, KERNEL_SINGLE)
    assert list(fn.arg_names) == [p.split(":")[0] for p in params]
    # what runtime passes: per input its pointer and strides, the output's, the sizes, the tiles
    expect = []
    for k, base in zip(ks.input_args, "qkv"):
        expect += [f"{base}_ptr", f"stride_{base}b", f"stride_{base}h", f"stride_{base}{'m' if k == 0 else 'n'}",
                   f"stride_{base}d"]
    expect += ["out_ptr", "stride_ob", "stride_oh", "stride_om", "stride_od"]
    expect += [f"z{k}" for k in range(len(ks.runtime_sizes))]
    expect += [f"{BLOCK_M}: tl.constexpr", f"{BLOCK_N}: tl.constexpr"]
    assert params == expect
    assert ks.input_args == [0, 1, 2]


def test_split_combine_and_fused_kernels_carry_the_abi_names():
    ks = _generate(causal_kv_offset, _qkv())
    (part, comb), fused = ks.split, ks.split_fused
    assert (ks.name, part.name, comb.name, fused.name) == (KERNEL_SINGLE, KERNEL_SPLIT, KERNEL_COMBINE,
                                                           KERNEL_SPLIT_FUSED)
    n_acc = len(ks.acc_widths)
    for k in (part, comb, fused):
        compile(k.source, k.name, "exec")
        load_kernel(k)
        params = _params(k.source, k.name)
        assert params[-1] == f"{NUM_SPLITS}: tl.constexpr" and params[-3:-1] == [f"{BLOCK_M}: tl.constexpr",
                                                                               f"{BLOCK_N}: tl.constexpr"]
        parts = [p for p in params if re.fullmatch(r"part\d+_ptr", p)]
        assert len(parts) == n_acc and params[params.index(parts[-1]) + 1] == "n_grid"
    assert "out_ptr" not in _params(part.source, part.name)
    fp = _params(fused.source, fused.name)
    assert fp[fp.index("n_grid") + 1] == "count_ptr" and fp[fp.index("count_ptr") + 1] == "out_ptr"
    assert "tl.atomic_add(ticket_ptr" in fused.source and f"ticket == {NUM_SPLITS} - 1" in fused.source
    assert f"for s in range(0, {NUM_SPLITS}):" in comb.source and INNER not in comb.source
    for k in (part, fused):
        assert f"split = pid % {NUM_SPLITS}" in k.source and k.source.count(f"def {INNER}(") == 1


@pytest.mark.parametrize("fn", [vanilla, causal, causal_kv_offset, document_mask], ids=lambda f: f.__name__)
def test_key_tile_body_is_one_helper_called_per_range(fn):
    args = _qkv(sq=40, sk=40) + ((torch.sort(torch.randint(0, 4, (40,))).values,) if fn is document_mask else ())
    src = _generate(fn, args).source
    assert src.count(f"def {INNER}(") == 1
    calls = re.findall(rf"= {INNER}\((.*?)\)\n", src, re.S)
    flags = [c.replace("\n", " ").split()[-1] for c in calls]
    # the key range's three (boundary, interior, boundary); a document mask's block table: its
    # whole tiles, then its partial ones (codegen/block_table.py)
    table = fn is document_mask
    assert flags == (["BOUNDARY=False", "BOUNDARY=True"] if table else
                     ["BOUNDARY=True", "BOUNDARY=False", "BOUNDARY=True"])
    tree = ast.parse(src)
    helper = next(f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == INNER)
    assert isinstance(helper.body[-1], ast.Return)  # the accumulators come back as a tuple
    kernel = next(f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == KERNEL_SINGLE)
    loops = [n for n in ast.walk(kernel) if isinstance(n, ast.For)]
    if table:  # each loop reads its tile's index from the table, then calls the helper
        assert len(loops) == 2 and all(len(lp.body) == 2 for lp in loops)
    else:  # each loop only calls the helper
        assert len(loops) == 3 and all(len(lp.body) == 1 for lp in loops)
    assert src.count("tl.dot(") == 2  # the two contractions, once each


def test_names_come_from_the_program():
    ks = _generate(causal_kv_offset, _qkv())
    src = ks.source
    assert "idx_in" not in src and not re.search(r"\bin\d+_\d+_\d+\b", src)  # no IR ids
    for name in ("q_ptr", "k_ptr", "v_ptr", "stride_qb", "stride_qh", "stride_qm", "stride_kn", "stride_vd",
                 "off_b", "off_h", "q_idx", "kv_idx", "offs_m", "offs_n"):
        assert re.search(rf"\b{name}\b", src), name
    header = src[:src.index(f"def {KERNEL_SINGLE}(")]
    assert re.search(r"#\s+q_ptr\s+\[2, 4, 37, 32\]\s+float32\s+\(b, h, m, d\)\s+query rows", header)
    named = _generate(causal_kv_offset, _qkv(), input_names=["query", "key", "value"]).source
    assert "query_ptr" in named and "stride_query_m" in named and "stride_key_n" in named
    assert "q_ptr" not in named


def test_no_dead_arithmetic_and_one_scale_fold():
    for fn in (vanilla, causal, causal_kv_offset):
        src = _generate(fn, _qkv()).source
        assert not re.search(r"\* 1\b(?!\.)", src), fn.__name__
        assert not re.search(r"\+ 0\b(?!\.)", src) and "* 1.0 " not in src, fn.__name__
        assert "(0 // BLOCK_N) * BLOCK_N" not in src and "key_lo = (key_lo // BLOCK_N)" not in src
    src = _generate(causal, _qkv()).source
    assert "row_hi + 1)" in src and "row_lo + 1)" in src
    # boundary and interior tiles fold the scale (d^-1/2 · log2 e) into one multiply alike
    scale = repr(32 ** -0.5 * math.log2(math.e))
    helper = src[src.index(f"def {INNER}("):src.index(f"def {KERNEL_SINGLE}(")]
    assert helper.count(f"* {scale}") == 3 and "mul_" not in helper  # two maxes (one per flag), one exp2


def test_bf16_dot_operands_are_upcast_under_the_interpreter():
    args = _qkv(torch.bfloat16)
    src = _generate(causal_kv_offset, args).source
    assert "tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32))" in src
    assert ", v.to(tl.float32), acc" in src
    gpu = generate(plan(build_ir(capture.trace_static(causal_kv_offset, args, {}))), interpret=False).source
    assert "tl.dot(q, tl.trans(k))" in gpu and "p_1.to(tl.bfloat16), v.to(tl.bfloat16)" in gpu
    out = flashlight_hf.compile(causal_kv_offset)(*args)
    assert_close(out, causal_kv_offset(*(a.double() for a in args)), torch.bfloat16)
