"""What ``bench_llm.py`` measures: a random-weight model, its attention impl, and the calls timed.

Kept apart from the harness (timing, tables, files) so each measured call is readable on its own:

- :func:`build_model` / :func:`use_impl`: one model, switched between attention implementations
  with Transformers' ``set_attn_implementation`` (instant, same weights); a class that cannot
  switch is rebuilt with the same weights instead, never silently left on the old impl.
- :func:`make_reference` / :func:`check_logits`: the correctness gate, an impl's logits against
  sdpa's (same dtype, and a float32 copy of the model).
- :func:`prefill_call`: one full forward with ``use_cache=False``, as a perplexity or embedding
  job runs it, keeping the logits of the last position only (``logits_to_keep=1``, what
  ``generate``'s prefill computes): the 128k-vocabulary LM head over every position would add
  a cost that is the same for every impl and hide the attention differences.
- :class:`DecodeState` / :func:`decode_call`: one single-token forward against a KV cache of a
  fixed context length, then the cache put back to that length, so every timed step sees the
  same context and repetitions can run back to back.

Works with Transformers 5.17 (the GPU box: ``past_key_values=``) and later (``cache=``); the
keyword is read from the model's forward signature.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch


def zoo_config(name: str):
    """The model zoo's random-weight config ``name``: through the installed package when there
    is one, else from the checkout's ``model_zoo/`` (the GPU box runs from a plain checkout)."""
    try:
        from flashlight_hf.model_zoo import zoo_config as lookup
    except ImportError:
        from model_zoo.configs import zoo_config as lookup
    return lookup(name)


def build_model(config_name: str, *, dtype: torch.dtype, device: torch.device, seed: int,
                attn_implementation: str = "sdpa"):
    """A zoo config with seeded random weights, in eval mode on ``device``."""
    return zoo_config(config_name).build_model(dtype=dtype, device=device, seed=seed,
                                               attn_implementation=attn_implementation)


def use_impl(model, impl: str):
    """``model`` running every attention layer through ``impl``; returns the model to use from
    now on (the same object, or a rebuilt one with the same weights when the class cannot switch).

    Transformers only logs a warning when a class cannot switch dynamically, which would time one
    impl under several names; so the switch is checked through the config and a rebuild follows."""
    if impl == "flashlight":
        import flashlight_hf  # noqa: F401  registers "flashlight" with Transformers
    if model.config._attn_implementation == impl:
        return model
    model.set_attn_implementation(impl)
    if model.config._attn_implementation == impl:
        return model
    config = copy.deepcopy(model.config)  # _from_config writes the impl into the config it is given
    fresh = type(model)._from_config(config, attn_implementation=impl, dtype=model.dtype)
    fresh.load_state_dict(model.state_dict())
    fresh = fresh.to(model.device).eval()
    if fresh.config._attn_implementation != impl:
        raise RuntimeError(f"could not switch {type(model).__name__} to attn_implementation={impl!r}")
    return fresh


def cache_keyword(model) -> str:
    """The forward keyword that takes the KV cache: ``cache`` (Transformers ≥ 5.2x) or
    ``past_key_values`` (5.17 and earlier; later versions still accept it, with a warning)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _keeps_last_logits(model) -> dict[str, Any]:
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def _returned_cache(output) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def random_ids(batch: int, length: int, vocab: int, *, seed: int, device: torch.device) -> torch.Tensor:
    """Token ids drawn uniformly from [1, vocab) on CPU with a seed (the same ids on every device;
    never the all-zeros input, whose identical rows would make every attention row alike)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (batch, length), generator=g).to(device)


# --------------------------------------------------------------------------- correctness gate
@dataclass
class Reference:
    """Gate logits of sdpa on ``ids``: ``exact_*`` from a float32 copy of the model (the same
    weights, upcast exactly), ``base_*`` from the model itself in the run's dtype. ``*_prefill``:
    every position of a full forward [B, S, V]; ``*_decode``: the last position [B, V]."""

    ids: torch.Tensor
    exact_prefill: torch.Tensor
    exact_decode: torch.Tensor
    base_prefill: torch.Tensor
    base_decode: torch.Tensor


