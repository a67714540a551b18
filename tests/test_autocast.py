"""``torch.autocast`` around compiled programs and the front door: a call inside a region returns
what eager returns there.

Inside a region eager PyTorch casts per op (matmuls to the region's dtype; on CPU softmax runs in
the dtype it is given, on CUDA in float32), so each program is checked against a float64
reference of the program as written, on its inputs rounded to the region's dtype (what the
region's first casts do), within that dtype's tolerance, and eager's own answer is held to the
same bar (the reference is the right one). Output and gradient dtypes must be eager's, the
kernels (forward and the generated backward) must have run with no fallback warning. Builds are
keyed on the region: an fp32 build never serves a call inside one, nor the other way round. The
recompute backward replays the region its forward was traced in (bitwise eager's gradients
there). The front door: a tiny Llama in a region runs every layer as a kernel and returns
eager's dtypes. On a CUDA machine the same tests run CUDA's autocast; ``tests/test_backward_gpu.py``
adds bf16 at larger shapes.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import pytest
import torch

import flashlight_hf
from flashlight_hf.compiler.abi import KERNEL_BWD_DKDV, KERNEL_BWD_DQ
from flashlight_hf.compiler.runtime import add_launch_hook
from flashlight_hf.testing import (assert_close, assert_gradients_close, gradient_error, gradient_scale, gradients,
                                   poisoned_empty, rel_error, tolerance)
from tests.test_backward import _scores, gqa_5d_view, per_key_bias, relative_table
from tests.test_backward import max_logit

B, H, SQ, SK, D = 2, 4, 37, 45, 32
DTYPES = [torch.bfloat16, torch.float16]


def causal(q, k, v):
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    s = _scores(q, k).masked_fill(j > i + (k.shape[-2] - q.shape[-2]), float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def softmax_in_float32(q, k, v):  # Transformers' eager pattern: an explicit float32 softmax, cast back
    return torch.softmax(_scores(q, k), dim=-1, dtype=torch.float32).to(q.dtype) @ v


def alibi(q, k, v):
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    slopes = 2.0 ** -torch.arange(1, q.shape[1] + 1, device=q.device, dtype=torch.float32)
    return torch.softmax(_scores(q, k) - slopes[:, None, None] * (i - j).abs(), dim=-1) @ v


def _inputs(fn, device: str) -> list[torch.Tensor]:
    """Fresh float32 inputs (the region casts them), with the extra tensor a program takes."""
    hk = H // 2 if fn is gqa_5d_view else H
    qkv = [torch.randn(B, H, SQ, D, device=device), torch.randn(B, hk, SK, D, device=device),
           torch.randn(B, hk, SK, D, device=device)]
    extra = {per_key_bias: [torch.randn(B, 1, 1, SK, device=device)],
             relative_table: [torch.randn(15, H, device=device)]}
    return qkv + extra.get(fn, [])


def _rounded64(inputs: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
    """The inputs as the region's first casts round them, in float64: the reference's inputs."""
    return [t.to(dtype).double() if t.is_floating_point() else t for t in inputs]


@contextlib.contextmanager
def fused_calls() -> Iterator[list[str]]:
    """Collect generated-kernel launches; any "flashlight" warning (a fallback, a recompute) fails."""
    launched: list[str] = []
    remove = add_launch_hook(launched.append)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="flashlight")
            yield launched
    finally:
        remove()


def check_output_in_region(fn, inputs: list[torch.Tensor], dtype: torch.dtype, device: str) -> torch.Tensor:
    """``compile(fn)`` called in an ``autocast(device, dtype)`` region returns eager's dtype there
    and is within ``dtype``'s tolerance of float64 ``fn`` at the rounded inputs, through kernels."""
    compiled = flashlight_hf.compile(fn)
    with torch.autocast(device, dtype=dtype):
        eager = fn(*inputs)
        with fused_calls() as launched:
            got = compiled(*inputs)
    assert launched, "no generated kernel ran"
    assert got.dtype == eager.dtype, f"{fn.__name__}: {got.dtype} in the region, eager gives {eager.dtype}"
    ref = fn(*_rounded64(inputs, dtype))
    assert_close(eager, ref, dtype, what="eager in the region (the reference's check)")
    assert_close(got, ref, dtype, what=f"{fn.__name__} in autocast({dtype})")
    (build,) = compiled.builds()
    assert build.autocast_state == ((device, dtype),), build.autocast_state
    return got


