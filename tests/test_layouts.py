"""Any layout fuses (issue 14, item 3): the same attention written over different tensor layouts
— [B, S, H, D] by einsum or transpose, heads as a leading axis, two batch axes, no batch or head
axis at all, packed heads, bmm — and decode written with no query axis ([H, D] or [D] queries
through einsum, ``k @ q[..., None]``, ``mv``, FlashInfer's single-decode reference with GQA).

Each program: one forward kernel and two backward kernels with no fallback (``explain``), its
output and every input's gradient against float64 eager, fresh random inputs each run, lengths
that are not tile multiples. A program with no query axis runs with a row axis of extent 1 the
rewrite adds (``rewrite/row_axis.py``); its output is written with its own shape and strides.
"""

from __future__ import annotations

import random
import warnings

import pytest
import torch

import flashlight_hf
from flashlight_hf import settings
from flashlight_hf.compiler.abi import KERNEL_BWD_DKDV, KERNEL_BWD_DQ
from flashlight_hf.compiler.runtime import add_launch_hook
from flashlight_hf.testing import assert_close, assert_gradients_close, gradients, poison_

B, H, HKV, D = 2, 4, 2, 32


def _scale(q: torch.Tensor) -> float:
    return q.shape[-1] ** -0.5


# -- layouts with a query axis --------------------------------------------------------------------
def bshd_einsum(q, k, v):  # [B, S, H, D]
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * _scale(q)
    return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, dim=-1), v)


def bshd_transpose(q, k, v):  # [B, S, H, D] through [B, H, S, D] and back
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    return (torch.softmax(q @ k.transpose(-2, -1) * _scale(q), dim=-1) @ v).transpose(1, 2)


def plain(q, k, v):  # heads leading [H, B, S, D], two batch axes [2, 3, H, S, D], or none [S, D]
    return torch.softmax(q @ k.transpose(-2, -1) * _scale(q), dim=-1) @ v


def bmm_3d(q, k, v):  # [B·H, S, D]
    return torch.bmm(torch.softmax(torch.bmm(q, k.transpose(1, 2)) * _scale(q), dim=-1), v)


def packed_heads(q, k, v):  # [B, S, H·D]: heads split by a view, merged back by a reshape
    b, s, _ = q.shape
    q, k, v = (t.view(b, t.shape[1], H, -1).transpose(1, 2) for t in (q, k, v))
    o = torch.softmax(q @ k.transpose(-2, -1) * _scale(q), dim=-1) @ v
    return o.transpose(1, 2).reshape(b, s, -1)


def einsum_bhqd(q, k, v):  # [B, H, S, D], both contractions by einsum
    p = torch.softmax(torch.einsum("bhqd,bhkd->bhqk", q, k) * _scale(q), dim=-1)
    return torch.einsum("bhqk,bhkd->bhqd", p, v)


def einsum_ellipsis(q, k, v):  # [B, H, S, D]: batch axes as an ellipsis, the output implicit
    p = torch.softmax(torch.einsum("...qd,...kd->...qk", q, k) * _scale(q), dim=-1)
    return torch.einsum("...qk,...kd", p, v)


# -- decode with no query axis --------------------------------------------------------------------
def decode_einsum(q, k, v):  # q [H, D], k, v [H, S, D]
    p = torch.softmax(torch.einsum("hd,hsd->hs", q, k) * _scale(q), dim=-1)
    return p.unsqueeze(1).matmul(v).squeeze(1)


def decode_matvec(q, k, v):  # q [H, D]: k @ q[..., None], then (p[:, None, :] @ v)[:, 0]
    p = torch.softmax((k @ q[..., None]).squeeze(-1) * _scale(q), dim=-1)
    return (p[:, None, :] @ v)[:, 0]


def decode_vector(q, k, v):  # q [D], k, v [S, D]
    return torch.softmax(k @ q * _scale(q), dim=0) @ v


def decode_mv(q, k, v):  # q [D], k, v [S, D], both contractions by torch.mv
    return torch.mv(v.t(), torch.softmax(torch.mv(k, q) * _scale(q), dim=0))


def decode_bhd(q, k, v):  # q [B, H, D], k, v [B, H, S, D]
    p = torch.softmax(torch.einsum("bhd,bhsd->bhs", q, k) * _scale(q), dim=-1)
    return torch.einsum("bhs,bhsd->bhd", p, v)


