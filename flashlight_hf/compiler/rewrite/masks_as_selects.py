"""Additive masks as selects: ``s + where(keep, 0, −inf)`` → ``where(keep, s, −inf)``.

Transformers' eager attention adds its mask to the scores; as a select it is a mask the
key-bound analysis (:mod:`.mask_bounds`) reads: whole tiles skipped, interior tiles free of it.
"""

from __future__ import annotations

from dataclasses import replace

from flashlight_hf.compiler.ir import Const, Load, Node, Pointwise, Reduce, strip_casts
from flashlight_hf.compiler.rewrite.kernel_plan import KernelPlan


def is_const(x: Node, value: float) -> bool:
    """Whether ``x`` (through casts) is the number ``value`` (not a bool, not a size)."""
    x = strip_casts(x)
    return isinstance(x, Const) and not isinstance(x.value, bool) and isinstance(x.value, (int, float)) \
        and float(x.value) == value


def additive_masks_as_selects(root: Node) -> Node:
    """``s + where(keep, 0, −inf)`` → ``where(keep, s, −inf)`` (and the mirrored forms).

    Exact for every finite or −inf score (``s + 0 = s``, ``s + −inf = −inf``)."""
    memo: dict[int, Node] = {}

    def go(x: Node) -> Node:
        if id(x) in memo:
            return memo[id(x)]
        r = x
        if isinstance(x, Pointwise):
            args = tuple(go(a) for a in x.args)
            r = x if all(a is b for a, b in zip(args, x.args)) else Pointwise(x.dtype, x.op, args)
            if x.op == "add":
                for s_, w in (args, args[::-1]):
                    ws = strip_casts(w)
                    if isinstance(ws, Pointwise) and ws.op == "where" and ws.dtype.is_floating_point:
                        c, a, b = ws.args
                        if is_const(a, 0.0) and is_const(b, float("-inf")):
                            r = Pointwise(x.dtype, "where", (c, s_, Const(x.dtype, float("-inf"))))
                            break
                        if is_const(a, float("-inf")) and is_const(b, 0.0):
                            r = Pointwise(x.dtype, "where", (c, Const(x.dtype, float("-inf")), s_))
                            break
        elif isinstance(x, Reduce):
            arg = go(x.arg)
            r = x if arg is x.arg else Reduce(x.dtype, x.op, x.var, arg)
        elif isinstance(x, Load) and any(isinstance(e, Node) for e in x.index):
            idx = tuple(go(e) if isinstance(e, Node) else e for e in x.index)
            r = Load(x.dtype, x.input, idx)
        memo[id(x)] = r
        return r

    return go(root)


def masks_as_selects_pass(kp: KernelPlan) -> KernelPlan:
    """The pass: the output expression with its additive masks as selects."""
    return replace(kp, out_node=additive_masks_as_selects(kp.out_node))