def check_gradients_in_region(fn, inputs: list[torch.Tensor], dtype: torch.dtype, device: str, *,
                              backward_in_region: bool = False) -> None:
    """The forward in the region, ``backward()`` inside or after it (PyTorch recommends after):
    every input's gradient through the generated kernels, in the input's dtype (as eager gives),
    within ``dtype``'s tolerance of float64 autograd at the rounded inputs."""
    compiled = flashlight_hf.compile(fn)
    leaves = [t.detach().requires_grad_() for t in inputs]
    with fused_calls() as launched:
        with torch.autocast(device, dtype=dtype):
            out = compiled(*leaves)
            seed = torch.randn(out.shape, device=device).to(out.dtype)
            loss = (out * seed).sum()
            if backward_in_region:
                loss.backward()
        if not backward_in_region:
            loss.backward()
    assert KERNEL_BWD_DKDV in launched and KERNEL_BWD_DQ in launched, launched
    with torch.autocast(device, dtype=dtype):
        eager = gradients(fn, inputs, seed)
    assert [t.grad.dtype for t in leaves] == [g.dtype for g in eager] == [t.dtype for t in inputs]
    want = gradients(fn, _rounded64(inputs, dtype), seed)
    assert_gradients_close(eager, want, dtype, what="eager in the region (the reference's check)")
    assert_gradients_close([t.grad for t in leaves], want, dtype, what=f"{fn.__name__} in autocast({dtype})")


PROGRAMS = [causal, softmax_in_float32, alibi, per_key_bias, relative_table, gqa_5d_view]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fn", PROGRAMS, ids=lambda f: f.__name__)
def test_output_in_a_region_is_eagers(fn, dtype: torch.dtype, device: str):
    check_output_in_region(fn, _inputs(fn, device), dtype, device)


