"""Tensors a program reads from outside its arguments (issue 14, item 1).

How FlexAttention users write captured buffers, and how nanoGPT keeps its causal mask: ALiBi
slopes in a closure, document ids in a global, a bias table in a dict, a 0-d scale, a tensor
bound by ``functools.partial``, an ``nn.Module``'s parameters and buffers. Each is a kernel
input read at every call (``flashlight_hf.compiler.state``): each program fuses into one kernel,
matches float64 eager, sees in-place updates and rebinding, keys its builds on shapes and dtypes
only, and gets gradients to the state that requires them.
"""

from __future__ import annotations

import copy
import functools
import warnings

import pytest
import torch

import flashlight_hf
from flashlight_hf.compiler.abi import KERNEL_BWD_DKDV, KERNEL_BWD_DQ
from flashlight_hf.compiler.runtime.hooks import add_launch_hook
from flashlight_hf.testing import assert_close, assert_gradients_close, gradients

B, H, D = 2, 4, 32


def _scores(q, k):
    return q @ k.transpose(-2, -1) * D ** -0.5


def _ij(q, k):
    return torch.arange(q.shape[-2], device=q.device)[:, None], torch.arange(k.shape[-2], device=q.device)[None, :]


def make_alibi(slopes: torch.Tensor):
    """attention-gym's ALiBi score mod: the slopes live in the closure."""
    def alibi(q, k, v):
        i, j = _ij(q, k)
        return torch.softmax(_scores(q, k) - slopes[:, None, None] * (i - j).abs(), dim=-1) @ v
    return alibi


DOC_IDS = torch.zeros(1)  # rebound by the tests (a global the program reads)
TABLES: dict[str, torch.Tensor] = {}
OFFSETS: list[torch.Tensor] = []


def document_mask(q, k, v):
    """FlexAttention's document masking, the ids read from a module-level global."""
    i, j = _ij(q, k)
    same = DOC_IDS[:, None, :, None] == DOC_IDS[:, None, None, :]
    return torch.softmax(_scores(q, k).masked_fill(~(same & (j <= i)), float("-inf")), dim=-1) @ v


def relative_table(q, k, v):
    """A T5-style relative bias gathered from a table in a dict."""
    i, j = _ij(q, k)
    bucket = (i - j).clamp(-7, 7) + 7
    return torch.softmax(_scores(q, k) + TABLES["rel"][bucket].permute(2, 0, 1), dim=-1) @ v


def head_offset(q, k, v):
    """A per-head offset held in a list."""
    return torch.softmax(_scores(q, k) * OFFSETS[0][:, None, None], dim=-1) @ v


def make_scaled(scale: torch.Tensor):
    """A 0-d temperature tensor in the closure."""
    def scaled(q, k, v):
        return torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1) @ v
    return scaled


def with_bias(q, k, v, bias):
    return torch.softmax(_scores(q, k) + bias, dim=-1) @ v


class NanoGPTAttention(torch.nn.Module):
    """nanoGPT's manual attention: a registered ``tril`` buffer sliced to the length, and a
    learnable per-head temperature."""

    def __init__(self, block: int = 64):
        super().__init__()
        self.register_buffer("bias", torch.tril(torch.ones(block, block)).view(1, 1, block, block))
        self.temperature = torch.nn.Parameter(torch.rand(H, 1, 1) + 0.5)

    def forward(self, q, k, v):
        t = q.shape[-2]
        att = _scores(q, k) * self.temperature
        att = att.masked_fill(self.bias[:, :, :t, :t] == 0, float("-inf"))
        return torch.softmax(att, dim=-1) @ v


class SoftcapTable:
    """A plain object whose method reads a tensor attribute off ``self``."""

    def __init__(self):
        self.cap = torch.rand(H, 1, 1) * 20 + 10

    def program(self, q, k, v):
        s = _scores(q, k)
        return torch.softmax(self.cap * torch.tanh(s / self.cap), dim=-1) @ v


def _qkv(s: int = 37, device: str = "cpu") -> list[torch.Tensor]:
    return [torch.randn(B, H, s, D, device=device) for _ in range(3)]


