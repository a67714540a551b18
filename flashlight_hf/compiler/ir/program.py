"""The IR of one captured program: its output node and how its inputs are named and bound."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from flashlight_hf.compiler.ir.nodes import Axis, IExpr, Node, Size, Var
from flashlight_hf.compiler.ir.printer import format_node_tree


@dataclass
class Program:
    """The IR of one captured program: its output and how to name and bind everything."""

    output: Node
    out_axes: list[Axis]
    out_dtype: torch.dtype
    input_shapes: list[tuple[Size, ...]]
    input_dtypes: list[torch.dtype]
    bindings: list[int | torch.Tensor]
    input_axis_vars: list[list[list[Var]]]  # per input axis, the root variables its uses index it by
    defs: dict[Var, IExpr]  # derived variables in terms of root variables (resolved)
    # per size symbol of ``input_shapes``, the (lowest, highest or None) size the trace holds for
    size_ranges: dict[Any, tuple[int, int | None]] = field(default_factory=dict)

    def describe(self) -> str:
        return format_node_tree(self.output)