@pytest.mark.parametrize("backward_in_region", [False, True], ids=["backward_outside", "backward_inside"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("fn", PROGRAMS, ids=lambda f: f.__name__)
def test_gradients_in_a_region_are_eagers(fn, dtype: torch.dtype, backward_in_region: bool, device: str):
    check_gradients_in_region(fn, _inputs(fn, device), dtype, device, backward_in_region=backward_in_region)


def test_builds_are_keyed_on_the_region(device: str):
    """One compiled function called outside, inside, outside and inside a region again (and
    inside a nested ``enabled=False``): every call returns eager's dtype and values for its state,
    from two builds — one traced with the region's casts, one without."""
    q, k, v = _inputs(causal, device)
    compiled = flashlight_hf.compile(causal)
    ref32 = causal(*[t.double() for t in (q, k, v)])
    ref16 = causal(*_rounded64([q, k, v], torch.bfloat16))
    for _ in range(2):
        with fused_calls():
            out = compiled(q, k, v)
            assert out.dtype == torch.float32
            assert_close(out, ref32, torch.float32, what="outside the region")
            with torch.autocast(device, dtype=torch.bfloat16):
                out = compiled(q, k, v)
                assert out.dtype == torch.bfloat16
                assert_close(out, ref16, torch.bfloat16, what="inside the region")
                with torch.autocast(device, enabled=False):
                    out = compiled(q, k, v)
                    assert out.dtype == torch.float32
                    assert_close(out, ref32, torch.float32, what="autocast disabled inside the region")
    states = sorted(str(b.autocast_state) for b in compiled.builds())
    assert len(states) == 2 and states[0] != states[1], states
    assert all(b.kernel is not None for b in compiled.builds())


def test_a_region_with_another_dtype_gets_its_own_build(device: str):
    q, k, v = _inputs(causal, device)
    compiled = flashlight_hf.compile(causal)
    for dtype in (torch.bfloat16, torch.float16, torch.bfloat16):
        with torch.autocast(device, dtype=dtype), fused_calls():
            out = compiled(q, k, v)
        assert out.dtype == dtype
        assert_close(out, causal(*_rounded64([q, k, v], dtype)), dtype, what=f"autocast({dtype})")
    assert len(compiled.builds()) == 2


def test_into_writes_the_regions_dtype_and_copies_into_another(device: str):
    """``into(out, ...)`` in a region: an ``out`` of the call's dtype is written by the kernel (it
    starts as poison); an ``out`` of another dtype gets the call's result copied in, and the
    build stays a kernel (no fallback)."""
    q, k, v = _inputs(causal, device)
    compiled = flashlight_hf.compile(causal)
    ref = causal(*_rounded64([q, k, v], torch.bfloat16))
    with torch.autocast(device, dtype=torch.bfloat16), fused_calls() as launched:
        out = poisoned_empty(B, H, SQ, D, dtype=torch.bfloat16, device=device)
        compiled.into(out, q, k, v)
        assert_close(out, ref, torch.bfloat16, what="into a bf16 out")
        wide = poisoned_empty(B, H, SQ, D, dtype=torch.float32, device=device)
        compiled.into(wide, q, k, v)
        assert_close(wide, ref, torch.bfloat16, what="into a float32 out")
    assert len(launched) == 2 and all(b.kernel is not None for b in compiled.builds())


def test_torch_compile_in_a_region_runs_the_regions_build(device: str):
    """A compiled function inside ``torch.compile`` (AOTAutograd through the ops' fake
    implementations) in a region: the graph calls the build traced in that region (eager's
    dtype, forward and gradients); outside the region the graph is traced again (torch.compile
    guards on the autocast state) and runs the float32 build."""
    q, k, v = _inputs(causal, device)
    compiled = flashlight_hf.compile(causal)
    with torch.autocast(device, dtype=torch.bfloat16):
        compiled(q, k, v)  # builds outside tracing
    compiled(q, k, v)
    graph = torch.compile(lambda *a: compiled(*a) * 2.0, backend="aot_eager", fullgraph=True)
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    seed = torch.randn(q.shape, device=device).to(torch.bfloat16)
    with torch.autocast(device, dtype=torch.bfloat16):
        out = graph(*leaves)
    assert out.dtype == torch.bfloat16
    (out * seed).sum().backward()
    rounded = _rounded64([q, k, v], torch.bfloat16)
    assert_close(out, causal(*rounded) * 2.0, torch.bfloat16, what="torch.compile in the region")
    want = gradients(lambda *a: causal(*a) * 2.0, rounded, seed)
    assert [t.grad.dtype for t in leaves] == [torch.float32] * 3
    assert_gradients_close([t.grad for t in leaves], want, torch.bfloat16, what="torch.compile's backward")
    out = graph(q, k, v)
    assert out.dtype == torch.float32
    assert_close(out, causal(*[t.double() for t in (q, k, v)]) * 2.0, torch.float32, what="outside the region")


def _region(on: bool, device: str) -> contextlib.AbstractContextManager:
    return torch.autocast(device, dtype=torch.bfloat16) if on else contextlib.nullcontext()


def _gate_gradients(fn, inputs: list[torch.Tensor], seed: torch.Tensor, forward_in: bool, backward_in: bool,
                    device: str) -> list[torch.Tensor]:
    """``fn``'s forward in (or outside) a bf16 region, its ``backward()`` in (or outside) one."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    with _region(forward_in, device):
        out = fn(*leaves)
        loss = (out * seed.to(out.dtype)).sum()
    with _region(backward_in, device):
        loss.backward()
    return [t.grad for t in leaves]


@pytest.mark.parametrize("backward_in", [False, True], ids=["backward_outside", "backward_inside"])
@pytest.mark.parametrize("forward_in", [False, True], ids=["forward_outside", "forward_inside"])
def test_recompute_backward_replays_the_forwards_region(forward_in: bool, backward_in: bool, device: str):
    """A program whose backward is not derived (its epilogue reads each row's max score) recomputes its
    eager code under autograd for the gradient: the forward in the region it was traced in
    (whatever region ``backward()`` runs in), then eager's own autograd, which autocasts the
    backward's ops where ``backward()`` runs in a region, as eager's does. So the gradients are
    eager's for each of the four combinations (a recompute outside the forward's region is off by
    about 1e-2)."""
    inputs = [torch.randn(B, H, 21, D, device=device) for _ in range(3)]
    seed = torch.randn(B, H, 21, D, device=device)
    compiled = flashlight_hf.compile(max_logit)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flashlight: the backward of max_logit")  # the recompute, named
        got = _gate_gradients(compiled, inputs, seed, forward_in, backward_in, device)
    kernel = compiled.builds()[0].kernel
    assert kernel is not None and not kernel.has_backward()  # the forward ran as a kernel, the backward recomputes
    want = _gate_gradients(max_logit, inputs, seed, forward_in, backward_in, device)
    for n, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype, f"input {n}: {g.dtype}, eager gives {w.dtype}"
        # bitwise on CPU; on CUDA to float32's bar (cuBLAS may pick other kernels in the backward's
        # thread), three orders of magnitude under what a recompute in the wrong region is off by
        assert torch.equal(g, w) if device == "cpu" else rel_error(g, w) <= tolerance(torch.float32), \
            f"input {n}: not eager's gradient ({rel_error(g, w):.1e})"


# -- the front door ------------------------------------------------------------------------------

def test_llama_in_a_region_runs_kernels_and_returns_eagers_dtypes(device: str):
    """A tiny Llama (float32 weights) in a bf16 region: prefill logits, one decode step through
    the KV cache (a grouped-query step) and every parameter's gradient have eager's dtypes and
    are within bf16's tolerance of eager in the same region, every layer running a kernel; the
    same model outside the region is float32 eager's again (1e-4)."""
    from flashlight_hf.model_zoo.configs import zoo_config

    cfg = zoo_config("llama-tiny")
    eager = cfg.build_model(attn_implementation="eager", seed=2).to(device)
    fused = cfg.build_model(attn_implementation="flashlight", seed=2).to(device)
    ids = torch.randint(5, 1000, (2, 19), generator=torch.Generator().manual_seed(4)).to(device)
    nxt = ids[:, -1:] + 1
    tol = tolerance(torch.bfloat16)
    layers = cfg.build_config().num_hidden_layers

    def prefill_and_step(model):
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
            first = model(input_ids=ids, use_cache=True)
            step = model(input_ids=nxt, past_key_values=first.past_key_values, use_cache=True)
        return first.logits, step.logits

    with fused_calls() as launched:
        got = prefill_and_step(fused)
    assert len(launched) == 2 * layers, launched
    for name, g, e in zip(("prefill", "decode step"), got, prefill_and_step(eager)):
        assert g.dtype == e.dtype == torch.bfloat16, (name, g.dtype, e.dtype)
        err = rel_error(g, e)
        assert err <= tol, f"{name}: logits differ from eager's in the region by {err:.2e}"

    weights = torch.randn(2, 19, cfg.build_config().vocab_size, generator=torch.Generator().manual_seed(6)).to(device)
    with fused_calls() as launched:
        with torch.autocast(device, dtype=torch.bfloat16):
            logits = fused(input_ids=ids).logits
        (logits.float() * weights).sum().backward()
    assert launched.count(KERNEL_BWD_DKDV) == layers, launched
    with torch.autocast(device, dtype=torch.bfloat16):
        ref = eager(input_ids=ids).logits
    (ref.float() * weights).sum().backward()
    scale = gradient_scale(p.grad for p in eager.parameters())
    for (name, p), (_, q) in zip(eager.named_parameters(), fused.named_parameters()):
        assert q.grad is not None and q.grad.dtype == p.grad.dtype, name
        err = gradient_error(q.grad, p.grad, scale)
        assert err <= tol, f"gradient of {name} differs from eager's in the region by {err:.2e}"

    with torch.no_grad(), fused_calls():
        got = fused(input_ids=ids).logits
        want = eager(input_ids=ids).logits
    assert got.dtype == torch.float32 and rel_error(got, want) <= 1e-4
