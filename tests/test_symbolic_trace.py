"""The second trace's fast path (one ``make_fx`` pass, :mod:`flashlight_hf.compiler.symbolic_trace`).

It touches PyTorch's private tracing API: the first test fails loudly when those names move
(capture then takes torch.export's path, slower). The others check that what it gives is what
torch.export gives: the same symbols' ranges, guards it cannot keep sending it to export, and
a size bound from the program keeping a build off shapes outside it.
"""

from __future__ import annotations

import pytest
import torch

import flashlight_hf
from flashlight_hf import settings
from flashlight_hf.compiler import capture, symbolic_trace
from flashlight_hf.testing import assert_close

DYN = [{2: "S_i"}, {2: "S_j"}, {2: "S_j"}]


def causal(q, k, v):
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    return torch.softmax((q @ k.transpose(-2, -1) * 0.125).masked_fill(j > i, float("-inf")), -1) @ v


def long_only(q, k, v):  # a Python branch on a size: a bound on one symbol
    s = q @ k.transpose(-2, -1)
    if q.shape[-2] > 40:
        s = s * 0.5
    return torch.softmax(s, -1) @ v


def even_only(q, k, v):  # a divisibility test: a guard the fast path does not keep
    s = q @ k.transpose(-2, -1)
    if q.shape[-2] % 2 == 0:
        s = s * 0.5
    return torch.softmax(s, -1) @ v


def test_the_private_api_it_uses_is_there():
    names = symbolic_trace.private_api()
    assert set(names) == {"ConstantSource", "FakeTensorMode", "DimDynamic", "ShapeEnv", "StatelessSymbolicContext"}
    assert hasattr(names["DimDynamic"], "DYNAMIC") and hasattr(names["DimDynamic"], "STATIC")


def _qkv(s: int = 50):
    return [torch.randn(1, 2, s, 16) for _ in range(3)]


def test_fast_path_agrees_with_export():
    q, k, v = _qkv()
    f = capture.tensor_function(causal, [None, None, None], capture.split_args((q, k, v), {})[2])
    gm, ranges = symbolic_trace.trace(f, [q, k, v], DYN)
    with settings.override(fast_trace=False):
        exported = capture.trace_symbolic(causal, (q, k, v), {}, DYN)
    assert sorted(ranges.values()) == sorted(exported.size_ranges.values()) == [(2, None), (2, None)]
    for sq, sk in ((7, 31), (64, 64), (90, 20)):  # the graph serves other lengths
        a, b, c = torch.randn(1, 2, sq, 16), torch.randn(1, 2, sk, 16), torch.randn(1, 2, sk, 16)
        torch.testing.assert_close(gm(a, b, c), causal(a, b, c))


def test_a_bound_on_one_size_narrows_its_range():
    q, k, v = _qkv()
    f = capture.tensor_function(long_only, [None, None, None], capture.split_args((q, k, v), {})[2])
    _, ranges = symbolic_trace.trace(f, [q, k, v], DYN)
    assert (41, None) in ranges.values()


def test_a_guard_it_cannot_keep_goes_to_export():
    q, k, v = _qkv()
    f = capture.tensor_function(even_only, [None, None, None], capture.split_args((q, k, v), {})[2])
    with pytest.raises(symbolic_trace.FastTraceUnavailable):
        symbolic_trace.trace(f, [q, k, v], DYN)


@pytest.mark.parametrize("fn", [long_only, even_only])
def test_sizes_outside_what_a_trace_holds_for_build_again(fn, device: str):
    compiled = flashlight_hf.compile(fn)
    for s in (50, 30, 51, 40):
        q, k, v = (torch.randn(1, 2, s, 16, device=device) for _ in range(3))
        assert_close(compiled(q, k, v), fn(*[t.double() for t in (q, k, v)]), torch.float32, what=f"S={s}")


def _windowed(window: int):
    def windowed(q, k, v):  # the branch depends on a closure value the trace does not record
        s = q @ k.transpose(-2, -1)
        if q.shape[-2] > window:
            s = s * 0.5
        return torch.softmax(s, -1) @ v
    return windowed


def hard_coded(q, k, v):  # the same trace at 50 rows as `causal`, another program at 51
    i = torch.arange(50, device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    return torch.softmax((q @ k.transpose(-2, -1) * 0.125).masked_fill(j > i, float("-inf")), -1) @ v


def test_programs_with_one_trace_at_one_size_do_not_share_a_disk_build(device: str):
    """The disk cache keys on the trace at the example's shapes, which two functions can share
    while differing elsewhere: their code (and the values it reads) keep them apart."""
    first, second = _windowed(30), _windowed(45)  # at 40 rows both branches scale; at 35 they differ
    for fn in (first, second):
        compiled = flashlight_hf.compile(fn)
        for s in (40, 35):
            q, k, v = (torch.randn(1, 2, s, 16, device=device) for _ in range(3))
            assert_close(compiled(q, k, v), fn(*[t.double() for t in (q, k, v)]), torch.float32, what=f"S={s}")
    q, k, v = (torch.randn(1, 2, 50, 16, device=device) for _ in range(3))
    flashlight_hf.compile(causal)(q, k, v)
    compiled = flashlight_hf.compile(hard_coded)
    assert_close(compiled(q, k, v), hard_coded(*[t.double() for t in (q, k, v)]), torch.float32, what="50 rows")
    q, k, v = (torch.randn(1, 2, 51, 16, device=device) for _ in range(3))
    with pytest.raises(RuntimeError):  # eager's own error: 50 rows of mask against 51 of scores
        compiled(q, k, v)
