"""The IR's data: sizes, index variables and expressions, and the scalar value nodes.

Why one module: every later stage (rewrite, codegen) reads these types and nothing else of the
IR stage. It includes the node types the rewrite stage creates (:class:`Acc`,
:class:`RunningMax`, :class:`RuntimeOffset`): codegen reads them too, so they live with the
others rather than in the stage that happens to build them. Nothing here knows about FX.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Iterable, Iterator

import sympy
import torch


class Unsupported(Exception):
    """A node the generator cannot place; carries the FX node's name for ``explain``."""

    def __init__(self, node: str, reason: str):
        super().__init__(f"{node}: {reason}")
        self.node = node
        self.reason = reason


# ----------------------------------------------------------------------------------------------
# Sizes: ints or sympy expressions over the symbolic sizes of the inputs.
Size = Any


def as_size(x: Any) -> Size:
    """A traced size (int, SymInt or sympy expression) as an int where it is a number."""
    if isinstance(x, torch.SymInt):
        expr = x.node.expr
        return int(expr) if expr.is_number else expr
    if isinstance(x, (int, sympy.Expr)):
        return int(x) if isinstance(x, sympy.Expr) and x.is_number else x
    raise TypeError(f"not a size: {x!r}")


def size_eq(a: Size, b: Size) -> bool:
    """Whether two sizes are equal for every value of the size symbols."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return sympy.simplify(sympy.sympify(a) - sympy.sympify(b)) == 0


def size_prod(xs: Iterable[Size]) -> Size:
    """The product of sizes (an int where it is a number)."""
    out: Size = 1
    for x in xs:
        out = out * x
    return int(out) if isinstance(out, sympy.Expr) and out.is_number else out


def is_one(x: Size) -> bool:
    """Whether a size is the literal 1 (a symbolic size is never 1: sizes 0/1 specialise)."""
    return isinstance(x, int) and x == 1


# ----------------------------------------------------------------------------------------------
# Index variables and index expressions.
_ids = itertools.count()


@dataclass(eq=False)
class Var:
    """A loop index of the program. Identity matters; ``name`` is for printing only."""

    name: str
    extent: Size
    uid: int = field(default_factory=lambda: next(_ids))

    def __repr__(self) -> str:
        return self.name

    def __hash__(self) -> int:
        return self.uid


@dataclass(frozen=True)
class IExpr:
    """Integer index arithmetic: ``op`` in var / const / sym / add / mul / floordiv / mod."""

    op: str
    args: tuple = ()

    @staticmethod
    def var(v: Var) -> "IExpr":
        return IExpr("var", (v,))

    @staticmethod
    def const(c: Size) -> "IExpr":
        return IExpr("sym", (c,)) if isinstance(c, sympy.Expr) else IExpr("const", (int(c),))

    def vars(self) -> frozenset[Var]:
        if self.op == "var":
            return frozenset(self.args)
        if self.op in ("const", "sym"):
            return frozenset()
        return frozenset().union(*(a.vars() for a in self.args if isinstance(a, IExpr)))

    def offset_var(self) -> tuple[Var, Size] | None:
        """(v, c) where the index is ``v`` (c = 0) or ``v + c`` / ``c + v`` with ``c`` a constant
        or a size: it reads the slice ``[c, c + extent of v)`` of its axis. None otherwise."""
        if self.op == "var":
            return self.args[0], 0
        if self.op != "add" or len(self.args) != 2 or not all(isinstance(a, IExpr) for a in self.args):
            return None
        v, c = self.args if self.args[0].op == "var" else self.args[::-1]
        if v.op != "var" or c.op not in ("const", "sym"):
            return None
        return v.args[0], c.args[0]

    def subst(self, m: dict[Var, "IExpr"]) -> "IExpr":
        if self.op == "var":
            return m.get(self.args[0], self)
        if self.op in ("const", "sym"):
            return self
        return IExpr(self.op, tuple(a.subst(m) if isinstance(a, IExpr) else a for a in self.args))

    def __str__(self) -> str:
        if self.op == "var":
            return self.args[0].name
        if self.op in ("const", "sym"):
            return str(self.args[0])
        sym = {"add": "+", "mul": "*", "floordiv": "//", "mod": "%"}[self.op]
        return "(" + f" {sym} ".join(str(a) for a in self.args) + ")"


# ----------------------------------------------------------------------------------------------
# Tensor axes as factor lists (what the labeller names and Program.out_axes holds).
Factor = tuple  # (Var | None, Size)
Axis = list  # list[Factor]; [] is an axis of size 1


def axis_extent(ax: Axis) -> Size:
    """The size of an axis: the product of its factors' extents."""
    return size_prod(e for _, e in ax)


