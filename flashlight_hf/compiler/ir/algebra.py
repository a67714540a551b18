"""Reading a node as algebra: casts looked through, a product split into its factors.

Why here: the rewrite stage (finding ``scores × values``, the online-softmax factors) and
codegen (splitting a key contraction into its ``tl.dot`` operands) ask the same structural
questions of the same nodes; one definition keeps their answers the same.
"""

from __future__ import annotations

from typing import Callable

from flashlight_hf.compiler.ir.nodes import Node, Pointwise, walk


def strip_casts(x: Node) -> Node:
    """``x`` with the dtype casts at its top removed (a cast does not change what it computes)."""
    while isinstance(x, Pointwise) and x.op == "cast":
        x = x.args[0]
    return x


def contains(root: Node, pred: Callable[[Node], bool]) -> bool:
    """Whether any node under ``root`` (itself included) satisfies ``pred``."""
    return any(pred(x) for x in walk(root))


def mul_factors(x: Node) -> tuple[list[Node], list[Node]]:
    """Split a product/quotient tree into its numerator and denominator factors.

    Looks through casts between the ``mul``/``div`` nodes; a factor is returned as it appears
    (with its own casts). ``a * b / c`` gives ``([a, b], [c])``; a non-product gives ``([x], [])``.
    """
    x0 = x
    x = strip_casts(x)
    if isinstance(x, Pointwise) and x.op == "mul":
        n1, d1 = mul_factors(x.args[0])
        n2, d2 = mul_factors(x.args[1])
        return n1 + n2, d1 + d2
    if isinstance(x, Pointwise) and x.op == "div":
        n1, d1 = mul_factors(x.args[0])
        n2, d2 = mul_factors(x.args[1])
        return n1 + d2, d1 + n2
    return [x0], []
