"""Softmax scores in base 2: the scale of the scores folded with log2 e into one multiply.

A softmax stream's max and exponentials run in log2 units (``exp(x) = exp2(x·log2 e)``):
``exp2`` is the hardware's exponential, and a constant scale of the scores (``q·k·d^-½``) folds
with log2 e into one multiply-add ``s·(c·log2 e) − m`` per score where ``exp`` costs a
multiply, a subtract and its own multiply by log2 e. The fold is the same in every key tile:
a mask ``where(keep, s, −inf)`` passes the scale through (``−inf·c = −inf``), so boundary tiles
scale the masked scores exactly as interior tiles scale the unmasked ones.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from flashlight_hf.compiler.codegen.source import FLT_MAX, LOG2E
from flashlight_hf.compiler.ir import Acc, Const, Load, Node, Pointwise, Reduce, RunningMax, Var


if TYPE_CHECKING:
    from flashlight_hf.compiler.codegen.emitter import Emitter


def log2_scaled(em: "Emitter", x: Node, lay: tuple[Var, ...]) -> tuple[str, str]:
    """``x·log2 e`` as ``(pre, post)`` with ``max(x·log2 e) = tl.max(pre) · post`` and
    ``exp2(x·log2 e − m) = exp2(pre · post − m)``.

    Huge finite values (a ``finfo.min`` mask) must not overflow to −inf when scaled (a fully
    masked row is uniform in eager, not NaN): those terms are clamped to the most negative
    finite float."""
    key = ("log2", em.skey(x), lay)
    cache = em.loop_names if em.phase == "loop" else em.names
    if key in cache:
        return cache[key], "1.0" if key + ("post",) not in cache else cache[key + ("post",)]
    masked = _bounded_neg_inf(em, x)
    if masked is not None:  # the scores of a mask the key bounds capture: named in every tile range
        cond, kept, kept_first = masked
        c = None if em.interior else em.value(cond, lay)  # the select's operands in its order
        pre, post = log2_scaled(em, kept, lay)
        name = em.tmp("scores", key)
        if em.interior:
            em.emit(f"{name} = {pre}  # scores: the mask keeps every key of an interior tile")
        else:
            where = f"tl.where({c}, {pre}, float(\"-inf\"))" if kept_first else f"tl.where({c}, float(\"-inf\"), {pre})"
            em.emit(f"{name} = {where}  # scores, masked (the scale passes through -inf)")
        cache[key], cache[key + ("post",)] = name, post
        return name, post
    x = strip_scaling_noise(em, x)
    base, c = x, 1.0
    while isinstance(base, Pointwise) and base.op == "mul":
        k = positive_const(base.args[1]) or positive_const(base.args[0])
        if k is None:
            break
        c *= k
        base = base.args[0] if positive_const(base.args[1]) else base.args[1]
        base = strip_scaling_noise(em, base)
    if overflow_free(base):
        return em.f32(base, lay), repr(c * LOG2E)
    name = em.tmp("s2", key)
    em.emit(f"{name} = {scaled(em, x, LOG2E, lay)}  # scores in log2 units")
    cache[key] = name
    return name, "1.0"


def _bounded_neg_inf(em: "Emitter", x: Node) -> tuple[Node, Node, bool] | None:
    """``(cond, kept, kept_first)`` when ``x`` (through widening casts) is a mask the key bounds
    capture exactly whose other branch is −inf."""
    while isinstance(x, Pointwise) and x.op == "cast" and x.dtype in (torch.float32, torch.float64) \
            and x.args[0].dtype in (torch.float16, torch.bfloat16, torch.float32):
        x = x.args[0]
    if not (isinstance(x, Pointwise) and x.op == "where" and em.skey(x) in em.bounded):
        return None
    kept = em.bounded[em.skey(x)]
    cond, a, b = x.args
    for kept_first, (keep, other) in ((True, (a, b)), (False, (b, a))):
        if em.skey(keep) == em.skey(kept) and isinstance(other, Const) and \
                isinstance(other.value, float) and other.value == -math.inf:
            return cond, kept, kept_first
    return None


def strip_scaling_noise(em: "Emitter", x: Node) -> Node:
    """Drop what does not change a score's value here: masks the interior tiles keep
    everywhere, and widening casts."""
    while True:
        if em.interior and isinstance(x, Pointwise) and em.skey(x) in em.bounded:
            x = em.bounded[em.skey(x)]
        elif isinstance(x, Pointwise) and x.op == "cast" and x.dtype in (torch.float32, torch.float64) \
                and x.args[0].dtype in (torch.float16, torch.bfloat16, torch.float32):
            x = x.args[0]
        else:
            return x


def scaled(em: "Emitter", x: Node, k: float, lay: tuple[Var, ...]) -> str:
    """``x·k`` distributed over adds and selects, constants folded and clamped (see log2_scaled)."""
    x = strip_scaling_noise(em, x)
    if isinstance(x, Const) and isinstance(x.value, (int, float)) and not isinstance(x.value, bool):
        v = float(x.value) * k
        if abs(v) > FLT_MAX and math.isfinite(float(x.value)):  # would overflow float32
            v = math.copysign(FLT_MAX, v)
        return 'float("-inf")' if v == -math.inf else 'float("inf")' if v == math.inf else repr(v)
    if isinstance(x, Pointwise):
        if x.op == "mul":
            for a, b in (x.args, x.args[::-1]):
                c = positive_const(b)
                if c is not None:
                    return scaled(em, a, k * c, lay)
        if x.op in ("add", "sub"):
            a, b = (scaled(em, y, k, lay) for y in x.args)
            return f"({a} {'+' if x.op == 'add' else '-'} {b})"
        if x.op == "where":
            cond = em.value(x.args[0], lay)
            a, b = (scaled(em, y, k, lay) for y in x.args[1:])
            return f"tl.where({cond}, {a}, {b})"
    v = em.f32(x, lay)
    if overflow_free(x):
        return f"{v} * {k!r}"
    # a loaded bias may hold finfo.min: keep −inf and NaN, clamp finite overflow
    return f"tl.where({v} > float(\"-inf\"), tl.maximum({v} * {k!r}, {-FLT_MAX!r}), {v})"


def online_exp(em: "Emitter", x: Pointwise, lay: tuple[Var, ...]) -> str | None:
    """``exp(y − M)`` with ``M`` a running max (log2 units) as ``exp2(y·log2 e − M)``."""
    arg = x.args[0]
    while isinstance(arg, Pointwise) and arg.op == "cast" and arg.dtype in (torch.float32, torch.float64):
        arg = arg.args[0]
    if not (isinstance(arg, Pointwise) and arg.op == "sub" and isinstance(arg.args[1], RunningMax)):
        return None
    pre, post = log2_scaled(em, arg.args[0], lay)
    acc = arg.args[1].acc
    m = em.broadcast(f"m_safe_{em.acc_names[id(acc)]}", em.layout(arg.args[1]), lay)
    e = f"{pre} - {m}" if post == "1.0" else f"{pre} * {post} - {m}"
    if id(acc) in em.normaliser:  # the backward: p = exp2(s2 - m - log2 D), in that order (a clamped
        e += f" - {em.broadcast(em.normaliser[id(acc)], em.layout(arg.args[1]), lay)}"  # row: s2 - m = 0)
    return f"tl.exp2({e})"


def positive_const(x: Node) -> float | None:
    """The value of a finite positive numeric constant, else None."""
    if isinstance(x, Const) and isinstance(x.value, (int, float)) and not isinstance(x.value, bool):
        v = float(x.value)
        if math.isfinite(v) and v > 0:
            return v
    return None


def overflow_free(x: Node) -> bool:
    """Whether ``x`` cannot hold a value near the float range's edge: no loaded float outside a
    contraction (a bias tensor may hold finfo.min) and no huge finite constant."""
    stack = [x]
    while stack:
        y = stack.pop()
        if isinstance(y, Reduce):
            continue  # a dot product of finite inputs
        if isinstance(y, Load) and y.dtype.is_floating_point:
            return False
        if isinstance(y, Const) and isinstance(y.value, (int, float)) and not isinstance(y.value, bool) \
                and math.isfinite(float(y.value)) and abs(float(y.value)) > 1e30:
            return False
        if isinstance(y, (Acc, RunningMax)):
            return False
        stack.extend(y.children())
    return True
