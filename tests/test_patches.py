"""flashlight_hf.patches: families whose attention bypasses Transformers' AttentionInterface
(BLOOM, MPT, Falcon, GPT-Neo, DeBERTa-v2) run generated kernels under
attn_implementation="flashlight", equal eager's outputs and greedy tokens, and switch back
cleanly. Tiny float32 configs from model_zoo/patched.py, CPU through Triton's interpreter."""

from __future__ import annotations

import inspect
import importlib
import warnings

import pytest
import torch

import flashlight_hf  # noqa: F401 - registers "flashlight" and installs the patches
from flashlight_hf import patches
from flashlight_hf.compiler.abi import KERNEL_BLOCK_TABLE
from flashlight_hf.compiler.runtime import add_launch_hook
from flashlight_hf.model_zoo.patched import PATCHED_CONFIGS, PATCHED_FAMILIES
from flashlight_hf.testing import rel_error

CONFIGS = sorted(PATCHED_CONFIGS)
DECODERS = [n for n in CONFIGS if PATCHED_CONFIGS[n].family.kind == "causal"]
# Static cache: MPT's generate ignores cache_implementation="static" (it has no static-cache
# path) and Falcon's ALiBi model fails with one in eager too (build_alibi_tensor gets a 4-D mask).
STATIC_CACHE = [n for n in DECODERS if n not in ("mpt-tiny", "falcon-tiny")]

_models: dict[str, tuple[torch.nn.Module, torch.nn.Module]] = {}


