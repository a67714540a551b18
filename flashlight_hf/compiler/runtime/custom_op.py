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

from flashlight_hf.compiler.runtime import autocast
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


def _fake_size(e: Any, positions: dict) -> Any:
    """A size expression of the traced program for the fake tensors' (possibly symbolic) sizes."""
    if isinstance(e, int):
        return e
    if isinstance(e, sympy.Symbol):
        return positions[e]
    return int(e.subs({s: int(v) for s, v in positions.items()}))


def _positions(kernel: CompiledKernel, bound: list[torch.Tensor]) -> dict:
    """Each size symbol of the traced program: the size of the first input axis that has it."""
    positions: dict[Any, Any] = {}
    for k, shape in enumerate(kernel.program.input_shapes):
        for a, s in enumerate(shape):
            if isinstance(s, sympy.Symbol) and s not in positions:
                positions[s] = bound[k].shape[a]
    return positions


@fused.register_fake
def _fused_fake(key: str, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    entry = _entry(key)
    kernel = entry.kernel
    program = kernel.program
    bound = kernel.bound_inputs(list(inputs))
    concrete = all(isinstance(s, int) for t in bound for s in t.shape)
    if concrete and shape_mismatch(program, bound) is not None:
        return entry.eager(*inputs).clone()  # what the op runs for these shapes (see fused)
    positions = _positions(kernel, bound)
    shape = [_fake_size(sum_extent(ax), positions) for ax in program.out_axes]
    return inputs[0].new_empty(shape, dtype=program.out_dtype)


def _setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    key, tensors = inputs
    ctx.key = key
    ctx.save_for_backward(*tensors)


def _recompute(key: str, tensors: Sequence[torch.Tensor], grad_out: torch.Tensor) -> list:
    """The exact backward of the program as written: its eager code re-run under autograd (in
    the autocast state it was traced in: the registered function replays it)."""
    eager = _entry(key).eager
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in tensors]
        out = eager(*leaves)
        wanted = [t for t in leaves if t.requires_grad]
        grads = torch.autograd.grad(out, wanted, grad_out, allow_unused=True)
    it = iter(grads)
    return [next(it) if t.requires_grad else None for t in leaves]


def _backward(ctx: Any, grad_out: torch.Tensor) -> tuple:
    return None, _recompute(ctx.key, ctx.saved_tensors, grad_out)


torch.library.register_autograd("flashlight::fused", _backward, setup_context=_setup_context)


# -- training: the forward that keeps what the generated backward reads --------------------------
def _dropout(p: float, seed: int) -> tuple[int, float] | None:
    return (seed, p) if p > 0.0 else None


