"""attn_implementation="flashlight" on every model-zoo family (tiny random config, float32, CPU).

Per family, against eager on the same weights: logits (last hidden state for encoders) with
left and right padding; greedy ``generate()`` with the dynamic and the static cache (decoders
and encoder-decoders); a packed batch (two sequences in one row, ``position_ids`` restarting,
no attention mask) equal to the sequences run separately (decoders). Every check also counts
generated-kernel launches (``add_launch_hook``) and turns any "flashlight" warning (a fallback,
an unknown family or keyword) into an error, so an unfused run cannot pass.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Any, Iterator

import pytest
import torch

import flashlight_hf
import flashlight_hf.transformers.interface as fl_hf
from flashlight_hf.transformers import hook, layers, registry
from flashlight_hf.compiler.abi import KERNEL_BLOCK_TABLE, KERNEL_BWD_DKDV
from flashlight_hf.compiler.runtime import add_launch_hook
from flashlight_hf.model_zoo import FAMILIES, ZooConfig, tiny_configs
from flashlight_hf.testing import gradient_error, gradient_scale, rel_error
from flashlight_hf.transformers.masks import as_additive

TOL = 1e-4  # the bar for logits against eager, float32
TINY = tiny_configs()
GENERATING = [t for t, c in TINY.items() if c.family.kind in ("causal", "encoder-decoder")]
PACKING = [t for t, c in TINY.items() if c.family.kind == "causal" and c.family.supports_packing]


@pytest.fixture(scope="module", params=sorted(TINY))
def pair(request) -> tuple[ZooConfig, Any, Any]:
    """(config, eager model, flashlight model) on the same random weights; built once per family."""
    cfg = TINY[request.param]
    eager = cfg.build_model(attn_implementation="eager", seed=3)
    fused = cfg.build_model(attn_implementation="flashlight", seed=3)
    return cfg, eager, fused


@contextlib.contextmanager
def fused_run() -> Iterator[list[str]]:
    """Collect generated-kernel launches; any "flashlight" warning (fallback, unknown family or
    keyword argument) fails the test."""
    launches: list[str] = []
    # attention kernels only: a mask read from the data (padding) also launches its block table
    remove = add_launch_hook(lambda name: name == KERNEL_BLOCK_TABLE or launches.append(name))
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("error", message="flashlight")
            yield launches
    finally:
        remove()


def attention_calls_per_forward(cfg: ZooConfig, config: Any) -> int:
    """Attention layers one forward pass runs: decoder/encoder layers, or encoder self-attention
    plus decoder self- and cross-attention."""
    if cfg.family.kind == "encoder-decoder":
        return config.num_layers + 2 * config.num_decoder_layers if cfg.family.model_type == "t5" else \
            config.encoder_layers + 2 * config.decoder_layers
    return config.num_hidden_layers


def padded_batch(cfg: ZooConfig, *, right_padding: bool = True) -> dict[str, torch.Tensor]:
    """Two rows of 21 tokens: row 0 left-padded by 6, row 1 right-padded by 4."""
    g = torch.Generator().manual_seed(11)
    vocab = cfg.build_config().vocab_size
    ids = torch.randint(5, vocab, (2, 21), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :6] = 0
    if right_padding:
        mask[1, -4:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if cfg.family.kind == "encoder-decoder":
        batch["decoder_input_ids"] = torch.randint(5, vocab, (2, 7), generator=g)
    return batch


def output_of(cfg: ZooConfig, out: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits (decoders, encoder-decoders) or last hidden state (encoders), at non-padding rows."""
    if cfg.family.kind == "encoder":
        return out.last_hidden_state[batch["attention_mask"].bool()]
    if cfg.family.kind == "encoder-decoder":
        return out.logits  # decoder positions; the padding is in the encoder input
    return out.logits[batch["attention_mask"].bool()]


# -------------------------------------------------------------------------------------------
# (a) + (d): one forward pass with left and right padding
# -------------------------------------------------------------------------------------------

def test_forward_matches_eager_with_padding(pair):
    cfg, eager, fused = pair
    batch = padded_batch(cfg)
    with fused_run() as launches:
        got = fused(**batch)
    expected = attention_calls_per_forward(cfg, fused.config)
    assert len(launches) == expected, f"{cfg.name}: {len(launches)} kernel launches, expected one per attention " \
                                      f"layer ({expected})"
    with torch.no_grad():
        ref = eager(**batch)
    err = rel_error(output_of(cfg, got, batch), output_of(cfg, ref, batch))
    assert err <= TOL, f"{cfg.name}: output differs from eager's by {err:.2e} (relative)"


