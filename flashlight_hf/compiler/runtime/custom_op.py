"""Generated kernels as one ``torch.library`` custom op, so they compose with PyTorch.

Every compiled kernel is registered under a string key and run through the single op
``flashlight::fused(str key, Tensor[] inputs) -> Tensor``. Going through the dispatcher is what
lets a fused program sit inside ``torch.compile`` (the fake implementation gives the output's
shape and dtype without running anything), ``torch.export`` and CUDA graphs, and what gives it
autograd: the backward recomputes the captured eager program under autograd and differentiates
that (exact gradients for every input, learnable biases included) until generated backward
kernels exist.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import sympy
import torch

from flashlight_hf.compiler.runtime.kernel import CompiledKernel
from flashlight_hf.compiler.runtime.shapes import ShapeError, shape_mismatch
from flashlight_hf.compiler.runtime.sizes import sum_extent


@dataclass
class Registered:
    kernel: CompiledKernel
    eager: Callable[..., torch.Tensor]  # the program as a function of the flat tensor inputs


_REGISTRY: dict[str, Registered] = {}
_ids = itertools.count()


def register_kernel(kernel: CompiledKernel, eager: Callable[..., torch.Tensor]) -> str:
    """Make ``kernel`` callable through ``flashlight::fused``; returns its key."""
    key = f"k{next(_ids)}"
    _REGISTRY[key] = Registered(kernel, eager)
    return key


def _entry(key: str) -> Registered:
    try:
        return _REGISTRY[key]
    except KeyError:
        raise RuntimeError(f"flashlight: no generated kernel registered under {key!r} in this process "
                           "(a graph saved with flashlight ops must be loaded where the program was compiled)")


_warned: set[str] = set()


@torch.library.custom_op("flashlight::fused", mutates_args=())
def fused(key: str, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    entry = _entry(key)
    try:
        return entry.kernel(list(inputs))
    except ShapeError as exc:
        # a graph that calls the op on shapes its kernel was not traced for (a region of a
        # torch.compile graph whose sizes changed): the program as written is the right answer
        if key not in _warned:
            _warned.add(key)
            warnings.warn(f"{exc}; running the program eagerly for these shapes", stacklevel=2)
        return entry.eager(*inputs).clone()


@fused.register_fake
def _fused_fake(key: str, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    entry = _entry(key)
    kernel = entry.kernel
    program = kernel.program
    bound = kernel.bound_inputs(list(inputs))
    concrete = all(isinstance(s, int) for t in bound for s in t.shape)
    if concrete and shape_mismatch(program, bound) is not None:
        return entry.eager(*inputs).clone()  # what the op runs for these shapes (see fused)
    # output extents: a size symbol of an input axis maps to that (possibly symbolic) size
    positions: dict[Any, Any] = {}
    for k, shape in enumerate(program.input_shapes):
        for a, s in enumerate(shape):
            if isinstance(s, sympy.Symbol) and s not in positions:
                positions[s] = bound[k].shape[a]
    shape = []
    for ax in program.out_axes:
        e = sum_extent(ax)
        if isinstance(e, int):
            shape.append(e)
        elif isinstance(e, sympy.Symbol):
            shape.append(positions[e])
        else:
            shape.append(int(e.subs({s: int(v) for s, v in positions.items()})))
    return inputs[0].new_empty(shape, dtype=program.out_dtype)


def _setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    key, tensors = inputs
    ctx.key = key
    ctx.save_for_backward(*tensors)


def _backward(ctx: Any, grad_out: torch.Tensor) -> tuple:
    tensors = ctx.saved_tensors
    eager = _entry(ctx.key).eager
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in tensors]
        out = eager(*leaves)
        wanted = [t for t in leaves if t.requires_grad]
        grads = torch.autograd.grad(out, wanted, grad_out, allow_unused=True)
    it = iter(grads)
    return None, [next(it) if t.requires_grad else None for t in leaves]


torch.library.register_autograd("flashlight::fused", _backward, setup_context=_setup_context)
