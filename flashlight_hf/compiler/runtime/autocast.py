"""``torch.autocast``: a compiled program inside an autocast region computes what eager computes there.

Why by capture: under autocast, eager PyTorch casts per op — matmuls to the autocast dtype, on
CUDA softmax to float32, ``cat`` to the widest input — so the program eager runs in a region is
not the program as written. Both of the driver's traces (``make_fx`` and ``torch.export``) run
through the dispatcher's autocast keys, so a program traced inside a region records exactly
those casts (``_to_copy`` nodes) and the kernel generated from it computes what eager does:
the same output dtype, the same roundings, gradients in the inputs' dtypes. What this module
adds is what that needs around the build:

* :func:`state` — the autocast state of the inputs' device types, part of every build's key,
  so a build traced inside a region is never reused outside it (nor the other way round: an
  fp32 build would return fp32 where eager returns bf16). The on-disk key needs nothing: it
  hashes the traced graph, which holds the casts.
* :func:`replaying` — the program as written, re-run (a shape fallback, the recompute
  backward's forward) under the state it was traced in, whatever state the caller is in then
  (a backward pass usually runs outside the region its forward ran in). The recompute's
  autograd then runs in the caller's state, as eager's own backward does.
* :func:`off` — the runtime's own torch maths (the backward's preprocess and folds) computes in
  the dtypes the captured program fixes; an autocast region around ``loss.backward()`` must not
  re-cast it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable

import torch

# per device type of a call's tensors: (device type, autocast dtype, or None where autocast is off)
AutocastState = tuple[tuple[str, "torch.dtype | None"], ...]

# where generated kernels run (CUDA; CPU through the interpreter): on any other device a program
# runs as written, under whatever region the caller is in, so its state is not part of a key.
# A fixed list, not torch.amp.is_autocast_available: torch.compile folds the two calls below to
# constants while tracing a caller, and would have to trace into that one
_KERNEL_DEVICES = ("cpu", "cuda")


def state(device_types: Iterable[str]) -> AutocastState:
    """The autocast state in force for these device types, in a fixed order: one entry per type
    where kernels run, its dtype where a region is active there, None where not."""
    types = set(device_types)
    return tuple((d, torch.get_autocast_dtype(d) if torch.is_autocast_enabled(d) else None)
                 for d in _KERNEL_DEVICES if d in types)


def of_tensors(tensors: Iterable[torch.Tensor]) -> AutocastState:
    """:func:`state` for the device types of ``tensors``."""
    return state(t.device.type for t in tensors)


def describe(st: AutocastState) -> str:
    """``st`` in words, for messages: ``autocast(cpu, bfloat16)`` or ``no autocast``."""
    on = [f"autocast({d}, {str(dt).removeprefix('torch.')})" for d, dt in st if dt is not None]
    return ", ".join(on) if on else "no autocast"


def applied(st: AutocastState) -> contextlib.ExitStack:
    """A context entering ``st``: each device type's region on with its dtype, or off."""
    stack = contextlib.ExitStack()
    for d, dtype in st:
        stack.enter_context(torch.autocast(d, dtype=dtype) if dtype is not None else torch.autocast(d, enabled=False))
    return stack


def replaying(st: AutocastState, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run under ``st`` (the state its program was traced in), whatever the caller's."""

    def under_traced_state(*args: Any, **kwargs: Any) -> Any:
        with applied(st):
            return fn(*args, **kwargs)

    under_traced_state.__name__ = getattr(fn, "__name__", "program")
    return under_traced_state


def off(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast off for ``device_type`` where it is on (else nothing to enter: no host cost)."""
    if device_type in _KERNEL_DEVICES and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


__all__ = ["AutocastState", "applied", "describe", "of_tensors", "off", "replaying", "state"]