def gate_logits(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(full-forward logits [B, S, V], decode-step logits of the last position [B, V]), float32.

    The decode step runs the last token alone against a cache filled by a forward over the
    prefix, so the impl's q_len = 1 path with a cache is checked too, not only its prefill."""
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits.float()
        prefix = model(input_ids=ids[:, :-1], use_cache=True)
        step = model(input_ids=ids[:, -1:], attention_mask=torch.ones_like(ids), use_cache=True,
                     **{cache_keyword(model): _returned_cache(prefix)}).logits[:, -1].float()
    return full, step


def make_reference(model, ids: torch.Tensor) -> Reference:
    """sdpa's gate logits in float32 and in the model's dtype. In bf16 two correct impls differ
    by a few percent after 16 layers (eager vs sdpa: ~3e-2 relative on ``llama-1b``), so the
    float32 run is what tells "as exact as sdpa" from "wrong"."""
    model = use_impl(model, "sdpa")
    exact_model = copy.deepcopy(model).float()
    exact = gate_logits(exact_model, ids)
    del exact_model
    base = gate_logits(model, ids)
    return Reference(ids, *exact, *base)


def check_logits(model, ref: Reference) -> dict[str, float]:
    """``model``'s gate logits against sdpa's in the same dtype (max |Δ|, relative error
    ‖Δ‖/‖ref‖) and against sdpa's float32 logits (relative error), for prefill and decode."""
    from flashlight_hf.testing import rel_error

    full, step = gate_logits(model, ref.ids)
    return {
        "prefill_max_abs": float((full - ref.base_prefill).abs().max()),
        "prefill_rel_err": rel_error(full, ref.base_prefill),
        "decode_max_abs": float((step - ref.base_decode).abs().max()),
        "decode_rel_err": rel_error(step, ref.base_decode),
        "prefill_err_fp32": rel_error(full, ref.exact_prefill),
        "decode_err_fp32": rel_error(step, ref.exact_decode),
    }


# --------------------------------------------------------------------------- prefill
def prefill_call(model, ids: torch.Tensor) -> Callable[[], torch.Tensor]:
    """One forward over ``ids`` without a cache, last position's logits only (see module doc)."""
    extra = _keeps_last_logits(model)

    def run() -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=ids, use_cache=False, **extra).logits

    return run


# --------------------------------------------------------------------------- decode
@dataclass
class DecodeState:
    """A KV cache holding ``context`` tokens for ``batch`` rows, shared by every impl timed at
    this (batch, context, cache kind): the prefill runs once, and each impl's steps start from
    exactly the same context."""

    cache: Any
    kind: str  # "dynamic" | "static"
    batch: int
    context: int
    next_ids: torch.Tensor  # [B, 1] the token fed at every step
    attention_mask: torch.Tensor  # [B, context + 1] all ones, as generate passes it


def prefill_cache(model, *, batch: int, context: int, kind: str, vocab: int, seed: int) -> DecodeState:
    """Fill a cache with ``context`` random tokens per row (one forward, with ``model``'s impl).

    ``dynamic``: Transformers' default ``DynamicCache`` (created by the model, as in ``generate``);
    ``static``: a ``StaticCache`` with room for exactly one more token."""
    device = model.device
    ids = random_ids(batch, context + 1, vocab, seed=seed, device=device)
    kwargs: dict[str, Any] = {}
    if kind == "static":
        from transformers import StaticCache

        kwargs[cache_keyword(model)] = StaticCache(config=model.config, max_cache_len=context + 1)
    elif kind != "dynamic":
        raise ValueError(f"unknown cache kind {kind!r}; use dynamic or static")
    with torch.no_grad():
        out = model(input_ids=ids[:, :context], use_cache=True, **_keeps_last_logits(model), **kwargs)
    state = DecodeState(cache=_returned_cache(out), kind=kind, batch=batch, context=context,
                        next_ids=ids[:, context:].contiguous(),
                        attention_mask=torch.ones(batch, context + 1, dtype=torch.long, device=device))
    _check_length(state)
    return state


def _check_length(state: DecodeState) -> None:
    got = {int(layer.get_seq_length()) for layer in state.cache.layers}  # a 0-d tensor for static layers
    if got != {state.context}:
        raise RuntimeError(f"{state.kind} cache layers hold {sorted(got)} tokens, expected {state.context}: "
                           "the cache could not be put back to its context length")


def _rewind(state: DecodeState) -> None:
    """Put every layer of the cache back to ``context`` tokens. A dynamic layer drops what was
    appended (``crop`` with a negative count, which Transformers 5.17 and later read the same
    way); a static layer keeps its buffers and moves its write position back, so the next step
    overwrites the same slot. Absolute, per layer: a step that raised halfway through (some
    layers appended, some not) leaves the next impl the same context as the first."""
    for layer in state.cache.layers:
        if state.kind == "dynamic":
            extra = layer.keys.shape[-2] - state.context
            if extra > 0:
                layer.crop(-extra)
        else:
            layer.cumulative_length.fill_(state.context)


def decode_call(model, state: DecodeState) -> Callable[[], torch.Tensor]:
    """One decode step (B tokens against a context of ``state.context``) followed by the rewind.

    A dynamic cache's step appends by ``torch.cat`` (a copy of the whole cache per layer), which
    is what ``generate`` with the default cache pays at every token; it is part of the time."""
    key = cache_keyword(model)
    extra = _keeps_last_logits(model)

    def run() -> torch.Tensor:
        with torch.no_grad():
            logits = model(input_ids=state.next_ids, attention_mask=state.attention_mask, use_cache=True,
                           **{key: state.cache}, **extra).logits
        _rewind(state)
        return logits

    return run


def checked_decode_call(model, state: DecodeState) -> Callable[[], torch.Tensor]:
    """:func:`decode_call` after one untimed step whose rewind is verified (cache length back to
    the context), so a Transformers version that rewinds differently fails loudly, not silently
    timing a growing cache."""
    _rewind(state)  # in case an earlier impl's step raised halfway through
    run = decode_call(model, state)
    run()
    _check_length(state)
    return run