def models(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(eager, flashlight) models with the same weights; built once per test module."""
    if name not in _models:
        zc = PATCHED_CONFIGS[name]
        _models[name] = (zc.build_model(attn_implementation="eager", seed=1),
                         zc.build_model(attn_implementation="flashlight", seed=1))
    return _models[name]


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (2, 21), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :6] = 0  # left padding in row 0
    mask[1, -4:] = 0  # right padding in row 1
    return ids, mask


def _output(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, **kwargs) -> torch.Tensor:
    out = model(input_ids=ids, attention_mask=mask, **kwargs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    return patches.attention_modules(model, patches.family_patch(model))


def _strict_run(fn):
    """Run fn with every flashlight warning an error; return (result, kernel launches)."""
    launches: list[str] = []
    # attention kernels only: a mask read from the data (padding) also launches its block table
    remove = add_launch_hook(lambda name: name == KERNEL_BLOCK_TABLE or launches.append(name))
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("error", message="flashlight")
            return fn(), launches
    finally:
        remove()


# -- the private Transformers APIs patches/_transformers.py relies on -------------------------

def test_private_transformers_apis_are_where_patches_expect_them():
    """Fails loudly when Transformers moves what patches/_transformers.py touches."""
    from transformers import PreTrainedModel

    from flashlight_hf.patches import _transformers

    assert _transformers.installed(), "flashlight_hf.enable() must install the patches"
    assert PreTrainedModel.post_init._flashlight_original is not None
    assert PreTrainedModel.set_attn_implementation._flashlight_original is not None
    for model_type, (module_name, table_name) in _transformers.CLASS_TABLES.items():
        if model_type not in patches.PATCHED_MODEL_TYPES:
            continue  # GPT-J's table exists only where GPT-J bypasses the interface
        table = getattr(importlib.import_module(module_name), table_name)
        assert isinstance(table, dict) and table["flashlight"] is table["eager"], (module_name, table_name)
    config = PATCHED_CONFIGS["bloom-tiny"].build_config()
    assert hasattr(config, "_attn_implementation_internal")
    _transformers.set_config_implementation(config, "flashlight")
    assert config._attn_implementation == "flashlight"
    # the reason the set_attn_implementation wrapper exists: Transformers refuses to switch these
    from transformers.models.bloom.modeling_bloom import BloomForCausalLM
    assert BloomForCausalLM._can_set_attn_implementation() is False


@pytest.mark.parametrize("model_type", sorted(patches.PATCHED_MODEL_TYPES))
def test_patched_families_still_bypass_the_attention_interface(model_type: str):
    """A family that moves to AttentionInterface must lose its patch (the front door serves it)."""
    patch = patches.PATCHES[model_type]
    source = inspect.getsource(importlib.import_module(patch.module))
    assert "ALL_ATTENTION_FUNCTIONS.get_interface(" not in source, \
        f"{model_type} now uses AttentionInterface: drop patches/{model_type} and let the front door serve it"
    assert model_type in PATCHED_FAMILIES
    assert "gptj" in patches.PATCHED_MODEL_TYPES or "ALL_ATTENTION_FUNCTIONS.get_interface(" in inspect.getsource(
        importlib.import_module("transformers.models.gptj.modeling_gptj"))


# -- outputs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CONFIGS)
def test_outputs_match_eager_with_left_and_right_padding(name: str):
    eager, fused = models(name)
    # GPT-J is patched only where it bypasses the interface (5.17); elsewhere the front door serves it
    assert patches.is_patched(fused) == (PATCHED_CONFIGS[name].family.model_type in patches.PATCHED_MODEL_TYPES)
    assert fused.config._attn_implementation == "flashlight"
    ids, mask = _batch()
    got, launches = _strict_run(lambda: _output(fused, ids, mask))
    assert len(launches) == eager.config.num_hidden_layers, "every layer must run a generated kernel"
    with torch.no_grad():
        ref = _output(eager, ids, mask)
    keep = mask.bool()  # padded positions' outputs are not meaningful in either implementation
    err = rel_error(got[keep], ref[keep])
    assert err <= 1e-4, f"{name}: outputs differ from eager's by {err:.2e} (relative)"


@pytest.mark.parametrize("name", DECODERS)
def test_greedy_generate_matches_eager_dynamic_cache(name: str):
    eager, fused = models(name)
    ids, mask = _batch(1)
    mask[1] = 1  # generation pads on the left only
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    got, launches = _strict_run(lambda: fused.generate(**kw))
    with torch.no_grad():
        ref = eager.generate(**kw)
    assert torch.equal(got, ref), f"{name}: greedy tokens differ from eager's"
    assert len(launches) == 8 * eager.config.num_hidden_layers  # prefill + 7 decode steps, every layer


@pytest.mark.parametrize("name", STATIC_CACHE)
def test_greedy_generate_matches_eager_static_cache(name: str):
    eager, fused = models(name)
    ids, mask = _batch(2)
    mask[1] = 1
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0,
              cache_implementation="static")
    got, launches = _strict_run(lambda: fused.generate(**kw))
    with torch.no_grad():
        ref = eager.generate(**kw)
    assert torch.equal(got, ref), f"{name}: greedy tokens (static cache) differ from eager's"
    assert len(launches) == 8 * eager.config.num_hidden_layers


def test_every_program_built_a_kernel_without_fallback():
    """explain()'s view of what the tests above built: one kernel per specialisation, no fallback."""
    from flashlight_hf.patches import bloom, deberta_v2, falcon, gpt_neo, gptj, mpt

    programs = [bloom._program, mpt._program, falcon._alibi, falcon._rotary, gpt_neo._program, deberta_v2._program]
    if "gptj" in patches.PATCHED_MODEL_TYPES:
        programs.append(gptj._program)
    for name in CONFIGS:
        models(name)  # make sure every family has run at least once (order of tests is free)
        _strict_run(lambda: _output(models(name)[1], *_batch()))
    for program in programs:
        builds = program.builds()
        assert builds, f"{program.fn.__name__} never ran"
        for b in builds:
            assert b.kernel is not None and b.fallback is None, (program.fn.__name__, b.fallback)


def test_explain_deberta_gathers_fuse_into_one_kernel():
    """DeBERTa's c2p / p2c gathers (indices from arange through 1-D distance tables) fuse."""
    from flashlight_hf.patches.deberta_v2 import deberta_v2_attention

    g = torch.Generator().manual_seed(0)
    bh, n, d, span2, heads = 8, 9, 16, 8, 4
    q, k, v = (torch.randn(bh, n, d, generator=g) for _ in range(3))
    mask = torch.ones(2, 1, n, n, dtype=torch.long)
    c2p, p2c = torch.randn(bh * n * span2, generator=g), torch.randn(bh * n * span2, generator=g)
    idx = torch.randint(0, span2, (2 * n - 1,), generator=g)
    explanation = flashlight_hf.explain(deberta_v2_attention, q, k, v, mask, c2p, idx, p2c, idx.flip(0),
                                        6.9, heads, span2, "c2p+p2c")
    assert explanation.num_kernels == 1 and not explanation.fallbacks, str(explanation)[:2000]


# -- applying and undoing -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["bloom-tiny", "falcon-rope-tiny", "deberta-v2-tiny"])
def test_set_attn_implementation_applies_and_undoes_the_patch(name: str):
    eager, _ = models(name)
    model = PATCHED_CONFIGS[name].build_model(attn_implementation="eager", seed=1)
    ids, mask = _batch(3)
    with torch.no_grad():
        ref = _output(eager, ids, mask)
    layers = _attention_modules(model)
    assert layers and all("forward" not in m.__dict__ for m in layers)

    model.set_attn_implementation("flashlight")
    assert patches.is_patched(model) and model.config._attn_implementation == "flashlight"
    got, launches = _strict_run(lambda: _output(model, ids, mask))
    assert len(launches) == model.config.num_hidden_layers
    assert rel_error(got[mask.bool()], ref[mask.bool()]) <= 1e-4

    model.set_attn_implementation("eager")
    assert not patches.is_patched(model) and model.config._attn_implementation == "eager"
    assert all("forward" not in m.__dict__ and m.forward.__func__ is type(m).forward for m in layers)
    back, launches = _strict_run(lambda: _output(model, ids, mask))
    assert not launches
    assert torch.equal(back, ref), "after switching back, outputs must be eager's exactly"


def test_remove_restores_loaded_with_flashlight_and_refuses_impossible_targets():
    model = PATCHED_CONFIGS["gpt_neo-tiny"].build_model(attn_implementation="flashlight", seed=4)
    assert patches.is_patched(model)
    with pytest.raises(ValueError, match="reload the model"):
        patches.remove(model, "sdpa")  # GPT-Neo's eager class has no SDPA path
    assert patches.is_patched(model), "a refused switch must leave the model as it was"
    assert patches.remove(model) and model.config._attn_implementation == "eager"
    assert not patches.remove(model)
    assert all("forward" not in m.__dict__ for m in _attention_modules(model))
    assert patches.apply(model) and patches.is_patched(model)


def test_apply_ignores_families_it_does_not_patch():
    from flashlight_hf.model_zoo.configs import zoo_config

    model = zoo_config("bert-tiny").build_model(attn_implementation="eager")
    assert patches.apply(model) is False and model.config._attn_implementation == "eager"


def test_patch_is_dormant_when_the_config_is_switched_behind_its_back():
    eager, fused = models("bloom-tiny")
    ids, mask = _batch(5)
    try:
        fused.config._attn_implementation_internal = "eager"
        got, launches = _strict_run(lambda: _output(fused, ids, mask))
    finally:
        fused.config._attn_implementation_internal = "flashlight"
    assert not launches
    with torch.no_grad():
        assert torch.equal(got, _output(eager, ids, mask))


# -- options the kernels do not cover fall back loudly ------------------------------------------

@pytest.mark.parametrize("name", ["bloom-tiny", "mpt-tiny"])
def test_output_attentions_falls_back_with_one_warning(name: str):
    """MPT's layers never see output_attentions: the model-level hook must route it to the fallback."""
    eager, fused = models(name)
    ids, mask = _batch(6)
    launches: list[str] = []
    remove = add_launch_hook(launches.append)
    try:
        with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = fused(input_ids=ids, attention_mask=mask, output_attentions=True)
    finally:
        remove()
    with torch.no_grad():
        ref = eager(input_ids=ids, attention_mask=mask, output_attentions=True)
    ours = [w for w in caught if "flashlight" in str(w.message) and "output_attentions" in str(w.message)]
    assert len(ours) <= 1 and not launches
    assert all(a is not None for a in out.attentions)
    for a, b in zip(out.attentions, ref.attentions):
        assert rel_error(a[mask.bool()[:, None, :, None].expand_as(a)], b[mask.bool()[:, None, :, None].expand_as(b)]) \
            <= 1e-5
    keep = mask.bool()
    assert rel_error(out.logits[keep], ref.logits[keep]) <= 1e-5


def test_dropout_in_training_falls_back_to_the_family_code():
    zc = PATCHED_CONFIGS["gpt_neo-tiny"]
    config = zc.build_config()
    config.attention_dropout = 0.5
    from transformers import AutoModelForCausalLM

    torch.manual_seed(7)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="flashlight").train()
    ids, mask = _batch(7)
    launches: list[str] = []
    remove = add_launch_hook(launches.append)
    try:
        with pytest.warns(UserWarning, match="dropout > 0 in training"):
            model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
    finally:
        remove()
    assert not launches


