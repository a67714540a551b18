"""Turn ``--model`` / ``--random-weights`` into a loaded model, and switch its attention impl.

The model is loaded once and every impl runs on the same weights: switching with
``set_attn_implementation`` is instant, whereas reloading SmolLM2's GGUF takes ~17 s. A model
whose class cannot switch dynamically (Transformers then only logs a warning and keeps the old
impl, which would silently report one impl under several names) is rebuilt with the requested
impl and the same weights instead.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flashlight_hf.model_zoo import (CHECKPOINTS, CONFIGS, FAMILIES, CheckpointNotInstalled, load_checkpoint,
                                     load_tokenizer, zoo_config)
from flashlight_hf.model_zoo.families import Kind

from . import EvalError, one_line
from .options import DEFAULT_MODEL


@dataclass
class LoadedModel:
    """A model in eval mode, its tokenizer (None: drive it with synthetic token ids) and provenance."""

    model: Any
    tokenizer: Any | None
    kind: Kind
    name: str
    source: str
    impl: str | None = None  # the impl last switched to with set_impl

    def set_impl(self, impl: str) -> None:
        """Make every attention layer use ``impl`` (any name Transformers' attention interface knows).
        Raises what Transformers raises for a name it does not accept."""
        if impl == self.impl:
            return
        if impl == "flashlight":
            import flashlight_hf  # noqa: F401  registers "flashlight" with Transformers
        can_switch = getattr(self.model, "_can_set_attn_implementation", lambda: True)()
        if can_switch:
            self.model.set_attn_implementation(impl)
        else:  # slow (a weight copy per switch) but never mislabelled
            self.model = _rebuild(self.model, impl)
        self.impl = impl

    def describe(self) -> dict[str, Any]:
        config = self.model.config
        return {
            "name": self.name,
            "source": self.source,
            "model_type": config.model_type,
            "kind": self.kind,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "tokenizer": type(self.tokenizer).__name__ if self.tokenizer is not None else None,
        }


def _rebuild(model, impl: str):
    """The same weights in a fresh model built with ``attn_implementation=impl``."""
    config = copy.deepcopy(model.config)  # _from_config writes the impl into the config it is given
    fresh = type(model)._from_config(config, attn_implementation=impl, dtype=model.dtype)
    fresh.load_state_dict(model.state_dict())
    fresh.generation_config = model.generation_config
    return fresh.to(model.device).eval()


def load_model(name: str | None = None, *, random_weights: str | None = None, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu", seed: int = 0) -> LoadedModel:
    """Load a zoo checkpoint, a local folder or ``.gguf`` file, or a hub id; or build a zoo config
    with random weights. Problems the user can fix raise :class:`EvalError` with the fix."""
    if random_weights is not None:
        if name is not None:
            raise EvalError("pass either --model or --random-weights, not both")
        return _random_model(random_weights, dtype=dtype, device=device, seed=seed)
    name = name or DEFAULT_MODEL
    if name in CHECKPOINTS:
        try:
            model, tokenizer = load_checkpoint(name, dtype=dtype, device=device)
        except CheckpointNotInstalled as e:
            raise EvalError(str(e)) from None
        ckpt = CHECKPOINTS[name]
        source = str(ckpt.path() / (ckpt.gguf_file or ""))
        return LoadedModel(model, tokenizer, ckpt.family.kind, name, source)
    if name in CONFIGS:
        raise EvalError(f"{name!r} is a random-weight config; pass --random-weights {name}")
    return _transformers_model(name, dtype=dtype, device=device)


def _random_model(config_name: str, *, dtype: torch.dtype, device: str | torch.device, seed: int) -> LoadedModel:
    try:
        cfg = zoo_config(config_name)
    except KeyError as e:
        raise EvalError(e.args[0]) from None
    _refuse_encoder_decoder(config_name, cfg.family.kind)
    model = cfg.build_model(dtype=dtype, device=device, seed=seed)
    tokenizer = None
    if cfg.tokenizer is not None:
        try:
            tokenizer = load_tokenizer(cfg.tokenizer)
        except CheckpointNotInstalled:
            pass  # synthetic token ids drive the model; the report's text line says so
    return LoadedModel(model, tokenizer, cfg.family.kind, config_name, f"random weights (seed {seed}): {cfg.about}")


def _transformers_model(name: str, *, dtype: torch.dtype, device: str | torch.device) -> LoadedModel:
    """A local folder, a local ``.gguf`` file, or a hub id (the last one needs a network)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    path, gguf_file = name, None
    if name.endswith(".gguf") and Path(name).is_file():
        path, gguf_file = str(Path(name).parent), Path(name).name
    elif not Path(name).exists() and name.startswith((".", "/", "~")):
        raise EvalError(f"model path {name!r} does not exist")
    try:
        config = AutoConfig.from_pretrained(path, gguf_file=gguf_file)
        kind = _kind(config)
        _refuse_encoder_decoder(name, kind)
        auto = AutoModelForCausalLM if kind == "causal" else AutoModel
        model = auto.from_pretrained(path, gguf_file=gguf_file, dtype=dtype)
    except (OSError, ValueError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
        raise EvalError(
            f"could not load model {name!r}: it is not a zoo checkpoint ({', '.join(sorted(CHECKPOINTS))}), "
            f"not a random-weight config (--random-weights {'|'.join(sorted(CONFIGS))}), and Transformers "
            f"could not load it as a local path or hub id{' (HF_HUB_OFFLINE is set)' if offline else ''}: "
            f"{one_line(e)}"
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
    except (OSError, ValueError, TypeError):
        tokenizer = None
    return LoadedModel(model.to(device).eval(), tokenizer, kind, name, name)


def _refuse_encoder_decoder(name: str, kind: Kind) -> None:
    """The evaluation scores decoders (perplexity) and encoders (embeddings); say so for the rest."""
    if kind == "encoder-decoder":
        raise EvalError(f"{name!r} is an encoder-decoder model: the evaluation scores decoders (perplexity) and "
                        "encoders (embeddings) only; tests/test_zoo_families.py checks encoder-decoder families "
                        "against eager")


def _kind(config) -> Kind:
    """Decoder (perplexity, decode) or encoder (embeddings): the zoo family if known, else the
    checkpoint's declared architectures, else whether Transformers has a causal LM for the type."""
    if config.model_type in FAMILIES:
        return FAMILIES[config.model_type].kind
    if config.architectures:
        return "causal" if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in config.architectures) else "encoder"
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return "causal" if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else "encoder"
