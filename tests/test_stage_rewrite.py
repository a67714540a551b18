"""Stage 3 on its own: ``plan()`` on IR programs, checked on the KernelPlan it returns.

Causal and sigmoid attention are IR built by hand here (no capture, no labeller), so the test
fixes exactly what the rewrite stage is given; differential attention and sinks, whose IR is
long, come from the IR stage. Checked: the roles (grid, rows, key loop, tiles), the key bounds
and the masks they make redundant in interior tiles, the accumulators (running maxima, the sums
tied to them, their starting values) and the epilogue that combines them after the loop.
"""

from __future__ import annotations

import pytest
import sympy
import torch

from flashlight_hf.compiler import capture
from flashlight_hf.compiler.ir import (Acc, Const, IExpr, Index, Load, Node, Pointwise, Program, Reduce, RunningMax,
                                       Unsupported, Var, build_ir, strip_casts, walk)
from flashlight_hf.compiler.rewrite import PASSES, KernelPlan, plan
from tests.test_stage_ir import sinks

F32 = torch.float32
SQ, SK = sympy.Symbol("Sq", positive=True, integer=True), sympy.Symbol("Sk", positive=True, integer=True)


def _pw(op: str, *args: Node, dtype: torch.dtype = F32) -> Pointwise:
    return Pointwise(dtype, op, args)


class Attn:
    """Hand-built IR of ``probs(q @ kᵀ · c) @ v`` over [b, h, i, e] with key j and head dim d."""

    def __init__(self, sq=SQ, sk=SK):
        self.b, self.h, self.i = Var("b", 2), Var("h", 4), Var("i", sq)
        self.j, self.d, self.e = Var("j", sk), Var("d", 32), Var("e", 24)
        b, h, i, j, d, e = self.b, self.h, self.i, self.j, self.d, self.e
        q = Load(F32, 0, tuple(IExpr.var(x) for x in (b, h, i, d)))
        k = Load(F32, 1, tuple(IExpr.var(x) for x in (b, h, j, d)))
        self.v = Load(F32, 2, tuple(IExpr.var(x) for x in (b, h, j, e)))
        self.scores = _pw("mul", Reduce(F32, "sum", d, _pw("mul", q, k)), Const(F32, 32 ** -0.5))
        self.shapes = [(2, 4, sq, 32), (2, 4, sk, 32), (2, 4, sk, 24)]

    def softmax(self, s: Node) -> Node:
        m = Reduce(F32, "max", self.j, s)
        ex = _pw("exp", _pw("sub", s, m))
        return _pw("div", ex, Reduce(F32, "sum", self.j, ex))

    def program(self, probs: Node) -> Program:
        b, h, i, j, d, e = self.b, self.h, self.i, self.j, self.d, self.e
        out = Reduce(F32, "sum", j, _pw("mul", probs, self.v))
        return Program(output=out, out_axes=[[(b, 2)], [(h, 4)], [(i, i.extent)], [(e, 24)]], out_dtype=F32,
                       input_shapes=self.shapes, input_dtypes=[F32] * 3, bindings=[0, 1, 2],
                       input_axis_vars=[[[b], [h], [i], [d]], [[b], [h], [j], [d]], [[b], [h], [j], [e]]], defs={})


def _check_roles(kp: KernelPlan, a: Attn) -> None:
    assert kp.grid_vars == [a.b, a.h] and kp.row_var is a.i and kp.loop_var is a.j
    assert kp.tile_vars == [a.d, a.e]


def _softmax_epilogue(kp: KernelPlan) -> tuple[Acc, Acc, Acc]:
    """``out = num / den``: two key sums tied to one running max; returns (max, num, den)."""
    out = kp.out_node
    assert isinstance(out, Pointwise) and out.op == "div"
    num, den = out.args
    assert isinstance(num, Acc) and isinstance(den, Acc) and num.kind == den.kind == "sum"
    m = num.tied
    assert m is not None and den.tied is m and m.kind == "max"
    assert kp.accs == [m, den, num]  # the denominator is met (and built) while rewriting the numerator
    return m, num, den


def test_plan_runs_the_roles_then_every_pass_in_order():
    names = [p.__name__ for p in PASSES]
    assert names == ["masks_as_selects_pass", "online_softmax_pass", "key_bounds_pass", "tile_skip_pass"]


def test_vanilla_softmax_becomes_one_running_max_and_two_tied_sums():
    a = Attn()
    kp = plan(a.program(a.softmax(a.scores)))
    _check_roles(kp, a)
    m, num, den = _softmax_epilogue(kp)
    assert m.body is a.scores and m.var is a.j and m.init is None
    # the sums see exp(s - m_running), the numerator times V; the denominator moved after the loop
    run = [x for x in walk(num.body) if isinstance(x, RunningMax)]
    assert len(run) == 1 and run[0].acc is m
    assert isinstance(num.body, Pointwise) and num.body.op == "mul" and num.body.args[1] is a.v
    assert strip_casts(den.body).op == "exp"
    assert not any(isinstance(x, Reduce) and x.var is a.j for x in walk(kp.out_node))
    assert kp.key_bounds == [] and kp.bounded_masks == [] and kp.tile_skip == []


