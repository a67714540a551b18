"""Attention dropout inside the kernel: the plan with a dropped-out value contraction.

Why a rewrite: Transformers applies ``dropout`` to the attention probabilities in training
(``dropout(softmax(s)) @ V``). Dropping out ``p`` before the value contraction is linear, so
``dropout(softmax(s)) @ V = (Σ_j exp(s − M) · Z · V) / Σ_j exp(s − M)`` with
``Z = keep / (1 − p_drop)``: only the value contractions' bodies change, the row sums (the
softmax's normaliser) do not. ``Z`` is one IR node, ``dropout_scale(offset)``, whose value is a
counter-based random draw at the flat ``(grid..., row, key)`` index — ``tl.rand(seed, offset)``
— so the forward and the backward's two kernels regenerate the same mask from one seed, and
the derivative pass treats it as the constant it is.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from flashlight_hf.compiler.ir import Acc, IExpr, Index, Node, Pointwise, Reduce, Unsupported
from flashlight_hf.compiler.rewrite.kernel_plan import KernelPlan

DROPOUT_OP = "dropout_scale"  # Pointwise op: keep / (1 − p) at a flat (grid..., row, key) offset


def flat_offset(kp: KernelPlan) -> IExpr:
    """``((g_0·G_1 + g_1)·… ·M + i)·N + j``: each (grid point, row, key) its own counter."""
    out: IExpr | None = None
    for v in [*kp.grid_vars, kp.row_var, kp.loop_var]:
        out = IExpr.var(v) if out is None else IExpr("add", (IExpr("mul", (out, IExpr.const(v.extent))), IExpr.var(v)))
    return out


def with_attention_dropout(kp: KernelPlan) -> KernelPlan:
    """``kp`` with every value contraction (a sum over keys with a value column) multiplied by
    the dropout scale; raises Unsupported where there is none."""
    i = kp.row_var
    scale = Pointwise(torch.float32, DROPOUT_OP, (Index(torch.int64, flat_offset(kp)),))
    mapping: dict[int, Acc] = {}
    accs = []
    for a in kp.accs:
        local = {v for v in a.vars if v is i or v in kp.tile_vars}
        if a.kind == "sum" and i in local and len(local) == 2:
            new = Acc(a.dtype, "sum", a.var, Pointwise(a.body.dtype, "mul", (a.body, scale)), a.tied, a.source, a.init)
            mapping[id(a)] = new
            accs.append(new)
        else:
            accs.append(a)
    if not mapping:
        raise Unsupported("dropout", "no value contraction to drop out")
    return replace(kp, accs=accs, out_node=_substitute(kp.out_node, mapping))


def _substitute(root: Node, mapping: dict[int, Acc]) -> Node:
    """``root`` with the accumulators of ``mapping`` replaced (the epilogue reads the new ones)."""
    memo: dict[int, Node] = {}

    def go(x: Node) -> Node:
        if id(x) in memo:
            return memo[id(x)]
        if isinstance(x, Acc):
            r: Node = mapping.get(id(x), x)
        elif isinstance(x, Pointwise):
            args = tuple(go(a) for a in x.args)
            r = x if all(a is b for a, b in zip(args, x.args)) else Pointwise(x.dtype, x.op, args)
        elif isinstance(x, Reduce):
            arg = go(x.arg)
            r = x if arg is x.arg else Reduce(x.dtype, x.op, x.var, arg)
        else:
            r = x
        memo[id(x)] = r
        return r

    return go(root)
