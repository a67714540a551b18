"""The generator on programs written the way users write them: each result against float64 eager,
fresh random inputs each run, and a launch hook proving the generated kernel (not the eager
fallback) produced it."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import flashlight_hf
from flashlight_hf.compiler.abi import KERNEL_BLOCK_TABLE
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
    assert len([n for n in launches if n != KERNEL_BLOCK_TABLE]) == 2  # one attention kernel per call


def prefix_lm(q, k, v):
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    keep = (j <= i) | (j < 16)
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    return torch.softmax(s.masked_fill(~keep, float("-inf")), dim=-1) @ v


def gqa_5d_view(q, k, v):
    b, h, s, d = q.shape
    hk = k.shape[1]
    q5 = q.view(b, hk, h // hk, s, d)
    sc = q5 @ k[:, :, None].transpose(-2, -1) * d ** -0.5
    return (torch.softmax(sc, dim=-1) @ v[:, :, None]).reshape(b, h, s, -1)


def evoformer(q, k, v, mask_bias, pair_bias, gate):
    """AlphaFold's gated row attention: q,k,v [B,N,S,H,D] (seq-last-but-one layout, read via strides)."""
    q, k, v = (t.transpose(-2, -3) for t in (q, k, v))  # [B, N, H, S, D]
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5 + mask_bias + pair_bias
    o = torch.softmax(s, dim=-1) @ v
    return torch.sigmoid(gate) * o.transpose(-2, -3)  # [B, N, S, H, D]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [32, 64, 80, 96, 128, 256])
def test_dtypes_and_head_dims(dtype: torch.dtype, head_dim: int, device: str):
    if device == "cpu" and head_dim in (96, 256) and dtype != torch.float32:
        pytest.skip("covered in float32 on CPU; every dtype on the GPU")
    compiled = flashlight_hf.compile(causal_kv_offset)
    q = torch.randn(1, 2, 33, head_dim, device=device, dtype=dtype)
    k = torch.randn(1, 2, 41, head_dim, device=device, dtype=dtype)
    v = torch.randn(1, 2, 41, head_dim, device=device, dtype=dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="flashlight")
        out = compiled(q, k, v)
    assert out.dtype == dtype
    assert_close(out, causal_kv_offset(q.double(), k.double(), v.double()), dtype,
                 tf32=device == "cuda" and torch.backends.cuda.matmul.allow_tf32)


@pytest.mark.parametrize("name", ["prefix_lm", "gqa_5d_view", "evoformer"])
def test_structured_programs(name: str, device: str):
    fn = {"prefix_lm": prefix_lm, "gqa_5d_view": gqa_5d_view, "evoformer": evoformer}[name]
    if name == "evoformer":
        b, n, s, h, d = 1, 3, 40, 2, 16
        args = [torch.randn(b, n, s, h, d, device=device) for _ in range(3)]
        args += [torch.randn(b, n, 1, 1, s, device=device), torch.randn(b, 1, h, s, s, device=device),
                 torch.randn(b, n, s, h, d, device=device)]
    elif name == "gqa_5d_view":
        args = [torch.randn(2, 4, 37, 32, device=device), torch.randn(2, 2, 45, 32, device=device),
                torch.randn(2, 2, 45, 32, device=device)]
    else:
        args = list(_inputs("vanilla", torch.float32, device, 50, 50))
    launches: list[str] = []
    remove = add_launch_hook(launches.append)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="flashlight")
            out = flashlight_hf.compile(fn)(*args)
    finally:
        remove()
    assert launches, f"{name} did not run a generated kernel"
    assert_close(out, fn(*[a.double() for a in args]), torch.float32, what=name)


