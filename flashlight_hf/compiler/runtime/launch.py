"""Launching a generated kernel again without Triton's per-call argument binding.

``JITFunction.run`` binds and specialises every argument at each launch, which costs tens of
microseconds of host time (about 50 µs per launch on the GPU box, measured in
``benchmarks/profile_decode.py``). A decode step launches one or two kernels per layer, and a
batch-1 decode step is bound by exactly this host time. So after Triton has compiled a kernel
for a specialisation, we keep the ``CompiledKernel`` its ``run`` returned and launch that
directly (``compiled[grid](*args)``) whenever a later call has the same specialisation.

This is the only module that touches Triton's private launch API. What makes it safe is the
key: it must separate every pair of calls Triton would compile differently. It holds, per
argument, more than Triton specialises on (pointer dtype and 16-byte alignment; integer width
class, equal to 1, divisible by 16), plus the device, the constexprs and the launch options.
``tests/test_triton_launch.py`` (GPU) checks that claim against Triton's own cache, so a
Triton release that specialises on something new fails that test instead of launching a
kernel compiled for other arguments. ``FLASHLIGHT_FAST_LAUNCH=0`` (``settings.fast_launch``)
turns this off.

A decode loop repeats one set of shapes at every layer of every step; for those the runtime
asks :meth:`Launcher.direct` for a :class:`DirectLaunch`: the kept kernel's own ``run`` with every
integer argument already in place, so a launch passes only the new pointers (raw integers) and
skips the key, Triton's runner and every tensor's ``data_ptr`` call inside Triton (16 µs down
to ~6 µs per launch on the GPU box, ``benchmarks/profile_decode.py``'s launch anatomy).
"""

from __future__ import annotations

from typing import Any

import torch

from flashlight_hf import settings


_I32_MIN, _I32_MAX, _U64 = -(2 ** 31), 2 ** 31 - 1, 2 ** 63


def specialization_key(args: list) -> tuple | None:
    """What Triton specialises a launch on, per argument (a superset); None: an argument type
    this module does not know, so the call goes through Triton's own path.

    Integers map to a class (equal to 1; divisible by 16 or not; 32-bit, 64-bit or unsigned),
    tensors to (dtype, 16-byte aligned), plus the device of the first tensor. Written for speed:
    it runs at every launch, over every stride of every input."""
    key: list[Any] = []
    device = None
    for a in args:
        t = type(a)
        if t is int:
            if a == 1:
                key.append(1)
            elif _I32_MIN <= a <= _I32_MAX:
                key.append(2 if a & 15 == 0 else 3)
            elif a < _U64:
                key.append(4 if a & 15 == 0 else 5)
            else:
                key.append(6)
        elif t is torch.Tensor or isinstance(a, torch.Tensor):
            key.append((a.dtype, a.data_ptr() & 15 == 0))
            if device is None:
                device = a.device
        elif t is bool:
            key.append(7 if a else 8)
        elif t is float:
            key.append(9)
        else:
            return None
    key.append(device)
    return tuple(key)