# ----------------------------------------------------------------------------------------------
# Value nodes.
@dataclass(frozen=True, eq=False, repr=False)
class Node:
    dtype: torch.dtype

    @property
    def vars(self) -> frozenset[Var]:  # pragma: no cover - overridden
        raise NotImplementedError

    def children(self) -> tuple["Node", ...]:
        return ()


@dataclass(frozen=True, eq=False, repr=False)
class Load(Node):
    """``inputs[index][idx_0, idx_1, ...]``; an index may be an IExpr or (gather) a Node."""

    input: int
    index: tuple

    @property
    def vars(self) -> frozenset[Var]:
        out: frozenset[Var] = frozenset()
        for e in self.index:
            out |= e.vars() if isinstance(e, IExpr) else e.vars
        return out

    def children(self) -> tuple[Node, ...]:
        return tuple(e for e in self.index if isinstance(e, Node))


@dataclass(frozen=True, eq=False, repr=False)
class Index(Node):
    """The value of an index expression (``arange``)."""

    expr: IExpr

    @property
    def vars(self) -> frozenset[Var]:
        return self.expr.vars()


@dataclass(frozen=True, eq=False, repr=False)
class Const(Node):
    value: Any  # python number or sympy expression (a runtime size)

    @property
    def vars(self) -> frozenset[Var]:
        return frozenset()


@dataclass(frozen=True, eq=False, repr=False)
class Pointwise(Node):
    op: str
    args: tuple[Node, ...]

    @cached_property
    def vars(self) -> frozenset[Var]:
        # cached: a value used twice (``where(c, s + b, s)``, ``x * sigmoid(x)``) is one node, and
        # recomputing below each use doubles the work per level (a chain of 8 wheres took minutes)
        return frozenset().union(*(a.vars for a in self.args))

    def children(self) -> tuple[Node, ...]:
        return self.args


@dataclass(frozen=True, eq=False, repr=False)
class Reduce(Node):
    """``op`` (sum / max / min) of ``arg`` over ``var``. A matmul is sum over mul."""

    op: str
    var: Var
    arg: Node

    @cached_property
    def vars(self) -> frozenset[Var]:
        return self.arg.vars - {self.var}

    def children(self) -> tuple[Node, ...]:
        return (self.arg,)


# ----------------------------------------------------------------------------------------------
# Nodes of the fused loop nest (built by the rewrite stage, read by codegen).
@dataclass(frozen=True, eq=False, repr=False)
class Acc(Node):
    """A loop-carried accumulator over the key loop.

    ``kind='max'``: running max of ``body``. ``kind='sum'``: running sum of ``body``; when
    ``tied`` is a max accumulator, ``body`` contains ``exp(y − M)`` evaluated with the running
    max, and the sum is rescaled each time that max grows.
    """

    kind: str
    var: Var
    body: Node
    tied: "Acc | None" = None
    source: Reduce | None = None
    init: Node | None = None  # max only: a key-independent value the max starts from (a sink logit)

    @property
    def vars(self) -> frozenset[Var]:
        return self.body.vars - {self.var}

    def children(self) -> tuple[Node, ...]:
        return (self.body,) + ((self.tied,) if self.tied is not None else ())


