"""Matrix products: a sum over the contracted variable of a product. Batch axes broadcast, the
contracted axes unify (that is where GQA's ``h := hk * G + g`` comes from)."""

from __future__ import annotations

import torch
import torch.fx

from flashlight_hf.compiler.ir.from_fx.core import LT, Handler, LabelState, OpCall
from flashlight_hf.compiler.ir.nodes import Const, Node, Pointwise, Reduce, Unsupported, is_one


def matmul(lab: LabelState, n: torch.fx.Node, a: LT, b: LT, dtype: torch.dtype) -> LT:
    if not dtype.is_floating_point:  # kernels contract floats; eager decides what integers do
        raise Unsupported(n.name, f"a matmul of {dtype} values")
    squeeze_a = a.ndim == 1
    squeeze_b = b.ndim == 1
    if squeeze_a:
        a = LT([[]] + a.axes, a.node)
    if squeeze_b:
        b = LT(b.axes + [[]], b.node)
    ka, kb = a.axes[-1], b.axes[-2]
    batch_a = LT(a.axes[:-2], a.node)
    batch_b = LT(b.axes[:-2], b.node)
    batch, _ = lab.broadcast(n.name, [batch_a, batch_b]) if (a.ndim > 2 or b.ndim > 2) else ([], None)
    k_axis = lab.unify_axes(ka, kb, n.name)
    prod: Node = Pointwise(dtype, "mul", (a.node, b.node))
    node = prod
    for v, e in k_axis:
        if v is None:
            if not is_one(e):
                node = Pointwise(dtype, "mul", (node, Const(dtype, e)))
            continue
        node = Reduce(dtype, "sum", lab.find(v), node)
    axes = batch + ([] if squeeze_a else [a.axes[-2]]) + ([] if squeeze_b else [b.axes[-1]])
    return LT(axes, node)


def _matmul(lab: LabelState, c: OpCall) -> LT:
    return matmul(lab, c.node, c.args[0], c.args[1], c.dtype)


HANDLERS: dict[str, Handler] = {p: _matmul for p in ("bmm", "mm", "matmul", "mv", "dot")}