def _cases(device: str) -> dict:
    global DOC_IDS
    DOC_IDS = torch.sort(torch.randint(0, 3, (B, 37), device=device), dim=-1).values
    TABLES["rel"] = torch.randn(15, H, device=device)
    OFFSETS[:] = [torch.rand(H, device=device) + 0.5]
    return {
        "closure": make_alibi(torch.rand(H, device=device)),
        "global": document_mask,
        "dict": relative_table,
        "list": head_offset,
        "zero_dim": make_scaled(torch.tensor(0.3, device=device)),
        "partial": functools.partial(with_bias, bias=torch.randn(1, H, 1, 37, device=device)),
        "module": NanoGPTAttention().to(device),
        "method": SoftcapTable().program,
    }


def _one_kernel_no_warning(fn, inputs) -> torch.Tensor:
    compiled = flashlight_hf.compile(fn)
    launched: list[str] = []
    remove = add_launch_hook(launched.append)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="flashlight")
            out = compiled(*inputs)
    finally:
        remove()
    assert launched, "no kernel ran"
    return out


@pytest.mark.parametrize("name", ["closure", "global", "dict", "list", "zero_dim", "partial", "module", "method"])
def test_closed_over_tensors_fuse(name: str, device: str):
    fn = _cases(device)[name]
    inputs = _qkv(device=device)
    e = flashlight_hf.explain(fn, *inputs)
    assert (e.num_kernels, e.fallbacks) == (1, []), e.fallbacks
    out = _one_kernel_no_warning(fn, inputs)
    # float64 inputs promote the float32 state: eager computes the reference in float64
    assert_close(out, fn(*[t.double() for t in inputs]), torch.float32, what=name)


def test_in_place_update_is_seen(device: str):
    slopes = torch.rand(H, device=device)
    fn = make_alibi(slopes)
    compiled = flashlight_hf.compile(fn)
    inputs = _qkv(device=device)
    for scale in (1.0, 4.0, 0.0):
        slopes.mul_(scale) if scale else slopes.zero_()
        assert_close(compiled(*inputs), fn(*[t.double() for t in inputs]), torch.float32, what=f"slopes x{scale}")
    assert len(compiled.builds()) == 1  # values are never part of the key


def test_rebinding_a_global_is_seen(device: str):
    global DOC_IDS
    inputs = _qkv(device=device)
    compiled = flashlight_hf.compile(document_mask)
    for n_docs in (1, 3, 6):
        DOC_IDS = torch.sort(torch.randint(0, n_docs, (B, 37), device=device), dim=-1).values
        assert_close(compiled(*inputs), document_mask(*[t.double() for t in inputs]), torch.float32,
                     what=f"{n_docs} documents")
    assert len(compiled.builds()) == 1
    # a new length: new ids of that length, the symbolic kernel serves it
    inputs = _qkv(50, device=device)
    DOC_IDS = torch.sort(torch.randint(0, 4, (B, 50), device=device), dim=-1).values
    assert_close(compiled(*inputs), document_mask(*[t.double() for t in inputs]), torch.float32, what="length 50")


def test_module_buffer_and_parameter_updates_are_seen(device: str):
    m = NanoGPTAttention().to(device)
    compiled = flashlight_hf.compile(m)
    inputs = _qkv(device=device)
    _one_kernel_no_warning(m, inputs)
    with torch.no_grad():
        m.temperature.mul_(3.0)  # a training step's in-place update
    m.bias = torch.ones_like(m.bias)  # a new tensor for the buffer: the mask is gone
    assert_close(compiled(*inputs), m(*[t.double() for t in inputs]), torch.float32, what="updated module")
    assert not torch.isinf(m.bias).any()


def test_values_are_not_part_of_the_key(device: str):
    """Two closures of one factory differing only in their tensors' values share the disk
    cache's build (traced once): the graph holds inputs, never the values."""
    inputs = _qkv(device=device)
    a, b = make_alibi(torch.rand(H, device=device)), make_alibi(torch.rand(H, device=device) * 3)
    ca, cb = flashlight_hf.compile(a), flashlight_hf.compile(b)
    assert_close(ca(*inputs), a(*[t.double() for t in inputs]), torch.float32, what="first closure")
    assert_close(cb(*inputs), b(*[t.double() for t in inputs]), torch.float32, what="second closure")
    assert cb.builds()[0].from_disk


