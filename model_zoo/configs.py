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
    about: str = ""

    def build_config(self):
        """The Transformers config (a fresh object each call)."""
        from transformers import AutoConfig

        return AutoConfig.for_model(self.family.model_type, **self.fields)

    def build_model(self, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                    seed: int = 0, attn_implementation: str | None = None):
        """A randomly initialised model in eval mode. Initialised on CPU, so a seed gives the same
        weights on every device."""
        from transformers import AutoModel, AutoModelForCausalLM

        auto = AutoModelForCausalLM if self.family.kind == "causal" else AutoModel
        torch.manual_seed(seed)
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
        about="2 layers, 4 heads, head dim 16, BERT uncased vocabulary; for tests",
    ),
}


def zoo_config(name: str) -> ZooConfig:
    """The random-weight config called ``name``; a clear error naming the known ones otherwise."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise KeyError(f"no zoo config {name!r}; known: {', '.join(sorted(CONFIGS))}") from None