class Launcher:
    """``launcher(grid, args, constexprs, num_warps, num_stages)``: ``fn[grid](*args, **constexprs,
    num_warps=..., num_stages=...)``, through the kept ``CompiledKernel`` when the specialisation
    was seen before."""

    def __init__(self, fn: Any):
        self.fn = fn
        self.kernels: dict[tuple, Any] = {}
        self.enabled = _supported(fn)

    def _key(self, args: list, constexprs: tuple[tuple[str, int], ...], num_warps: int,
             num_stages: int) -> tuple | None:
        """The kept-kernel key of a launch; None where fast launches are off or not possible."""
        if not self.enabled or not settings.current().fast_launch:
            return None
        spec = specialization_key(args)
        return None if spec is None else (spec, constexprs, num_warps, num_stages)

    def __call__(self, grid: int, args: list, constexprs: tuple[tuple[str, int], ...], num_warps: int,
                 num_stages: int) -> None:
        key = self._key(args, constexprs, num_warps, num_stages)
        kept = self.kernels.get(key) if key is not None else None
        if kept is not None:
            compiled, tail = kept
            compiled[(grid, 1, 1)](*args, *tail)
            return
        compiled = self.fn[(grid,)](*args, **dict(constexprs), num_warps=num_warps, num_stages=num_stages)
        if key is not None and compiled is not None and callable(getattr(compiled, "__getitem__", None)):
            # Triton's runner takes every parameter in signature order, constexprs included
            names = list(getattr(self.fn, "arg_names", []))[len(args):]
            values = dict(constexprs)
            if sorted(names) == sorted(values):
                self.kernels[key] = (compiled, tuple(values[n] for n in names))

    def direct(self, args: list, constexprs: tuple[tuple[str, int], ...], num_warps: int,
               num_stages: int) -> "DirectLaunch | None":
        """For arguments that already launched through ``self``: a :class:`DirectLaunch` that
        relaunches the same kernel with other pointers and the same integers; None where that is
        not safe (fast launches off, no kept kernel, a pointer not 16-byte aligned)."""
        key = self._key(args, constexprs, num_warps, num_stages)
        kept = self.kernels.get(key) if key is not None else None
        if kept is None:
            return None
        slots = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        if any(args[i].data_ptr() & 15 for i in slots):
            return None  # the kept kernel assumes these unaligned: a DirectLaunch asks "all aligned"
        compiled, tail = kept
        if getattr(compiled, "function", None) is None or not callable(getattr(compiled, "run", None)):
            return None
        template = [None if isinstance(a, torch.Tensor) else a for a in args] + list(tail)
        return DirectLaunch(compiled, template, slots, args[slots[0]].get_device() if slots else 0)


class DirectLaunch:
    """``direct(grid, pointers) -> bool``: launch a kept kernel with new pointers (ints, in the
    order the tensors came in the arguments it was made from) and the integers it was made with.

    It holds exactly one specialisation: dtypes and integers are the caller's to keep equal (the
    runtime makes one per set of input shapes, strides and dtypes); alignment is checked here,
    and a call that is not "every pointer 16-byte aligned", or that meets a launch hook (a
    profiler), returns False: the caller then launches through :class:`Launcher`."""

    __slots__ = ("_run", "_function", "_metadata", "_template", "_slots", "_device", "_stream", "_knobs")

    def __init__(self, compiled: Any, template: list, slots: list[int], device: int):
        import triton
        from triton.runtime import driver

        self._run, self._function = compiled.run, compiled.function
        self._metadata = compiled.packed_metadata
        self._template, self._slots, self._device = template, slots, device
        self._stream = driver.active.get_current_stream
        self._knobs = getattr(getattr(triton, "knobs", None), "runtime", None)

    def __call__(self, grid: int, pointers: list[int]) -> bool:
        args = self._template.copy()
        for i, p in zip(self._slots, pointers):
            if p & 15:
                return False
            args[i] = p
        knobs = self._knobs
        if knobs is None or _hooked(knobs.launch_enter_hook) or _hooked(knobs.launch_exit_hook):
            return False
        self._run(grid, 1, 1, self._stream(self._device), self._function, self._metadata, None, None, None, *args)
        return True


def current_stream(device: int) -> int:
    """The raw CUDA stream Triton launches on for ``device`` (PyTorch's current stream), as
    Triton's own runner looks it up."""
    from triton.runtime import driver

    return driver.active.get_current_stream(device)


def _hooked(hook: Any) -> bool:
    """A launch hook is set: a callable (Triton 3.6) or a hook chain with members (later)."""
    return hook is not None and bool(getattr(hook, "calls", True))


def _supported(fn: Any) -> bool:
    """A real (not interpreted) JITFunction whose run returns a subscriptable CompiledKernel."""
    try:
        from triton.runtime.jit import JITFunction
    except ImportError:  # pragma: no cover - a Triton without this class: Triton's own path only
        return False
    return type(fn) is JITFunction and not settings.current().interpret
