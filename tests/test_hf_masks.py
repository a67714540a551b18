"""Masks as structure: what "flashlight"'s mask function returns, and what the kernels do with it.

The attention function must receive the mask's pieces (offsets, mask function, padding), not a
``[B, 1, Q, K]`` tensor; the generated kernel turns causal masks with KV-cache offsets and
contiguous padding into loop bounds (no per-tile mask loads), evaluates other padding and packed
sequences as predicates, and one kernel serves every decode step."""

from __future__ import annotations

import warnings

import pytest
import torch

import flashlight_hf.transformers.interface as fl_hf
from flashlight_hf import settings
from flashlight_hf.compiler.runtime import add_launch_hook
from flashlight_hf.transformers import layers
from flashlight_hf.transformers.masks import StructuredMask
from flashlight_hf.model_zoo.configs import zoo_config
from flashlight_hf.testing import key_tile_body, rel_error


@pytest.fixture(scope="module")
def models(device):
    eager = zoo_config("llama-tiny").build_model(attn_implementation="eager", seed=3, device=device)
    fused = zoo_config("llama-tiny").build_model(attn_implementation="flashlight", seed=3, device=device)
    return eager, fused


def _masks_seen(model, **inputs) -> list:
    """The attention_mask objects the attention function receives in one forward."""
    seen = []
    original = fl_hf.flashlight_attention_forward

    def spy(module, q, k, v, attention_mask, *a, **kw):
        seen.append(attention_mask)
        return original(module, q, k, v, attention_mask, *a, **kw)

    from transformers import AttentionInterface
    AttentionInterface.register("flashlight", spy)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        AttentionInterface.register("flashlight", original)
    return seen


def _compiled():
    """Every compiled attention program the registry holds."""
    return [p.fn for progs in layers._programs.values() for p in progs]


def _sources_with_padding(kind: str) -> list[str]:
    """Sources of the structured-mask programs whose padding took the form ``kind``."""
    out = []
    for key, progs in layers._programs.items():
        structure = key[-1]
        if isinstance(structure, layers.MaskStructure) and structure.sig[2] == kind:
            out += [b.source.source for p in progs for b in p.fn.builds() if b.source is not None]
    return out


def test_attention_receives_structure_not_a_dense_mask(models):
    _, fused = models
    ids = torch.randint(5, 1000, (2, 9), device=fused.device)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    seen = _masks_seen(fused, input_ids=ids, attention_mask=mask)
    assert seen and all(isinstance(m, StructuredMask) for m in seen)
    m = seen[0]
    assert m.shape == (2, 1, 9, 9) and m.ndim == 4 and m.dtype == torch.bool
    assert m.contiguous() is m and m.to(torch.bool) is m
    # anything else builds the real mask (Transformers' own SDPA builder): still correct
    dense = m[:, :, :, :9]
    assert isinstance(dense, torch.Tensor) and not isinstance(dense, StructuredMask)
    expected = torch.tril(torch.ones(9, 9, dtype=torch.bool, device=mask.device))[None, None] & mask.bool()[:, None, None, :]
    assert torch.equal(dense, expected)


def test_causal_and_contiguous_padding_become_loop_bounds(models):
    eager, fused = models
    ids = torch.randint(5, 1000, (2, 40), device=fused.device)
    mask = torch.ones_like(ids)
    mask[0, :7] = 0    # left padding
    mask[1, 33:] = 0   # right padding
    with torch.no_grad():
        got = fused(input_ids=ids, attention_mask=mask).logits
        ref = eager(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    assert rel_error(got[keep], ref[keep]) <= 1e-4
    src = _sources_with_padding("ranges")
    assert src, "no kernel with padding as key ranges was built"
    assert "BOUNDARY=False" in src[-1], "the kernel has interior tiles"
    interior = key_tile_body(src[-1], boundary=False)
    # an interior tile reads K and V only: the mask is in the loop bounds, not loaded per tile
    assert interior.count("tl.load(") == 2, interior
    # the mask arithmetic (on kv_idx) runs in boundary tiles only
    assert "kv_idx" in key_tile_body(src[-1], boundary=True) and "kv_idx" not in interior, interior


def test_padding_with_holes_is_read_per_key(models):
    eager, fused = models
    ids = torch.randint(5, 1000, (2, 20), device=fused.device)
    mask = torch.ones_like(ids)
    mask[0, 4:7] = 0  # a hole: not one run of real tokens
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("error", message="flashlight")
        got = fused(input_ids=ids, attention_mask=mask).logits
        ref = eager(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    assert rel_error(got[keep], ref[keep]) <= 1e-4


def test_packed_sequences_equal_separate_runs(models):
    _, fused = models
    a = torch.randint(5, 1000, (1, 11), device=fused.device)
    b = torch.randint(5, 1000, (1, 7), device=fused.device)
    packed = torch.cat([a, b], dim=1)
    position_ids = torch.cat([torch.arange(11), torch.arange(7)])[None].to(fused.device)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("error", message="flashlight")
        # Transformers detects packing from position_ids only without a cache (a training setup)
        got = fused(input_ids=packed, position_ids=position_ids, use_cache=False).logits
        ra = fused(input_ids=a).logits
        rb = fused(input_ids=b).logits
    assert rel_error(got[:, :11], ra) <= 1e-4 and rel_error(got[:, 11:], rb) <= 1e-4


def test_decode_steps_reuse_one_kernel(models):
    """A KV-cache offset is a run-time value: eight decode steps build nothing new."""
    eager, fused = models
    ids = torch.randint(5, 1000, (2, 13), device=fused.device)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    with torch.no_grad():
        fused.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False)  # warm up
        builds = sum(len(c.builds()) for c in _compiled())
        launches: list[str] = []
        remove = add_launch_hook(launches.append)
        try:
            got = fused.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
        finally:
            remove()
        ref = eager.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    assert torch.equal(got, ref)
    assert sum(len(c.builds()) for c in _compiled()) == builds, "a decode step recompiled"
    assert len(launches) >= 8 * fused.config.num_hidden_layers


@pytest.mark.parametrize("one_launch", ["1", "0"], ids=["one-launch", "pair"])
def test_generate_with_split_kv_decode_steps_matches_eager(models, one_launch):
    """Decode steps forced onto split KV (shares of the cache merged by their log-sum-exp: in one
    launch by default, as a partials + combine pair with FLASHLIGHT_FUSED_SPLIT=0), with the GQA
    group's heads as rows: the same tokens as eager, and the split kernels ran."""
    splits = 3
    eager, fused = models
    ids = torch.randint(5, 1000, (2, 11), device=fused.device)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    launches: list[str] = []
    remove = add_launch_hook(launches.append)
    try:
        with torch.no_grad(), settings.override(split_kv=splits, fused_split=one_launch == "1"):
            got = fused.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    finally:
        remove()
    with torch.no_grad():
        ref = eager.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    assert torch.equal(got, ref)
    expected = {"flashlight_fwd_split_fused"} if one_launch == "1" else {"flashlight_fwd_split", "flashlight_fwd_combine"}
    assert expected <= set(launches), launches