@torch.library.custom_op("flashlight::fused_train", mutates_args=())
def fused_train(key: str, inputs: Sequence[torch.Tensor], dropout_p: float,
                seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The training-mode forward: the output and the per-row statistics (and normalised
    accumulators) the generated backward reads; none where the program ran eagerly.
    ``dropout_p`` > 0: attention dropout in the kernel, its mask drawn from ``seed``."""
    return _train_body(key, list(inputs), dropout_p, seed)


def _train_body(key: str, inputs: list[torch.Tensor], dropout_p: float,
                seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    entry = _entry(key)
    try:
        out, saved = entry.kernel.forward_for_backward(inputs, dropout=_dropout(dropout_p, seed))
    except ShapeError as exc:
        if key not in _warned:
            _warned.add(key)
            warnings.warn(f"{exc}; running the program eagerly for these shapes", stacklevel=2)
        if dropout_p > 0.0:
            raise  # the program as written has no dropout: not a substitute
        return entry.eager(*inputs).clone(), []
    return out, saved


@fused_train.register_fake
def _fused_train_fake(key: str, inputs: Sequence[torch.Tensor], dropout_p: float,
                      seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    entry = _entry(key)
    kernel = entry.kernel
    out = _fused_fake(key, inputs)
    bound = kernel.bound_inputs(list(inputs))
    concrete = all(isinstance(s, int) for t in bound for s in t.shape)
    if concrete and shape_mismatch(kernel.program, bound) is not None:
        return out, []
    train = kernel.source.train if dropout_p <= 0.0 else kernel.source.train_dropout
    positions = _positions(kernel, bound)
    shape = [_fake_size(e, positions) for e in [*train.grid_extents, train.row_extent]]
    saved = [out.new_empty(shape, dtype=torch.float32) for _ in range(2 * len(train.lse_accs))]
    for _, rank, width in train.train_accs:
        saved.append(out.new_empty([*shape, *([width] if rank == 2 else [])], dtype=torch.float32))
    return out, saved


@torch.library.custom_op("flashlight::fused_bwd", mutates_args=())
def fused_bwd(key: str, inputs: Sequence[torch.Tensor], saved: Sequence[torch.Tensor], daccs: Sequence[torch.Tensor],
              wanted: Sequence[bool], dropout_p: float, seed: int) -> list[torch.Tensor]:
    """The generated backward's kernels: per input its gradient through the scores and values,
    in the input's dtype (an empty tensor where not ``wanted`` or not reached)."""
    return _bwd_body(key, inputs, saved, daccs, wanted, dropout_p, seed)


def _bwd_body(key: str, inputs: Sequence[torch.Tensor], saved: Sequence[torch.Tensor], daccs: Sequence[torch.Tensor],
              wanted: Sequence[bool], dropout_p: float, seed: int) -> list[torch.Tensor]:
    grads = _entry(key).kernel.backward_kernels(list(inputs), list(saved), list(daccs), list(wanted),
                                                _dropout(dropout_p, seed))
    return [g.to(t.dtype).contiguous() if g is not None else t.new_empty(0) for g, t in zip(grads, inputs)]


@fused_bwd.register_fake
def _fused_bwd_fake(key: str, inputs: Sequence[torch.Tensor], saved: Sequence[torch.Tensor],
                    daccs: Sequence[torch.Tensor], wanted: Sequence[bool], dropout_p: float,
                    seed: int) -> list[torch.Tensor]:
    kernel = _entry(key).kernel
    reached = kernel.reached()
    return [torch.empty_like(t, memory_format=torch.contiguous_format) if w and k in reached else t.new_empty(0)
            for k, (t, w) in enumerate(zip(inputs, wanted))]


def _train_setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    key, tensors, dropout_p, seed = inputs
    out, saved = output
    ctx.key, ctx.n_inputs, ctx.n_saved = key, len(tensors), len(saved)
    ctx.dropout_p, ctx.seed = float(dropout_p), int(seed)
    ctx.wanted = [bool(t.requires_grad) for t in tensors]
    ctx.save_for_backward(*tensors, out, *saved)


_recompute_warned: set[tuple] = set()


def _train_backward(ctx: Any, grad_out: torch.Tensor, _grad_saved: Any) -> tuple:
    return _grads(ctx, _saved_gradients(ctx, grad_out, torch.ops.flashlight.fused_bwd))


def _saved_gradients(ctx: Any, grad_out: torch.Tensor | None,
                     kernels: Callable[..., list[torch.Tensor]]) -> list[torch.Tensor | None]:
    """:func:`train_gradients` from what :func:`_train_setup` kept on ``ctx`` (the op's backward
    and ``EagerTrain``'s)."""
    stored = ctx.saved_tensors
    tensors, out, saved = stored[:ctx.n_inputs], stored[ctx.n_inputs], stored[ctx.n_inputs + 1:]
    return train_gradients(ctx.key, list(tensors), out, list(saved), grad_out, ctx.wanted, ctx.dropout_p,
                           ctx.seed, kernels)


def train_gradients(key: str, tensors: list[torch.Tensor], out: torch.Tensor, saved: list[torch.Tensor],
                    grad_out: torch.Tensor | None, wanted: list[bool], dropout_p: float, seed: int,
                    kernels: Callable[..., list[torch.Tensor]]) -> list[torch.Tensor | None]:
    """The gradients of a training forward's tensors: the preprocess where autograd records,
    then ``kernels`` (the ``fused_bwd`` op, or its body called directly on the eager path), or
    the exact recompute (one warning) where a wanted gradient has no generated kernel."""
    kernel = _entry(key).kernel
    why = kernel.backward_missing(wanted) if saved else ("inputs", "the forward ran eagerly for these shapes")
    if why is not None and dropout_p > 0.0:
        raise RuntimeError(f"flashlight: the backward of {kernel.source.name} with attention dropout needs the "
                           f"generated backward, and {why[0]!r} has none: {why[1]}")
    if why is not None:
        if why not in _recompute_warned:
            _recompute_warned.add(why)
            warnings.warn(f"flashlight: the backward of {kernel.source.name} recomputes the program eagerly "
                          f"(node {why[0]!r}: {why[1]})", stacklevel=3)
        return _recompute(key, tensors, grad_out)
    if grad_out is None:
        return [None] * len(tensors)
    drop = _dropout(dropout_p, seed)
    # the captured program already holds the casts of the region its forward ran in: an
    # autocast region around loss.backward() must not re-cast the backward's own maths
    with autocast.off(grad_out.device.type):
        daccs, epi = kernel.backward_preprocess(tensors, out, saved, grad_out, wanted, drop)
        grads = kernels(key, tensors, saved, daccs, wanted, dropout_p, seed)
    out_grads: list[torch.Tensor | None] = []
    for g, e, t, w in zip(grads, epi, tensors, wanted):
        if not w:
            out_grads.append(None)
            continue
        g = g if g.numel() or not t.numel() else None
        total = g if e is None else e if g is None else g + e
        out_grads.append(None if total is None else total.to(t.dtype))
    return out_grads


class EagerTrain(torch.autograd.Function):
    """``fused_train`` and its backward without the dispatcher, for eager calls on plain tensors.

    Why: a custom op with registered autograd goes through the dispatcher, pytree flattening of
    its list arguments and dynamo's disable wrappers on every call, forward and backward — host
    time that a short masked kernel cannot hide (``benchmarks/host_overhead.py``). Eager training
    runs the same bodies (:func:`fused_train`'s, :func:`train_gradients`, :func:`fused_bwd`'s)
    through this ``autograd.Function``; under ``torch.compile``, export and fake or subclass
    tensors the caller uses the op, which those need. ``apply(key, dropout_p, seed, *tensors)``."""

    @staticmethod
    def forward(ctx: Any, key: str, dropout_p: float, seed: int, *tensors: torch.Tensor) -> torch.Tensor:
        out, saved = _train_body(key, list(tensors), dropout_p, seed)
        _train_setup(ctx, (key, tensors, dropout_p, seed), (out, saved))
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple:
        return (None, None, None, *_saved_gradients(ctx, grad_out, _bwd_body))


def _grads(ctx: Any, tensor_grads: list) -> tuple:
    """The backward's result in the shape of the op's arguments: None for the key (and the
    dropout arguments), the list for the tensors."""
    return None, tensor_grads, None, None


torch.library.register_autograd("flashlight::fused_train", _train_backward, setup_context=_train_setup)
