"""The generated backward (issue 13): gradients of every input through dK/dV and dQ kernels.

Each program's gradients (q, k, v and every captured tensor) are checked against float64
autograd of the eager program, with the launch hooks proving the backward ran as generated
kernels (``flashlight_bwd_dkdv`` / ``flashlight_bwd_dq``), not the recompute path; lengths that
are not tile multiples, q_len ≠ kv_len, head dims 32–256, bitwise determinism, score terms over
keys or rows alone (a key gate ``sigmoid(k @ w)``), and the fallback (one warning, exact
gradients) for a program whose backward is not derived.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import flashlight_hf
from flashlight_hf.compiler.abi import KERNEL_BWD_DKDV, KERNEL_BWD_DQ
from flashlight_hf.compiler.runtime.hooks import add_launch_hook
from flashlight_hf.testing import assert_gradients_close, gradients
from tests.test_generator import (differential_head_halves, evoformer, gqa_5d_view, gqa_repeat_interleave,
                                  key_gate, prefix_lm, repeat_kv)

B, H, D = 2, 4, 32


def _scores(q, k):
    return q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5


def per_key_bias(q, k, v, bias):  # [B, 1, 1, N]: a learnable key-padding bias
    return torch.softmax(_scores(q, k) + bias, dim=-1) @ v


def per_row_bias(q, k, v, bias):  # [B, H, M, 1]: a constant per row (its gradient is zero)
    return torch.softmax(_scores(q, k) + bias, dim=-1) @ v


def full_bias(q, k, v, bias):  # [B, H, M, N]
    return torch.softmax(_scores(q, k) + bias, dim=-1) @ v


def alibi_slopes(q, k, v, slopes):  # learnable ALiBi slopes [H]
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    s = _scores(q, k) - slopes[:, None, None] * (i - j).abs()
    return torch.softmax(s, dim=-1) @ v


def temperature(q, k, v, t):  # a per-head temperature [1, H, 1, 1]
    return torch.softmax(_scores(q, k) / t, dim=-1) @ v


def relative_table(q, k, v, table):  # T5-style gathered bias table [15, H]
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    bucket = (j - i).clamp(-7, 7) + 7
    return torch.softmax(_scores(q, k) + table[bucket].permute(2, 0, 1), dim=-1) @ v


def gqa_repeat_kv_alibi_causal(q, k, v, slopes):  # learnable per-query-head slopes beside shared keys
    g = q.shape[1] // k.shape[1]
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    s = _scores(q, repeat_kv(k, g)) - slopes[:, None, None] * (i - j).abs()
    s = s.masked_fill(j > i + (k.shape[-2] - q.shape[-2]), float("-inf"))
    return torch.softmax(s, dim=-1) @ repeat_kv(v, g)


def mqa_expand(q, k, v):  # one key head for every query head, as a broadcast
    b, h, s, d = q.shape
    k, v = k[:, :1].expand(b, h, -1, d), v[:, :1].expand(b, h, -1, d)
    return torch.softmax(_scores(q, k), dim=-1) @ v


def row_temperature(q, k, v, u):  # a per-row temperature from the query: a score term over rows alone
    return torch.softmax(_scores(q, k) * torch.sigmoid(q @ u)[..., None], dim=-1) @ v


def vector_temperature(q, k, v, u):  # one temperature from a parameter vector: a term over neither
    return torch.softmax(_scores(q, k) * torch.sigmoid((u * u).mean()), dim=-1) @ v


def gqa_key_gate_causal(q, k, v, w):  # a key gate on the shared key heads, under a causal mask
    g = q.shape[1] // k.shape[1]
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    s = _scores(q, repeat_kv(k, g)) + repeat_kv(torch.sigmoid(k @ w)[..., None], g).transpose(-2, -1)
    s = s.masked_fill(j > i + (k.shape[-2] - q.shape[-2]), float("-inf"))
    return torch.softmax(s, dim=-1) @ repeat_kv(v, g)


def max_logit(q, k, v):  # the epilogue reads each row's max score: a running max the backward holds constant
    s = _scores(q, k)
    return torch.softmax(s, dim=-1) @ v + s.amax(-1, keepdim=True)


def _qkv(sq: int, sk: int, d: int = D, hk: int = H, device: str = "cpu"):
    return [torch.randn(B, H, sq, d, device=device), torch.randn(B, hk, sk, d, device=device),
            torch.randn(B, hk, sk, d, device=device)]


def _case(name: str, sq: int, sk: int, device: str) -> tuple:
    qkv = _qkv(sq, sk, device=device)
    extra = {
        "per_key_bias": (per_key_bias, [torch.randn(B, 1, 1, sk, device=device)]),
        "per_row_bias": (per_row_bias, [torch.randn(B, H, sq, 1, device=device)]),
        "full_bias": (full_bias, [torch.randn(B, H, sq, sk, device=device)]),
        "alibi_slopes": (alibi_slopes, [torch.rand(H, device=device)]),
        "temperature": (temperature, [torch.rand(1, H, 1, 1, device=device) + 0.5]),
        "relative_table": (relative_table, [torch.randn(15, H, device=device)]),
        "prefix_lm": (prefix_lm, []),
        "gqa_5d_view": (gqa_5d_view, None),
        "gqa_repeat_interleave": (gqa_repeat_interleave, None),
        "gqa_repeat_kv_alibi_causal": (gqa_repeat_kv_alibi_causal, [torch.rand(H, device=device)]),
        "mqa_expand": (mqa_expand, None),
        "key_gate": (key_gate, [torch.randn(D, device=device)]),
        "row_temperature": (row_temperature, [torch.randn(D, device=device)]),
        "vector_temperature": (vector_temperature, [torch.randn(D, device=device)]),
        "gqa_key_gate_causal": (gqa_key_gate_causal, [torch.randn(D, device=device)]),
    }
    fn, more = extra[name]
    if more is None or name.startswith("gqa"):  # GQA: two query heads per key head
        return fn, _qkv(sq, sk, hk=H // 2, device=device) + (more or [])
    return fn, qkv + more


GQA = ["gqa_5d_view", "gqa_repeat_interleave", "gqa_repeat_kv_alibi_causal", "mqa_expand"]
# a score term over keys alone, rows alone or neither, and the kernel that sums its adjoint
TERMS = {"key_gate": "key", "row_temperature": "row", "vector_temperature": "scalar", "gqa_key_gate_causal": "key"}
CASES = ["per_key_bias", "per_row_bias", "full_bias", "alibi_slopes", "temperature", "relative_table", "prefix_lm",
         *GQA]


def check_generated_gradients(fn, inputs: list[torch.Tensor], *, at_least: int = 3) -> None:
    """``fn``'s compiled gradients equal float64 autograd, and the backward ran as kernels (a
    scalar's gradient, one sum over every score, is held to 4 × eager fp32's own error where that
    is above the tolerance: see ``assert_gradients_close``)."""
    compiled = flashlight_hf.compile(fn)
    seed = torch.randn_like(fn(*inputs))
    launched: list[str] = []
    remove = add_launch_hook(launched.append)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="flashlight")  # no fallback, no recompute
            got = gradients(compiled, inputs, seed)
    finally:
        remove()
    assert KERNEL_BWD_DKDV in launched and KERNEL_BWD_DQ in launched, launched
    ref = gradients(fn, inputs, seed, dtype=torch.float64)
    checked = assert_gradients_close(got, ref, torch.float32, eager=gradients(fn, inputs, seed))
    assert checked >= at_least


@pytest.mark.parametrize("name", CASES)
def test_generated_gradients_of_every_input(name: str, device: str):
    fn, inputs = _case(name, 37, 53, device)
    check_generated_gradients(fn, inputs)


@pytest.mark.parametrize("name", GQA)
def test_gqa_loops_over_the_group_inside_the_dkdv_program(name: str):
    """GQA: one dK/dV program per key head's key tile loops over the group's query heads (the
    issue's layout), so nothing per query head is stored and summed for dK and dV."""
    fn, inputs = _case(name, 19, 23, "cpu")
    source = flashlight_hf.explain(fn, *inputs).backward_sources[0]
    # two query heads per key head; MQA: every query head (a run-time size where heads are symbolic)
    loop = "for head_in_group in range(0, " + ("" if name == "mqa_expand" else "2):")
    assert loop in source, source


@pytest.mark.parametrize("sq,sk", [(53, 37), (1, 40), (64, 64), (17, 130)])
def test_lengths(sq: int, sk: int, device: str):
    fn, inputs = _case("alibi_slopes", sq, sk, device)
    check_generated_gradients(fn, inputs)


@pytest.mark.parametrize("d", [32, 80, 128, 256])
def test_head_dims(d: int, device: str):
    check_generated_gradients(lambda q, k, v: torch.softmax(_scores(q, k), dim=-1) @ v, _qkv(21, 19, d, device=device))


def test_differential_in_diffllama_layout(device: str):
    q, k = torch.randn(B, H, 29, D, device=device), torch.randn(B, H, 35, D, device=device)
    v, lam = torch.randn(B, H // 2, 35, 2 * D, device=device), torch.rand((), device=device)
    check_generated_gradients(differential_head_halves, [q, k, v, lam], at_least=4)


@pytest.mark.parametrize("batch", [1, B])
def test_head_halves_are_written_in_place(batch: int, monkeypatch):
    """DiffLlama reads q and k as two halves of the heads (``q[:, :h]``, ``q[:, h:]``): the
    kernels write each half's gradient straight into its slice of the input's gradient — no
    fp32 buffer folded after, and never an accumulating scatter at every element's index (a
    sort over the whole tensor: 22 ms of a 43 ms step on an H200 before)."""
    from flashlight_hf.compiler.runtime import backward as runtime_backward

    folded: list[int] = []
    fold = runtime_backward.fold
    monkeypatch.setattr(runtime_backward, "fold", lambda st, *a: folded.append(st.load.input) or fold(st, *a))
    q, k = torch.randn(batch, H, 29, D), torch.randn(batch, H, 35, D)
    v, lam = torch.randn(batch, H // 2, 35, 2 * D), torch.rand(())
    check_generated_gradients(differential_head_halves, [q, k, v, lam], at_least=4)
    assert folded == []
    assert _scatters_in_backward(differential_head_halves, [q, k, v, lam]) == []


def test_a_slice_read_twice_folds_and_adds(device: str):
    """Two loads whose boxes overlap (``q[:, :3]`` and ``q[:, 1:]`` as two streams) cannot both
    be written in place: fp32 buffers, folded into slices, added."""
    def overlapping(q, k, v):
        a = torch.softmax(_scores(q[:, :3], k[:, :3]), dim=-1) @ v[:, :3]
        b = torch.softmax(_scores(q[:, 1:], k[:, 1:]), dim=-1) @ v[:, 1:]
        return a - 0.5 * b
    check_generated_gradients(overlapping, _qkv(21, 26, device=device))


def test_streams_sharing_values_accumulate_one_dv():
    """DiffLlama's two streams read one V: the dK/dV program keeps one dV accumulator (Σ_n P_nᵀ·dA_n)
    and stores it once, not one per stream (registers are what a two-stream tile runs short of)."""
    import re

    q, k = torch.randn(B, H, 29, D), torch.randn(B, H, 35, D)
    v, lam = torch.randn(B, H // 2, 35, 2 * D), torch.rand(())
    source = flashlight_hf.explain(differential_head_halves, q, k, v, lam).backward_sources[0]
    assert len(re.findall(r"\bdv\d+ = tl\.zeros", source)) == 1, source
    assert source.count("# d v") == 1, source


def document_ids(q, k, v, q_doc, k_doc):  # a document mask with its own ids per query and per key
    same = q_doc[:, None] == k_doc[None, :]
    return torch.softmax(_scores(q, k).masked_fill(~same, float("-inf")), dim=-1) @ v


def test_document_mask_skips_the_forwards_tiles_in_both_kernels(device: str):
    """Documents of 32 tokens: most (query tile, key tile) pairs hold no kept pair, and both
    backward kernels walk a block table of the tiles the ids keep, as the forward does — the
    gradients still equal float64 autograd, lengths off the tile grid included."""
    s = 83
    doc = torch.arange(s, device=device) // 32
    inputs = _qkv(s, s, device=device) + [doc, doc]
    check_generated_gradients(document_ids, inputs)
    sources = flashlight_hf.explain(document_ids, *inputs).backward_sources
    assert len(sources) == 2 and all("from the block table" in src for src in sources), sources


def test_document_mask_with_fully_masked_rows_gives_eagers_nan(device: str):
    """Query rows whose document no key has: eager's softmax is NaN there, so are dV and the
    row's share of every gradient; the tile skip keeps such rows' tiles, and the gradients
    match eager's NaN pattern and values (rel_error fails on any NaN eager does not give)."""
    sq, sk = 40, 48
    q_doc = torch.arange(sq, device=device) // 16
    q_doc[18:22] = 9  # no key is in document 9
    k_doc = torch.arange(sk, device=device) // 16
    check_generated_gradients(document_ids, _qkv(sq, sk, device=device) + [q_doc, k_doc], at_least=1)


def _scatters_in_backward(fn, inputs: list[torch.Tensor]) -> list[str]:
    """The gather / scatter ops (``aten::index``, ``aten::index_put_``…) one compiled forward +
    backward of ``fn`` runs, from the profiler's op records."""
    compiled = flashlight_hf.compile(fn)
    leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]
    compiled(*leaves)  # compile outside the profile
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        compiled(*leaves).sum().backward()
    return sorted({e.name for e in prof.events() if e.name.startswith(("aten::index", "aten::_index_put"))})


def test_evoformer_biases_and_gate(device: str):
    """Both biases and the gate: the gate's gradient comes from autograd of the epilogue, whose
    loads are views of the inputs — no gather, so no sort-based scatter in its backward (tens of
    ms over Evoformer's gate on a GPU)."""
    b, n, s, h, d = 1, 3, 19, 2, 16
    q, k, v = (torch.randn(b, n, s, h, d, device=device) for _ in range(3))
    mask_bias = torch.randn(b, n, 1, 1, s, device=device)
    pair_bias = torch.randn(b, 1, h, s, s, device=device)
    gate = torch.randn(b, n, s, h, d, device=device)
    check_generated_gradients(evoformer, [q, k, v, mask_bias, pair_bias, gate], at_least=6)
    assert _scatters_in_backward(evoformer, [q, k, v, mask_bias, pair_bias, gate]) == []


def test_evoformer_bf16_pair_bias_buffer_and_no_whole_input_copies():
    """bf16 (the interpreter upcasts its dots): the pair bias's adjoint per (row, key) over every
    (b, n) is kept in bf16, as eager rounds it, and summed over N in fp32; every gradient within
    bf16's tolerance of float64. The epilogue's autograd reads the gate as a view without narrows
    of whole axes, whose backward would zero-fill and copy the whole gate once per axis."""
    b, n, s, h, d = 1, 3, 21, 2, 16
    q, k, v, gate = (torch.randn(b, n, s, h, d, dtype=torch.bfloat16) for _ in range(4))
    mask_bias = torch.randn(b, n, 1, 1, s, dtype=torch.bfloat16)
    pair_bias = torch.randn(b, 1, h, s, s, dtype=torch.bfloat16)
    inputs = [q, k, v, mask_bias, pair_bias, gate]
    compiled = flashlight_hf.compile(evoformer)
    seed = torch.randn_like(evoformer(*inputs))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        got = gradients(compiled, inputs, seed)
    ref = gradients(evoformer, inputs, seed, dtype=torch.float64)
    assert assert_gradients_close(got, ref, torch.bfloat16) == 6
    assert all(g.dtype == torch.bfloat16 for g in got)
    zeroed = [e for e in prof.events() if e.name == "aten::zero_" and e.input_shapes
              and list(e.input_shapes[0]) == list(gate.shape)]
    assert zeroed == [], [e.name for e in zeroed]


@pytest.mark.parametrize("name", sorted(TERMS))
def test_score_terms_over_keys_or_rows_alone(name: str, device: str):
    """A key gate ``sigmoid(k @ w)`` (its gradient reaches k and w through the score), a per-row
    temperature ``sigmoid(q @ u)``, a temperature from a parameter vector: the term's adjoint is
    summed inside the kernel that loops over the other axis (dK/dV for a term over keys or
    neither, dQ for one over rows), then carried to the loads under it; every input's gradient,
    the term's own parameter included, against float64."""
    fn, inputs = _case(name, 37, 53, device)
    check_generated_gradients(fn, inputs, at_least=4)
    e = flashlight_hf.explain(fn, *inputs)
    assert e.backward_kernels == 2 and e.backward_fallbacks == []
    kind = TERMS[name]
    dkdv, dq = e.backward_sources
    assert f"d the {kind} term Σ_" in (dq if kind == "row" else dkdv)
    assert f"d the {kind} term Σ_" not in (dkdv if kind == "row" else dq)


@pytest.mark.parametrize("name", ["alibi_slopes", "key_gate", "gqa_key_gate_causal"])
def test_two_backward_runs_are_bitwise_equal(name: str, device: str):
    fn, inputs = _case(name, 37, 53, device)
    compiled = flashlight_hf.compile(fn)
    seed = torch.randn_like(fn(*inputs))
    first = gradients(compiled, inputs, seed)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        second = gradients(compiled, inputs, seed)
    finally:
        torch.use_deterministic_algorithms(was)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_underived_backward_warns_once_and_recomputes_exactly(device: str):
    """The epilogue reads each row's max score: its gradient flows through the row's argmax,
    which the derived backward (running maxes held constant) does not give."""
    q, k, v = _qkv(19, 23, device=device)
    compiled = flashlight_hf.compile(max_logit)
    seed = torch.randn_like(max_logit(q, k, v))
    launched: list[str] = []
    remove = add_launch_hook(launched.append)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = gradients(compiled, [q, k, v], seed)
            gradients(compiled, [q, k, v], seed)
    finally:
        remove()
    said = [str(c.message) for c in caught if "backward" in str(c.message)]
    assert len(said) == 1 and "re-runs it eagerly" in said[0] and "running max" in said[0], said
    assert KERNEL_BWD_DKDV not in launched and KERNEL_BWD_DQ not in launched, launched
    ref = gradients(max_logit, [q, k, v], seed, dtype=torch.float64)
    assert_gradients_close(got, ref, torch.float32, what="recomputed")


def test_explain_shows_the_backward(device: str):
    q, k, v = _qkv(19, 23, device=device)
    e = flashlight_hf.explain(lambda q, k, v: torch.softmax(_scores(q, k), dim=-1) @ v, q, k, v)
    assert e.num_kernels == 1 and e.backward_kernels == 2 and e.backward_fallbacks == []
    assert "def flashlight_bwd_dkdv(" in e.backward_sources[0] and "def flashlight_bwd_dq(" in e.backward_sources[1]
    assert "def flashlight_fwd_train(" in e.training_source and "backward kernels: 2" in str(e)
    e = flashlight_hf.explain(key_gate, q, k, v, torch.randn(D, device=device))
    assert e.num_kernels == 1 and e.backward_kernels == 2 and e.backward_fallbacks == []
    e = flashlight_hf.explain(max_logit, q, k, v)
    assert e.num_kernels == 1 and e.backward_kernels == 0
    (node, why), = e.backward_fallbacks
    assert "running max" in why and "backward fallbacks" in str(e)


@pytest.mark.parametrize("name", ["per_key_bias", "key_gate"])
def test_torch_compile_traces_the_backward_through_fake_implementations(name: str, device: str):
    """AOTAutograd (``aot_eager``) traces the training forward and the backward op with their
    fake implementations (the key gate's ``w``: a gradient only a term's chain gives); the
    compiled graph's gradients equal eager's."""
    fn, inputs = _case(name, 21, 30, device)
    compiled = flashlight_hf.compile(fn)
    compiled(*inputs)  # builds the kernel outside tracing
    leaves = [t.detach().requires_grad_() for t in inputs]
    graph = torch.compile(lambda *a: (compiled(*a) * 2.0).sum(), backend="aot_eager", fullgraph=True)
    graph(*leaves).backward()
    ref = [t.detach().double().requires_grad_() for t in inputs]
    (fn(*ref) * 2.0).sum().backward()
    assert_gradients_close([t.grad for t in leaves], [t.grad for t in ref], torch.float32, what="aot_eager")


def test_first_call_inside_activation_checkpointing(device: str):
    """A program compiled (traced) for the first time inside a checkpointed region: tracing must
    record nothing for autograd, or the forward saves more tensors than the recompute (which
    finds the kernel cached) and the backward raises ``CheckpointError``."""
    import random

    from torch.utils.checkpoint import checkpoint

    scale = 1.0 + random.random()  # a constant no earlier test compiled: this call traces

    def program_over(table):  # a T5-style table captured by the program, learnable
        def program(q, k, v):
            i = torch.arange(q.shape[-2], device=q.device)[:, None]
            j = torch.arange(k.shape[-2], device=q.device)[None, :]
            bias = table[(j - i).clamp(-7, 7) + 7].permute(2, 0, 1)
            return torch.softmax(_scores(q, k) * scale + bias, dim=-1) @ v
        return program

    table = torch.randn(15, H, device=device, requires_grad=True)
    leaves = [t.requires_grad_() for t in _qkv(21, 21, device=device)]
    seed = torch.randn(B, H, 21, D, device=device)
    compiled = flashlight_hf.compile(program_over(table))
    (checkpoint(compiled, *leaves, use_reentrant=False) * seed).sum().backward()
    table64 = table.detach().double().requires_grad_()
    ref = [t.detach().double().requires_grad_() for t in leaves]
    (program_over(table64)(*ref) * seed.double()).sum().backward()
    assert_gradients_close([t.grad for t in leaves + [table]], [t.grad for t in ref + [table64]], torch.float32,
                           what="checkpointed")


def anti_causal(q, k, v):  # query i sees keys i.. (a key bound that rises with the row)
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    return torch.softmax(_scores(q, k).masked_fill(j < i, float("-inf")), dim=-1) @ v


@pytest.mark.parametrize("name", ["causal", "anti_causal"])
def test_longest_tiles_launch_first(name: str, device: str):
    """Causal row tiles (and anti-causal key tiles) launch last-first, so the longest programs
    start first; every tile is still written once: the gradients over several tiles are exact."""
    def causal(q, k, v):
        i = torch.arange(q.shape[-2], device=q.device)[:, None]
        j = torch.arange(k.shape[-2], device=q.device)[None, :]
        return torch.softmax(_scores(q, k).masked_fill(j > i, float("-inf")), dim=-1) @ v

    fn = causal if name == "causal" else anti_causal
    inputs = _qkv(150, 150, device=device)
    e = flashlight_hf.explain(fn, *inputs)
    dkdv, dq = e.backward_sources[0], e.backward_sources[1]
    reversed_rows = "tile_m = n_row_tiles - 1 - pid % n_row_tiles"
    reversed_keys = "tile_n = n_key_tiles - 1 - pid % n_key_tiles"
    assert (reversed_rows in e.sources[0] and reversed_rows in e.training_source and reversed_rows in dq) == (
        name == "causal")
    assert (reversed_keys in dkdv) == (name == "anti_causal")
    check_generated_gradients(fn, inputs)