@pytest.mark.parametrize("name", ["bloom-tiny", "deberta-v2-tiny"])
def test_backward_matches_eager(name: str):
    """The custom op's backward (eager recompute) reaches every parameter, the relative-position
    projections that feed DeBERTa's gathered terms included."""
    zc = PATCHED_CONFIGS[name]
    ids, mask = _batch(8)
    keep = mask.bool()
    grads = []
    for impl in ("eager", "flashlight"):
        model = zc.build_model(attn_implementation=impl, seed=3)  # eval mode: no dropout either side
        out = _output(model, ids, mask)[keep]
        # a random projection: a plain sum of squares of a LayerNorm output has ~0 gradient
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(9))).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    scale = max(float(g.norm()) for g in grads[0].values())
    for n in grads[0]:
        if float(grads[0][n].norm()) <= 1e-6 * scale:
            # analytically zero (a bias added equally to every key's score, e.g. DeBERTa's
            # pos_key_proj.bias, cancels in the softmax): both sides are rounding noise
            assert float(grads[1][n].norm()) <= 1e-5 * scale, n
            continue
        err = rel_error(grads[1][n], grads[0][n])
        assert err <= 1e-4, f"{name}: gradient of {n} differs from eager's by {err:.2e}"


def test_deepcopy_of_a_patched_model_runs_its_own_weights():
    import copy

    _, fused = models("falcon-rope-tiny")
    twin = copy.deepcopy(fused)
    assert patches.is_patched(twin)
    ids, mask = _batch(10)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
    (a, _), (b, launches) = _strict_run(lambda: _output(fused, ids, mask)), _strict_run(lambda: _output(twin, ids, mask))
    assert len(launches) == twin.config.num_hidden_layers
    assert not torch.allclose(a, b), "the copy must run its own (changed) weights, not the original's"
    assert patches.remove(twin) and patches.is_patched(fused)