@pytest.mark.parametrize("fill", ["-inf", "min"])
def test_fully_masked_rows_match_eager(fill: str, device: str):
    def all_masked_rows(q, k, v):
        i = torch.arange(q.shape[-2], device=q.device)[:, None]
        j = torch.arange(k.shape[-2], device=q.device)[None, :]
        masked = (i < 5) | (j > i)  # rows 0..4 see no key at all
        value = float("-inf") if fill == "-inf" else torch.finfo(q.dtype).min
        s = (q @ k.transpose(-2, -1)).masked_fill(masked, value)
        return torch.softmax(s, dim=-1) @ v

    q, k, v = _inputs("vanilla", torch.float32, device, 20, 20)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="flashlight")
        out = flashlight_hf.compile(all_masked_rows)(q, k, v)
    ref = all_masked_rows(q.double(), k.double(), v.double())
    if fill == "-inf":
        assert torch.isnan(ref[..., :5, :]).all()
    else:
        # a finite minimum makes the masked rows uniform over all keys: the mean of V
        assert torch.allclose(ref[..., :5, :], v.double().mean(-2, keepdim=True).expand_as(ref[..., :5, :]))
    assert_close(out, ref, torch.float32)


def test_one_query_decode_step(device: str):
    launches: list[str] = []
    remove = add_launch_hook(launches.append)
    try:
        compiled = flashlight_hf.compile(gqa_bias_upcast)
        for sk in (30, 31, 95):  # a growing KV cache: the key length is a runtime argument
            args = _inputs("gqa_bias_upcast", torch.float32, device, 1, sk)
            with warnings.catch_warnings():
                warnings.filterwarnings("error", message="flashlight")
                out = compiled(*args)
            assert_close(out, gqa_bias_upcast(*[a.double() for a in args]), torch.float32)
    finally:
        remove()
    assert len(launches) == 3
    assert len(compiled.builds()) >= 1 and sum(b.symbolic for b in compiled.builds()) >= 1


@pytest.mark.parametrize("name", sorted(PROGRAMS) + sorted(MORE))
def test_one_kernel_serves_every_length(name: str, device: str, monkeypatch, flashlight_env):
    """Query and key lengths are run-time arguments for every program (the differential
    program's two streams read the key axis through two variables: both are dynamic)."""
    flashlight_env("FLASHLIGHT_DISK_CACHE", "0")
    make = (lambda sq, sk: _inputs(name, torch.float32, device, sq, sk)) if name in PROGRAMS else \
        (lambda sq, sk: _more_inputs(name, device, sq, sk))
    compiled = flashlight_hf.compile({**PROGRAMS, **MORE}[name])
    first = compiled.build_for(make(19, 23), {})
    for sq, sk in ((19, 40), (7, 23), (33, 70)):
        args = make(sq, sk)
        assert compiled.build_for(args, {}) is first, f"{name}: a new build for q_len {sq}, kv_len {sk}"
    assert first.kernel is not None


def test_non_softmax_scores_tile_the_query_rows(device: str):
    """`sigmoid(scores) @ V`: the query positions are the rows (a run-time length), not a tile
    of the value head dim — a long query axis fuses instead of exceeding one tile."""
    q, k, v = _inputs("sigmoid_attention", torch.float32, device, 300, 40)
    e = flashlight_hf.explain(sigmoid_attention, q, k, v)
    assert e.num_kernels == 1 and not e.fallbacks, e.fallbacks
    assert_close(flashlight_hf.compile(sigmoid_attention)(q, k, v),
                 sigmoid_attention(q.double(), k.double(), v.double()), torch.float32)


def test_custom_op_gradients_match_eager(device: str):
    """Fused programs are a torch.library op with autograd: gradients reach every input
    (including a learnable bias) and equal eager's, computed in float64."""
    q, k, v, bias = _inputs("gqa_bias_upcast", torch.float32, device, 19, 23)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, bias)]
    out = flashlight_hf.compile(gqa_bias_upcast)(*leaves)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    ref_leaves = [t.detach().double().requires_grad_() for t in (q, k, v, bias)]
    gqa_bias_upcast(*ref_leaves).backward(grad_out.double())
    for got, ref in zip(leaves, ref_leaves):
        assert_close(got.grad, ref.grad, torch.float32, what="gradient")


