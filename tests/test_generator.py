"""The generator on programs written the way users write them: each result against float64 eager,
fresh random inputs each run, and a launch hook proving the generated kernel (not the eager
fallback) produced it."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import flashlight_hf
from flashlight_hf.compiler.runtime import add_launch_hook
from flashlight_hf.testing import assert_close


def repeat_kv(x: torch.Tensor, n: int) -> torch.Tensor:
    b, hk, s, d = x.shape
    return x[:, :, None].expand(b, hk, n, s, d).reshape(b, hk * n, s, d)


def vanilla(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v


def causal_kv_offset(q, k, v):
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    i = torch.arange(q.shape[-2], device=q.device)[:, None] + (k.shape[-2] - q.shape[-2])
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    return torch.softmax(s.masked_fill(j > i, float("-inf")), dim=-1) @ v


def gqa_bias_upcast(q, k, v, bias):
    k, v = repeat_kv(k, 2), repeat_kv(v, 2)
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + bias
    p = torch.softmax(s.float(), dim=-1).type_as(q)
    return (p @ v).transpose(1, 2)


def softcap(q, k, v):
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    s = 20.0 * torch.tanh(s / 20.0)
    return torch.softmax(s, dim=-1) @ v


def alibi(q, k, v):
    h = q.shape[1]
    slopes = 2.0 ** (-8.0 * torch.arange(1, h + 1, device=q.device) / h)
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + slopes[:, None, None] * (j - i)
    return torch.softmax(s, dim=-1) @ v


def sliding_window(q, k, v):
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    keep = (j <= i) & (i - j < 24)
    s = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).masked_fill(~keep, torch.finfo(q.dtype).min)
    return torch.softmax(s, dim=-1) @ v


def sigmoid_attention(q, k, v):
    return torch.sigmoid(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 - 2.0) @ v


def spelled_out_softmax(q, k, v):
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    e = torch.exp(s - s.amax(dim=-1, keepdim=True))
    return (e / e.sum(dim=-1, keepdim=True)) @ v


def differential(q, k, v, lam):
    d = q.shape[-1] // 2
    c = d ** -0.5
    a1 = torch.softmax(q[..., :d] @ k[..., :d].mT * c, -1)
    a2 = torch.softmax(q[..., d:] @ k[..., d:].mT * c, -1)
    o = a1 @ v - lam[None, :, None, None] * (a2 @ v)
    return o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5)


def output_gate(q, k, v, g):
    return torch.sigmoid(g) * vanilla(q, k, v)


def _inputs(name: str, dtype: torch.dtype, device: str, sq: int, sk: int, d: int = 32):
    b, h = 2, 4
    q = torch.randn(b, h, sq, d, device=device, dtype=dtype)
    if name == "gqa_bias_upcast":
        k = torch.randn(b, h // 2, sk, d, device=device, dtype=dtype)
        v = torch.randn(b, h // 2, sk, 48, device=device, dtype=dtype)
        return q, k, v, torch.randn(b, 1, 1, sk, device=device, dtype=dtype)
    k = torch.randn(b, h, sk, d, device=device, dtype=dtype)
    v = torch.randn(b, h, sk, d, device=device, dtype=dtype)
    if name == "differential":
        return q, k, v, torch.rand(h, device=device, dtype=dtype)
    if name == "output_gate":
        return q, k, v, torch.randn(b, h, sq, d, device=device, dtype=dtype)
    return q, k, v


PROGRAMS = {f.__name__: f for f in (vanilla, causal_kv_offset, gqa_bias_upcast, softcap, alibi, sliding_window,
                                    sigmoid_attention, spelled_out_softmax, differential, output_gate)}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_fused_matches_float64(name: str, device: str):
    fn = PROGRAMS[name]
    launches: list[str] = []
    remove = add_launch_hook(launches.append)
    try:
        compiled = flashlight_hf.compile(fn)
        # two shapes, one kernel: sequence lengths are runtime arguments; not tile multiples
        for sq, sk in ((37, 53), (70, 70)):
            args = _inputs(name, torch.float32, device, sq, sk)
            with warnings.catch_warnings():
                warnings.filterwarnings("error", message="flashlight")  # a fallback warning fails the test
                out = compiled(*args)
            ref = fn(*[a.double() for a in args])
            assert_close(out, ref, torch.float32, tf32=False, what=name)
    finally:
        remove()
    assert len(launches) == 2, f"{name}: expected 2 generated-kernel launches, saw {launches}"
    assert flashlight_hf.explain(fn, *_inputs(name, torch.float32, device, 20, 20)).num_kernels == 1


def test_unfusable_program_falls_back_with_one_warning(device: str):
    def returns_weights(q, k, v):  # the N×N weights are an output: nothing to fuse
        return torch.softmax(q @ k.transpose(-2, -1), dim=-1)

    args = _inputs("vanilla", torch.float32, device, 8, 8)
    compiled = flashlight_hf.compile(returns_weights)
    with pytest.warns(UserWarning, match="unfused"):
        out = compiled(*args)
    assert_close(out, returns_weights(*[a.double() for a in args]), torch.float32)
    e = flashlight_hf.explain(returns_weights, *args)
    assert e.num_kernels == 0 and e.fallbacks


def sinks(q, k, v, sink):
    """GPT-OSS style: a per-head logit column joins the softmax and is sliced off after."""
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    col = sink.reshape(1, -1, 1, 1).expand(s.shape[0], -1, s.shape[2], 1)
    p = torch.softmax(torch.cat([s, col], dim=-1).float(), dim=-1)[..., :-1]
    return p.type_as(q) @ v


def document_mask(q, k, v, doc):
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    same = doc[:, None] == doc[None, :]
    return torch.softmax(s.masked_fill(~same, float("-inf")), dim=-1) @ v


def key_padding_from_k(q, k, v):
    """Data-dependent: keys that are all zero are padding (FlexAttention cannot express this)."""
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    pad = (k.abs().sum(-1) == 0)[:, :, None, :]
    return torch.softmax(s.masked_fill(pad, float("-inf")), dim=-1) @ v


def key_gate(q, k, v, w):
    """Data-dependent per-key bias computed from K inside the program."""
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + torch.sigmoid(k @ w)[:, :, None, :]
    return torch.softmax(s, dim=-1) @ v


MORE = {f.__name__: f for f in (sinks, document_mask, key_padding_from_k, key_gate)}


def _more_inputs(name: str, device: str, sq: int, sk: int):
    q, k, v = _inputs("vanilla", torch.float32, device, sq, sk)
    if name == "sinks":
        return q, k, v, torch.randn(q.shape[1], device=device)
    if name == "document_mask":
        sk = sq
        k, v = k[:, :, :sq].contiguous(), v[:, :, :sq].contiguous()
        doc = torch.sort(torch.randint(0, 4, (sq,), device=device)).values
        return q, k, v, doc
    if name == "key_padding_from_k":
        k = k.clone()
        k[:, :, -5:] = 0.0
        return q, k, v
    return q, k, v, torch.randn(q.shape[-1], device=device)


@pytest.mark.parametrize("name", sorted(MORE))
def test_more_programs_fuse(name: str, device: str):
    fn = MORE[name]
    launches: list[str] = []
    remove = add_launch_hook(launches.append)
    try:
        compiled = flashlight_hf.compile(fn)
        for sq, sk in ((37, 53), (70, 70)):
            args = _more_inputs(name, device, sq, sk)
            with warnings.catch_warnings():
                warnings.filterwarnings("error", message="flashlight")
                out = compiled(*args)
            ref = fn(*[a.double() if a.is_floating_point() else a for a in args])
            assert_close(out, ref, torch.float32, what=name)
    finally:
        remove()
    assert len(launches) == 2