# -------------------------------------------------------------------------------------------
# (b) + (d): greedy generation, dynamic and static cache
# -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_greedy_generate_matches_eager(pair, cache):
    cfg, eager, fused = pair
    if cfg.family.model_type not in GENERATING:
        pytest.skip(f"{cfg.name} is an encoder: nothing to generate")
    # decoders generate from left padding only; an encoder-decoder's encoder takes both
    batch = padded_batch(cfg, right_padding=cfg.family.kind == "encoder-decoder")
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
    if cache == "static":
        kwargs["cache_implementation"] = "static"
    with fused_run() as launches:
        got = fused.generate(**batch, **kwargs)
    with torch.no_grad():
        ref = eager.generate(**batch, **kwargs)
    assert got.shape == ref.shape and torch.equal(got, ref), f"{cfg.name} ({cache} cache): tokens differ\n{got}\n{ref}"
    # 8 forward passes (prefill + 7 one-token steps), each through every attention layer; an
    # encoder-decoder runs its encoder once
    per_step = attention_calls_per_forward(cfg, fused.config)
    if cfg.family.kind == "encoder-decoder":
        encoder = per_step - 2 * (fused.config.num_decoder_layers if cfg.family.model_type == "t5"
                                  else fused.config.decoder_layers)
        expected = encoder + 8 * (per_step - encoder)
    else:
        expected = 8 * per_step
    assert len(launches) == expected, f"{cfg.name} ({cache} cache): {len(launches)} kernel launches, " \
                                      f"expected {expected}"


# -------------------------------------------------------------------------------------------
# (c) + (d): packed sequences
# -------------------------------------------------------------------------------------------

def test_packed_batch_equals_separate_sequences(pair):
    """Two sequences in one row, position_ids restarting at the second, no attention mask:
    Transformers builds a packed-sequence (block-diagonal causal) mask from the position ids."""
    cfg, eager, fused = pair
    if cfg.family.model_type not in PACKING:
        pytest.skip(f"{cfg.name}: Transformers detects packed sequences for decoders only")
    g = torch.Generator().manual_seed(5)
    vocab = cfg.build_config().vocab_size
    first, second = torch.randint(5, vocab, (1, 9), generator=g), torch.randint(5, vocab, (1, 12), generator=g)
    ids = torch.cat([first, second], dim=1)
    position_ids = torch.cat([torch.arange(9), torch.arange(12)])[None]
    with fused_run() as launches:
        packed = fused(input_ids=ids, position_ids=position_ids, use_cache=False).logits
    assert len(launches) == attention_calls_per_forward(cfg, fused.config)
    with torch.no_grad():
        ref = torch.cat([eager(input_ids=first, use_cache=False).logits,
                         eager(input_ids=second, use_cache=False).logits], dim=1)
        unpacked_mask = eager(input_ids=ids, use_cache=False).logits  # the same row without the reset
    err = rel_error(packed, ref)
    assert err <= TOL, f"{cfg.name}: packed logits differ from the separate runs' by {err:.2e}"
    # the test can fail: without position_ids the second sequence would see the first
    assert rel_error(unpacked_mask[:, 9:], ref[:, 9:]) > 1e-3


