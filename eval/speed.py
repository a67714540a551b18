"""Is an attention impl fast? Prefill and decode throughput, and peak memory, for one impl.

- Prefill: one forward over a window of tokens (no cache, no grad), timed after a warm-up; the
  median of ``repeats`` runs.
- Decode: ``generate`` greedy with ``min_new_tokens == max_new_tokens`` (so it never stops early)
  after a prompt of that same window. A streamer stamps every token as it comes out, so the
  prompt's prefill is excluded: decode tokens/s = (new tokens − 1) / (last stamp − first new
  token's stamp), i.e. the steady per-token cost with a KV cache of about one window.
- Timing: CUDA events on a GPU (host timers would time kernel launches), ``time.perf_counter``
  on CPU.
- Peak memory over the timed prefills and decodes (weights included, so impls compare directly):
  on CUDA ``torch.cuda.max_memory_allocated`` after a reset; on CPU the process's peak resident
  set size (Linux ``VmHWM``, reset first through ``/proc/self/clear_refs``). tracemalloc would be
  wrong for torch, which allocates outside Python's allocator; RSS is what the OS actually gave
  the process, allocator caches included, so it is coarse but honest. Where the reset is not
  possible (not Linux) the value is None rather than a lifetime peak that would blame one impl
  for another's memory.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from transformers.generation.streamers import BaseStreamer

MEMORY_METRIC = {
    "cuda": "torch.cuda.max_memory_allocated during the timed prefill and decode (weights included)",
    "cpu": "process peak resident set size (Linux VmHWM, reset per impl via /proc/self/clear_refs) during the "
           "timed prefill and decode: weights, activations and allocator caches included",
}


@dataclass
class Speed:
    prefill_tokens_per_s: float | None = None
    decode_tokens_per_s: float | None = None
    peak_memory_bytes: int | None = None


class Clock:
    """Timestamps that measure device work: CUDA events on a GPU, ``perf_counter`` on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def now(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start: Any, end: Any) -> float:
        if self.cuda:
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        return end - start

    def time(self, fn: Callable[[], Any]) -> float:
        start = self.now()
        fn()
        return self.seconds(start, self.now())


class PeakMemory:
    """Context manager: ``.bytes`` is the peak memory while the block ran (see module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.bytes: int | None = None

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._can_reset = _reset_rss_peak()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device)
        elif self._can_reset:
            self.bytes = _rss_peak()


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # "5": reset the peak RSS (VmHWM) to the current RSS
        return _rss_peak() is not None
    except OSError:
        return False


def _rss_peak() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return None


def memory_metric(device: torch.device) -> str:
    """What ``peak_memory_bytes`` means on ``device``, for the report."""
    if device.type == "cuda":
        return MEMORY_METRIC["cuda"]
    return MEMORY_METRIC["cpu"] if _reset_rss_peak() else "unavailable on this OS (peak_memory_bytes is null)"


class _TokenStamps(BaseStreamer):
    """A ``generate`` streamer: ``put`` is called with the prompt, then once per new token."""

    def __init__(self, clock: Clock) -> None:
        self.clock, self.stamps = clock, []

    def put(self, value: torch.Tensor) -> None:
        self.stamps.append(self.clock.now())

    def end(self) -> None:
        pass


def measure_speed(model, inputs: dict[str, torch.Tensor], *, decode_tokens: int, repeats: int,
                  warmup: int = 1) -> Speed:
    """Throughput and peak memory of ``model`` with its current attention impl. ``inputs`` is one
    prefill batch; decode (0 ``decode_tokens``: skipped) continues ``inputs["input_ids"]``."""
    device = model.device
    clock = Clock(device)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    n_tokens = int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else inputs["input_ids"].numel()

    def prefill() -> None:
        model(**inputs, use_cache=False)

    def decode() -> float:
        stamps = _TokenStamps(clock)
        _greedy_generate(model, inputs["input_ids"], decode_tokens, streamer=stamps)
        # stamps: prompt, first new token (after the prompt's prefill), ..., last new token
        return clock.seconds(stamps.stamps[1], stamps.stamps[-1])

    with torch.no_grad():
        for _ in range(warmup):
            prefill()
            if decode_tokens:
                decode()  # also compiles the decode path where an impl compiles (flex_attention)
        with PeakMemory(device) as memory:
            prefill_s = statistics.median(clock.time(prefill) for _ in range(repeats))
            decode_s = statistics.median(decode() for _ in range(repeats)) if decode_tokens else None
    return Speed(
        prefill_tokens_per_s=n_tokens / prefill_s,
        decode_tokens_per_s=(decode_tokens - 1) / decode_s if decode_s else None,
        peak_memory_bytes=memory.bytes,
    )


def _greedy_generate(model, input_ids: torch.Tensor, new_tokens: int, streamer: _TokenStamps) -> torch.Tensor:
    """Exactly ``new_tokens`` greedy tokens; a fresh generation config so a checkpoint's sampling
    defaults (temperature, top-p) neither apply nor warn."""
    from transformers import GenerationConfig

    defaults = model.generation_config
    eos = defaults.eos_token_id
    pad = defaults.pad_token_id if defaults.pad_token_id is not None else (eos if isinstance(eos, int) else 0)
    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, num_beams=1,
                              use_cache=True, eos_token_id=eos, pad_token_id=pad)
    return model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                          generation_config=config, streamer=streamer)
