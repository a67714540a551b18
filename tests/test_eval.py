"""``flashlight-hf eval`` end to end on CPU: the tiny random Llama, the real SmolLM2 and MiniLM
checkpoints, failing impls, offline errors, and the report files."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flashlight_hf.cli import main
from flashlight_hf.eval import EvalError
from flashlight_hf.eval.models import load_model
from flashlight_hf.eval.quality import causal_quality, sliding_windows
from flashlight_hf.eval.runner import RUN_KEYS
from flashlight_hf.eval.text import Text, causal_token_ids, default_text, read_dataset
from flashlight_hf.testing import rel_error

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PPL_REL_TOL = 1e-4  # eager vs sdpa perplexity, float32
FAST = ["--decode-tokens", "4", "--repeats", "1"]


def run_eval(out: Path, *args: str) -> dict:
    assert main(["eval", "--out", str(out), *args]) == 0
    return json.loads((out / "results.json").read_text())


def rows(results: dict) -> dict[str, dict]:
    return {r["impl"]: r for r in results["runs"]}


def assert_same_perplexity(results: dict, a: str = "eager", b: str = "sdpa") -> None:
    ppl = rows(results)
    err = rel_error(torch.tensor(ppl[b]["perplexity"]), torch.tensor(ppl[a]["perplexity"]))
    assert err <= PPL_REL_TOL, f"{a} vs {b} perplexity: relative error {err:.2e}"


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tiny")
    # stride < window: overlapping windows, the recipe's context-only positions are exercised
    results = run_eval(out, "--random-weights", "llama-tiny", "--impl", "eager,sdpa,flashlight", "--max-tokens",
                       "512", "--window", "128", "--stride", "96", *FAST)
    return out, results


def test_tiny_llama_flashlight_matches_eager(tiny_report):
    """The generated kernels (through attn_implementation="flashlight") score like eager."""
    _, results = tiny_report
    assert rows(results)["flashlight"]["error"] is None, rows(results)["flashlight"]["error"]
    assert_same_perplexity(results, "eager", "flashlight")
    assert rows(results)["flashlight"]["max_abs_logit_diff"] < 1e-3


def test_tiny_llama_eager_and_sdpa_agree(tiny_report):
    _, results = tiny_report
    assert_same_perplexity(results)
    sdpa = rows(results)["sdpa"]
    assert 0.0 <= sdpa["max_abs_logit_diff"] < 1e-3
    assert 0.0 <= sdpa["mean_abs_logit_diff"] <= sdpa["max_abs_logit_diff"]
    assert rows(results)["eager"]["max_abs_logit_diff"] == 0.0


def test_tiny_llama_report_has_every_field(tiny_report):
    out, results = tiny_report
    for key in ("runs", "model", "text", "versions", "device", "command"):
        assert key in results
    assert set(results["versions"]) >= {"python", "torch", "transformers", "triton", "flashlight_hf"}
    assert results["command"].startswith("flashlight-hf eval ")
    for run in results["runs"]:
        assert tuple(run) == RUN_KEYS
        assert run["error"] is None
        assert run["embedding_cosine"] is None  # a decoder has perplexity instead
        for key in ("perplexity", "prefill_tokens_per_s", "decode_tokens_per_s", "peak_memory_bytes"):
            assert run[key] is not None and run[key] > 0, key
    report = (out / "report.md").read_text()
    assert "| eager |" in report and "| sdpa |" in report and "llama-tiny" in report
    for name in ("throughput.png", "perplexity.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, name


def test_failing_impls_get_an_error_and_the_others_still_run(tmp_path):
    from transformers import AttentionInterface

    def always_fails(*args, **kwargs):
        raise RuntimeError("this attention always fails")

    AttentionInterface.register("eval_test_always_fails", always_fails)
    results = run_eval(tmp_path, "--random-weights", "llama-tiny", "--max-tokens", "256", "--window", "128",
                       "--impl", "eager,not_an_attention_impl,eval_test_always_fails,sdpa", *FAST)
    by_impl = rows(results)
    assert by_impl["not_an_attention_impl"]["error"].startswith("ValueError: ")  # refused when switching
    assert by_impl["eval_test_always_fails"]["error"] == "RuntimeError: this attention always fails"
    for impl in ("not_an_attention_impl", "eval_test_always_fails"):
        assert all(v is None for k, v in by_impl[impl].items() if k not in ("impl", "error"))
    for impl in ("eager", "sdpa"):
        assert by_impl[impl]["error"] is None
        assert by_impl[impl]["perplexity"] > 0 and by_impl[impl]["decode_tokens_per_s"] > 0
    assert by_impl["sdpa"]["max_abs_logit_diff"] is not None
    assert "not_an_attention_impl" in (tmp_path / "report.md").read_text()


def test_impl_switch_falls_back_to_rebuilding(monkeypatch):
    """A model class that cannot switch impls dynamically only gets a warning from Transformers;
    the eval must then rebuild it with the same weights, not report one impl under two names."""
    loaded = load_model(random_weights="llama-tiny")
    ids = torch.randint(49152, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = loaded.model(ids).logits
    monkeypatch.setattr(type(loaded.model), "_can_set_attn_implementation", classmethod(lambda cls: False))
    old_model = loaded.model
    loaded.set_impl("eager")
    assert loaded.model is not old_model and loaded.model.config._attn_implementation == "eager"
    assert old_model.config._attn_implementation == "sdpa"  # the rebuild did not write into the old config
    with torch.no_grad():
        after = loaded.model(ids).logits
    assert rel_error(after, before) <= 1e-5


def test_perplexity_of_one_window_is_the_model_loss():
    loaded = load_model(random_weights="llama-tiny")
    ids = torch.randint(49152, (1, 64), generator=torch.Generator().manual_seed(1))
    quality = causal_quality(loaded, ["sdpa"], ids, window=64, stride=64)
    with torch.no_grad():
        loss = loaded.model(ids, labels=ids).loss
    assert math.isclose(quality["sdpa"].perplexity, math.exp(loss.item()), rel_tol=1e-5)


def test_sliding_windows_score_every_token_once():
    n = 23
    for window, stride in [(8, 8), (8, 3), (8, 1), (30, 30), (5, 4)]:
        scored = []
        for begin, end, n_new in sliding_windows(n, window, stride):
            assert 0 < end - begin <= window and n_new <= end - begin
            scored += range(max(end - n_new, 1), end)  # position 0 has no context: never scored
        assert scored == list(range(1, n)), (window, stride)


def test_default_text_is_pydoc_topics():
    from pydoc_data.topics import topics

    text = default_text()
    assert text.text.startswith(topics[sorted(topics)[0]]) and len(text.text) > 100_000
    assert "pydoc_data.topics" in text.source


def test_tokenizing_a_prefix_matches_tokenizing_everything():
    from flashlight_hf.model_zoo import load_tokenizer

    tokenizer = load_tokenizer("minilm-l6")
    text = default_text()
    ids, _ = causal_token_ids(text, tokenizer, 1000, vocab_size=30522)
    assert ids[0].tolist() == tokenizer(text.text[:200_000]).input_ids[:1000]


def test_synthetic_ids_without_tokenizer():
    ids, about = causal_token_ids(Text("", "none"), None, 100, vocab_size=50, seed=3)
    assert ids.shape == (1, 100) and int(ids.max()) < 50 and "synthetic" in about


def test_dataset_offline_gives_a_clear_message(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(EvalError) as e:
        read_dataset("wikitext:wikitext-2-raw-v1:test")
    assert "--text-file" in str(e.value) and "pydoc_data.topics" in str(e.value)
    # the CLI prints the message alone, no traceback, status 2, before loading any model
    assert main(["eval", "--dataset", "wikitext:wikitext-2-raw-v1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error: could not load dataset" in err and "Traceback" not in err


def test_hub_id_offline_gives_a_clear_message(capsys, tmp_path):
    assert main(["eval", "--model", "HuggingFaceTB/no-such-model-for-flashlight-tests", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "could not load model" in err and "smollm2-135m" in err and "Traceback" not in err


def test_bad_options_give_a_clear_message(capsys, tmp_path):
    assert main(["eval", "--model", "llama-tiny", "--out", str(tmp_path)]) == 2
    assert "--random-weights llama-tiny" in capsys.readouterr().err
    assert main(["eval", "--window", "64", "--stride", "65", "--out", str(tmp_path)]) == 2
    assert "--stride" in capsys.readouterr().err


def test_cli_help():
    done = subprocess.run([sys.executable, "-m", "flashlight_hf", "eval", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    for flag in ("--model", "--impl", "--text-file", "--dataset", "--max-tokens", "--window", "--stride", "--dtype",
                 "--device", "--decode-tokens", "--random-weights", "--out", "--seed"):
        assert flag in done.stdout


@pytest.mark.slow
def test_smollm2_eager_and_sdpa_agree(tmp_path):
    results = run_eval(tmp_path, "--model", "smollm2-135m", "--impl", "eager,sdpa", "--max-tokens", "320",
                       "--window", "160", *FAST)
    assert_same_perplexity(results)
    for run in results["runs"]:
        assert 2 < run["perplexity"] < 200, run
        assert run["error"] is None
    assert results["model"]["parameters"] > 100_000_000


@pytest.mark.slow
def test_minilm_embeddings_agree(tmp_path):
    results = run_eval(tmp_path, "--model", "minilm-l6", "--impl", "eager,sdpa", "--max-tokens", "600", *FAST)
    sdpa = rows(results)["sdpa"]
    assert sdpa["embedding_cosine"] >= 0.99999
    assert sdpa["perplexity"] is None and sdpa["decode_tokens_per_s"] is None  # an encoder: no LM, no decode
    assert sdpa["prefill_tokens_per_s"] > 0
    assert (tmp_path / "perplexity.png").read_bytes().startswith(PNG_MAGIC)
