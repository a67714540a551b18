"""CUDA graphs: a compiled program's forward, and a whole training step (forward + generated
backward), captured in ``torch.cuda.CUDAGraph`` and replayed with new input values.

GPU tests (marked ``gpu``) follow PyTorch's recipe: warm up on a side stream (this is where
kernels are traced, compiled by Triton and autotuned), capture, then copy new values into the
static inputs and replay; the graph's static outputs (and gradients) are poisoned before each
replay and checked against float64 eager on the new values. The first-time work a capture
cannot hold raises :class:`~flashlight_hf.compiler.runtime.graphs.GraphCaptureError` naming the
warm-up, never a CUDA error deep in Triton nor a silent eager fallback; that wiring is also
checked on CPU (the interpreter) with the capture check forced on.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import flashlight_hf
from flashlight_hf.compiler.runtime import graphs
from flashlight_hf.compiler.runtime.graphs import GraphCaptureError
from flashlight_hf.testing import assert_close, assert_gradients_close, gradients, to_float64
from tests.test_autocast import causal, fused_calls

SHAPE = (2, 4, 300, 64)  # B, H, S, D


def _fresh(like: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.randn_like(t) for t in like]


def _warm_up(step, n: int = 3) -> None:
    """``step()`` ``n`` times on a side stream, as PyTorch's CUDA graph recipe does before capture."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), warnings.catch_warnings():
        warnings.filterwarnings("error", message="flashlight")  # no fallback, no recompute
        for _ in range(n):
            step()
    torch.cuda.current_stream().wait_stream(side)


@pytest.mark.gpu
def test_forward_replays_in_a_cuda_graph():
    static = [torch.randn(SHAPE, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    compiled = flashlight_hf.compile(causal)
    _warm_up(lambda: compiled(*static))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = compiled(*static)
    (build,) = compiled.builds()
    assert build.kernel is not None and build.launched
    for _ in range(2):
        fresh = _fresh(static)
        for t, f in zip(static, fresh):
            t.copy_(f)
        out.fill_(float("nan"))  # the replay must write every element
        graph.replay()
        torch.cuda.synchronize()
        assert_close(out, causal(*to_float64(*fresh)), torch.bfloat16, what="replayed forward")


@pytest.mark.gpu
def test_training_step_replays_in_a_cuda_graph():
    """Forward + ``backward()`` captured together: the training forward, the generated dK/dV and
    dQ kernels and the gradients' buffers are the graph's; each replay recomputes them for the
    values copied into the static leaves and the static output gradient."""
    leaves = [torch.randn(SHAPE, device="cuda", dtype=torch.bfloat16).requires_grad_() for _ in range(3)]
    seed = torch.randn(SHAPE, device="cuda", dtype=torch.bfloat16)
    compiled = flashlight_hf.compile(causal)

    def step() -> torch.Tensor:
        out = compiled(*leaves)
        (out * seed).sum().backward()
        return out

    _warm_up(step)
    for t in leaves:
        t.grad = None  # the capture allocates the gradients: replays then write them in place
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    grads = [t.grad for t in leaves]
    assert all(g is not None for g in grads)
    for _ in range(2):
        fresh, fresh_seed = _fresh(leaves), torch.randn_like(seed)
        with torch.no_grad():
            for t, f in zip(leaves, fresh):
                t.copy_(f)
        seed.copy_(fresh_seed)
        out.detach().fill_(float("nan"))
        for g in grads:
            g.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert_close(out, causal(*to_float64(*fresh)), torch.bfloat16, what="replayed training forward")
        want = gradients(causal, fresh, fresh_seed, dtype=torch.float64)
        assert_gradients_close(grads, want, torch.bfloat16, what="replayed backward")
        assert all(t.grad is g for t, g in zip(leaves, grads))


@pytest.mark.gpu
def test_a_cold_call_under_capture_raises_and_names_the_warm_up():
    """A call with no kernel for its shapes yet (it would trace, compile and tune) raises before
    touching the stream; the same call, warmed up, then captures."""
    static = [torch.randn(SHAPE, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    compiled = flashlight_hf.compile(causal)
    with pytest.raises(GraphCaptureError, match="before capturing"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            compiled(*static)
    _warm_up(lambda: compiled(*static))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = compiled(*static)
    graph.replay()
    torch.cuda.synchronize()
    assert_close(out, causal(*to_float64(*static)), torch.bfloat16)


@pytest.mark.gpu
def test_dropout_under_capture_raises():
    leaves = [torch.randn(SHAPE, device="cuda", dtype=torch.bfloat16).requires_grad_() for _ in range(3)]
    compiled = flashlight_hf.compile(causal)
    drop = compiled.dropout(0.1)
    _warm_up(lambda: drop(*leaves).sum().backward())
    with pytest.raises(GraphCaptureError, match="dropout"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            drop(*leaves)


def host_constant_slopes(q, k, v):  # ALiBi slopes created on the host inside the program
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625]).to(q.device)
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 - slopes[:, None, None] * (i - j).abs()
    return torch.softmax(s, dim=-1) @ v


@pytest.mark.gpu
def test_a_host_constant_under_capture_raises_naming_it():
    """A tensor the program creates on the host becomes a constant of the kernel, copied to the
    GPU at every call: a synchronising copy a capture cannot hold."""
    static = [torch.randn(SHAPE, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    compiled = flashlight_hf.compile(host_constant_slopes)
    _warm_up(lambda: compiled(*static))
    (build,) = compiled.builds()
    assert build.kernel is not None
    assert any(isinstance(b, torch.Tensor) and b.device.type == "cpu" for b in build.kernel.program.bindings)
    with pytest.raises(GraphCaptureError, match="closed over"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            compiled(*static)


# -- the same refusals on CPU, with the capture check forced on ---------------------------------

def test_capture_check_refuses_first_time_work_and_dropout_only(monkeypatch, device: str):
    """With ``graphs.capturing`` forced on: a call with no build raises (and is not turned into
    an eager fallback), warmed-up forward and training calls run as before, new shapes on a
    symbolic build raise (their first launch plans and tunes), attention dropout raises."""
    q, k, v = (torch.randn(2, 4, 37, 32, device=device) for _ in range(3))
    compiled = flashlight_hf.compile(causal)
    monkeypatch.setattr(graphs, "capturing", lambda device: True)
    with pytest.raises(GraphCaptureError, match="before capturing"):
        compiled(q, k, v)
    monkeypatch.undo()
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    compiled(q, k, v)
    compiled(*leaves).sum().backward()  # warm-up: inference and training
    monkeypatch.setattr(graphs, "capturing", lambda device: True)
    seed = torch.randn_like(q)
    with fused_calls() as launched:
        assert_close(compiled(q, k, v), causal(*to_float64(q, k, v)), torch.float32)
        got = gradients(compiled, [q, k, v], seed)
    assert launched
    assert_gradients_close(got, gradients(causal, [q, k, v], seed, dtype=torch.float64), torch.float32)
    with pytest.raises(GraphCaptureError, match="has not run on inputs of shapes"):
        compiled(q[:, :, :20], k, v)
    with pytest.raises(GraphCaptureError, match="dropout"):
        compiled.dropout(0.1)(*leaves)
    monkeypatch.undo()
    assert all(b.kernel is not None for b in compiled.builds())  # nothing became a fallback
    assert_close(compiled(q[:, :, :20], k, v), causal(*to_float64(q[:, :, :20], k, v)), torch.float32)