def test_deberta_relative_positions_other_than_the_standard_ones_fall_back():
    from flashlight_hf.patches.deberta_v2 import _distance_tables, _standard_relative_pos

    eager, fused = models("deberta-v2-tiny")
    layer = _attention_modules(fused)[0]
    n = 21
    _, _, rel = _distance_tables(layer, n, n, torch.device("cpu"))
    from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position

    x = torch.zeros(1, n, 8)
    standard = build_relative_position(x, x, bucket_size=layer.position_buckets,
                                       max_position=layer.max_relative_positions)
    assert _standard_relative_pos(standard, rel, n, n)
    odd = standard.clone()
    odd[0, 5, 9] += 1  # breaks one diagonal only
    assert not _standard_relative_pos(odd, rel, n, n)


def test_from_pretrained_with_flashlight_applies_the_patch(tmp_path):
    from transformers import AutoModelForCausalLM

    eager, _ = models("mpt-tiny")
    eager.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="flashlight").eval()
    assert patches.is_patched(loaded) and loaded.config._attn_implementation == "flashlight"
    ids, mask = _batch(11)
    got, launches = _strict_run(lambda: _output(loaded, ids, mask))
    assert len(launches) == loaded.config.num_hidden_layers
    with torch.no_grad():
        ref = _output(eager, ids, mask)
    assert rel_error(got[mask.bool()], ref[mask.bool()]) <= 1e-4


def test_falcon_switches_back_to_sdpa():
    """Falcon's eager class also runs SDPA at run time, so "sdpa" is a valid target without reloading."""
    eager, _ = models("falcon-rope-tiny")
    model = PATCHED_CONFIGS["falcon-rope-tiny"].build_model(attn_implementation="flashlight", seed=1)
    model.set_attn_implementation("sdpa")
    assert not patches.is_patched(model) and model.config._attn_implementation == "sdpa"
    ids, mask = _batch(12)
    got, launches = _strict_run(lambda: _output(model, ids, mask))
    assert not launches
    with torch.no_grad():
        ref = _output(eager, ids, mask)
    assert rel_error(got[mask.bool()], ref[mask.bool()]) <= 1e-4
