"""Autotuning: which tile configuration (and, for a decode step, how many key shares) a call
launches, chosen once per shape bucket by timing the candidates on the GPU.

Sequence lengths are run-time arguments, so a bucket never recompiles the source; the interpreter
and ``FLASHLIGHT_AUTOTUNE=0`` (``settings.autotune``) take a fixed default without timing.

Why tuning waits for a bucket's second call (``FLASHLIGHT_TUNE_ON_CALL``, default 2): timing
every candidate means compiling every candidate, seconds of a new program's first call that a
user waits for (issue 14: the first result in under 2 s). The first call launches the default
tiles (one compile); a bucket used again is worth tuning, and its later calls run the tuned
tiles. A choice is kept on disk (a :class:`ChoiceStore`, keyed by the kernel's source, the GPU
and the bucket), so the next process starts tuned; a stored choice is used only when it is one
of the candidates the call would time.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence

import torch

from flashlight_hf import settings
from flashlight_hf.compiler.abi import DECODE_MAX_ROWS
from flashlight_hf.compiler.runtime.switches import LaunchSwitches


@dataclass(frozen=True)
class LaunchConfig:
    """One launch's tiles and schedule: the ``BLOCK_M``/``BLOCK_N`` constexprs, warps, stages."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# Candidates tried per shape bucket on a GPU; the interpreter uses the first that fits.
CONFIGS = [
    LaunchConfig(128, 64, 4, 3), LaunchConfig(128, 64, 8, 3), LaunchConfig(128, 128, 8, 3),
    LaunchConfig(128, 128, 4, 3),
    LaunchConfig(64, 64, 4, 3), LaunchConfig(64, 32, 4, 2), LaunchConfig(32, 32, 4, 2),
]

# Decoding (split-KV): few query rows per program, key tiles of 64.
DECODE_CONFIG = LaunchConfig(16, 64, 4, 2)
DECODE_CONFIGS = [DECODE_CONFIG, LaunchConfig(16, 128, 4, 2), LaunchConfig(16, 64, 4, 3), LaunchConfig(16, 32, 4, 2)]


def candidate_configs(tile_pads: Mapping[str, int], switches: LaunchSwitches) -> list[LaunchConfig]:
    """The tile configurations a prefill-sized call is tuned over: the forced ones
    (``FLASHLIGHT_CONFIGS``), else :data:`CONFIGS` itself (the very list: an untuned call
    then takes its default), fewer of them for wide head tiles (shared memory)."""
    if switches.configs:  # "BLOCK_M,BLOCK_N,num_warps,num_stages;..." : tune over these only
        return [LaunchConfig(*c) for c in switches.configs]
    widest = max(tile_pads.values(), default=64)
    if widest >= 256:
        return [c for c in CONFIGS if c.block_m * c.block_n <= 64 * 64]
    return CONFIGS


class ChoiceStore(Protocol):
    """Where tuning choices outlive the process (the driver passes the disk cache's)."""

    def get(self, kernel_id: str, key: str) -> list | None: ...

    def put(self, kernel_id: str, key: str, value: list) -> None: ...


def device_id(device: torch.device) -> str:
    """The GPU a choice was timed on: a choice serves the same model of GPU only."""
    import triton

    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)}:sm{major}{minor}:triton{triton.__version__}"


def stored_choice(store: ChoiceStore | None, kernel_id: str, key: str,
                  options: Sequence[tuple[LaunchConfig, int]]) -> tuple[LaunchConfig, int] | None:
    """A choice kept on disk for ``key``, if it is one of ``options`` (anything else is ignored:
    a stored value never launches tiles the tuner would not have tried)."""
    if store is None:
        return None
    got = store.get(kernel_id, key)
    if not isinstance(got, list) or len(got) != 5 or not all(isinstance(x, int) for x in got):
        return None
    choice = (LaunchConfig(*got[:4]), got[4])
    return choice if choice in options else None