# -------------------------------------------------------------------------------------------
# Gradients through the programs flashlight writes itself (DiffLlama, GPT-OSS sinks) and softcap
# -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
@pytest.mark.parametrize("model_type", sorted(TINY))
def test_backward_matches_eager(model_type, checkpointing):
    """loss.backward() through the fused layers: every parameter's gradient (GPT-OSS's sinks,
    DiffLlama's λ vectors, T5's bias table included) equals eager's, through the generated
    backward kernels (no recompute warning), with gradient checkpointing too."""
    cfg = TINY[model_type]
    # checkpointed: one family per kind of program (plain, softcap, a learnable bias table, two streams)
    if checkpointing and model_type not in ("llama", "diffllama", "gemma2", "t5"):
        pytest.skip("gradient checkpointing: one family per kind of program")
    eager = cfg.build_model(attn_implementation="eager", seed=4).train()
    fused = cfg.build_model(attn_implementation="flashlight", seed=4).train()
    for m in (eager, fused):
        for mod in m.modules():  # dropout off: the two runs must see the same network
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
            for attr in ("dropout", "attention_dropout", "dropout_rate", "attn_dropout"):
                if isinstance(getattr(mod, attr, None), float):
                    setattr(mod, attr, 0.0)
        if checkpointing:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batch = padded_batch(cfg, right_padding=False)
    # a random projection of the outputs at non-padding rows (a query that sees no key outputs 0
    # with flashlight, as with SDPA, where eager averages every value)
    launches: list[str] = []
    remove = add_launch_hook(launches.append)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="flashlight")
            got = output_of(cfg, fused(**batch), batch)
            weights = torch.randn(got.shape, generator=torch.Generator().manual_seed(9))
            (got * weights).sum().backward()
    finally:
        remove()
    forward = [n for n in launches if n.startswith("flashlight_fwd")]
    calls = attention_calls_per_forward(cfg, fused.config)
    assert len(forward) == calls * (2 if checkpointing else 1), launches  # checkpointing re-runs the forward
    assert launches.count(KERNEL_BWD_DKDV) == calls, launches
    (output_of(cfg, eager(**batch), batch) * weights).sum().backward()
    scale = gradient_scale(p.grad for p in eager.parameters())
    for (name, p), (_, q) in zip(eager.named_parameters(), fused.named_parameters()):
        if p.grad is None:
            assert q.grad is None, name
            continue
        assert q.grad is not None, f"{cfg.name}: no gradient reached {name}"
        err = gradient_error(q.grad, p.grad, scale)
        assert err <= TOL, f"{cfg.name}: gradient of {name} differs from eager's by {err:.2e}"


# -------------------------------------------------------------------------------------------
# Switching an already-loaded eager model
# -------------------------------------------------------------------------------------------

def test_set_attn_implementation_on_loaded_eager_model(pair):
    cfg, eager, _ = pair
    batch = padded_batch(cfg)
    with torch.no_grad():
        ref = output_of(cfg, eager(**batch), batch)
    eager.set_attn_implementation("flashlight")
    try:
        stale = sorted({type(m).__name__ for m in eager.modules()
                        if getattr(getattr(m, "config", None), "_attn_implementation", "flashlight") != "flashlight"})
        if stale:
            import transformers

            pytest.xfail(f"Transformers {transformers.__version__} does not propagate set_attn_implementation to "
                         f"the sub-configs of {cfg.name} ({', '.join(stale[:3])} keep the old implementation; any "
                         "implementation, not only flashlight)")
        with fused_run() as launches:
            got = output_of(cfg, eager(**batch), batch)
        assert len(launches) == attention_calls_per_forward(cfg, eager.config)
        assert rel_error(got, ref) <= TOL
    finally:
        eager.set_attn_implementation("eager")
    with fused_run() as launches:
        again = output_of(cfg, eager(**batch), batch)
    assert not launches, "switched back to eager, yet generated kernels ran"
    assert torch.equal(again, ref)


# -------------------------------------------------------------------------------------------
# Registration, the registry's fallbacks and the keyword-argument policy
# -------------------------------------------------------------------------------------------

def test_enable_disable_are_exported_and_idempotent():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.models.diffllama.modeling_diffllama import DiffLlamaAttention

    try:
        flashlight_hf.enable()
        flashlight_hf.enable()
        assert AttentionInterface._global_mapping["flashlight"] is fl_hf.flashlight_attention_forward
        assert AttentionMaskInterface._global_mapping["flashlight"] is fl_hf.flashlight_mask
        assert not hook.pending().get("transformers.modeling_utils"), "a loaded module's callback must run at once"
        overridden = DiffLlamaAttention.forward
        assert getattr(overridden, "__wrapped__", None) is not None, "the DiffLlama layer override is not installed"
        flashlight_hf.disable()
        assert "flashlight" not in AttentionInterface._global_mapping
        assert "flashlight" not in AttentionMaskInterface._global_mapping
        assert DiffLlamaAttention.forward is overridden.__wrapped__, "disable() must restore DiffLlama's forward"
        flashlight_hf.disable()  # idempotent too
    finally:
        flashlight_hf.enable()
    assert DiffLlamaAttention.forward.__wrapped__ is overridden.__wrapped__  # wrapped once, not twice
    assert AttentionInterface._global_mapping["flashlight"] is fl_hf.flashlight_attention_forward


