"""Is an attention impl exact? Perplexity (decoders) or embedding cosine (encoders) per impl, and
how far its outputs are from the reference impl's (the first one listed) on the same inputs.

The loop runs windows outside and impls inside: each window is evaluated by every impl back to
back, compared with the reference's output at once, and dropped. Keeping the reference's logits
for the whole text instead would cost tokens × vocabulary floats (800 MB for SmolLM2 at 4096
tokens). Switching impls is a config change, so the interleaving costs nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import one_line
from .models import LoadedModel


@dataclass
class Quality:
    """One impl's quality numbers; None where they do not apply or could not be computed."""

    perplexity: float | None = None
    embedding_cosine: float | None = None
    max_abs_logit_diff: float | None = None
    mean_abs_logit_diff: float | None = None
    error: str | None = None


def sliding_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, n_new)`` per window, Transformers' "Perplexity of fixed-length models" recipe:
    windows of ``window`` tokens every ``stride`` tokens; each scores only its last ``n_new``
    tokens (the ones no earlier window scored), the overlap serving as context."""
    spans, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        spans.append((begin, end, end - prev_end))
        prev_end = end
        if end == n_tokens:
            break
    return spans


def _worst(pick: Callable[[float, float], float], a: float, b: float) -> float:
    """``pick(a, b)`` (min or max), except that a NaN wins: a NaN must never hide behind a number."""
    return math.nan if math.isnan(a) or math.isnan(b) else pick(a, b)


class _Agreement:
    """Running max and mean of |output − reference output| over every window of one impl."""

    def __init__(self) -> None:
        self.max, self.sum, self.count, self.complete = 0.0, 0.0, 0, True

    def add(self, out: torch.Tensor, ref: torch.Tensor | None) -> None:
        if ref is None:  # the reference failed on this window: no comparison for the whole text
            self.complete = False
            return
        diff = (out - ref).abs()
        self.max = _worst(max, self.max, diff.max().item())
        self.sum += diff.sum().item()
        self.count += diff.numel()

    def result(self, is_reference: bool) -> dict[str, float | None]:
        if is_reference:
            return {"max_abs_logit_diff": 0.0, "mean_abs_logit_diff": 0.0}
        if not self.complete or self.count == 0:
            return {"max_abs_logit_diff": None, "mean_abs_logit_diff": None}
        return {"max_abs_logit_diff": self.max, "mean_abs_logit_diff": self.sum / self.count}


def _each_impl(loaded: LoadedModel, impls: list[str], errors: dict[str, str],
               forward: Callable[[Any], torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """``(impl, forward(model))`` for every impl that has not failed yet. An exception while
    switching to an impl or running it records the impl's one-line error; the others go on."""
    for impl in impls:
        if impl in errors:
            continue
        try:
            loaded.set_impl(impl)
            with torch.no_grad():
                out = forward(loaded.model)
        except Exception as e:  # any failure of an impl is a result to report, not a crash
            errors[impl] = one_line(e)
            continue
        yield impl, out


def causal_quality(loaded: LoadedModel, impls: list[str], ids: torch.Tensor, *, window: int,
                   stride: int) -> dict[str, Quality]:
    """Sliding-window perplexity of ``ids`` (shape (1, n)) per impl, token-weighted over all
    windows, and logit differences against ``impls[0]`` on every window."""
    reference, errors = impls[0], {}
    nll = dict.fromkeys(impls, 0.0)
    agreement = {impl: _Agreement() for impl in impls}
    scored = 0
    device = loaded.model.device
    for begin, end, n_new in tqdm(sliding_windows(ids.shape[1], window, stride), desc="perplexity", unit="window"):
        x = ids[:, begin:end].to(device)
        labels = x[0].clone()
        labels[: x.shape[1] - n_new] = -100  # context only: scored by an earlier window
        targets = labels[1:]  # logits at position i predict token i + 1
        ref_logits = None
        for impl, logits in _each_impl(loaded, impls, errors, lambda m: m(x, use_cache=False).logits.float()):
            nll[impl] += F.cross_entropy(logits[0, :-1], targets, ignore_index=-100, reduction="sum").item()
            if impl == reference:
                ref_logits = logits
            else:
                agreement[impl].add(logits, ref_logits)
        scored += int((targets != -100).sum())
    return {
        impl: Quality(error=errors[impl]) if impl in errors else
        Quality(perplexity=math.exp(nll[impl] / scored), **agreement[impl].result(impl == reference))
        for impl in impls
    }


def mean_pooled_embeddings(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence embeddings as sentence-transformers makes them for all-MiniLM-L6-v2: the mean of
    the token states over the attention mask, L2-normalised."""
    mask = attention_mask[..., None].to(hidden.dtype)
    return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)


def encoder_quality(loaded: LoadedModel, impls: list[str],
                    batches: list[dict[str, torch.Tensor]]) -> dict[str, Quality]:
    """Per impl: the smallest cosine between its sentence embedding and the reference impl's over
    every sentence, and the differences of the last hidden states (the encoder's "logits") at real,
    non-padding tokens."""
    reference, errors = impls[0], {}
    cosine = dict.fromkeys(impls, 1.0)
    agreement = {impl: _Agreement() for impl in impls}
    device = loaded.model.device
    for batch in tqdm(batches, desc="embeddings", unit="batch"):
        batch = {k: v.to(device) for k, v in batch.items()}
        real = batch["attention_mask"].bool()
        ref_states = ref_embeddings = None
        for impl, hidden in _each_impl(loaded, impls, errors, lambda m: m(**batch).last_hidden_state.float()):
            embeddings = mean_pooled_embeddings(hidden, batch["attention_mask"])
            if impl == reference:
                ref_states, ref_embeddings = hidden[real], embeddings
                continue
            agreement[impl].add(hidden[real], ref_states)
            if ref_embeddings is not None:
                cosine[impl] = _worst(min, cosine[impl], (embeddings * ref_embeddings).sum(-1).min().item())
    return {
        impl: Quality(error=errors[impl]) if impl in errors else
        Quality(embedding_cosine=cosine[impl] if agreement[impl].complete or impl == reference else None,
                **agreement[impl].result(impl == reference))
        for impl in impls
    }
