"""Tiny random configs for the families served by ``flashlight_hf.patches`` (attention outside
Transformers' ``AttentionInterface``), merged into :data:`configs.CONFIGS` by the package.

The families themselves (features, patch module) are entries of the family table
(:data:`flashlight_hf.transformers.registry.FAMILIES`, those with a ``patch``);
:data:`PATCHED_FAMILIES` lists them. The tiny configs are float32, 2 layers, hidden size 64 (head dim 16, the smallest
``tl.dot`` takes on a GPU), a 1024-token vocabulary, and short maximum lengths where the family
allocates per-position tables (GPT-Neo's mask buffer, MPT's ALiBi table) so a model builds in
milliseconds. Each one is chosen to exercise the family's distinctive path: GPT-Neo's window (4)
is shorter than the test sequences, DeBERTa-v2's log buckets start inside them, and Falcon has
one config per attention program (ALiBi with multi-query K/V, rotary with grouped K/V).
"""

from __future__ import annotations

from .configs import ZooConfig
from .families import FAMILIES, FamilySpec

# the zoo families the table serves through a patch module (their facts are the table's)
PATCHED_FAMILIES: dict[str, FamilySpec] = {name: fam for name, fam in FAMILIES.items() if fam.patch is not None}

PATCHED_CONFIGS: dict[str, ZooConfig] = {
    "bloom-tiny": ZooConfig(
        name="bloom-tiny",
        family=PATCHED_FAMILIES["bloom"],
        fields=dict(hidden_size=64, n_layer=2, n_head=4, vocab_size=1024),
        about="2 layers, 4 heads, head dim 16; for tests",
    ),
    "mpt-tiny": ZooConfig(
        name="mpt-tiny",
        family=PATCHED_FAMILIES["mpt"],
        fields=dict(d_model=64, n_layers=2, n_heads=4, vocab_size=1024, max_seq_len=64),
        about="2 layers, 4 heads, head dim 16, ALiBi table of 64 positions; for tests",
    ),
    "falcon-tiny": ZooConfig(
        name="falcon-tiny",
        family=PATCHED_FAMILIES["falcon"],
        fields=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=1024, alibi=True,
                    multi_query=True, new_decoder_architecture=False, parallel_attn=True, bias=False),
        about="ALiBi, multi-query (one K/V head), 2 layers, 4 heads, head dim 16; for tests",
    ),
    "falcon-rope-tiny": ZooConfig(
        name="falcon-rope-tiny",
        family=PATCHED_FAMILIES["falcon"],
        fields=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2, vocab_size=1024,
                    alibi=False, new_decoder_architecture=True),
        about="rotary, new decoder architecture (2 K/V groups), 2 layers, 4 heads, head dim 16; for tests",
    ),
    "gpt_neo-tiny": ZooConfig(
        name="gpt_neo-tiny",
        family=PATCHED_FAMILIES["gpt_neo"],
        fields=dict(hidden_size=64, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
                    window_size=4, vocab_size=1024, max_position_embeddings=64, bos_token_id=1, eos_token_id=2),
        about="one global and one local layer (window 4), 4 heads, head dim 16; for tests",
    ),
    "gptj-tiny": ZooConfig(
        name="gptj-tiny",
        family=PATCHED_FAMILIES["gptj"],
        fields=dict(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, vocab_size=1024, n_positions=64,
                    bos_token_id=1, eos_token_id=2),
        about="2 layers, 4 heads, head dim 16, rotary on the first 8 features; for tests",
    ),
    "deberta-v2-tiny": ZooConfig(
        name="deberta-v2-tiny",
        family=PATCHED_FAMILIES["deberta-v2"],
        fields=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                    vocab_size=1024, max_position_embeddings=64, relative_attention=True,
                    pos_att_type=["p2c", "c2p"], position_buckets=8, max_relative_positions=32),
        about="2 layers, 4 heads, head dim 16, c2p + p2c with 8 log buckets; for tests",
    ),
}


# tiny stays False: these families are exercised by tests/test_patches.py, which knows each one's
# limits (MPT ignores a static cache, ALiBi Falcon's static cache fails in eager too), not by the
# generic tests/test_zoo_families.py.
