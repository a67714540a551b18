"""The model-level benchmark (benchmarks/bench_llm.py), smoke-tested on CPU with --quick.

Timings on CPU mean nothing; these check that main() runs the gate, every prefill / decode
row and the outputs end to end (llama-tiny, lengths 64 / 128, decode at a 64-token context),
that the cache is put back to its context length between decode steps, and that an impl that
raises becomes an error row instead of stopping the run. flex_attention is left out: on CPU it
needs Inductor's C++ toolchain and takes longer than the rest together.
"""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import llm_cases as cases
from benchmarks.bench_llm import main

pytestmark = pytest.mark.timeout(120)

IMPLS = ["eager", "sdpa", "flashlight"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_llm")
    results = main(["--quick", "--device", "cpu", "--impls", ",".join(IMPLS + ["no_such_impl"]),
                    "--cache", "dynamic,static", "--rounds", "2", "--out", str(out)])
    return out, results


def test_outputs_exist_and_agree(quick_run):
    out, results = quick_run
    for name in ("results.json", "results.md", "llm.png"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["rows"]) == len(results["rows"])
    assert saved["meta"]["env"]["transformers"]


def test_gate_passes_for_working_impls(quick_run):
    _, results = quick_run
    gate = {g["impl"]: g for g in results["gate"]}
    assert set(gate) == set(IMPLS) | {"no_such_impl"}
    for impl in IMPLS:
        assert gate[impl]["status"] == "ok", gate[impl]
        assert gate[impl]["prefill_err_fp32"] <= gate[impl]["limit"]
    assert gate["sdpa"]["prefill_max_abs"] == 0.0
    assert gate["no_such_impl"]["status"] == "error" and "no_such_impl" in gate["no_such_impl"]["error"]


def test_every_case_has_a_row_per_impl(quick_run):
    out, results = quick_run
    rows = results["rows"]
    expected = {("prefill", 1, n, None) for n in (64, 128)}
    expected |= {("decode", b, 64, kind) for b in (1, 2) for kind in ("dynamic", "static")}
    got = {(r["phase"], r["batch"], r["tokens"], r["cache"]) for r in rows}
    assert got == expected
    for r in rows:
        if r["impl"] == "no_such_impl":
            assert r["status"] == "skipped" and r["ms"] is None
        else:
            assert r["status"] == "ok", r
            assert r["ms"] > 0 and r["tokens_per_s"] > 0
            assert r["x_sdpa"] is not None
    table = (out / "results.md").read_text()
    assert table.count("| prefill |") == 2 * (len(IMPLS) + 1)
    assert table.count("| decode (dynamic) |") == table.count("| decode (static) |") == 2 * (len(IMPLS) + 1)
    assert "| flashlight |" in table


@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_decode_step_keeps_the_context_length(kind):
    model = cases.build_model("llama-tiny", dtype=torch.float32, device=torch.device("cpu"), seed=0)
    state = cases.prefill_cache(model, batch=2, context=16, kind=kind, vocab=model.config.vocab_size, seed=0)
    step = cases.checked_decode_call(model, state)
    first = step()
    for _ in range(2):
        again = step()
        assert int(state.cache.get_seq_length()) == 16
    torch.testing.assert_close(again, first)  # same context, same token: the same logits every step


def test_a_step_that_raises_halfway_leaves_the_next_impl_the_same_context():
    """An impl failing in its first layer (which already appended to the cache, the second not) must not
    hand the next impl a longer context."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def broken(module, query, *args, **kwargs):
        if module.layer_idx == 0 and query.shape[2] == 1:
            raise RuntimeError("broken decode kernel")
        return sdpa_attention_forward(module, query, *args, **kwargs)

    AttentionInterface.register("broken_test_impl", broken)
    AttentionMaskInterface.register("broken_test_impl", sdpa_mask)
    try:
        model = cases.build_model("llama-tiny", dtype=torch.float32, device=torch.device("cpu"), seed=0)
        state = cases.prefill_cache(model, batch=1, context=16, kind="dynamic", vocab=model.config.vocab_size, seed=0)
        reference = cases.decode_call(model, state)()
        model = cases.use_impl(model, "broken_test_impl")
        with pytest.raises(RuntimeError, match="broken decode kernel"):
            cases.checked_decode_call(model, state)
        assert [layer.keys.shape[-2] for layer in state.cache.layers] == [17, 16]
        model = cases.use_impl(model, "sdpa")
        step = cases.checked_decode_call(model, state)
        torch.testing.assert_close(step(), reference)
        assert [layer.keys.shape[-2] for layer in state.cache.layers] == [16, 16]
    finally:
        for iface in (AttentionInterface, AttentionMaskInterface):
            iface._global_mapping.pop("broken_test_impl", None)


def test_decode_rounds_interleave_impls(quick_run):
    """--rounds 2: every timed decode row has two round timings and its ms is their median."""
    _, results = quick_run
    decode = [r for r in results["rows"] if r["phase"] == "decode" and r.get("ms") is not None]
    assert decode
    for r in decode:
        assert len(r["round_ms"]) == 2, r
        assert r["ms"] == pytest.approx(sum(r["round_ms"]) / 2)