def test_causal_bound_depends_on_the_row_and_drops_the_mask_in_interior_tiles():
    a = Attn()
    offset = SK - SQ  # bottom-right aligned: row i sees keys j <= i + (Sk - Sq)
    masked = _pw("gt", Index(torch.int64, IExpr.var(a.j)),
                 _pw("add", Index(torch.int64, IExpr.var(a.i)), Const(torch.int64, offset), dtype=torch.int64),
                 dtype=torch.bool)
    where = _pw("where", masked, Const(F32, float("-inf")), a.scores)
    kp = plan(a.program(a.softmax(where)))
    _check_roles(kp, a)
    assert kp.key_bounds == [("hi", ((1, offset),))]  # j <= 1·i + (Sk - Sq)
    # the mask is exactly the bound: interior tiles use the unmasked scores
    assert len(kp.bounded_masks) == 1
    w, kept = kp.bounded_masks[0]
    m, _, _ = _softmax_epilogue(kp)
    assert w is m.body and kept is a.scores
    assert kp.tile_skip == []  # nothing left for a run-time tile test


def test_additive_mask_is_read_as_a_select_and_bounded():
    a = Attn(sq=37, sk=53)
    keep = _pw("le", Index(torch.int64, IExpr.var(a.j)), Index(torch.int64, IExpr.var(a.i)), dtype=torch.bool)
    bias = _pw("where", keep, Const(F32, 0.0), Const(F32, float("-inf")))
    kp = plan(a.program(a.softmax(_pw("add", a.scores, bias))))
    assert kp.key_bounds == [("hi", ((1, 0),))]
    m, _, _ = _softmax_epilogue(kp)
    assert m.body.op == "where" and m.body.args[1] is a.scores
    assert kp.bounded_masks == [(m.body, a.scores)]


def test_data_dependent_mask_becomes_a_tile_skip_predicate():
    a = Attn()
    doc_i = Load(torch.int64, 3, (IExpr.var(a.i),))
    doc_j = Load(torch.int64, 3, (IExpr.var(a.j),))
    other = _pw("ne", doc_i, doc_j, dtype=torch.bool)
    kp = plan(a.program(a.softmax(_pw("where", other, Const(F32, float("-inf")), a.scores))))
    assert kp.key_bounds == [] and kp.bounded_masks == []
    assert kp.tile_skip == [[(other, False)]]  # a tile where `other` is true everywhere is skipped


def test_sigmoid_attention_has_no_running_max():
    a = Attn()
    probs = _pw("sigmoid", _pw("sub", a.scores, Const(F32, 2.0)))
    kp = plan(a.program(probs))
    _check_roles(kp, a)
    (acc,) = kp.accs
    assert acc.kind == "sum" and acc.tied is None and kp.out_node is acc
    assert not any(isinstance(x, RunningMax) for x in walk(acc.body))
    assert acc.body.args[0] is probs and acc.body.args[1] is a.v
    assert kp.key_bounds == [] and kp.tile_skip == []


def test_a_program_without_a_key_contraction_is_unsupported():
    a = Attn()
    weights = a.program(a.softmax(a.scores))
    weights.output = a.softmax(a.scores)
    weights.out_axes = [[(a.b, 2)], [(a.h, 4)], [(a.i, SQ)], [(a.j, SK)]]
    with pytest.raises(Unsupported, match="no key axis"):
        plan(weights)


# -- programs whose IR comes from the IR stage ------------------------------------------------
def differential(q, k, v, lam):
    d = q.shape[-1] // 2
    a1 = torch.softmax(q[..., :d] @ k[..., :d].mT * d ** -0.5, -1)
    a2 = torch.softmax(q[..., d:] @ k[..., d:].mT * d ** -0.5, -1)
    return a1 @ v - lam[None, :, None, None] * (a2 @ v)


def _plan(fn, *args) -> KernelPlan:
    return plan(build_ir(capture.trace_static(fn, args, {})))


def _qkv():
    return torch.randn(2, 4, 37, 32), torch.randn(2, 4, 53, 32), torch.randn(2, 4, 53, 24)


def test_differential_attention_is_two_softmax_streams_over_one_key_loop():
    q, k, v = _qkv()
    kp = _plan(differential, q, k, v, torch.rand(4))
    assert kp.loop_var.extent == 53 and kp.row_var.extent == 37
    assert [v.extent for v in kp.tile_vars] == [16, 16, 24]  # each stream's half head dim, the value dim
    maxes = [a for a in kp.accs if a.kind == "max"]
    sums = [a for a in kp.accs if a.kind == "sum"]
    assert len(maxes) == 2 and len(sums) == 4
    assert all(a.var is kp.loop_var for a in kp.accs)  # the two streams' keys were renamed onto one loop
    assert sorted(kp.accs.index(s.tied) for s in sums) == [0, 0, 3, 3]
    # epilogue: stream1 - λ·stream2, each stream num/den of its own tied sums
    out = kp.out_node
    assert isinstance(out, Pointwise) and out.op == "sub"
    first, second = out.args
    assert first.op == "div" and {a.tied for a in first.args} == {maxes[0]}
    lam, stream2 = second.args
    assert isinstance(lam, Load) and lam.input == 3
    assert stream2.op == "div" and {a.tied for a in stream2.args} == {maxes[1]}
    assert kp.key_bounds == [] and kp.tile_skip == []


def test_sinks_start_the_running_max_from_the_sink_logit():
    q, k, v = _qkv()
    kp = _plan(sinks, q, k, v, torch.randn(4))
    m, den, num = kp.accs
    assert m.kind == "max" and num.tied is m and den.tied is m
    init = strip_casts(m.init)
    assert isinstance(init, Load) and init.input == 3 and init.index == (IExpr.var(kp.grid_vars[1]),)
    # epilogue: num / (den + exp(sink - M)), M the final running max
    out = kp.out_node
    assert out.op == "div" and out.args[0] is num
    total = out.args[1]
    assert total.op == "add" and total.args[0] is den
    tail = total.args[1]
    assert tail.op == "exp" and tail.args[0].op == "sub" and tail.args[0].args == (m.init, m)

