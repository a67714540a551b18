"""Run the whole evaluation for a list of attention impls and collect one result row per impl.

Order: text first (a bad ``--dataset`` fails before a 17 s model load), then the model once,
then quality for all impls (interleaved per window, see :mod:`.quality`), then speed per impl.
An impl that fails anywhere gets its row with ``error`` set; the others still run.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch
from tqdm.auto import tqdm

from . import EvalError, one_line
from .models import load_model
from .options import EvalOptions
from .quality import Quality, causal_quality, encoder_quality
from .speed import Speed, measure_speed, memory_metric
from .text import causal_token_ids, encoder_batches, load_text

RUN_KEYS = ("impl", "perplexity", "embedding_cosine", "max_abs_logit_diff", "mean_abs_logit_diff",
            "prefill_tokens_per_s", "decode_tokens_per_s", "peak_memory_bytes", "error")


def run_eval(options: EvalOptions) -> dict[str, Any]:
    """Evaluate every impl in ``options.impls``; the results as ``results.json`` stores them."""
    opts = options.resolved()
    torch.manual_seed(opts.seed)
    device = torch.device(opts.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # CUDA events and peak-memory stats follow the current device
    text = load_text(opts.text_file, opts.dataset)
    tqdm.write(f"loading {opts.random_weights or opts.model} ({opts.dtype}, {device}) ...", file=sys.stderr)
    loaded = load_model(opts.model, random_weights=opts.random_weights, dtype=getattr(torch, opts.dtype),
                        device=device, seed=opts.seed)
    config = loaded.model.config
    max_positions = getattr(config, "max_position_embeddings", None)
    vocab_size = config.vocab_size

    if loaded.kind == "causal":
        if max_positions is not None and opts.window + opts.decode_tokens > max_positions:
            raise EvalError(f"--window + --decode-tokens ({opts.window} + {opts.decode_tokens}) exceeds the "
                            f"model's {max_positions} positions")
        ids, text_used = causal_token_ids(text, loaded.tokenizer, opts.max_tokens, vocab_size=vocab_size,
                                          seed=opts.seed)
        quality = causal_quality(loaded, opts.impls, ids, window=opts.window, stride=opts.stride)
        speed_inputs = {"input_ids": ids[:, : opts.window]}
        decode_tokens = opts.decode_tokens
    else:
        max_length = min(opts.window, max_positions or opts.window)
        batches, text_used = encoder_batches(text, loaded.tokenizer, opts.max_tokens, max_length=max_length,
                                             vocab_size=vocab_size, seed=opts.seed)
        quality = encoder_quality(loaded, opts.impls, batches)
        speed_inputs, decode_tokens = batches[0], 0  # an encoder has no decode

    runs = []
    for impl in tqdm(opts.impls, desc="speed", unit="impl"):
        q, s = quality[impl], Speed()
        if q.error is None:
            try:
                loaded.set_impl(impl)
                s = measure_speed(loaded.model, speed_inputs, decode_tokens=decode_tokens, repeats=opts.repeats)
            except Exception as e:  # a failing impl is a result; the other impls still run
                q.error = one_line(e)
        runs.append(_row(impl, q, s))

    return {
        "runs": runs,
        "model": loaded.describe(),
        "text": {"source": text.source, "used": text_used},
        "reference_impl": opts.impls[0],
        "memory_metric": memory_metric(device),
        "device": device_info(device),
        "versions": versions(),
        "options": asdict(opts),
        "command": opts.command(),
    }


def _row(impl: str, quality: Quality, speed: Speed) -> dict[str, Any]:
    row = {"impl": impl, **asdict(quality), **asdict(speed)}
    return {key: row[key] for key in RUN_KEYS}


def device_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device), "cuda": torch.version.cuda}
    return {"type": "cpu", "name": _cpu_name(), "threads": torch.get_num_threads()}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str | None]:
    """Versions of everything that decides the numbers."""
    import transformers

    import flashlight_hf

    try:
        triton = version("triton")
    except PackageNotFoundError:
        triton = None
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "triton": triton, "flashlight_hf": flashlight_hf.__version__}
