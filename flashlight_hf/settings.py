"""Every ``FLASHLIGHT_*`` switch, read from the environment once into one typed object.

Why one place: the switches change what a call launches, so they are part of plan and tuning
keys; read in six files they drifted (two spellings of "off", one parsed twice). The
environment is read the first time :func:`current` is called; later changes to ``os.environ``
are not seen until :func:`reload` (or inside :func:`override`, the way tests and benchmarks
change a switch for a block of code).

| variable | field | default | effect |
|---|---|---|---|
| ``TRITON_INTERPRET`` | ``interpret`` | off | kernels run in Triton's interpreter (CPU) |
| ``FLASHLIGHT_DISK_CACHE`` | ``disk_cache`` | on | ``0``: the on-disk build cache is neither read nor written |
| ``FLASHLIGHT_CACHE_DIR`` | ``cache_dir`` | ``$XDG_CACHE_HOME/flashlight_hf`` | where that cache lives |
| ``FLASHLIGHT_AUTOTUNE`` | ``autotune`` | on | ``0``: no timing, the default tile configuration |
| ``FLASHLIGHT_TUNE_ON_CALL`` | ``tune_on_call`` | 2 | the call of a shape bucket that tunes it (earlier: the default tiles) |
| ``FLASHLIGHT_CONFIGS`` | ``configs`` | none | ``BM,BN,warps,stages;...``: tune over these only |
| ``FLASHLIGHT_SPLIT_KV`` | ``split_kv`` | none | force this many key shares (1: no split) |
| ``FLASHLIGHT_FUSED_SPLIT`` | ``fused_split`` | on | ``0``: split-KV as a partials + combine pair |
| ``FLASHLIGHT_FAST_LAUNCH`` | ``fast_launch`` | on | ``0``: every launch through Triton's own launcher |
| ``FLASHLIGHT_WARP_SPECIALIZE`` | ``warp_specialize`` | off | ``1``: warp-specialised key loops (sm_90+) |
| ``FLASHLIGHT_FAST_TRACE`` | ``fast_trace`` | on | ``0``: the symbolic trace always through ``torch.export`` |
| ``FLASHLIGHT_GQA_ROWS`` | ``gqa_rows`` | on | ``0``: GQA query heads are not folded into rows |
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from typing import Iterator, Mapping


# One forced tile configuration: (BLOCK_M, BLOCK_N, num_warps, num_stages).
Tiles = tuple[int, int, int, int]


@dataclass(frozen=True)
class Settings:
    """The switches in force (hashable: a plan made under one set never serves another)."""

    interpret: bool = False
    disk_cache: bool = True
    cache_dir: str = ""
    autotune: bool = True
    tune_on_call: int = 2  # the N-th call in a shape bucket times the candidates (1: the first)
    configs: tuple[Tiles, ...] | None = None  # forced tile configurations
    split_kv: int | None = None
    fused_split: bool = True
    fast_launch: bool = True
    warp_specialize: bool = False
    gqa_rows: bool = True
    fast_trace: bool = True  # the symbolic trace by one make_fx pass where it holds


def _on(env: Mapping[str, str], name: str, default: bool) -> bool:
    """A boolean switch: ``0``/``false``/``off``/``no`` is off, anything else on; unset or
    empty is ``default``."""
    value = (env.get(name) or "").strip().lower()
    if not value:
        return default
    return value not in ("0", "false", "off", "no")


def _configs(value: str | None) -> tuple[Tiles, ...] | None:
    if not value:
        return None
    try:
        configs = tuple(_tiles(c) for c in value.split(";") if c.strip())
    except (TypeError, ValueError):
        raise ValueError(f"FLASHLIGHT_CONFIGS={value!r}: expected 'BLOCK_M,BLOCK_N,num_warps,num_stages' "
                         "entries separated by ';', e.g. '128,64,4,3;128,128,8,3'") from None
    return configs or None


def _tiles(entry: str) -> Tiles:
    bm, bn, warps, stages = (int(x) for x in entry.split(","))
    return bm, bn, warps, stages


def _split_kv(value: str | None) -> int | None:
    if value is None or not value.strip():
        return None
    try:
        return max(1, int(value))
    except ValueError:
        raise ValueError(f"FLASHLIGHT_SPLIT_KV={value!r}: expected a number of key shares, e.g. 4 "
                         "(1 turns split-KV off); unset it to let flashlight choose") from None


def from_environment(env: Mapping[str, str] | None = None) -> Settings:
    """Parse the switches from ``env`` (the process environment by default)."""
    env = os.environ if env is None else env
    cache_dir = env.get("FLASHLIGHT_CACHE_DIR") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "flashlight_hf")
    interpret = _on(env, "TRITON_INTERPRET", False)
    return Settings(
        interpret=interpret,
        disk_cache=_on(env, "FLASHLIGHT_DISK_CACHE", True),
        cache_dir=cache_dir,
        autotune=_on(env, "FLASHLIGHT_AUTOTUNE", True),
        tune_on_call=_positive(env.get("FLASHLIGHT_TUNE_ON_CALL"), "FLASHLIGHT_TUNE_ON_CALL", 2),
        configs=_configs(env.get("FLASHLIGHT_CONFIGS")),
        split_kv=_split_kv(env.get("FLASHLIGHT_SPLIT_KV")),
        fused_split=_on(env, "FLASHLIGHT_FUSED_SPLIT", True),
        fast_launch=_on(env, "FLASHLIGHT_FAST_LAUNCH", True),
        warp_specialize=_on(env, "FLASHLIGHT_WARP_SPECIALIZE", False) and not interpret,
        gqa_rows=_on(env, "FLASHLIGHT_GQA_ROWS", True),
        fast_trace=_on(env, "FLASHLIGHT_FAST_TRACE", True),
    )


def _positive(value: str | None, name: str, default: int) -> int:
    """A positive integer switch; unset or empty is ``default``."""
    if value is None or not value.strip():
        return default
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{name}={value!r}: expected a positive integer")
    return n


_current: Settings | None = None


def current() -> Settings:
    """The settings in force: the environment as it was at the first call (or the last
    :func:`reload`), with any active :func:`override` applied."""
    global _current
    if _current is None:
        _current = from_environment()
    return _current


def reload() -> Settings:
    """Read the environment again (after a change to ``os.environ``)."""
    global _current
    _current = from_environment()
    return _current


@contextlib.contextmanager
def override(**changes: object) -> Iterator[Settings]:
    """Change some switches for a block of code: ``with settings.override(split_kv=4): ...``.

    Field names are :class:`Settings`'s; a misspelt one raises rather than being ignored."""
    global _current
    before = current()
    unknown = set(changes) - {f.name for f in dataclasses.fields(Settings)}
    if unknown:
        raise TypeError(f"settings.override: no switch named {', '.join(sorted(unknown))}; "
                        f"the switches are {', '.join(f.name for f in dataclasses.fields(Settings))}")
    if isinstance(changes.get("configs"), str):
        changes["configs"] = _configs(changes["configs"])  # type: ignore[arg-type]
    _current = dataclasses.replace(before, **changes)  # type: ignore[arg-type]
    try:
        yield _current
    finally:
        _current = before
