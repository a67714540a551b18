"""The training-mode forward (the first kernel of the generated backward, issue 13): besides the
output, every softmax stream's per-row log-sum-exp, fp32 ``[grid..., rows]``.

Each program is built with ``driver.build(..., training=True)`` and run through
``kernel.forward_for_backward`` into poisoned buffers (every element must be written); the output is
checked against the float64 eager program and each LSE against ``torch.logsumexp`` of that
stream's scores, written out by hand here in float64 (masks, sinks and softcaps included)."""

from __future__ import annotations

import math

import pytest
import torch

from flashlight_hf.compiler import cache as diskcache
from flashlight_hf.compiler import capture
from flashlight_hf.compiler.codegen import generate
from flashlight_hf.compiler.driver import build
from flashlight_hf.compiler.ir import build_ir
from flashlight_hf.compiler.runtime.training import lse_of
from flashlight_hf.compiler.rewrite import plan
from flashlight_hf.testing import assert_close, poisoned_empty, rel_error, tolerance
from tests.test_generator import causal_kv_offset, differential, repeat_kv, sigmoid_attention, sinks, softcap, vanilla

B, H, D = 2, 4, 32


def masked(q, k, v, keep):
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    return torch.softmax(s.masked_fill(~keep, float("-inf")), dim=-1) @ v


def gqa(q, k, v):
    k, v = repeat_kv(k, 2), repeat_kv(v, 2)
    return torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1) @ v


def _scores(q, k):
    return q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5


def _causal_scores(q, k):
    sq, sk = q.shape[-2], k.shape[-2]
    i = torch.arange(sq)[:, None] + (sk - sq)
    j = torch.arange(sk)[None, :]
    return _scores(q, k).masked_fill(j > i, float("-inf"))


