"""Stage 1 — capture: an attention function becomes an ATen-level FX graph with known shapes.

Why two traces: a kernel must serve every sequence length and batch size, so those sizes
have to stay symbolic in the graph (``arange(S_k - S_q)`` must not be baked in). But which
input axes *are* sequence or batch axes is only known after the IR stage has named them. So
the pipeline first traces once with concrete shapes (:func:`trace_static`, cheap, via
``make_fx`` in fake mode), lets the IR stage name every axis, and then traces again with
``torch.export`` marking exactly those axes dynamic (:func:`trace_symbolic`). Head counts and
head dims stay static: the kernel specialises on them.

Both traces run under ``torch.no_grad()``: capture describes the forward program only (the
backward is derived later from the IR), and a trace that recorded autograd nodes would save
tensors through any active saved-tensor hooks. Activation checkpointing counts those: a first
call that compiles (and traces) inside a checkpointed layer would save more tensors than its
recompute, which finds the kernel cached, and the backward would raise ``CheckpointError``.

Non-tensor arguments (floats, ints, flags) are baked into the trace as constants; the runtime
keys its cache on their values.
"""

from __future__ import annotations

import inspect

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.fx
import torch.utils._pytree as pytree
from torch.fx.experimental.proxy_tensor import make_fx

from flashlight_hf import settings
from flashlight_hf.compiler import symbolic_trace


@dataclass
class Captured:
    """A traced program: the FX graph and what feeds each of its placeholders.

    ``bindings[k]`` is an ``int`` (the index of the flat tensor argument feeding placeholder
    ``k``) or a ``torch.Tensor`` (a constant the program created, lifted by the tracer; tensors it
    reads from outside are arguments by then: :mod:`flashlight_hf.compiler.state`).
    """

    graph_module: torch.fx.GraphModule
    bindings: list[int | torch.Tensor]
    symbolic: bool
    # per size symbol, the (lowest, highest or None) value the trace holds for: a kernel serves
    # only shapes inside these ranges (torch.export's range constraints; sizes 0 and 1 specialise)
    size_ranges: dict[Any, tuple[int, int | None]] = field(default_factory=dict)


class CaptureError(RuntimeError):
    """The function could not be traced into a single ATen graph."""


def split_args(args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[list[torch.Tensor], list[Any], Any]:
    """Flatten ``(args, kwargs)``: tensor leaves (kernel inputs), other leaves (constants), spec."""
    leaves, spec = pytree.tree_flatten((tuple(args), dict(kwargs)))
    tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
    constants = [None if isinstance(x, torch.Tensor) else x for x in leaves]
    return tensors, constants, spec


def argument_names(fn: Callable, args: Sequence[Any], kwargs: dict[str, Any]) -> list[str | None]:
    """Per tensor leaf of :func:`split_args`, the name of the parameter it was passed as (a
    top-level positional or keyword tensor), else None (a tensor inside a list, ``*args``).

    Only for reading: the generated source names its pointers after them (``q_ptr``)."""
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []

    class Name:
        def __init__(self, name: str | None):
            self.name = name

    def mark(value: Any, name: str | None) -> Any:
        if isinstance(value, torch.Tensor):
            return Name(name)
        return pytree.tree_map_only(torch.Tensor, lambda t: Name(None), value)

    marked = (tuple(mark(a, params[i].name if i < len(params) else None) for i, a in enumerate(args)),
              {k: mark(v, k) for k, v in kwargs.items()})
    return [leaf.name for leaf in pytree.tree_leaves(marked) if isinstance(leaf, Name)]


def tensor_function(fn: Callable, constants: list[Any], spec: Any) -> Callable[..., Any]:
    """A function of the tensor leaves only, with the constant leaves baked in."""

    def tensor_only(*tensors: torch.Tensor) -> Any:
        it = iter(tensors)
        leaves = [next(it) if c is None else c for c in constants]
        args, kwargs = pytree.tree_unflatten(leaves, spec)
        return fn(*args, **kwargs)

    return tensor_only


def trace_static(fn: Callable, args: Sequence[Any], kwargs: dict[str, Any]) -> Captured:
    """Trace with the example's concrete shapes (fake tensors: no real compute)."""
    tensors, constants, spec = split_args(args, kwargs)
    f = tensor_function(fn, constants, spec)
    try:
        with torch.no_grad():  # see the module docstring: nothing recorded for autograd
            gm = make_fx(f, tracing_mode="fake")(*tensors)
    except Exception as exc:  # the user's code could not be traced
        raise CaptureError(f"could not trace the program with make_fx: {type(exc).__name__}: {exc}") from exc
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    return Captured(gm, list(range(len(placeholders))), symbolic=False)


class _AsModule(torch.nn.Module):
    def __init__(self, f: Callable[..., Any]):
        super().__init__()
        self.f = f

    def forward(self, *tensors: torch.Tensor) -> Any:
        return self.f(*tensors)


def trace_symbolic(fn: Callable, args: Sequence[Any], kwargs: dict[str, Any],
                   dynamic_axes: Sequence[dict[int, str]]) -> Captured:
    """Trace with those axes symbolic: one ``make_fx`` trace (:mod:`.symbolic_trace`; a fraction
    of export's time once PyTorch's symbolic shapes are warm) where it holds, else
    ``torch.export``; ``dynamic_axes[t]`` maps axis -> size name for tensor ``t``.

    Axes sharing a name share one symbolic size (e.g. the key length of K, V and a bias).
    """
    tensors, constants, spec = split_args(args, kwargs)
    f = tensor_function(fn, constants, spec)
    if settings.current().fast_trace:
        try:
            gm, ranges = symbolic_trace.trace(f, tensors, dynamic_axes)
            return Captured(gm, list(range(len(tensors))), symbolic=True, size_ranges=ranges)
        except symbolic_trace.FastTraceUnavailable:
            pass  # torch.export's path below: slower, and the reference this one must agree with
    dims: dict[str, Any] = {}
    shapes = []
    for t, axes in zip(tensors, dynamic_axes):
        per_axis = []
        for a in range(t.dim()):
            name = axes.get(a)
            if name is None:
                per_axis.append(torch.export.Dim.STATIC)
            elif t.shape[a] < 2:
                per_axis.append(torch.export.Dim.STATIC)  # sizes 0/1 specialise; the cache keys on them
            else:
                per_axis.append(dims.setdefault(name, torch.export.Dim(name)))
        shapes.append(tuple(per_axis))
    try:
        with torch.no_grad():  # as in trace_static: nothing recorded for autograd
            ep = torch.export.export(_AsModule(f), tuple(tensors), dynamic_shapes=(tuple(shapes),), strict=False)
            ep = ep.run_decompositions({})
    except Exception as exc:
        raise CaptureError(f"torch.export could not trace the program with dynamic sizes: "
                           f"{type(exc).__name__}: {exc}") from exc
    bindings: list[int | torch.Tensor] = []
    user = 0
    for spec_ in ep.graph_signature.input_specs:
        if spec_.kind == torch.export.graph_signature.InputKind.USER_INPUT:
            bindings.append(user)
            user += 1
        elif spec_.target in ep.constants:
            bindings.append(ep.constants[spec_.target])
        else:
            bindings.append(ep.state_dict[spec_.target])
    ranges: dict[Any, tuple[int, int | None]] = {}
    for sym, vr in ep.range_constraints.items():
        ranges[sym] = (max(2, symbolic_trace.finite(vr.lower) or 0), symbolic_trace.finite(vr.upper))
    return Captured(ep.graph_module, bindings, symbolic=True, size_ranges=ranges)