def decode_gqa_group_rows(q, k, v):  # q [B, H, D] viewed [B, Hkv, G, D]; k, v [B, Hkv, S, D]
    b, h, d = q.shape
    qg = q.view(b, k.shape[1], h // k.shape[1], d)
    p = torch.softmax(torch.einsum("bhgd,bhsd->bhgs", qg, k) * _scale(q), dim=-1)
    return torch.einsum("bhgs,bhsd->bhgd", p, v).reshape(b, h, -1)


def decode_gqa_repeat(q, k, v):  # q [B, H, D]; k, v [B, Hkv, S, D] repeated to H heads
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    return decode_bhd(q, k, v)


def flashinfer_single_decode(q, k, v):
    """FlashInfer's single-request decode reference, NHD layout: q [H, D], k, v [S, Hkv, D]."""
    g = q.shape[0] // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    s = torch.einsum("hd,nhd->hn", q.float(), k.float()) * _scale(q)
    return torch.einsum("hn,nhd->hd", torch.softmax(s, dim=-1), v.float())


def flashinfer_single_decode_hnd(q, k, v):
    """The same in the HND layout: k, v [Hkv, S, D], the query heads viewed [Hkv, G, D]."""
    hkv, _, d = k.shape
    qg = q.view(hkv, -1, d)
    s = torch.einsum("hgd,hnd->hgn", qg, k) * _scale(q)
    return torch.einsum("hgn,hnd->hgd", torch.softmax(s, dim=-1), v).reshape(q.shape[0], -1)


def decode_window_alibi(q, k, v):  # q [B, H, D]: the last 24 keys, a penalty on key distance
    n = k.shape[-2]
    j = torch.arange(n, device=q.device)
    s = torch.einsum("bhd,bhsd->bhs", q, k) * _scale(q) - 0.1 * (n - 1 - j)
    s = s.masked_fill(j < n - 24, float("-inf"))
    return torch.einsum("bhs,bhsd->bhd", torch.softmax(s, dim=-1), v)


def decode_sink_gate(q, k, v, sink, gate):  # q [H, D]: a sink logit per head, a gated RMSNorm epilogue
    s = torch.einsum("hd,hsd->hs", q, k) * _scale(q)
    p = torch.softmax(torch.cat([s, sink[:, None]], dim=-1), dim=-1)[..., :-1]
    o = torch.einsum("hs,hsd->hd", p, v)
    return torch.sigmoid(gate) * o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5)


def _shapes(name: str, sq: int, sk: int) -> list[tuple[int, ...]]:
    """The input shapes of a program for these lengths (decode programs have no query length)."""
    four = [(B, H, sq, D), (B, H, sk, D), (B, H, sk, D)]
    return {
        "bshd_einsum": [(B, sq, H, D), (B, sk, H, D), (B, sk, H, D)],
        "bshd_transpose": [(B, sq, H, D), (B, sk, H, D), (B, sk, H, D)],
        "heads_leading": [(H, B, sq, D), (H, B, sk, D), (H, B, sk, D)],
        "two_batch_axes": [(2, 3, H, sq, D), (2, 3, H, sk, D), (2, 3, H, sk, D)],
        "no_batch_no_heads": [(sq, D), (sk, D), (sk, D)],
        "bmm_3d": [(B * H, sq, D), (B * H, sk, D), (B * H, sk, D)],
        "packed_heads": [(B, sq, H * D), (B, sk, H * D), (B, sk, H * D)],
        "einsum_bhqd": four,
        "einsum_ellipsis": four,
        "decode_einsum": [(H, D), (H, sk, D), (H, sk, D)],
        "decode_matvec": [(H, D), (H, sk, D), (H, sk, D)],
        "decode_vector": [(D,), (sk, D), (sk, D)],
        "decode_mv": [(D,), (sk, D), (sk, D)],
        "decode_bhd": [(B, H, D), (B, H, sk, D), (B, H, sk, D)],
        "decode_gqa_group_rows": [(B, H, D), (B, HKV, sk, D), (B, HKV, sk, D)],
        "decode_gqa_repeat": [(B, H, D), (B, HKV, sk, D), (B, HKV, sk, D)],
        "flashinfer_single_decode": [(H, D), (sk, HKV, D), (sk, HKV, D)],
        "flashinfer_single_decode_hnd": [(H, D), (HKV, sk, D), (HKV, sk, D)],
        "decode_window_alibi": [(B, H, D), (B, H, sk, D), (B, H, sk, D)],
        "decode_sink_gate": [(H, D), (H, sk, D), (H, sk, D), (H,), (H, D)],
    }[name]


PROGRAMS = {
    "bshd_einsum": bshd_einsum, "bshd_transpose": bshd_transpose, "heads_leading": plain,
    "two_batch_axes": plain, "no_batch_no_heads": plain, "bmm_3d": bmm_3d, "packed_heads": packed_heads,
    "einsum_bhqd": einsum_bhqd, "einsum_ellipsis": einsum_ellipsis, "decode_einsum": decode_einsum, "decode_matvec": decode_matvec,
    "decode_vector": decode_vector, "decode_mv": decode_mv, "decode_bhd": decode_bhd,
    "decode_gqa_group_rows": decode_gqa_group_rows, "decode_gqa_repeat": decode_gqa_repeat,
    "flashinfer_single_decode": flashinfer_single_decode,
    "flashinfer_single_decode_hnd": flashinfer_single_decode_hnd,
    "decode_window_alibi": decode_window_alibi, "decode_sink_gate": decode_sink_gate,
}
NO_QUERY_AXIS = [n for n in PROGRAMS if n.startswith(("decode", "flashinfer")) and n != "decode_gqa_group_rows"]