def keep_choice(store: ChoiceStore | None, kernel_id: str, key: str, choice: tuple[LaunchConfig, int]) -> None:
    if store is not None:
        cfg, splits = choice
        store.put(kernel_id, key, [cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages, int(splits)])


def bucket(n: int) -> int:
    """The power of two at or above ``n``: calls in one bucket share a tuning choice."""
    return 1 << max(0, int(n) - 1).bit_length()


class Tuner:
    """(tile configuration, key splits) per shape bucket and launch switches, chosen once."""

    def __init__(self, tile_pads: Mapping[str, int], store: ChoiceStore | None = None, kernel_id: str = ""):
        self.tile_pads = tile_pads
        self.chosen: dict[tuple, tuple[LaunchConfig, int]] = {}
        self.calls: dict[tuple, int] = {}  # calls seen per bucket not yet tuned (tuning waits for one)
        self.store, self.kernel_id = store, kernel_id

    def tuned(self, rows: int, keys: int, n_grid: int, switches: LaunchSwitches) -> bool:
        """Whether this bucket's choice is final (tuned, stored or untimed by the switches);
        False: the call ran the default tiles while tuning waits for a later call."""
        return self._key(rows, keys, n_grid, switches) in self.chosen

    def choose(self, rows: int, keys: int, n_grid: int, splits: int, device: torch.device,
               switches: LaunchSwitches, launch_one: Callable[[LaunchConfig], None],
               launch_split: Callable[[LaunchConfig, int], None]) -> tuple[LaunchConfig, int]:
        """This call's (configuration, splits); ``splits`` is what the shapes allow (1: no split).

        Prefill-sized calls time tile configurations with ``do_bench``. A decode step (at most
        ``DECODE_MAX_ROWS`` rows) also chooses between one launch and the split-KV launch, timed
        on the GPU alone (:func:`gpu_ms`): a single decode call costs more host time than GPU
        time, so host-inclusive timings rank options by their bookkeeping, not by the kernel
        (at batch 1 with 4k keys they picked a 37 µs single launch over a 15 µs split). Both
        relaunch directly afterwards, at nearly the same host cost."""
        forced_splits, decode = switches.split_kv is not None, rows <= DECODE_MAX_ROWS and not switches.configs
        key = self._key(rows, keys, n_grid, switches)
        if key in self.chosen:
            cfg, chosen_splits = self.chosen[key]
            return cfg, (splits if chosen_splits > 1 or forced_splits else 1)
        cands = DECODE_CONFIGS if decode else candidate_configs(self.tile_pads, switches)
        untuned = (DECODE_CONFIG, splits) if splits > 1 else (_untuned(cands), 1)
        if device.type != "cuda" or not switches.autotune:
            self.chosen[key] = untuned
            return untuned
        options: list[tuple[LaunchConfig, int]] = []
        if not decode:
            options = [(c, 1) for c in cands]
        else:
            if not forced_splits or splits <= 1:
                options += [(c, 1) for c in cands]
            if splits > 1:
                options += [(c, splits) for c in DECODE_CONFIGS]  # the split's tiles are tuned too
        where = f"{device_id(device)}|{key!r}"
        choice = stored_choice(self.store, self.kernel_id, where, options)
        if choice is None:
            self.calls[key] = self.calls.get(key, 0) + 1
            if self.calls[key] < tune_on_call():
                return untuned  # tuning waits for a later call in this bucket
            if decode:  # GPU time alone: a decode call's host time would rank bookkeeping
                timed = time_options(options, lambda c, s: gpu_ms((lambda: launch_one(c)) if s == 1 else
                                                                   (lambda: launch_split(c, s))))
            else:
                from triton.testing import do_bench
                timed = time_options(options, lambda c, s: do_bench(lambda: launch_one(c), warmup=5, rep=20,
                                                                    return_mode="median"))
            choice = min(timed, key=lambda t: t[0])[1]
            keep_choice(self.store, self.kernel_id, where, choice)
        self.calls.pop(key, None)
        self.chosen[key] = choice
        return choice[0], (splits if choice[1] > 1 else 1)

    @staticmethod
    def _key(rows: int, keys: int, n_grid: int, switches: LaunchSwitches) -> tuple:
        # the switches are part of the key: a choice made under forced splits / configurations
        # is not the tuned choice once they are unset
        decode = rows <= DECODE_MAX_ROWS and not switches.configs
        return (bucket(rows), bucket(keys), switches) + ((bucket(n_grid),) if decode else ())

    def lookup(self, rows: int, keys: int, n_grid: int, switches: LaunchSwitches) -> LaunchConfig:
        """The tile configuration chosen for this bucket so far, else the untuned default; never
        times anything (the training-mode forward launches with the ordinary forward's choice)."""
        choice = self.chosen.get(self._key(rows, keys, n_grid, switches))
        if choice is not None:
            return choice[0]
        decode = rows <= DECODE_MAX_ROWS and not switches.configs
        return _untuned(DECODE_CONFIGS if decode else candidate_configs(self.tile_pads, switches))


