"""Stage 1 on its own: what ``capture.trace_static`` / ``trace_symbolic`` hand the IR stage.

Each test traces a small program and checks the graph (its ATen ops), the bindings (which
arguments feed placeholders, which values are baked in or lifted as constants) and, for the
symbolic trace, which axes carry size symbols and the ranges those symbols hold for.
"""

from __future__ import annotations

import math

import pytest
import sympy
import torch

from flashlight_hf.compiler import capture


def vanilla(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v


def scaled(q, k, v, scale, causal):
    s = q @ k.transpose(-2, -1) * scale
    if causal:
        i = torch.arange(q.shape[-2])[:, None]
        j = torch.arange(k.shape[-2])[None, :]
        s = s.masked_fill(j > i, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def _qkv(sq: int = 37, sk: int = 53, d: int = 32):
    return torch.randn(2, 4, sq, d), torch.randn(2, 4, sk, d), torch.randn(2, 4, sk, d)


def _targets(c: capture.Captured) -> list[str]:
    return [str(n.target) for n in c.graph_module.graph.nodes if n.op == "call_function"]


def _placeholders(c: capture.Captured) -> list[torch.fx.Node]:
    return [n for n in c.graph_module.graph.nodes if n.op == "placeholder"]


def test_static_trace_is_aten_with_concrete_shapes():
    q, k, v = _qkv()
    c = capture.trace_static(vanilla, (q, k, v), {})
    assert not c.symbolic and c.size_ranges == {}
    assert c.bindings == [0, 1, 2]
    ops = _targets(c)
    assert ops.count("aten.bmm.default") == 2 and "aten._softmax.default" in ops
    assert all(op.startswith("aten.") for op in ops)
    shapes = [tuple(n.meta["val"].shape) for n in _placeholders(c)]
    assert shapes == [tuple(q.shape), tuple(k.shape), tuple(v.shape)]
    out = next(n for n in c.graph_module.graph.nodes if n.op == "output").args[0]
    assert tuple(out.meta["val"].shape) == (2, 4, 37, 32)


def test_non_tensor_arguments_are_baked_into_the_graph():
    q, k, v = _qkv()
    plain = capture.trace_static(scaled, (q, k, v, 0.25, False), {})
    causal = capture.trace_static(scaled, (q, k, v), {"scale": 0.5, "causal": True})
    # the float and the flag are constants of the trace, not placeholders
    assert len(_placeholders(plain)) == len(_placeholders(causal)) == 3
    assert plain.bindings == causal.bindings == [0, 1, 2]
    mul = next(n for n in causal.graph_module.graph.nodes if str(n.target) == "aten.mul.Tensor")
    assert 0.5 in mul.args
    assert "aten.arange.default" not in _targets(plain)
    assert _targets(causal).count("aten.arange.default") == 2
    assert any("masked_fill" in op for op in _targets(causal))


def test_split_args_separates_tensor_leaves_from_constants():
    q, k, v = _qkv(5, 7, 8)
    tensors, constants, spec = capture.split_args((q, (k, 3)), {"v": v, "flag": True})
    assert [t is x for t, x in zip(tensors, (q, k, v))] == [True, True, True]
    assert constants == [None, None, 3, None, True]  # a tensor leaf is None here, in leaf order
    f = capture.tensor_function(lambda a, b, v, flag: (a, b[1], flag), constants, spec)
    assert f(q, k, v) == (q, 3, True)


def test_symbolic_trace_marks_the_named_axes_and_shares_names():
    q, k, v = _qkv()
    axes = [{0: "B", 2: "Sq"}, {0: "B", 2: "Sk"}, {0: "B", 2: "Sk"}]
    c = capture.trace_symbolic(vanilla, (q, k, v), {}, axes)
    assert c.symbolic and c.bindings == [0, 1, 2]
    shapes = [n.meta["val"].shape for n in _placeholders(c)]
    exprs = [[s.node.expr if isinstance(s, torch.SymInt) else int(s) for s in sh] for sh in shapes]
    b, sq, sk = exprs[0][0], exprs[0][2], exprs[1][2]
    for e in (b, sq, sk):
        assert isinstance(e, sympy.Symbol)
    assert len({b, sq, sk}) == 3
    assert exprs[0][1] == 4 and exprs[0][3] == 32  # heads and head dims stay static
    assert exprs[1] == [b, 4, sk, 32] and exprs[2] == [b, 4, sk, 32]
    # every symbol holds from 2 (sizes 0 and 1 specialise) with no upper bound
    assert set(c.size_ranges) == {b, sq, sk}
    assert all(rng == (2, None) for rng in c.size_ranges.values())


def test_symbolic_trace_keeps_size_one_axes_static():
    q, k, v = _qkv(sq=1)  # a one-query decode step
    c = capture.trace_symbolic(vanilla, (q, k, v), {}, [{2: "Sq"}, {2: "Sk"}, {2: "Sk"}])
    q_shape = _placeholders(c)[0].meta["val"].shape
    assert int(q_shape[2]) == 1 and not isinstance(q_shape[2], torch.SymInt)
    assert isinstance(_placeholders(c)[1].meta["val"].shape[2], torch.SymInt)
    assert len(c.size_ranges) == 1


def test_symbolic_trace_lifts_closed_over_tensors_as_bindings():
    bias = torch.randn(53)

    def with_bias(q, k, v):
        return torch.softmax(q @ k.transpose(-2, -1) + bias, dim=-1) @ v

    q, k, v = _qkv()
    c = capture.trace_symbolic(with_bias, (q, k, v), {}, [{}, {}, {}])
    tensors = [b for b in c.bindings if isinstance(b, torch.Tensor)]
    assert [b for b in c.bindings if isinstance(b, int)] == [0, 1, 2]
    assert len(tensors) == 1 and torch.equal(tensors[0], bias)
    assert len(_placeholders(c)) == 4 and c.size_ranges == {}


def test_untraceable_programs_raise_capture_error():
    def data_dependent(q, k, v):
        if (q @ k.transpose(-2, -1)).sum() > 0:  # control flow on a value: no single graph
            return v
        return -v

    with pytest.raises(capture.CaptureError, match="make_fx"):
        capture.trace_static(data_dependent, _qkv(), {})
