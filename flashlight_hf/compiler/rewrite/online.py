"""Homomorphic (online) rewrite: every reduction over the key loop becomes a loop accumulator.

A sum over ``j`` of ``exp(y − M)·z`` where ``M = max_j y`` becomes a running accumulator
(:class:`~flashlight_hf.compiler.ir.Acc`) rescaled by ``exp(m_old − m_new)`` whenever the running
max grows; a factor that is itself a ``j``-reduction (the softmax denominator) is constant in
``j`` and moves after the loop. This is applied per reduction, so every softmax stream in the
program gets its own running state (differential attention has two). A max that starts from a
key-independent value (an attention sink's logit) keeps it as the accumulator's ``init``.
"""

from __future__ import annotations

from dataclasses import replace

from flashlight_hf.compiler.ir import (Acc, Load, Node, Pointwise, Reduce, RunningMax, Unsupported, Var, contains,
                                       mul_factors, strip_casts)
from flashlight_hf.compiler.rewrite.kernel_plan import KernelPlan


def online_softmax_pass(kp: KernelPlan) -> KernelPlan:
    """The pass: the output rewritten over accumulators of the key loop, and those accumulators."""
    out, accs = online(kp.out_node, kp.loop_var)
    return replace(kp, out_node=out, accs=accs)


def online(out: Node, j: Var) -> tuple[Node, list[Acc]]:
    """Replace every reduction over ``j`` with loop accumulators (online softmax where needed)."""
    accs: list[Acc] = []
    max_accs: dict[int, Acc] = {}
    memo: dict[int, Node] = {}

    def depends_on_j_reduce(x: Node) -> bool:
        return contains(x, lambda y: isinstance(y, Reduce) and y.var is j)

    def max_acc(r: Reduce, init: Node | None = None) -> Acc:
        if id(r) not in max_accs:
            if depends_on_j_reduce(r.arg):
                raise Unsupported("reduction", "a max over the keys of a value that itself needs the whole key axis")
            if r.op not in ("max",):
                raise Unsupported("reduction", f"{r.op} over the key axis")
            a = Acc(r.dtype, "max", j, r.arg, None, r, init)
            max_accs[id(r)] = a
            accs.append(a)
        a = max_accs[id(r)]
        if (a.init is None) != (init is None) or (init is not None and a.init is not init):
            raise Unsupported("reduction", "one key max used with two different starting values")
        return a

    def key_max(m: Node) -> tuple[Reduce, Node | None] | None:
        """``max_j y`` or ``maximum(max_j y, c)`` with ``c`` key-independent (a sink)."""
        m = strip_casts(m)
        if isinstance(m, Reduce) and m.var is j and m.op == "max":
            return m, None
        if isinstance(m, Pointwise) and m.op == "maximum":
            a, b = (strip_casts(x) for x in m.args)
            for r, c in ((a, b), (b, a)):
                if isinstance(r, Reduce) and r.var is j and r.op == "max" and j not in c.vars \
                        and not depends_on_j_reduce(c):
                    return r, c
        return None

    def online_factor(f: Node) -> tuple[Node, Acc | None]:
        """``exp(y − M)`` with ``M`` a key max → body with the running max; else unchanged."""
        base = strip_casts(f)
        if not depends_on_j_reduce(base):
            return f, None
        if isinstance(base, Pointwise) and base.op == "exp":
            inner = strip_casts(base.args[0])
            if isinstance(inner, Pointwise) and inner.op == "sub":
                y, km = inner.args[0], key_max(inner.args[1])
                if km is not None and not depends_on_j_reduce(y):
                    acc = max_acc(*km)
                    new = Pointwise(base.dtype, "exp", (Pointwise(inner.dtype, "sub", (y, RunningMax(inner.dtype, acc))),))
                    return new, acc
        raise Unsupported("reduction", "a sum over the keys whose terms depend on another key reduction in a "
                          "way the online-softmax rewrite does not cover")

    def sum_terms(x: Node, sign: float = 1.0) -> list[tuple[float, Node]]:
        x0 = x
        x = strip_casts(x)
        if isinstance(x, Pointwise) and x.op in ("add", "sub"):
            return sum_terms(x.args[0], sign) + sum_terms(x.args[1], sign if x.op == "add" else -sign)
        if isinstance(x, Pointwise) and x.op == "neg":
            return sum_terms(x.args[0], -sign)
        return [(sign, x0)]

    def rewrite_sum(r: Reduce) -> Node:
        result: Node | None = None
        for sign, term in sum_terms(r.arg):
            num, den = mul_factors(term)
            body: list[Node] = []
            outer_num: list[Node] = []
            outer_den: list[Node] = []
            tied: Acc | None = None
            for f in num:
                if j not in f.vars and depends_on_j_reduce(f):
                    outer_num.append(go(f))
                    continue
                nf, acc = online_factor(f)
                if acc is not None:
                    if tied is not None and tied is not acc:
                        raise Unsupported("reduction", "a key sum tied to two different softmax maxima")
                    tied = acc
                body.append(nf)
            for f in den:
                if j in f.vars:
                    if depends_on_j_reduce(f):
                        raise Unsupported("reduction", "division by a key-dependent value that needs the whole key axis")
                    body.append(Pointwise(f.dtype, "reciprocal", (f,)))
                else:
                    outer_den.append(go(f) if depends_on_j_reduce(f) else f)
            b = body[0]
            for f in body[1:]:
                b = Pointwise(r.dtype, "mul", (b, f))
            acc_node: Node = Acc(r.dtype, "sum", j, b, tied, r)
            accs.append(acc_node)  # type: ignore[arg-type]
            for f in outer_num:
                acc_node = Pointwise(r.dtype, "mul", (acc_node, f))
            for f in outer_den:
                acc_node = Pointwise(r.dtype, "div", (acc_node, f))
            if sign < 0:
                acc_node = Pointwise(r.dtype, "neg", (acc_node,))
            result = acc_node if result is None else Pointwise(r.dtype, "add", (result, acc_node))
        assert result is not None
        return result

    def go(x: Node) -> Node:
        if id(x) in memo:
            return memo[id(x)]
        km = key_max(x) if isinstance(x, Pointwise) else None
        if km is not None and km[1] is not None:
            r: Node = max_acc(*km)  # the running max already started from the sink value
        elif isinstance(x, Reduce) and x.var is j:
            r = max_acc(x) if x.op == "max" else rewrite_sum(x) if x.op == "sum" else None  # type: ignore
            if r is None:
                raise Unsupported("reduction", f"{x.op} over the key axis")
        elif not depends_on_j_reduce(x):
            r = x
        elif isinstance(x, Pointwise):
            r = Pointwise(x.dtype, x.op, tuple(go(a) for a in x.args))
        elif isinstance(x, Reduce):
            r = Reduce(x.dtype, x.op, x.var, go(x.arg))
        elif isinstance(x, Load):
            raise Unsupported("gather", "an index computed from a key reduction")
        else:
            r = x
        if j in r.vars and not isinstance(r, Acc) and depends_on_j_reduce(x):
            raise Unsupported("program", "a value over the key axis that needs the whole key axis first "
                              "is used outside a reduction")
        memo[id(x)] = r
        return r

    return go(out), accs

