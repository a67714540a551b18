"""What every op family labels with: labelled tensors, the union-find over index variables,
fresh variables per use of an input, and broadcasting.

Why a shared core: the families (pointwise, views, reductions, matmul, concatenation, slicing)
only ever *relate* axes — this axis is that one (:meth:`LabelState.unify_axes`), this variable
is a digit of that one (:meth:`LabelState.define`). Keeping that bookkeeping in one place is
what lets each family be a handful of small functions.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import sympy
import torch
import torch.fx

from flashlight_hf.compiler.capture import Captured
from flashlight_hf.compiler.ir.nodes import (Axis, Const, IExpr, Load, Node, Size, Unsupported, Var, as_size,
                                             axis_extent, is_one, map_indices, size_eq, size_prod)


@dataclass
class LT:
    """A labelled tensor: one factor list per axis and the scalar expression of an element."""

    axes: list[Axis]
    node: Node
    # A concatenation along ``piece_axis``: the tensor is these labelled parts, in order. Only
    # what attention programs do between a ``cat`` and the slice that undoes it is allowed
    # (casts, softmax over that axis, slicing one part back out): enough for attention sinks.
    pieces: list["LT"] | None = None
    piece_axis: int = -1

    @property
    def ndim(self) -> int:
        return len(self.axes)


@dataclass
class OpCall:
    """One ``call_function`` node as a handler sees it: its arguments already labelled."""

    node: torch.fx.Node
    target: Any
    packet: str  # the overload packet's name: ``aten.view.default`` -> ``"view"``
    args: list
    kwargs: dict
    dtype: torch.dtype  # the dtype of the node's (first) tensor result


def not_handled(c: OpCall) -> Unsupported:
    """The error for an operator no family handles: the op as the user wrote it (``torch.foo``)
    where torch has one of that name, and what the user can change."""
    public = f" (torch.{c.packet})" if not c.packet.startswith("_") and hasattr(torch, c.packet) else ""
    return Unsupported(c.node.name, f"operator {c.target}{public} is not handled by the generator (what to "
                                    "change: write it with ops it handles (arithmetic, comparisons, where, exp/log, "
                                    "trigonometric and activation functions), or compute it outside the compiled "
                                    "function and pass the result in as an argument)")


class LabelState:
    """The labelling's state: variables and their union-find, derived-variable definitions,
    the program inputs seen so far and the FX environment."""

    def __init__(self, captured: Captured):
        self.captured = captured
        self.parent: dict[Var, Var] = {}
        self.defs: dict[Var, IExpr] = {}
        self.env: dict[torch.fx.Node, Any] = {}
        self.input_shapes: list[tuple[Size, ...]] = []
        self.input_dtypes: list[torch.dtype] = []
        self.bindings: list[int | torch.Tensor] = list(captured.bindings)
        self._names = itertools.count()
        self._created: list[Var] = []
        self.input_of: dict[torch.fx.Node, int] = {}
        self.input_uses: dict[int, list[list[Var]]] = {}

    # -- variables -------------------------------------------------------------------------
    def new_var(self, extent: Size, hint: str = "v") -> Var:
        v = Var(f"{hint}{next(self._names)}", extent)
        self._created.append(v)
        return v

    def _all_vars(self) -> Iterable[Var]:
        yield from self.parent
        yield from self.parent.values()
        for uses in self.input_uses.values():
            for vs in uses:
                yield from vs
        yield from self._created

    def find(self, v: Var) -> Var:
        while v in self.parent:
            v = self.parent[v]
        return v

    def union(self, a: Var, b: Var, where: str) -> None:
        a, b = self.find(a), self.find(b)
        if a is b:
            return
        if a in self.defs and b in self.defs:
            raise Unsupported(where, "two derived index variables were identified")
        if b in self.defs:
            a, b = b, a
        # keep the defined one as the root so its definition stays attached
        self.parent[b] = a

    def unify_axes(self, x: Axis, y: Axis, where: str) -> Axis:
        """Make two axes of equal extent index the same thing; return the merged factor list."""
        fx = [(v, e) for v, e in x if not is_one(e)]
        fy = [(v, e) for v, e in y if not is_one(e)]
        if not fx:
            return list(y) if y else list(x)
        if not fy:
            return list(x)
        out: Axis = []
        for gx, gy in self._align(fx, fy, where):
            out.extend(self._unify_group(gx, gy, where))
        return out

    def _align(self, fx: Axis, fy: Axis, where: str) -> list[tuple[Axis, Axis]]:
        """Split two factor lists of equal total extent into groups of equal extent."""
        groups, i, j = [], 0, 0
        while i < len(fx) or j < len(fy):
            if i >= len(fx) or j >= len(fy):
                raise Unsupported(where, f"cannot match axis factors {fx} with {fy}")
            gx, gy = [fx[i]], [fy[j]]
            i, j = i + 1, j + 1
            for _ in range(64):
                px, py = size_prod(e for _, e in gx), size_prod(e for _, e in gy)
                if size_eq(px, py):
                    break
                ratio = sympy.simplify(sympy.sympify(px) / sympy.sympify(py))
                grow_y = ratio.is_number and ratio > 1
                if grow_y and j < len(fy):
                    gy.append(fy[j]); j += 1
                elif not grow_y and i < len(fx):
                    gx.append(fx[i]); i += 1
                else:
                    raise Unsupported(where, f"cannot match axis factors {fx} with {fy}")
            groups.append((gx, gy))
        return groups

    def _unify_group(self, fx: Axis, fy: Axis, where: str) -> Axis:
        if len(fx) == len(fy) == 1:
            (va, ea), (vb, _) = fx[0], fy[0]
            if va is not None and vb is not None:
                self.union(va, vb, where)
            return [(va if va is not None else vb, ea)]
        # one side a single variable, the other several digits of it
        for single, multi in ((fx, fy), (fy, fx)):
            if len(single) == 1 and single[0][0] is None:
                return list(multi)
            if len(single) == 1:
                (root, _), inner = single[0], 1
                for v, e in reversed(multi):
                    if v is not None:
                        expr = IExpr.var(root)
                        if not is_one(inner):
                            expr = IExpr("floordiv", (expr, IExpr.const(inner)))
                        if v is not multi[0][0]:
                            expr = IExpr("mod", (expr, IExpr.const(e)))
                        self.define(v, expr, where)
                    inner = size_prod([inner, e])
                return list(single)
        raise Unsupported(where, f"cannot match axis factors {fx} with {fy}")

    def define(self, v: Var, expr: IExpr, where: str) -> None:
        r = self.find(v)
        if r in self.defs:
            raise Unsupported(where, f"index variable {v} defined twice")
        self.defs[r] = expr

    def resolve(self, e: IExpr, depth: int = 0) -> IExpr:
        if depth > 32:
            raise Unsupported("labelling", "cyclic index variable definitions")
        if e.op == "var":
            r = self.find(e.args[0])
            if r in self.defs:
                return self.resolve(self.defs[r], depth + 1)
            return IExpr.var(r)
        if e.op in ("const", "sym"):
            return e
        return IExpr(e.op, tuple(self.resolve(a, depth + 1) if isinstance(a, IExpr) else a for a in e.args))

    # -- inputs and arguments --------------------------------------------------------------
    def fresh_use(self, n: torch.fx.Node) -> LT:
        """Each use of a program input gets its own index variables.

        ``doc[:, None] == doc[None, :]`` reads one input along the rows *and* the keys; one
        variable per input axis would force rows == keys. The uses are tied together only by
        the ops that combine them.
        """
        k = self.input_of[n]
        val = n.meta.get("val") if n.op == "placeholder" else getattr(self.captured.graph_module, n.target)
        vars_ = []
        axes: list[Axis] = []
        for a, sz in enumerate(self.input_shapes[k]):
            v = self.new_var(sz, f"in{k}_{a}_")
            vars_.append(v)
            axes.append([(v, sz)])
        self.input_uses[k].append(vars_)
        return LT(axes, Load(val.dtype, k, tuple(IExpr.var(v) for v in vars_)))

    def tensor_input(self, n: torch.fx.Node, k: int, val: torch.Tensor) -> LT:
        shape = tuple(as_size(s) for s in val.shape)
        vars_: list[Var | None] = []
        axes: list[Axis] = []
        for a, s in enumerate(shape):
            v = self.new_var(s, f"{n.name}_{a}_")
            vars_.append(v)
            axes.append([(v, s)])
        while len(self.input_shapes) <= k:
            self.input_shapes.append(())
            self.input_dtypes.append(torch.float32)
        self.input_shapes[k] = shape
        self.input_dtypes[k] = val.dtype
        self.input_of[n] = k
        self.input_uses.setdefault(k, [])
        return None  # every use draws fresh variables (fresh_use)

    def val(self, n: torch.fx.Node) -> Any:
        return n.meta.get("val")

    def arg(self, a: Any) -> Any:
        if isinstance(a, torch.fx.Node):
            if a.op in ("placeholder", "get_attr") and a in self.input_of:
                return self.fresh_use(a)
            return self.env[a]
        if isinstance(a, (list, tuple)):
            return type(a)(self.arg(x) for x in a)
        return a

    def scalar(self, x: Any, dtype: torch.dtype) -> LT:
        if isinstance(x, LT):
            return x
        if isinstance(x, torch.SymInt) or isinstance(x, torch.SymFloat):
            return LT([], Const(dtype, x.node.expr))
        if isinstance(x, sympy.Expr):
            return LT([], Const(dtype, x))
        return LT([], Const(dtype, x))

    def broadcast(self, where: str, xs: list[LT]) -> tuple[list[Axis], list[Node]]:
        nd = max(x.ndim for x in xs)
        padded = [[[]] * (nd - x.ndim) + list(x.axes) for x in xs]
        out: list[Axis] = []
        for k in range(nd):
            cur: Axis = []
            for p in padded:
                ax = p[k]
                if is_one(axis_extent(ax)):
                    if not cur:
                        cur = ax  # keep a size-1 variable (e.g. a one-query decode step)
                    elif is_one(axis_extent(cur)):
                        # two size-1 axes: if both are variables (a one-query step), they are one
                        va = [v for v, _ in cur if v is not None]
                        vb = [v for v, _ in ax if v is not None]
                        if va and vb:
                            self.union(va[0], vb[0], where)
                        elif vb:
                            cur = ax
                    continue
                if not cur or is_one(axis_extent(cur)):
                    cur = ax
                else:
                    cur = self.unify_axes(cur, ax, where)
            out.append(cur)
        return out, [x.node for x in xs]


Handler = Callable[[LabelState, OpCall], Any]
"""Labels one op: each family module maps overload-packet names to handlers (its ``HANDLERS``)."""


def substitute(node: Node, m: dict[Var, IExpr], lab: LabelState) -> Node:
    """Re-index a node: every index variable ``v`` in ``m`` becomes ``m[v]`` (slices, selects)."""

    def on_reduce(v: Var) -> Var:
        if lab.find(v) in m:
            raise Unsupported("slice", "slicing along a reduced axis")
        return v

    return map_indices(node, lambda e: lab.resolve(e).subst(m), on_reduce)


def canonicalize(node: Node, lab: LabelState) -> Node:
    """Resolve every index variable to its root form (derived variables become expressions)."""

    def on_reduce(v: Var) -> Var | None:
        root = lab.resolve(IExpr.var(v))
        if root.op == "const":  # reduction over an axis of extent 1
            return None
        if root.op != "var":
            raise Unsupported("reduction", f"reduction over derived index {root}")
        return root.args[0]

    return map_indices(node, lab.resolve, on_reduce)