def _inputs(name: str, device: str) -> list[torch.Tensor]:
    sq, sk = random.randint(37, 50), random.randint(37, 50)  # not tile multiples; fresh each run
    return [torch.randn(*s, device=device) for s in _shapes(name, sq, sk)]


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_layout_fuses_forward_and_backward(name: str, device: str):
    """One kernel forward, two backward, no fallback; the output and every input's gradient
    equal float64 eager, computed by the generated kernels (launch hooks)."""
    fn, inputs = PROGRAMS[name], _inputs(name, device)
    e = flashlight_hf.explain(fn, *inputs)
    assert e.num_kernels == 1 and not e.fallbacks, e.fallbacks
    assert e.backward_kernels == 2 and not e.backward_fallbacks, e.backward_fallbacks

    compiled = flashlight_hf.compile(fn)
    launched: list[str] = []
    remove = add_launch_hook(launched.append)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="flashlight")  # a fallback or a recompute fails
            out = compiled(*inputs)
            seed = torch.randn_like(out)
            got = gradients(compiled, inputs, seed)
    finally:
        remove()
    ref = fn(*[t.double() for t in inputs])
    assert out.shape == ref.shape
    assert_close(out, ref, torch.float32, what=name)
    assert KERNEL_BWD_DKDV in launched and KERNEL_BWD_DQ in launched, launched
    want = gradients(fn, inputs, seed, dtype=torch.float64)
    # a sink's gradient is small where its logit is: then held to eager fp32's own error too
    assert assert_gradients_close(got, want, torch.float32, what=name,
                                  eager=gradients(fn, inputs, seed)) == len(inputs)


@pytest.mark.parametrize("name", NO_QUERY_AXIS + ["bshd_einsum", "einsum_ellipsis"])
def test_one_build_serves_every_kv_length(name: str, monkeypatch, flashlight_env):
    """A growing KV cache reuses one kernel: the key length is a run-time size. The symbolic
    trace (``torch.export``) keeps ``einsum`` and ``repeat_interleave`` whole, so the labeller
    reads them as ops of their own."""
    flashlight_env("FLASHLIGHT_DISK_CACHE", "0")
    compiled = flashlight_hf.compile(PROGRAMS[name])
    first = compiled.build_for(tuple(torch.randn(*s) for s in _shapes(name, 41, 40)), {})
    assert first.kernel is not None and first.symbolic, first.fallback
    for sk in (41, 77):
        assert compiled.build_for(tuple(torch.randn(*s) for s in _shapes(name, 41, sk)), {}) is first, sk


@pytest.mark.parametrize("name", ["decode_einsum", "decode_vector", "flashinfer_single_decode"])
@pytest.mark.parametrize("switches", [dict(split_kv=1), dict(split_kv=3, fused_split=True),
                                      dict(split_kv=3, fused_split=False)], ids=["single", "fused", "pair"])
def test_no_query_axis_output_keeps_its_shape_and_strides(name: str, switches: dict, device: str):
    """The row axis the rewrite adds is a digit of extent 1 of the output: a launch into a
    poisoned, transposed view of the caller's memory writes every element of it, whole or with
    the keys split into shares."""
    fn, inputs = PROGRAMS[name], _inputs(name, device)
    build = flashlight_hf.compile(fn).build_for(tuple(inputs), {})
    assert build.kernel is not None, build.fallback
    ref = fn(*[t.double() for t in inputs])
    with settings.override(**switches):
        out = poison_(torch.empty(*reversed(ref.shape), device=device))
        view = out.permute(*reversed(range(ref.dim())))  # column-major when 2-D
        build.kernel(inputs, out=view)
    assert_close(view, ref, torch.float32, what=name)


def test_no_query_axis_is_the_one_query_program():
    """q [H, D] fuses into the kernel of q [H, 1, D]: the same loop nest, one masked row."""
    fn = decode_einsum
    inputs = _inputs("decode_einsum", "cpu")
    source = flashlight_hf.explain(fn, *inputs).sources[0]
    assert "mask_m = offs_m < 1" in source
    # q is read with the row as the leading digit of its head-dim axis (always 0: the same element)
    assert "((offs_m[:, None] * 32) + offs_d[None, :]) * stride_qd" in source


def test_scores_from_the_keys_alone_fall_back_with_a_reason():
    """Attention pooling whose scores read only the keys: nothing can carry a row, so the
    program runs unfused and says why (never a wrong answer)."""
    def keys_only(k, v):
        return (torch.softmax(k.sum(-1), dim=-1)[:, None, :] @ v)[:, 0]

    k, v = torch.randn(H, 40, D), torch.randn(H, 40, D)
    e = flashlight_hf.explain(keys_only, k, v)
    assert e.num_kernels == 0 and e.fallbacks
    assert "no query-row axis" in e.fallbacks[0][1], e.fallbacks
    with pytest.warns(UserWarning, match="unfused"):
        out = flashlight_hf.compile(keys_only)(k, v)
    assert_close(out, keys_only(k.double(), v.double()), torch.float32)
