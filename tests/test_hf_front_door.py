"""attn_implementation="flashlight" on a tiny random Llama: logits and greedy tokens equal eager's,
the generated kernels actually ran, and the mask is never silently absent."""

from __future__ import annotations

import warnings

import pytest
import torch

import flashlight_hf.transformers.interface as fl_hf
from flashlight_hf.compiler.runtime import add_launch_hook
from flashlight_hf.model_zoo.configs import zoo_config
from flashlight_hf.testing import rel_error
from flashlight_hf.transformers.masks import as_additive


@pytest.fixture(scope="module")
def models():
    eager = zoo_config("llama-tiny").build_model(attn_implementation="eager", seed=1)
    fused = zoo_config("llama-tiny").build_model(attn_implementation="flashlight", seed=1)
    return eager, fused


def _batch():
    ids = torch.randint(5, 1000, (2, 21))
    mask = torch.ones_like(ids)
    mask[0, :6] = 0  # left padding in row 0
    return ids, mask


def test_registered_in_both_interfaces():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    # disable() reaches into this private mapping: fail loudly if Transformers moves it
    assert hasattr(AttentionInterface, "_global_mapping") and hasattr(AttentionMaskInterface, "_global_mapping")
    assert "flashlight" in AttentionInterface._global_mapping
    assert "flashlight" in AttentionMaskInterface._global_mapping


def test_flash_name_check_excludes_flashlight():
    """Transformers' "flash in the name" check must not claim our implementation (private API:
    this fails loudly if the function moves or the patch stops applying)."""
    import transformers.utils.generic as generic

    check = generic.is_flash_attention_requested
    assert getattr(check, "__wrapped__", None) is not None, "the flash-name patch did not apply"
    assert not check(requested_attention_implementation="flashlight")
    assert check(requested_attention_implementation="flash_attention_2")


def test_logits_match_eager_with_left_padding(models):
    eager, fused = models
    ids, mask = _batch()
    launches: list[str] = []
    remove = add_launch_hook(launches.append)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("error", message="flashlight")
            got = fused(input_ids=ids, attention_mask=mask).logits
    finally:
        remove()
    assert len(launches) == eager.config.num_hidden_layers, "every layer must run a generated kernel"
    with torch.no_grad():
        ref = eager(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()  # padded positions' logits are not meaningful in either implementation
    err = rel_error(got[keep], ref[keep])
    assert err <= 1e-4, f"logits differ from eager's by {err:.2e} (relative)"


def test_greedy_generate_matches_eager(models):
    eager, fused = models
    ids, mask = _batch()
    with torch.no_grad():
        a = eager.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
        b = fused.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    assert torch.equal(a, b)


def test_backward_matches_eager():
    eager = zoo_config("llama-tiny").build_model(attn_implementation="eager", seed=2).train()
    fused = zoo_config("llama-tiny").build_model(attn_implementation="flashlight", seed=2).train()
    ids, mask = _batch()
    # no loss on padding, nor on a token predicted *from* a padding position (padding rows see no
    # key: 0 here, as in SDPA; eager averages every value there)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, 1:] = labels[:, 1:].masked_fill(mask[:, :-1] == 0, -100)
    for m in (eager, fused):
        m(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    for (name, p), (_, q) in zip(eager.named_parameters(), fused.named_parameters()):
        assert p.grad is not None and q.grad is not None, name
        err = rel_error(q.grad, p.grad)
        assert err <= 1e-4, f"gradient of {name} differs from eager's by {err:.2e}"


def test_missing_mask_is_an_error_not_a_silent_unmasked_run(models):
    _, fused = models
    layer = fused.model.layers[0].self_attn
    q = torch.randn(1, 4, 5, 16)
    k = torch.randn(1, 2, 5, 16)
    with pytest.raises(RuntimeError, match="received no mask"):
        fl_hf.flashlight_attention_forward(layer, q, k, k, None, scaling=0.25)


@pytest.mark.slow
def test_smollm2_perplexity_flashlight_equals_sdpa(tmp_path):
    """The real SmolLM2-135M checkpoint, float32 on CPU: perplexity equal to sdpa's to 1e-4."""
    import json

    from flashlight_hf.cli import main

    assert main(["eval", "--impl", "sdpa,flashlight", "--max-tokens", "128", "--window", "128",
                 "--decode-tokens", "0", "--repeats", "1", "--out", str(tmp_path)]) == 0
    runs = {r["impl"]: r for r in json.loads((tmp_path / "results.json").read_text())["runs"]}
    assert runs["flashlight"]["error"] is None, runs["flashlight"]["error"]
    a, b = runs["sdpa"]["perplexity"], runs["flashlight"]["perplexity"]
    assert 2 < a < 200 and abs(a - b) / a <= 1e-4, (a, b)


def test_mask_conversion_is_shared_by_layers_but_not_stale():
    mask = torch.rand(1, 1, 4, 6) > 0.3
    a = as_additive(mask, torch.float32)
    assert as_additive(mask, torch.float32) is a  # the next layer reuses it
    mask[..., 0] = ~mask[..., 0]  # edited in place: converted again
    b = as_additive(mask, torch.float32)
    assert torch.equal(b == 0, mask)