def tune_on_call() -> int:
    """Which call of a shape bucket times its candidates (``FLASHLIGHT_TUNE_ON_CALL``)."""
    return settings.current().tune_on_call


def kernel_id(source: str) -> str:
    """A kernel's identity for its stored tuning choices: its source text's hash."""
    return hashlib.sha256(source.encode()).hexdigest()[:32]


def time_options(options: Sequence[tuple[LaunchConfig, int]],
                 time_one: Callable[[LaunchConfig, int], float]) -> list[tuple[float, tuple[LaunchConfig, int]]]:
    """Each option's time (milliseconds); an option that does not fit this GPU (shared memory,
    registers) is skipped. Raises when none fits."""
    timings = []
    for cfg, s in options:
        try:
            timings.append((time_one(cfg, s), (cfg, s)))
        except Exception:  # noqa: BLE001 - a tile that does not fit this GPU: skip it
            continue
    if not timings:
        raise RuntimeError("flashlight: no launch configuration fits this kernel on this GPU")
    return timings


def _untuned(cands: list[LaunchConfig]) -> LaunchConfig:
    """The configuration a call takes without timing, from its candidates."""
    return LaunchConfig(64, 64, 4, 2) if cands is CONFIGS else cands[0] if cands is DECODE_CONFIGS else cands[-1]


# -- GPU timers ---------------------------------------------------------------------------------
def gpu_ms(fn: Callable[[], None], reps: int = 10) -> float:
    """Milliseconds of GPU time per call of ``fn`` (median of 3 runs): the launches are queued
    behind a GPU busy-wait (:func:`hold_gpu`), so the events time the kernels back to back and
    none of the host time it takes to issue them; without the busy-wait, the wall clock."""
    fn()
    torch.cuda.synchronize()
    if not hold_gpu(0):
        return wall_clock_ms(fn)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        hold_gpu(20_000_000)  # ~10 ms on a ~2 GHz GPU: longer than issuing the calls below
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        issued_ms = (time.perf_counter() - t0) * 1e3
        torch.cuda.synchronize()
        if issued_ms > 5.0:  # the busy-wait may have ended first: the events would see host gaps
            return wall_clock_ms(fn)
        runs.append(start.elapsed_time(end) / reps)
    return sorted(runs)[1]


def hold_gpu(cycles: int) -> bool:
    """Keep the current stream busy for ``cycles`` GPU clock cycles (``torch.cuda._sleep``, a
    private PyTorch API: ``tests/test_runtime_calls.py`` fails if it moves); False where it
    does not exist (then callers fall back to wall-clock timing)."""
    sleep = getattr(torch.cuda, "_sleep", None)
    if sleep is None:
        return False
    if cycles:
        sleep(cycles)
    return True


def wall_clock_ms(fn: Callable[[], None], reps: int = 20) -> float:
    """Milliseconds per call of ``fn`` run back to back, host included (median of 3 runs)."""
    fn()
    torch.cuda.synchronize()
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        runs.append((time.perf_counter() - t0) / reps * 1e3)
    return sorted(runs)[1]