def test_registry_finds_every_eager_function():
    """The registry reads each family's eager function from Transformers' modeling files (a
    private layout): fail loudly, naming the family, when one moves."""
    import importlib

    from flashlight_hf.patches import PATCHED_MODEL_TYPES

    for model_type, path in ((f.model_type, f.eager) for f in registry.FAMILIES.values() if f.eager):
        if model_type in PATCHED_MODEL_TYPES:
            continue  # this Transformers' version bypasses the interface for it: patches/ serves it
        module = importlib.import_module(path)
        assert callable(getattr(module, "eager_attention_forward", None)), f"{model_type}: {path} moved"
    for model_type in TINY:
        assert registry.FAMILIES[model_type].eager, f"zoo family {model_type} has no registry entry"
    assert set(FAMILIES) >= set(TINY)


class _UnknownAttention(torch.nn.Module):
    """An attention module of a family the registry has never heard of."""

    class config:  # noqa: N801 - stands in for a Transformers config
        model_type = "no_such_family"

    num_key_value_groups = 2


def test_unknown_family_warns_once_and_runs_the_generic_program():
    from flashlight_hf.transformers.programs import generic_attention

    assert not hasattr(sys.modules[__name__], "eager_attention_forward")  # so the generic program is used
    module = _UnknownAttention().eval()
    q, k, v = torch.randn(1, 4, 6, 16), torch.randn(1, 2, 6, 16), torch.randn(1, 2, 6, 16)
    keep = torch.ones(6, 6, dtype=torch.bool).tril()[None, None]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, _ = fl_hf.flashlight_attention_forward(module, q, k, v, keep, scaling=0.25)
        fl_hf.flashlight_attention_forward(module, q, k, v, keep, scaling=0.25)
    named = [w for w in caught if "no_such_family" in str(w.message)]
    assert len(named) == 1, [str(w.message) for w in caught]
    ref = generic_attention(module, q, k, v, as_additive(keep, q.dtype), scaling=0.25)[0]
    assert rel_error(out, ref) <= 1e-5


def _llama_layer() -> torch.nn.Module:
    return TINY["llama"].build_model(attn_implementation="flashlight", seed=0).model.layers[0].self_attn


def test_unknown_keyword_argument_is_reported_not_dropped():
    layer = _llama_layer()
    q, k = torch.randn(1, 4, 5, 16), torch.randn(1, 2, 5, 16)
    keep = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    with pytest.warns(UserWarning, match="'my_new_flag'"):
        fl_hf.flashlight_attention_forward(layer, q, k, k, keep, scaling=0.25, my_new_flag=3)
    with pytest.raises(NotImplementedError, match="'my_object'"):
        fl_hf.flashlight_attention_forward(layer, q, k, k, keep, scaling=0.25, my_object=object())


def test_output_attentions_is_reported():
    layer = _llama_layer()
    q, k = torch.randn(1, 4, 5, 16), torch.randn(1, 2, 5, 16)
    keep = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    registry._warned.discard("output_attentions")
    with pytest.warns(UserWarning, match="output_attentions"):
        _, weights = fl_hf.flashlight_attention_forward(layer, q, k, k, keep, scaling=0.25, output_attentions=True)
    assert weights is None


def test_layers_with_different_attributes_do_not_share_a_program():
    """A program traced for one layer is reused by another only when every plain attribute the
    trace read has the same value there."""
    layer = _llama_layer()
    fam = registry.attention_for(layer)
    q, k = torch.randn(1, 4, 5, 16), torch.randn(1, 2, 5, 16)
    mask = as_additive(torch.ones(5, 5, dtype=torch.bool).tril()[None, None], q.dtype)
    first = layers.layer_program(layer, fam, 0.25, layers.classify_kwargs(fam, {}))
    first.fn(q, k, k, mask)
    assert first.seen.get("num_key_value_groups") == 2  # the trace read it through the module view
    assert layers.layer_program(layer, fam, 0.25, layers.classify_kwargs(fam, {})) is first
    layer.num_key_value_groups = 1  # as if another layer had as many KV heads as query heads
    assert layers.layer_program(layer, fam, 0.25, layers.classify_kwargs(fam, {})) is not first
