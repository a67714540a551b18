"""The settings a kernel launch depends on, as one hashable key.

A call's plan (its sizes, tile choice, split count and direct relaunches) and a tuning choice
are kept per set of shapes *and* per these switches: a plan made under one setting (a forced
split count, forced tiles, the one-launch split, fast launches, autotuning) never serves a call
made under another."""

from __future__ import annotations

from typing import NamedTuple

from flashlight_hf import settings
from flashlight_hf.settings import Settings, Tiles


class LaunchSwitches(NamedTuple):
    """The fields of :class:`flashlight_hf.settings.Settings` the runtime reads."""

    split_kv: int | None  # forced key shares (1: no split), None: chosen per shape
    configs: tuple[Tiles, ...] | None  # forced tile configurations to tune over
    fused_split: bool  # split-KV in one launch (False: the partials + combine pair)
    fast_launch: bool  # relaunch kept Triton kernels directly
    autotune: bool  # time tile configurations on a GPU (False: the default one)


_last: tuple[Settings, LaunchSwitches] | None = None


def launch_switches() -> LaunchSwitches:
    """The launch switches in force now (``settings.current()``), built once per settings
    object: every call reads them, a decode loop at every layer of every step."""
    global _last
    now = settings.current()
    last = _last
    if last is not None and last[0] is now:
        return last[1]
    switches = LaunchSwitches(now.split_kv, now.configs, now.fused_split, now.fast_launch, now.autotune)
    _last = (now, switches)
    return switches