def test_new_dtype_or_shape_of_the_state_builds_again(device: str):
    global OFFSETS
    inputs = _qkv(device=device)
    compiled = flashlight_hf.compile(head_offset)
    OFFSETS[:] = [torch.rand(H, device=device) + 0.5]
    compiled(*inputs)
    OFFSETS[:] = [(torch.rand(1, device=device) + 0.5).to(torch.float16)]  # another dtype and shape
    assert_close(compiled(*inputs), head_offset(*[t.double() for t in inputs]), torch.float32, what="fp16 [1]")
    assert len(compiled.builds()) == 2


def _check_state_gradients(compiled, fn64, inputs: list[torch.Tensor], state: list[torch.Tensor],
                           state64: list[torch.Tensor]) -> None:
    seed = torch.randn(B, H, inputs[0].shape[-2], D, device=inputs[0].device)
    launched: list[str] = []
    remove = add_launch_hook(launched.append)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="flashlight")  # no fallback, no recompute
            leaves = [t.detach().requires_grad_() for t in inputs]
            (compiled(*leaves) * seed).sum().backward()
    finally:
        remove()
    assert KERNEL_BWD_DKDV in launched and KERNEL_BWD_DQ in launched, launched
    leaves64 = [t.detach().double().requires_grad_() for t in inputs]
    (fn64(*leaves64) * seed.double()).sum().backward()
    assert_gradients_close([t.grad for t in leaves + state], [t.grad for t in leaves64 + state64], torch.float32,
                           what="state gradients")


def test_gradients_reach_closed_over_tensors(device: str):
    slopes = torch.rand(H, device=device).requires_grad_()
    slopes64 = slopes.detach().double().requires_grad_()
    fn = make_alibi(slopes)
    e = flashlight_hf.explain(fn, *_qkv(device=device))
    assert e.backward_kernels == 2 and not e.backward_fallbacks, e.backward_fallbacks
    _check_state_gradients(flashlight_hf.compile(fn), make_alibi(slopes64), _qkv(device=device), [slopes], [slopes64])


def test_gradients_reach_module_parameters(device: str):
    m = NanoGPTAttention().to(device)
    m64 = copy.deepcopy(m).double()
    _check_state_gradients(flashlight_hf.compile(m), m64, _qkv(device=device), [m.temperature], [m64.temperature])


def test_generated_gradients_of_a_partial_bound_bias(device: str):
    bias = torch.randn(1, H, 1, 37, device=device, requires_grad=True)
    bias64 = bias.detach().double().requires_grad_()
    fn = functools.partial(with_bias, bias=bias)
    _check_state_gradients(flashlight_hf.compile(fn), functools.partial(with_bias, bias=bias64), _qkv(device=device),
                           [bias], [bias64])


class _Computed:
    """A tensor behind a property: no value can be put there for a call."""

    def __init__(self, device: str):
        self._slopes = (torch.rand(H, device=device),)

    @property
    def slopes(self):
        return self._slopes[0]


def test_state_that_cannot_be_passed_falls_back_saying_what_to_do(device: str):
    holder = _Computed(device)

    def alibi_property(q, k, v):
        i, j = _ij(q, k)
        return torch.softmax(_scores(q, k) - holder.slopes[:, None, None] * (i - j).abs(), dim=-1) @ v

    inputs = _qkv(device=device)
    with pytest.warns(UserWarning, match="pass the tensor as an argument"):
        out = flashlight_hf.compile(alibi_property)(*inputs)
    assert_close(out, alibi_property(*[t.double() for t in inputs]), torch.float32, what="eager fallback")


def test_state_that_is_gone_runs_the_function_as_written(device: str):
    global DOC_IDS
    compiled = flashlight_hf.compile(document_mask)
    inputs = _qkv(device=device)
    DOC_IDS = torch.zeros(B, 37, dtype=torch.long, device=device)
    compiled(*inputs)
    saved = DOC_IDS
    del globals()["DOC_IDS"]
    try:
        with pytest.raises(NameError):
            compiled(*inputs)
    finally:
        DOC_IDS = saved


def test_into_reads_the_state_too(device: str):
    """``into`` (the front door's write into a caller's tensor) passes the state like a call."""
    slopes = torch.rand(H, device=device)
    fn = make_alibi(slopes)
    compiled = flashlight_hf.compile(fn)
    inputs = _qkv(device=device)
    for _ in range(2):  # the first launch, then the launched kernel's direct path
        out = torch.full((B, H, 37, D), float("nan"), device=device)
        assert compiled.into(out, *inputs) is out
        assert_close(out, fn(*[t.double() for t in inputs]), torch.float32, what="into")
        slopes.mul_(2.0)
