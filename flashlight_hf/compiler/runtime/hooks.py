"""Launch hooks: callbacks told the name of every generated kernel a call launches.

Tests use them to prove a generated kernel actually ran (not a silent fallback), and which
one (the single launch, the split-KV kernel, or the partials + combine pair)."""

from __future__ import annotations

from typing import Callable

_launch_hooks: list[Callable[[str], None]] = []


def add_launch_hook(fn: Callable[[str], None]) -> Callable[[], None]:
    """Call ``fn(kernel_name)`` at every generated-kernel launch; returns a remover."""
    _launch_hooks.append(fn)
    return lambda: _launch_hooks.remove(fn)


def launch_hooks() -> list[Callable[[str], None]]:
    """The hooks set now (the live list: empty, the common case, costs one check per call)."""
    return _launch_hooks
