"""CUDA graph capture: what a compiled call may do while its stream is being captured.

Why its own module: a call for a set of shapes already seen is launches only — kept kernels on
the current stream (which, under ``torch.cuda.graph``, is the capturing one), output and
gradient buffers from PyTorch's allocator (the graph's private pool) — and captures as PyTorch's
own ops do. The *first* call for a set of shapes is not: it traces the program, has Triton
compile the kernels, and times tile configurations (``do_bench`` and the GPU timers synchronise
the device), none of which a capture may contain. Without a check that surfaces as a CUDA error
deep inside Triton, or worse, as a build turned into an eager fallback by the first launch's
error handling. So every such first-time step calls :func:`refuse_cold`, which raises
:class:`GraphCaptureError` naming what to do (run the call once before capturing, as PyTorch's
CUDA graph recipe does on a side stream). The other things a capture cannot hold raise the same
error where they happen: a program constant that lives on another device (a host copy per call)
and attention dropout (its seed is drawn on the host at each call, so every replay would reuse
one mask).
"""

from __future__ import annotations

import torch


class GraphCaptureError(RuntimeError):
    """A flashlight call cannot be captured in a CUDA graph as it stands; the message says why and
    what to do instead."""


def capturing(device: torch.device) -> bool:
    """Whether the current CUDA stream is being captured and ``device`` is a CUDA device. False
    while torch.compile traces the caller (the graph it makes is captured later, if at all)."""
    if device.type != "cuda" or torch.compiler.is_compiling():
        return False
    return torch.cuda.is_current_stream_capturing()


WARM_UP = ("run the call once before capturing, with the same shapes, dtypes and autocast state "
           "(PyTorch's CUDA graph recipe warms up on a side stream first: torch.cuda.graphs' documentation)")


def refuse_cold(device: torch.device, what: str) -> None:
    """Raise :class:`GraphCaptureError` if a capture is under way on ``device``'s current stream:
    ``what`` (the first-time step about to run: tracing, compiling, tuning) cannot be captured."""
    if capturing(device):
        raise GraphCaptureError(f"flashlight: {what}, which cannot happen while a CUDA graph is being captured: "
                                f"{WARM_UP}")


def refuse(device: torch.device, why: str) -> None:
    """Raise :class:`GraphCaptureError` with ``why`` if a capture is under way on ``device``'s
    current stream (a step that no warm-up makes capturable)."""
    if capturing(device):
        raise GraphCaptureError(f"flashlight: {why}")


__all__ = ["GraphCaptureError", "WARM_UP", "capturing", "refuse", "refuse_cold"]
