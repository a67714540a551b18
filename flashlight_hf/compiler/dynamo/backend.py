"""``torch.compile(fn, backend="flashlight")``: the TorchDynamo backend.

Registered through the package's ``torch_dynamo_backends`` entry point, so it works after
``pip install`` without importing flashlight_hf first. Dynamo hands over each captured graph;
a graph that is one attention program runs as one generated kernel; in a larger graph (a whole
layer or model) each attention region is replaced by its fused kernel and the rest of the graph
goes to Inductor (on CUDA) or runs as captured (on CPU). A region or graph that cannot be fused
says so in one warning naming the node and the reason.
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
    fake-tensor mode would otherwise leak into the generator's tracing).

    The whole graph is tried as one attention program first; otherwise each attention region
    inside it is fused (:mod:`flashlight_hf.compiler.dynamo.regions`) and the rest goes to Inductor (CUDA) or
    runs as captured (CPU).
    """

    def __init__(self, gm: torch.fx.GraphModule):
        self.gm = gm
        self.run: Callable[..., Any] | None = None

    def __call__(self, *tensors: torch.Tensor) -> Any:
        if self.run is None:
            self.run = self._compile(tensors)
        return self.run(*tensors)

    def _compile(self, tensors: tuple) -> Callable[..., Any]:
        from flashlight_hf.compiler.driver import build
        from flashlight_hf.compiler.dynamo.regions import fuse_regions, run_and_record

        gm = self.gm

        def program(*xs: torch.Tensor) -> torch.Tensor:
            return gm(*xs)[0]

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a whole-graph miss is expected for model graphs
            b = build(program, tensors, {})
        if b.kernel is not None:
            key = b.op_key
            return lambda *xs: (torch.ops.flashlight.fused(key, list(xs)),)
        _, values = run_and_record(gm, *tensors)
        fused, reasons = fuse_regions(gm, values, build)
        if not fused:
            return _fallback(gm, tensors, reasons[0] if reasons else (b.fallback or ("graph", "not fusable")))
        for node, reason in reasons:
            warnings.warn(f"flashlight backend: an attention region was not fused (node {node!r}: {reason})",
                          stacklevel=2)
        cuda = any(isinstance(x, torch.Tensor) and x.is_cuda for x in tensors)
        return torch.compile(gm, backend="inductor") if cuda else gm.forward


def _fallback(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], reason: tuple[str, str]) -> Callable:
    cuda = any(isinstance(x, torch.Tensor) and x.is_cuda for x in example_inputs)
    where = "Inductor" if cuda else "the captured graph, eagerly"
    warnings.warn(f"flashlight backend: graph not fused (node {reason[0]!r}: {reason[1]}); running it "
                  f"through {where}", stacklevel=2)
    if cuda:
        return torch.compile(gm, backend="inductor")
    return gm.forward
