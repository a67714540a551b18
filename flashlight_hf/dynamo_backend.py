"""``torch.compile(fn, backend="flashlight")``: the TorchDynamo backend.

Registered through the package's ``torch_dynamo_backends`` entry point, so it works after
``pip install`` without importing flashlight_hf first. Dynamo hands over each captured graph;
a graph that is one attention program runs as one generated kernel. A graph the generator
cannot fuse as a whole goes to Inductor (on CUDA) or runs as captured (on CPU), with one
warning naming the node and the reason. Finding attention regions *inside* a larger graph is
not done yet: such graphs take the same fallback.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import torch


def flashlight_backend(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
    outputs = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    single = isinstance(outputs, (list, tuple)) and len(outputs) == 1
    if not single or not all(isinstance(x, torch.Tensor) for x in example_inputs):
        return _fallback(gm, example_inputs, ("graph", "the graph has several outputs or non-tensor inputs"))
    return _LazyFused(gm)


class _LazyFused:
    """Builds on the first call, with real tensors, outside Dynamo's own tracing context (whose
    fake-tensor mode would otherwise leak into the generator's tracing)."""

    def __init__(self, gm: torch.fx.GraphModule):
        self.gm = gm
        self.run: Callable[..., Any] | None = None

    def __call__(self, *tensors: torch.Tensor) -> Any:
        if self.run is None:
            from flashlight_hf.api import build

            gm = self.gm

            def program(*xs: torch.Tensor) -> torch.Tensor:
                return gm(*xs)[0]

            b = build(program, tensors, {})
            if b.kernel is None:
                self.run = _fallback(gm, tensors, b.fallback or ("graph", "not fusable"))
            else:
                key = b.op_key
                self.run = lambda *xs: (torch.ops.flashlight.fused(key, list(xs)),)
        return self.run(*tensors)


def _fallback(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], reason: tuple[str, str]) -> Callable:
    cuda = any(isinstance(x, torch.Tensor) and x.is_cuda for x in example_inputs)
    where = "Inductor" if cuda else "the captured graph, eagerly"
    warnings.warn(f"flashlight backend: graph not fused (node {reason[0]!r}: {reason[1]}); running it "
                  f"through {where}", stacklevel=2)
    if cuda:
        return torch.compile(gm, backend="inductor")
    return gm.forward