# name -> (program, inputs(sq, sk), float64 scores per softmax stream (as the LSE's logits))
CASES = {
    "vanilla": (vanilla, lambda sq, sk: _qkv(sq, sk), lambda q, k, v: [_scores(q, k)]),
    "causal_kv_offset": (causal_kv_offset, lambda sq, sk: _qkv(sq, sk), lambda q, k, v: [_causal_scores(q, k)]),
    "fully_masked_row": (masked, lambda sq, sk: (*_qkv(sq, sk), _keep(sq, sk)),
                         lambda q, k, v, keep: [_scores(q, k).masked_fill(~keep, float("-inf"))]),
    "gqa": (gqa, lambda sq, sk: (torch.randn(B, H, sq, D), torch.randn(B, H // 2, sk, D), torch.randn(B, H // 2, sk, D)),
            lambda q, k, v: [_scores(q, repeat_kv(k, 2))]),
    "softcap": (softcap, lambda sq, sk: _qkv(sq, sk), lambda q, k, v: [20.0 * torch.tanh(_scores(q, k) / 20.0)]),
    "differential": (differential, lambda sq, sk: (*_qkv(sq, sk, 2 * D), torch.rand(H)),
                     lambda q, k, v, lam: [q[..., :D] @ k[..., :D].mT * D ** -0.5,
                                           q[..., D:] @ k[..., D:].mT * D ** -0.5]),
    "sinks": (sinks, lambda sq, sk: (*_qkv(sq, sk), torch.randn(H)),
              lambda q, k, v, sink: [torch.cat([_scores(q, k), sink.reshape(1, -1, 1, 1).expand(
                  q.shape[0], -1, q.shape[-2], 1)], dim=-1)]),
    "sigmoid": (sigmoid_attention, lambda sq, sk: _qkv(sq, sk), lambda q, k, v: []),
}


def _qkv(sq: int, sk: int, d: int = D):
    return torch.randn(B, H, sq, d), torch.randn(B, H, sk, d), torch.randn(B, H, sk, d // 2 if d != D else d)


def _keep(sq: int, sk: int) -> torch.Tensor:
    keep = torch.rand(sq, sk) > 0.3
    keep[3] = False  # a fully masked row: its LSE is -inf, its output NaN as in eager
    keep[5, :] = False
    keep[5, sk - 1] = True  # one key left
    return keep


def _check_lse(lse: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert lse.dtype == torch.float32 and lse.is_contiguous(), what
    assert not torch.isnan(lse).any(), f"{what}: NaN (an element never written, or a bad normaliser)"
    inf = torch.isinf(ref)
    assert torch.equal(torch.isinf(lse), inf) and torch.equal(lse[inf], ref[inf].float()), what
    err = rel_error(lse[~inf], ref[~inf])
    assert err <= tolerance(torch.float32), f"{what}: relative error {err:.3e}"


# where kernels run: CUDA when present (compiled), else CPU tensors through the interpreter;
# references are computed on the CPU in float64
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _on_device(args: tuple) -> tuple:
    return tuple(a.to(DEVICE) for a in args)


def _run(name: str, sq: int, sk: int):
    fn, make, scores = CASES[name]
    args = _on_device(make(sq, sk))
    b = build(fn, args, {}, training=True)
    assert b.kernel is not None, b.fallback
    assert b.source.train is not None, b.source.train_error
    out, saved = b.kernel.forward_for_backward(list(args))  # the shapes, then again into poisoned buffers
    out_p = poisoned_empty(*out.shape, dtype=out.dtype, device=DEVICE)
    saved_p = [poisoned_empty(*t.shape, dtype=torch.float32, device=DEVICE) for t in saved]
    out2, saved2 = b.kernel.forward_for_backward(list(args), out=out_p, saved=saved_p)
    assert out2 is out_p and all(x is y for x, y in zip(saved2, saved_p))
    lse2 = lse_of(saved2, len(b.source.train.lse_accs))
    args64 = [(a.double() if a.is_floating_point() else a).cpu() for a in args]
    out2, lse2 = out2.cpu(), [t.cpu() for t in lse2]
    assert_close(out2, fn(*args64), torch.float32, what=f"{name} output")
    refs = [torch.logsumexp(s, dim=-1) for s in scores(*args64)]
    assert len(lse2) == len(refs) == len(b.source.train.lse_accs)
    for n, (got, ref) in enumerate(zip(lse2, refs)):
        assert math.prod(got.shape) == math.prod(ref.shape) and got.shape[-1] == sq
        _check_lse(got.reshape(ref.shape), ref, f"{name} lse{n}")
    return b, lse2


@pytest.mark.parametrize("sq,sk", [(37, 53), (3, 70)])
def test_vanilla_lse(sq: int, sk: int):
    b, lse = _run("vanilla", sq, sk)
    assert lse[0].shape == (B, H, sq)  # [grid..., rows]
    assert b.source.train.lse_accs == [0]  # the stream's max accumulator


@pytest.mark.parametrize("name", ["causal_kv_offset", "gqa", "softcap", "sinks"])
def test_single_stream_lse(name: str):
    _run(name, 37, 53)


def test_fully_masked_row_stores_minus_inf():
    _, lse = _run("fully_masked_row", 37, 53)
    assert torch.isneginf(lse[0][:, :, 3]).all() and torch.isfinite(lse[0][:, :, 5]).all()


def test_differential_has_two_streams():
    b, lse = _run("differential", 37, 53)
    assert len(lse) == 2 and len(set(b.source.train.lse_accs)) == 2


def test_sigmoid_attention_has_no_lse():
    b, lse = _run("sigmoid", 37, 53)
    assert lse == [] and b.source.train.lse_accs == []
    assert "lse0" not in b.source.train.source  # no LSE parameter, no store


def test_sink_is_part_of_the_normaliser():
    """A sink far above every score: the LSE is close to the sink, not to the keys' logsumexp."""
    fn, make, _ = CASES["sinks"]
    q, k, v, _ = _on_device(make(20, 30))
    sink = torch.full((H,), 30.0, device=DEVICE)
    b = build(fn, (q, k, v, sink), {}, training=True)
    _, (lse,) = b.kernel.forward_with_lse([q, k, v, sink])
    assert (lse - 30.0).abs().max() < 1e-3


def _plan(fn, args):
    return plan(build_ir(capture.trace_static(fn, args, {})))


def test_ordinary_source_unchanged_and_train_built_only_on_request():
    args = _qkv(37, 53)
    kp = _plan(causal_kv_offset, args)
    plain = generate(kp, interpret=True)
    trained = generate(kp, interpret=True, training=True)
    assert plain.train is None and plain.train_error is None
    assert trained.source == plain.source and trained.train is not None
    assert "def flashlight_fwd_train(" in trained.train.source and "lse0_ptr" not in plain.source


def test_build_key_includes_training():
    args = _qkv(37, 53)
    static = capture.trace_static(vanilla, args, {})
    keys = {t: diskcache.build_key(static, list(args), [], interpret=True, allow_tf32=False, training=t)
            for t in (False, True)}
    assert keys[False] != keys[True]
    assert keys[False] == diskcache.build_key(static, list(args), [], interpret=True, allow_tf32=False)


def test_forward_with_lse_needs_a_training_build():
    args = _on_device(_qkv(20, 20))
    b = build(vanilla, args, {})
    assert b.source.train is None
    with pytest.raises(RuntimeError, match="training"):
        b.kernel.forward_with_lse(list(args))