def test_custom_op_under_torch_compile_and_fake_tensors(device: str):
    from torch._subclasses.fake_tensor import FakeTensorMode

    compiled = flashlight_hf.compile(causal_kv_offset)
    q, k, v = _inputs("vanilla", torch.float32, device, 21, 30)
    expected = compiled(q, k, v)  # builds and registers the kernel
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fq, fk, fv = (mode.from_tensor(t) for t in (q, k, v))
        fake_out = compiled(fq, fk, fv)
    assert fake_out.shape == expected.shape and fake_out.dtype == expected.dtype
    graph_fn = torch.compile(lambda a, b, c: compiled(a, b, c) * 2.0, backend="eager", fullgraph=True)
    assert_close(graph_fn(q, k, v), 2.0 * causal_kv_offset(q.double(), k.double(), v.double()), torch.float32)


def test_torch_compile_backend_entry_point(device: str):
    """`backend="flashlight"` resolves through the package's entry point (no import needed)."""
    launches: list[str] = []
    remove = add_launch_hook(launches.append)
    try:
        fn = torch.compile(softcap, backend="flashlight", dynamic=False)
        q, k, v = _inputs("vanilla", torch.float32, device, 24, 31)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="flashlight")
            out = fn(q, k, v)
    finally:
        remove()
    assert launches, "the flashlight backend did not run a generated kernel"
    assert_close(out, softcap(q.double(), k.double(), v.double()), torch.float32)


def test_torch_compile_backend_falls_back_loudly(device: str):
    def not_attention(x):
        return torch.cumsum(x, dim=-1) * 2

    fn = torch.compile(not_attention, backend="flashlight", dynamic=False)
    x = torch.randn(4, 9, device=device)
    with pytest.warns(UserWarning, match="flashlight backend: graph not fused"):
        out = fn(x)
    assert_close(out, not_attention(x.double()), torch.float32)


@pytest.mark.gpu
def test_logical_grid_beyond_65535_programs(device: str):
    """batch·heads above CUDA's 65535 limit on grid axes 1 and 2: the grid is one flat axis."""
    b, h, s, d = 1100, 64, 16, 32  # 70,400 (batch, head) pairs
    q, k, v = (torch.randn(b, h, s, d, device=device, dtype=torch.bfloat16) for _ in range(3))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="flashlight")
        out = flashlight_hf.compile(causal_kv_offset)(q, k, v)
    assert_close(out, causal_kv_offset(q.double(), k.double(), v.double()), torch.bfloat16)


def test_disk_cache_serves_a_new_process_and_survives_corruption(device: str, tmp_path, monkeypatch, flashlight_env):
    from flashlight_hf.compiler.driver import build
    from flashlight_hf.compiler import cache as diskcache

    flashlight_env("FLASHLIGHT_CACHE_DIR", str(tmp_path))
    args = _inputs("vanilla", torch.float32, device, 26, 33)
    first = build(softcap, args, {})
    assert first.kernel is not None and not first.from_disk
    entries = list((tmp_path / "builds").glob("*.pkl"))
    assert len(entries) == 1 and not list((tmp_path / "builds").glob("*.tmp"))
    second = build(softcap, args, {})  # what a new process does: same program, empty memory
    assert second.from_disk and second.source.source == first.source.source
    fresh = _inputs("vanilla", torch.float32, device, 26, 33)
    assert_close(torch.ops.flashlight.fused(second.op_key, list(fresh)),
                 softcap(*[a.double() for a in fresh]), torch.float32)
    # a different program (another softcap value baked in) must not hit that entry
    other = build(lambda q, k, v: softcap(q, k, v) * 2.0, args, {})
    assert not other.from_disk
    entries[0].write_bytes(b"not a pickle")
    third = build(softcap, args, {})
    assert third.kernel is not None and not third.from_disk
    assert diskcache.load(entries[0].stem) is not None  # rewritten by the rebuild


class _TinyLayer(torch.nn.Module):
    """Projections around a softcapped causal attention: a graph larger than the attention."""

    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(64, 192)
        self.o = torch.nn.Linear(64, 64)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, 4, 16).permute(2, 0, 3, 1, 4)
        s = 20.0 * torch.tanh(q @ k.transpose(-2, -1) * 0.25 / 20.0)
        i = torch.arange(t, device=x.device)[:, None]
        j = torch.arange(t, device=x.device)[None, :]
        a = torch.softmax(s.masked_fill(j > i, float("-inf")), dim=-1) @ v
        return self.o(a.transpose(1, 2).reshape(b, t, 64))


