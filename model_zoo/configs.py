"""Named random-weight configurations: tiny ones for tests, real-sized ones for speed work.

Random weights say nothing about quality, but attention cost depends only on shapes, so a
real-sized random model measures speed at that size without shipping its weights. Each config
names the zoo checkpoint whose tokenizer fits its vocabulary, so real text can drive it:

- ``llama-tiny`` keeps SmolLM2's vocabulary (49152) so the SmolLM2 tokenizer maps text to valid
  ids exactly (no clipping, which would distort the token distribution); the embedding is the
  only large tensor (3.1M parameters), still fast on a CPU.
- ``llama-1b`` is Llama-3.2-1B's shape, vocabulary included (128256), so its parameter count and
  LM-head cost are the real ones; SmolLM2 ids (< 49152) are valid ids of that vocabulary.
- ``bert-tiny`` keeps BERT's uncased WordPiece vocabulary (30522), the one all-MiniLM-L6-v2 uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .families import FAMILIES, FamilySpec


@dataclass(frozen=True)
class ZooConfig:
    """A family plus the config fields that differ from Transformers' defaults for it."""

    name: str
    family: FamilySpec
    fields: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None  # zoo checkpoint whose tokenizer fits this vocabulary
    tiny: bool = False  # the family's test config (tests/test_zoo_families.py builds each one)
    about: str = ""

    def build_config(self):
        """The Transformers config (a fresh object each call)."""
        from transformers import AutoConfig

        return AutoConfig.for_model(self.family.model_type, **self.fields)

    def build_model(self, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                    seed: int = 0, attn_implementation: str | None = None):
        """A randomly initialised model in eval mode. Initialised on CPU, so a seed gives the same
        weights on every device."""
        torch.manual_seed(seed)
        auto = auto_class(self.family)
        model = auto.from_config(self.build_config(), dtype=dtype, attn_implementation=attn_implementation)
        return model.to(device).eval()


_LLAMA, _BERT = FAMILIES["llama"], FAMILIES["bert"]

CONFIGS: dict[str, ZooConfig] = {
    "llama-tiny": ZooConfig(
        name="llama-tiny",
        family=_LLAMA,
        fields=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=128, vocab_size=49152, max_position_embeddings=8192,
                    tie_word_embeddings=True),
        tokenizer="smollm2-135m",
        tiny=True,
        about="2 layers, 4 query / 2 KV heads, head dim 16, SmolLM2 vocabulary; for tests",
    ),
    "llama-1b": ZooConfig(
        name="llama-1b",
        family=_LLAMA,
        fields=dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                    intermediate_size=8192, vocab_size=128256, max_position_embeddings=131072,
                    rope_theta=500000.0, tie_word_embeddings=True),
        tokenizer="smollm2-135m",
        about="Llama-3.2-1B shape: 16 layers, 32 query / 8 KV heads, head dim 64, 1.24B parameters",
    ),
    "bert-tiny": ZooConfig(
        name="bert-tiny",
        family=_BERT,
        fields=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                    vocab_size=30522, max_position_embeddings=512),
        tokenizer="minilm-l6",
        tiny=True,
        about="2 layers, 4 heads, head dim 16, BERT uncased vocabulary; for tests",
    ),
}

# Tiny test configs of the other interface families: 2 layers, hidden 64, 4 query heads of dim 16
# (2 KV heads where the family has GQA), a 512-token vocabulary (no offline tokenizer fits them;
# tests drive them with random ids). A sliding window of 8 is shorter than the tests' sequences,
# so a window that was ignored would change the result. Special token ids are set inside the
# vocabulary. Weights are drawn with initializer_range 0.2 (Transformers' default 0.02 gives
# near-uniform attention, where a wrong scale or softcap would hardly change the output).
_SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=512,
              max_position_embeddings=256, initializer_range=0.2)
_GQA = dict(_SMALL, num_key_value_heads=2, head_dim=16)
_TOKENS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _tiny(name: str, model_type: str, about: str, **fields: Any) -> ZooConfig:
    return ZooConfig(name=name, family=FAMILIES[model_type], fields=fields, tiny=True, about=about)