@dataclass(frozen=True, eq=False, repr=False)
class RunningMax(Node):
    """Inside the loop: the current running max of a max accumulator (``m_new``)."""

    acc: Acc

    @property
    def vars(self) -> frozenset[Var]:
        return self.acc.vars


@dataclass(frozen=True, eq=False, repr=False)
class Adjoint(Node):
    """A value a backward kernel computes itself and names (``what``): the adjoint of a forward
    quantity (``dP`` of a contraction, an accumulated ``dQ``) or a per-row statistic the kernel
    loads. The derivative pass builds expressions over it; codegen binds it to a temporary.
    ``over``: the variables it varies along."""

    what: str
    over: frozenset = frozenset()

    @property
    def vars(self) -> frozenset[Var]:
        return self.over


@dataclass(frozen=True)
class RuntimeOffset:
    """A key bound's constant part that includes run-time values: ``const + Σ coef·node``
    (``const`` an int or size expression; each node a per-program integer such as a KV-cache
    offset loaded from a tensor). Supports the ``± int`` the bound derivation applies."""

    const: Any
    terms: tuple

    def __add__(self, k: Any) -> "RuntimeOffset":
        return RuntimeOffset(self.const + k, self.terms)

    def __sub__(self, k: Any) -> "RuntimeOffset":
        return RuntimeOffset(self.const - k, self.terms)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RuntimeOffset) and self.const == other.const and \
            len(self.terms) == len(other.terms) and all(a is b and x == y for (a, x), (b, y) in zip(self.terms, other.terms))

    def __hash__(self) -> int:
        return hash((str(self.const), tuple((id(a), x) for a, x in self.terms)))


# ----------------------------------------------------------------------------------------------
# Traversal.
def walk(root: Node) -> Iterator[Node]:
    """Every distinct node under ``root`` (children first)."""
    seen: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        x, done = stack.pop()
        if id(x) in seen:
            continue
        if done:
            seen.add(id(x))
            yield x
            continue
        stack.append((x, True))
        for c in x.children():
            if id(c) not in seen:
                stack.append((c, False))


def walk_outside_accs(root: Node) -> Iterator[Node]:
    """Every distinct node under ``root`` that lies outside the key loop: an accumulator is
    yielded but not entered (its body is loop state). The epilogue, as codegen sees it."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        if not isinstance(x, Acc):
            stack.extend(x.children())


def map_indices(root: Node, on_expr: Callable[[IExpr], IExpr],
                on_reduce: Callable[[Var], Var | None],
                on_load: Callable[[Load, Load], Load] | None = None) -> Node:
    """Rebuild ``root`` with every index expression mapped by ``on_expr`` and every reduction
    variable by ``on_reduce`` (``None`` drops the reduction: it runs over a single element);
    ``on_load(old, new)``, where given, may replace each rebuilt load (a rewrite that changes
    some loads' indices and not others'). The one tree rewriter behind slicing,
    canonicalisation, renaming and the rewrite's synthetic row axis."""
    memo: dict[int, Node] = {}

    def go(x: Node) -> Node:
        if id(x) in memo:
            return memo[id(x)]
        if isinstance(x, Load):
            r: Node = Load(x.dtype, x.input, tuple(on_expr(e) if isinstance(e, IExpr) else go(e) for e in x.index))
            if on_load is not None:
                r = on_load(x, r)
        elif isinstance(x, Index):
            r = Index(x.dtype, on_expr(x.expr))
        elif isinstance(x, Pointwise):
            r = Pointwise(x.dtype, x.op, tuple(go(a) for a in x.args))
        elif isinstance(x, Reduce):
            v = on_reduce(x.var)
            r = go(x.arg) if v is None else Reduce(x.dtype, x.op, v, go(x.arg))
        else:
            r = x
        memo[id(x)] = r
        return r

    return go(root)