def test_torch_compile_backend_fuses_the_region_inside_a_layer(device: str):
    layer = _TinyLayer().to(device)
    x = torch.randn(2, 29, 64, device=device)
    launches: list[str] = []
    remove = add_launch_hook(launches.append)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="flashlight")
            out = torch.compile(layer, backend="flashlight", dynamic=False)(x)
    finally:
        remove()
    assert launches, "the attention region inside the layer did not run a generated kernel"
    ref = _TinyLayer().to(device).double()
    ref.load_state_dict(layer.state_dict())
    assert_close(out, ref(x.double()), torch.float32)


def gqa_repeat_interleave(q, k, v):
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    return torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1) @ v


def functional_softmax_dtype(q, k, v):
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    return torch.nn.functional.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype) @ v


def differential_scalar_lambda(q, k, v):
    d = q.shape[-1] // 2
    a1 = torch.softmax(q[..., :d] @ k[..., :d].mT * d ** -0.5, -1)
    a2 = torch.softmax(q[..., d:] @ k[..., d:].mT * d ** -0.5, -1)
    return a1 @ v - 0.35 * (a2 @ v)


@pytest.mark.parametrize("fn", [gqa_repeat_interleave, functional_softmax_dtype, differential_scalar_lambda],
                         ids=lambda f: f.__name__)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_more_spellings(fn, dtype: torch.dtype, device: str):
    hk = 2 if fn is gqa_repeat_interleave else 4
    q = torch.randn(2, 4, 29, 32, device=device, dtype=dtype)
    k = torch.randn(2, hk, 35, 32, device=device, dtype=dtype)
    v = torch.randn(2, hk, 35, 32, device=device, dtype=dtype)
    launches: list[str] = []
    remove = add_launch_hook(launches.append)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="flashlight")
            out = flashlight_hf.compile(fn)(q, k, v)
    finally:
        remove()
    assert launches
    assert_close(out, fn(q.double(), k.double(), v.double()), dtype)


def differential_head_halves(q, k, v, lam):
    """DiffLlama's layout: the two streams are the two halves of the query/key heads, both read
    one V of twice the head dim, lam a 0-d tensor."""
    h = v.shape[1]
    c = q.shape[-1] ** -0.5
    a1 = torch.softmax(q[:, :h] @ k[:, :h].mT * c, -1)
    a2 = torch.softmax(q[:, h:] @ k[:, h:].mT * c, -1)
    return a1 @ v - lam * (a2 @ v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_differential_in_diffllama_layout_is_one_kernel(dtype: torch.dtype, device: str):
    """The layout the model runs (and bench_programs' ``diffllama``): one kernel, both streams'
    V tiles shared, against float64."""
    q = torch.randn(2, 4, 29, 32, device=device, dtype=dtype)
    k = torch.randn(2, 4, 35, 32, device=device, dtype=dtype)
    v = torch.randn(2, 2, 35, 64, device=device, dtype=dtype)
    lam = torch.rand((), device=device, dtype=dtype)
    launches: list[str] = []
    remove = add_launch_hook(launches.append)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="flashlight")
            out = flashlight_hf.compile(differential_head_halves)(q, k, v, lam)
    finally:
        remove()
    assert launches == ["flashlight_fwd"], launches
    assert_close(out, differential_head_halves(q.double(), k.double(), v.double(), lam.double()), dtype)


def test_torch_export_keeps_the_fused_op(device: str):
    compiled = flashlight_hf.compile(softcap)
    q, k, v = _inputs("vanilla", torch.float32, device, 17, 23)

    class Wrapper(torch.nn.Module):
        def forward(self, a, b, c):
            return compiled(a, b, c) + 1.0

    with pytest.raises(RuntimeError, match="Call the compiled function once eagerly"):
        torch.export.export(Wrapper(), (q, k, v), strict=False)
    compiled(q, k, v)  # generate the kernel eagerly; export then records the custom op
    ep = torch.export.export(Wrapper(), (q, k, v), strict=False)
    assert any(n.op == "call_function" and "flashlight.fused" in str(n.target) for n in ep.graph.nodes)
    assert_close(ep.module()(q, k, v), softcap(q.double(), k.double(), v.double()) + 1.0, torch.float32)


