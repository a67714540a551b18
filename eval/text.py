"""The evaluation text and the token ids it becomes.

The default text ships with CPython (``pydoc_data.topics``: the language reference topics that
``help()`` shows, ~465k characters of real English prose and code), so the default evaluation
needs no download and every machine scores the same text for a given Python version.
``datasets`` is imported only inside :func:`read_dataset`: the GPU box does not have it.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from . import EvalError, one_line

ENCODER_BATCH = 16  # sentences per encoder forward


@dataclass(frozen=True)
class Text:
    text: str
    source: str


def load_text(text_file: str | None = None, dataset: str | None = None) -> Text:
    """``--text-file``, else ``--dataset``, else CPython's pydoc topics."""
    if text_file is not None and dataset is not None:
        raise EvalError("pass either --text-file or --dataset, not both")
    if text_file is not None:
        path = Path(text_file)
        if not path.is_file():
            raise EvalError(f"--text-file {text_file!r} is not a file")
        return Text(path.read_text(encoding="utf-8", errors="replace"), f"file {path}")
    if dataset is not None:
        return read_dataset(dataset)
    return default_text()


def default_text() -> Text:
    """The values of ``pydoc_data.topics.topics`` joined in sorted key order."""
    from pydoc_data.topics import topics

    return Text("".join(topics[k] for k in sorted(topics)), f"pydoc_data.topics (CPython {platform.python_version()})")


def read_dataset(spec: str) -> Text:
    """``NAME[:CONFIG[:SPLIT]]`` (split defaults to ``test``) through ``datasets.load_dataset``;
    rows of the ``text`` column (else the first string column) joined by blank lines, as in
    Transformers' perplexity guide."""
    name, config, split = (spec.split(":") + [None, None])[:3]
    split = split or "test"
    alternatives = ("use --text-file PATH, or omit --dataset for the default text "
                    "(CPython's pydoc_data.topics, no download needed)")
    try:
        import datasets
    except ImportError:
        raise EvalError(f"--dataset needs the `datasets` package (pip install datasets); or {alternatives}") from None
    try:
        rows = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:  # offline, unknown name, bad split: all end the same way for the user
        raise EvalError(
            f"could not load dataset {spec!r} ({one_line(e)}). Datasets come from the Hugging Face hub "
            f"and need a network or a local cache; {alternatives}"
        ) from None
    string_columns = [c for c, f in rows.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
    if not string_columns:
        raise EvalError(f"dataset {spec!r} has no text column; columns: {', '.join(rows.column_names)}")
    column = "text" if "text" in string_columns else string_columns[0]
    return Text("\n\n".join(rows[column]), f"dataset {name} config={config} split={split} column={column}")


def causal_token_ids(text: Text, tokenizer, max_tokens: int, *, vocab_size: int,
                     seed: int = 0) -> tuple[torch.Tensor, str]:
    """The first ``max_tokens`` token ids of the text, shape (1, n); without a tokenizer, uniform
    random ids (enough for speed work on random weights). Also returns a description."""
    if tokenizer is None:
        g = torch.Generator().manual_seed(seed)
        return (torch.randint(vocab_size, (1, max_tokens), generator=g),
                f"synthetic: {max_tokens} uniform random token ids (seed {seed}; no tokenizer)")
    ids = _tokenize_prefix(tokenizer, text.text, max_tokens)
    if len(ids) < 2:
        raise EvalError(f"the text ({text.source}) has fewer than 2 tokens")
    if max(ids) >= vocab_size:
        raise EvalError(f"tokenizer id {max(ids)} is outside the model's vocabulary ({vocab_size})")
    return torch.tensor([ids]), f"{text.source}: first {len(ids)} tokens"


def _tokenize_prefix(tokenizer, text: str, max_tokens: int) -> list[int]:
    """Tokenize only as much text as needed (a 100 MB file should not be tokenized for 2k tokens).
    A cut mid-word changes only the last few tokens, so keep a margin past ``max_tokens``."""
    margin, chars = 32, max_tokens * 8
    while True:
        ids = tokenizer(text[:chars]).input_ids
        if len(ids) >= max_tokens + margin or chars >= len(text):
            return ids[:max_tokens]
        chars *= 2


def encoder_batches(text: Text, tokenizer, max_tokens: int, *, max_length: int, vocab_size: int,
                    seed: int = 0) -> tuple[list[dict[str, torch.Tensor]], str]:
    """Padded batches of ``ENCODER_BATCH`` paragraphs (blank-line separated, truncated to
    ``max_length`` tokens) until ``max_tokens`` real tokens; padding is the point, since it is the
    mask an encoder's attention must honour. Without a tokenizer, random ids of random lengths."""
    batches, total = [], 0
    if tokenizer is None:
        g = torch.Generator().manual_seed(seed)
        while total < max_tokens:
            lengths = torch.randint(2, max_length + 1, (ENCODER_BATCH,), generator=g)
            mask = (torch.arange(int(lengths.max())) < lengths[:, None]).long()
            ids = torch.randint(1, vocab_size, mask.shape, generator=g) * mask
            batches.append({"input_ids": ids, "attention_mask": mask})
            total += int(mask.sum())
        return batches, f"synthetic: {total} random token ids in {len(batches)} padded batches (seed {seed})"
    paragraphs = iter(" ".join(p.split()) for p in text.text.split("\n\n") if len(p.split()) >= 3)
    while total < max_tokens:
        chunk = [p for _, p in zip(range(ENCODER_BATCH), paragraphs)]
        if not chunk:
            break
        batch = dict(tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))
        batches.append(batch)
        total += int(batch["attention_mask"].sum())
    if not batches:
        raise EvalError(f"the text ({text.source}) has no paragraph of 3 words or more")
    return batches, f"{text.source}: {total} tokens in {len(batches)} padded batches of {ENCODER_BATCH} paragraphs"