for _cfg in (
    _tiny("mistral-tiny", "mistral", "GQA 4/2, sliding window 8 on both layers",
          **_GQA, **_TOKENS, sliding_window=8),
    _tiny("qwen2-tiny", "qwen2", "GQA 4/2, QKV bias; layer 0 full, layer 1 sliding window 8",
          **_GQA, **_TOKENS, use_sliding_window=True, sliding_window=8, max_window_layers=1),
    _tiny("qwen3-tiny", "qwen3", "GQA 4/2, QK-norm; layer 0 full, layer 1 sliding window 8",
          **_GQA, **_TOKENS, use_sliding_window=True, sliding_window=8, max_window_layers=1),
    _tiny("gemma2-tiny", "gemma2", "GQA 4/2, softcap 2.0, scale 24 ** -0.5, sliding window 8 then global",
          **_GQA, **_TOKENS, sliding_window=8, attn_logit_softcapping=2.0, query_pre_attn_scalar=24,
          final_logit_softcapping=30.0),
    _tiny("gemma3-tiny", "gemma3_text", "GQA 4/2, QK-norm, scale 24 ** -0.5, sliding window 8 then global",
          **_GQA, **_TOKENS, sliding_window=8, query_pre_attn_scalar=24,
          layer_types=["sliding_attention", "full_attention"]),
    _tiny("gpt-oss-tiny", "gpt_oss", "GQA 4/2, sinks, sliding window 8 then full, 4 experts (top 2)",
          **dict(_GQA, intermediate_size=64, max_position_embeddings=131072), **_TOKENS, sliding_window=8,
          num_local_experts=4,
          num_experts_per_tok=2),
    _tiny("phi3-tiny", "phi3", "GQA 4/2, fused QKV projection",
          **{k: v for k, v in _GQA.items() if k != "head_dim"}, **_TOKENS),
    _tiny("gpt-neox-tiny", "gpt_neox", "4 heads, rotary on half of each head",
          **_SMALL, **_TOKENS, rotary_pct=0.5),
    _tiny("gpt2-tiny", "gpt2", "4 heads, learned positions",
          n_embd=64, n_layer=2, n_head=4, n_inner=128, vocab_size=512, n_positions=256, initializer_range=0.2,
          bos_token_id=1, eos_token_id=2),
    _tiny("diffllama-tiny", "diffllama", "differential attention, 4 query / 2 KV heads",
          **_GQA, **_TOKENS),
    _tiny("modernbert-tiny", "modernbert", "4 heads; layer 0 global, layer 1 local (window 8)",
          **{k: v for k, v in _SMALL.items() if k != "max_position_embeddings"}, max_position_embeddings=256,
          global_attn_every_n_layers=2, local_attention=8, pad_token_id=0, bos_token_id=1, eos_token_id=2,
          cls_token_id=1, sep_token_id=2),
    _tiny("t5-tiny", "t5", "2 + 2 layers, 4 heads of dim 16, 8 relative-position buckets",
          vocab_size=512, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
          relative_attention_num_buckets=8, relative_attention_max_distance=16, initializer_factor=1.0,
          pad_token_id=0, eos_token_id=1, decoder_start_token_id=0),
    _tiny("bart-tiny", "bart", "2 + 2 layers, 4 heads of dim 16",
          vocab_size=512, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
          decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=256,
          init_std=0.2, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
          forced_eos_token_id=None),
):
    CONFIGS[_cfg.name] = _cfg


def merge_configs(extra: dict[str, ZooConfig], source: str) -> None:
    """Add the configs another zoo module defines; a name already taken is an error naming both."""
    clash = sorted(set(extra) & set(CONFIGS))
    if clash:
        raise ValueError(f"model_zoo.{source} redefines configs {clash} already in the zoo; "
                         "give them other names or remove one definition")
    CONFIGS.update(extra)


def tiny_configs() -> dict[str, ZooConfig]:
    """The test config of each family, by family ``model_type`` (one per family)."""
    out: dict[str, ZooConfig] = {}
    for cfg in CONFIGS.values():
        if cfg.tiny:
            if cfg.family.model_type in out:
                raise ValueError(f"family {cfg.family.model_type!r} has two tiny configs: "
                                 f"{out[cfg.family.model_type].name!r} and {cfg.name!r}")
            out[cfg.family.model_type] = cfg
    return out


def auto_class(spec: FamilySpec) -> Any:
    """The Transformers auto class that builds a model of this family with its head: a causal LM,
    a sequence-to-sequence LM, or the bare encoder (whose last hidden state is the output)."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return {"causal": AutoModelForCausalLM, "encoder-decoder": AutoModelForSeq2SeqLM}.get(spec.kind, AutoModel)


def zoo_config(name: str) -> ZooConfig:
    """The random-weight config called ``name``; a clear error naming the known ones otherwise."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise KeyError(f"no zoo config {name!r}; known: {', '.join(sorted(CONFIGS))}") from None