def test_non_contiguous_inputs_are_read_through_strides(device: str):
    """HF layouts: q/k/v as transposed views of [B, S, H, D]; the kernel reads them in place."""
    q = torch.randn(2, 37, 4, 32, device=device).transpose(1, 2)
    k = torch.randn(2, 41, 4, 32, device=device).transpose(1, 2)
    v = torch.randn(2, 41, 4, 32, device=device).transpose(1, 2)
    assert not q.is_contiguous()
    seen: list = []
    compiled = flashlight_hf.compile(causal_kv_offset)
    compiled(q, k, v)  # build
    build = compiled.builds()[0]
    original = build.kernel.launch_single
    build.kernel.launch_single = lambda cfg, args, *rest: (seen.append(args), original(cfg, args, *rest))
    try:
        out = compiled(q, k, v)
    finally:
        build.kernel.launch_single = original
    tensors = [a for a in seen[0] if isinstance(a, torch.Tensor)]
    assert any(t.data_ptr() == q.data_ptr() and t.stride() == q.stride() for t in tensors), "q was copied"
    assert_close(out, causal_kv_offset(q.double(), k.double(), v.double()), torch.float32)


def test_explain_reports_ir_source_and_fallbacks(device: str):
    args = _inputs("differential", torch.float32, device, 20, 24)
    e = flashlight_hf.explain(differential, *args)
    assert e.num_kernels == 1 and e.fallbacks == []
    assert "reduce_max" in e.ir and "reduce_sum" in e.ir
    assert len(e.sources) == 1 and "@triton.jit" in e.sources[0] and e.sources[0].count("# running max") >= 2
    text = str(e)
    assert text.startswith("kernels: 1") and "IR:" in text and "kernel 0 source:" in text


def size_derived_scale(q, k, v):
    """A scale computed from run-time sizes with floor and true division (1 / (Sk // 4 + 1))."""
    n = k.shape[-2] // 4 + 1
    return torch.softmax(q @ k.transpose(-2, -1) * (1.0 / n), dim=-1) @ v


def test_scales_from_run_time_sizes_are_not_truncated(device: str):
    """A size expression with a real value is a float kernel argument (printing it as an int
    would silently scale every score by 0)."""
    compiled = flashlight_hf.compile(size_derived_scale)
    for sq, sk in ((9, 21), (16, 40)):
        args = _inputs("vanilla", torch.float32, device, sq, sk)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="flashlight")
            out = compiled(*args)
        assert_close(out, size_derived_scale(*[a.double() for a in args]), torch.float32, tf32=False)


def gpt_oss_sinks_literal(q, k, v, sinks):
    """GPT-OSS's eager spelling: sinks joined to the logits, the joined row max subtracted
    (``max(dim).values``), softmax, sink column dropped."""
    s = q @ k.transpose(2, 3) * q.shape[-1] ** -0.5
    i = torch.arange(q.shape[-2], device=q.device)[:, None] + (k.shape[-2] - q.shape[-2])
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    s = s + torch.where(j <= i, 0.0, float("-inf"))
    joined = torch.cat([s, sinks.reshape(1, -1, 1, 1).expand(q.shape[0], -1, q.shape[-2], -1)], dim=-1)
    joined = joined - joined.max(dim=-1, keepdim=True).values
    return torch.softmax(joined, dim=-1, dtype=joined.dtype)[..., :-1] @ v


def test_sinks_with_a_row_max_shift_fuse(device: str):
    """softmax(x − max x) is softmax(x): the shift is dropped, the sinks fuse as one kernel."""
    q, k, v = _inputs("vanilla", torch.float32, device, 37, 53)
    sinks = torch.randn(q.shape[1], device=device)
    assert flashlight_hf.explain(gpt_oss_sinks_literal, q, k, v, sinks).num_kernels == 1
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="flashlight")
        out = flashlight_hf.compile(gpt_oss_sinks_literal)(q, k, v, sinks)
    ref = gpt_oss_sinks_literal(q.double(), k.double(), v.double(), sinks.double())
    assert_close(out, ref, torch.float32, tf32=False)
