"""Stage 2 on its own: ``build_ir`` on small captured programs, checked on the IR it returns.

What is checked is what later stages rely on: which index variable names each output and input
axis (batch and heads unified across Q/K/V, rows and keys distinct), derived variables (GQA's
``h // G``, a view's split ``ho * G + hi``), the kind of the root node, and the text the printer
gives ``explain``. Variable names carry counters, so tests compare them by role, not spelling.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from flashlight_hf.compiler import capture
from flashlight_hf.compiler.ir import (Const, IExpr, Index, Load, Pointwise, Program, Reduce, Unsupported, build_ir,
                                       format_node_tree, walk)
from tests.test_generator import vanilla


def causal(q, k, v):
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    i = torch.arange(q.shape[-2])[:, None] + (k.shape[-2] - q.shape[-2])
    j = torch.arange(k.shape[-2])[None, :]
    return torch.softmax(s.masked_fill(j > i, float("-inf")), dim=-1) @ v


def repeat_kv(x, n):
    b, hk, s, d = x.shape
    return x[:, :, None].expand(b, hk, n, s, d).reshape(b, hk * n, s, d)


def gqa(q, k, v):
    k, v = repeat_kv(k, 2), repeat_kv(v, 2)
    return torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1) @ v


def grouped_view(q, k, v):
    b, h, s, d = q.shape
    q5 = q.view(b, k.shape[1], h // k.shape[1], s, d)
    o = torch.softmax(q5 @ k[:, :, None].transpose(-2, -1) * d ** -0.5, dim=-1) @ v[:, :, None]
    return o.reshape(b, h, s, -1)


def sinks(q, k, v, sink):
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    col = sink.reshape(1, -1, 1, 1).expand(s.shape[0], -1, s.shape[2], 1)
    p = torch.softmax(torch.cat([s, col], dim=-1), dim=-1)[..., :-1]
    return p @ v


def _ir(fn, *args) -> Program:
    return build_ir(capture.trace_static(fn, args, {}))


def _qkv(hk: int = 4, sq: int = 37, sk: int = 53):
    return torch.randn(2, 4, sq, 32), torch.randn(2, hk, sk, 32), torch.randn(2, hk, sk, 24)


def _out_vars(p: Program) -> list:
    assert all(len(ax) == 1 for ax in p.out_axes)
    return [ax[0][0] for ax in p.out_axes]


def _loads(p: Program, k: int) -> list[Load]:
    return [x for x in walk(p.output) if isinstance(x, Load) and x.input == k]


def test_vanilla_names_rows_keys_and_value_dims():
    p = _ir(vanilla, *_qkv())
    b, h, i, e = _out_vars(p)
    assert [v.extent for v in (b, h, i, e)] == [2, 4, 37, 24]
    assert p.out_dtype == torch.float32 and p.input_shapes == [(2, 4, 37, 32), (2, 4, 53, 32), (2, 4, 53, 24)]
    assert p.bindings == [0, 1, 2] and p.defs == {}
    # the root is the P @ V contraction: a sum over the key variable, which no output axis keeps
    assert isinstance(p.output, Reduce) and p.output.op == "sum"
    j = p.output.var
    assert j.extent == 53 and j not in {b, h, i, e}
    assert p.output.vars == frozenset({b, h, i, e})
    # per input axis, the variables its uses index it by: batch and heads shared by Q, K and V,
    # the key axis shared by K and V, the head dim shared by Q and K
    qa, ka, va = p.input_axis_vars
    assert qa[:3] == [[b], [h], [i]] and ka[:3] == [[b], [h], [j]] and va == [[b], [h], [j], [e]]
    d = qa[3][0]
    assert ka[3] == [d] and d.extent == 32
    inner = [x for x in walk(p.output) if isinstance(x, Reduce) and x.var is d]
    assert len(inner) == 1 and inner[0].op == "sum"  # Q @ Kᵀ
    assert sorted(x.op for x in walk(p.output) if isinstance(x, Reduce)) == ["max", "sum", "sum", "sum"]


def test_printer_sketch_of_vanilla():
    p = _ir(vanilla, *_qkv())
    b, h, i, e = _out_vars(p)
    j = p.output.var
    d = p.input_axis_vars[0][3][0]
    text = p.describe()
    assert text == format_node_tree(p.output)
    for v, role in ((b, "b"), (h, "h"), (i, "i"), (j, "j"), (d, "d"), (e, "e")):
        text = re.sub(rf"\b{re.escape(v.name)}\b", role, text)
    # ``keeps`` is sorted by the real names; sort it by role to compare
    text = re.sub(r"keeps\[([^\]]*)\]", lambda m: "keeps[" + ",".join(sorted(m[1].split(",") if m[1] else [])) + "]",
                  text)
    scale = repr(math.sqrt(32))
    assert text.splitlines() == [
        "%0 = load in0[b, h, i, d]  : float32 keeps[b,d,h,i]",
        "%1 = load in1[b, h, j, d]  : float32 keeps[b,d,h,j]",
        "%2 = mul(%0, %1)  : float32 keeps[b,d,h,i,j]",
        "%3 = reduce_sum[d](%2)  : float32 keeps[b,h,i,j]",
        f"%4 = const {scale}  : float32 keeps[]",
        "%5 = div(%3, %4)  : float32 keeps[b,h,i,j]",
        "%6 = reduce_max[j](%5)  : float32 keeps[b,h,i]",
        "%7 = sub(%5, %6)  : float32 keeps[b,h,i,j]",
        "%8 = exp(%7)  : float32 keeps[b,h,i,j]",
        "%9 = reduce_sum[j](%8)  : float32 keeps[b,h,i]",
        "%10 = div(%8, %9)  : float32 keeps[b,h,i,j]",
        "%11 = load in2[b, h, j, e]  : float32 keeps[b,e,h,j]",
        "%12 = mul(%10, %11)  : float32 keeps[b,e,h,i,j]",
        "%13 = reduce_sum[j](%12)  : float32 keeps[b,e,h,i]",
    ]


def test_causal_mask_compares_row_and_key_indices():
    p = _ir(causal, *_qkv())
    b, h, i, e = _out_vars(p)
    j = p.output.var
    assert isinstance(p.output, Reduce) and p.output.op == "sum"
    # the two aranges became index values over the row and the key variable
    indices = [x for x in walk(p.output) if isinstance(x, Index)]
    assert {x.expr for x in indices} == {IExpr.var(i), IExpr.var(j)}
    wheres = [x for x in walk(p.output) if isinstance(x, Pointwise) and x.op == "where"]
    assert len(wheres) == 1
    pred, fill, _ = wheres[0].args
    assert isinstance(fill, Const) and fill.value == float("-inf")
    assert isinstance(pred, Pointwise) and pred.op == "gt" and pred.vars == frozenset({i, j})
    # the offset Sk - Sq is a constant of the static trace
    consts = [x.value for x in walk(pred) if isinstance(x, Const)]
    assert 16 in consts
    assert "gt(" in p.describe() and "where(" in p.describe()


def test_gqa_repeat_kv_defines_the_kv_head_as_the_query_head_over_the_group():
    p = _ir(gqa, *_qkv(hk=2))
    b, h, i, e = _out_vars(p)
    assert h.extent == 4
    for k in (1, 2):  # K and V are read at head h // 2
        (load,) = _loads(p, k)
        assert load.index[0] == IExpr.var(b)
        assert load.index[1] == IExpr("floordiv", (IExpr.var(h), IExpr.const(2)))
    # the KV head variables are derived ones, resolved to h // 2
    derived = [v for v, ex in p.defs.items() if ex.op == "floordiv"]
    assert len(derived) == 2 and all(p.defs[v] == IExpr("floordiv", (IExpr.var(h), IExpr.const(2))) for v in derived)
    assert f"({h.name} // 2)" in p.describe()


def test_view_splitting_the_heads_keeps_both_digits_in_the_output_axis():
    p = _ir(grouped_view, *_qkv(hk=2))
    heads = p.out_axes[1]
    assert [e for _, e in heads] == [2, 2]  # [(ho, Hk), (hi, G)]: one output axis, two variables
    (ho, _), (hi, _) = heads
    (qload,) = _loads(p, 0)
    assert qload.index[1] == IExpr("add", (IExpr("mul", (IExpr.var(ho), IExpr.const(2))), IExpr.var(hi)))
    (kload,) = _loads(p, 1)
    assert kload.index[1] == IExpr.var(ho)  # K is not repeated: it indexes by the KV head only
    assert any(ex.op == "add" for ex in p.defs.values())
    assert isinstance(p.output, Reduce) and p.output.op == "sum"


def test_sinks_join_the_softmax_max_and_sum_and_slice_back_off():
    q, k, v = _qkv()
    p = _ir(sinks, q, k, v, torch.randn(4))
    b, h, i, e = _out_vars(p)
    assert [len(ax) for ax in p.out_axes] == [1, 1, 1, 1] and e.extent == 24
    (sink,) = _loads(p, 3)
    assert sink.index == (IExpr.var(h),)  # one logit per head
    # the max over the joined axis is max(max_j scores, sink); the sum adds exp(sink - max)
    maxima = [x for x in walk(p.output) if isinstance(x, Pointwise) and x.op == "maximum"]
    assert len(maxima) == 1 and sink in maxima[0].args
    assert isinstance(maxima[0].args[0], Reduce) and maxima[0].args[0].op == "max"
    adds = [x for x in walk(p.output) if isinstance(x, Pointwise) and x.op == "add"]
    assert len(adds) == 1 and isinstance(adds[0].args[0], Reduce)
    # the sink column is gone from the output: the root contracts over the keys only
    assert isinstance(p.output, Reduce) and p.output.var.extent == 53


def test_unsupported_names_the_node():
    def cumulative(q, k, v):
        return torch.softmax(q @ k.transpose(-2, -1), dim=-1).cumsum(-1) @ v

    with pytest.raises(Unsupported) as info:
        _ir(cumulative, *_qkv())
    assert info.value.node.startswith("cumsum") and "not handled" in info.value.reason

    def doubles(q, k, v):
        return torch.softmax(q.double() @ k.double().transpose(-2, -1), dim=-1).float() @ v

    with pytest.raises(Unsupported, match="float64"):
        _ir(doubles, *_qkv())
