"""Fallback warnings end in what the user can change (issue 14, item 5)."""

from __future__ import annotations

import warnings

import pytest
import torch

import flashlight_hf
from flashlight_hf.compiler.advice import advice, with_advice


def sorted_keys(q, k, v):  # a statistic that needs every key first: cannot stream
    s = q @ k.transpose(-2, -1)
    med = s.median(dim=-1, keepdim=True).values
    return torch.softmax(s - med, dim=-1) @ v


def two_outputs(q, k, v):
    p = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
    return p @ v, p.sum(-1)


def item_branch(q, k, v):
    s = q @ k.transpose(-2, -1)
    if s.max().item() > 0:  # data-dependent Python control flow
        s = s * 0.5
    return torch.softmax(s, dim=-1) @ v


@pytest.mark.parametrize("fn, expect", [
    (sorted_keys, "compute it outside the compiled function"),
    (two_outputs, "return one tensor"),
    (item_branch, "no data-dependent Python control flow"),
])
def test_fallback_warning_says_what_to_change(fn, expect, device: str):
    q, k, v = (torch.randn(1, 2, 20, 16, device=device) for _ in range(3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = flashlight_hf.compile(fn)(q, k, v)
    msgs = [str(w.message) for w in caught if "flashlight: running" in str(w.message)]
    assert len(msgs) == 1 and "what to change:" in msgs[0] and expect in msgs[0], msgs
    ref = fn(q, k, v)  # the fallback is the program as written
    for a, b in zip(out if isinstance(out, tuple) else (out,), ref if isinstance(ref, tuple) else (ref,)):
        torch.testing.assert_close(a, b)
    e = flashlight_hf.explain(fn, q, k, v)
    assert e.num_kernels == 0 and "what to change:" in e.fallbacks[0][1]


def test_every_reason_gets_advice_and_only_once():
    assert advice("x", "something no rule knows").endswith("shows the IR and where the node sits")
    once = with_advice("capture", "could not trace")
    assert once.count("what to change:") == 1 and with_advice("capture", once) == once
