"""Stage 2 — the reduction IR: every value is a scalar expression over named index variables.

Why: "attention" is never assumed. A captured graph is just tensors with shapes; to fuse it we
must know, for every tensor axis, *which loop index* it is. This module names them. Each axis
of each tensor is a list of factors ``(var, extent)`` (a mixed-radix digit list: a merged axis
``[B*H]`` is ``[(b, B), (h, H)]``); ``var`` is ``None`` where the value does not vary along it
(``expand``). Ops unify variables: broadcasting two axes, the batch and contracted axes of a
matmul. A head axis of ``H`` unified with ``[(hk, Hk), (g, G)]`` (HF's ``repeat_kv``) defines
``hk := h // G``: GQA falls out of the labelling, no pattern needed.

Every value becomes an :class:`Node` — a scalar expression over the variables it depends on
(its *sketch*: :attr:`Node.vars`). A matmul is a :class:`Reduce` of a product over its
contracted variable; a softmax is max / exp / sum / div. The rewrite stage works on these
nodes only, never on the FX graph.
"""

from __future__ import annotations

import itertools
import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import sympy
import torch
import torch.fx

from flashlight_hf.compiler.capture import Captured

aten = torch.ops.aten


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
    if isinstance(x, torch.SymInt):
        expr = x.node.expr
        return int(expr) if expr.is_number else expr
    if isinstance(x, (int, sympy.Expr)):
        return int(x) if isinstance(x, sympy.Expr) and x.is_number else x
    raise TypeError(f"not a size: {x!r}")


def size_eq(a: Size, b: Size) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return sympy.simplify(sympy.sympify(a) - sympy.sympify(b)) == 0


def size_prod(xs: Iterable[Size]) -> Size:
    out: Size = 1
    for x in xs:
        out = out * x
    return int(out) if isinstance(out, sympy.Expr) and out.is_number else out


def is_one(x: Size) -> bool:
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

    @property
    def vars(self) -> frozenset[Var]:
        return frozenset().union(*(a.vars for a in self.args))

    def children(self) -> tuple[Node, ...]:
        return self.args


@dataclass(frozen=True, eq=False, repr=False)
class Reduce(Node):
    """``op`` (sum / max / min) of ``arg`` over ``var``. A matmul is sum over mul."""

    op: str
    var: Var
    arg: Node

    @property
    def vars(self) -> frozenset[Var]:
        return self.arg.vars - {self.var}

    def children(self) -> tuple[Node, ...]:
        return (self.arg,)


POINTWISE_UNARY = {
    aten.exp.default: "exp", aten.exp2.default: "exp2", aten.log.default: "log", aten.tanh.default: "tanh",
    aten.sigmoid.default: "sigmoid", aten.relu.default: "relu", aten.neg.default: "neg",
    aten.abs.default: "abs", aten.sqrt.default: "sqrt", aten.rsqrt.default: "rsqrt",
    aten.logical_not.default: "not", aten.bitwise_not.default: "not", aten.sin.default: "sin",
    aten.cos.default: "cos", aten.reciprocal.default: "reciprocal", aten.sign.default: "sign",
    aten.log1p.default: "log1p", aten.expm1.default: "expm1", aten.erf.default: "erf",
    aten.floor.default: "floor", aten.ceil.default: "ceil", aten.isnan.default: "isnan",
    aten.silu.default: "silu", aten.square.default: "square",
}
POINTWISE_BINARY = {
    "add": "add", "sub": "sub", "mul": "mul", "div": "div", "pow": "pow", "maximum": "maximum",
    "minimum": "minimum", "gt": "gt", "ge": "ge", "lt": "lt", "le": "le", "eq": "eq", "ne": "ne",
    "logical_and": "and", "logical_or": "or", "bitwise_and": "and", "bitwise_or": "or",
    "remainder": "mod", "floor_divide": "floordiv", "fmod": "fmod", "atan2": "atan2",
    "logical_xor": "xor", "bitwise_xor": "xor", "__and__": "and", "__or__": "or", "__xor__": "xor",
}


_SIZE_OPS = {operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv, operator.neg,
             operator.pow, operator.mod, torch.sym_float, torch.sym_int, math.sqrt,
             aten.sym_size.int, aten.sym_numel.default, aten.sym_stride.int}


# ----------------------------------------------------------------------------------------------
# Labelled tensors.
Factor = tuple  # (Var | None, Size)
Axis = list  # list[Factor]; [] is an axis of size 1


def axis_extent(ax: Axis) -> Size:
    return size_prod(e for _, e in ax)


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


# dtypes the kernels do not compute in: running them in float32 would lose precision silently
_UNSUPPORTED_DTYPES = (torch.float64, torch.complex64, torch.complex128, torch.complex32)


class Labeller:
    """Walks the FX graph once, turning every tensor into an :class:`LT`."""

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

    # -- the walk ------------------------------------------------------------------------------
    def run(self) -> Program:
        gm = self.captured.graph_module
        placeholder_index = 0
        for fx_node in gm.graph.nodes:
            val = fx_node.meta.get("val")
            if isinstance(val, torch.Tensor) and val.dtype in _UNSUPPORTED_DTYPES:
                raise Unsupported(fx_node.name, f"{val.dtype} values: generated kernels compute in float32 at "
                                  "most, and a result must not be less precise than its dtype")
            try:
                if fx_node.op == "placeholder":
                    self.env[fx_node] = self.placeholder(fx_node, placeholder_index)
                    placeholder_index += 1
                elif fx_node.op == "get_attr":
                    value = getattr(gm, fx_node.target)
                    if isinstance(value, torch.Tensor) and value.dtype in _UNSUPPORTED_DTYPES:
                        raise Unsupported(fx_node.name, f"a {value.dtype} constant: generated kernels compute "
                                          "in float32 at most")
                    self.bindings.append(value)
                    self.env[fx_node] = self.tensor_input(fx_node, len(self.bindings) - 1, value)
                elif fx_node.op == "call_function":
                    self.env[fx_node] = self.call(fx_node)
                elif fx_node.op == "output":
                    return self.finish(fx_node)
            except Unsupported:
                raise
            except Exception as exc:  # a labelling rule hit something it did not expect
                raise Unsupported(fx_node.name, f"{type(exc).__name__}: {exc}") from exc
        raise Unsupported("output", "graph has no output")

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

    def placeholder(self, n: torch.fx.Node, k: int) -> Any:
        val = n.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise Unsupported(n.name, "non-tensor graph input")
        return self.tensor_input(n, k, val)

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

    def call(self, n: torch.fx.Node) -> Any:
        t = n.target
        args = [self.arg(a) for a in n.args]
        kwargs = {k: self.arg(v) for k, v in n.kwargs.items()}
        val = self.val(n)
        # symbolic-size arithmetic (python operators on SymInts) and sym_size: the traced value
        # itself (a SymInt / SymFloat, or a number) is what later ops read
        if t in _SIZE_OPS:
            return val
        if t is operator.getitem and isinstance(args[0], tuple):
            got = args[0][args[1]]
            return _NotHandled(n.name, "the indices of a max/min (argmax) are not handled") if got is None else got
        if t in (aten._assert_tensor_metadata.default, aten._assert_scalar.default,
                 aten.sym_constrain_range_for_size.default) or str(t).startswith("aten._assert"):
            return None
        name = getattr(t, "__name__", str(t))
        packet = name.split(".")[0]
        dtype = val.dtype if isinstance(val, torch.Tensor) else torch.float32

        if packet in ("clone", "alias", "detach", "lift_fresh_copy", "contiguous", "dropout") and isinstance(args[0], LT):
            if packet == "dropout" and len(args) > 1 and args[1] not in (0, 0.0):
                raise Unsupported(n.name, "dropout with p > 0")
            return args[0]
        if packet == "cat":
            return self.cat(n, args[0], args[1] if len(args) > 1 else kwargs.get("dim", 0))
        if packet in ("max", "min") and t in (aten.max.dim, aten.min.dim):
            # (values, indices): the values are amax/amin; the indices are not supported
            dtype = self.val(n)[0].dtype
            values = self.call_packet(n, "amax" if packet == "max" else "amin", t, args, kwargs, dtype)
            return (values, None)
        return self.call_packet(n, packet, t, args, kwargs, dtype)

    def call_packet(self, n: torch.fx.Node, packet: str, t: Any, args: list, kwargs: dict,
                    dtype: torch.dtype) -> Any:
        pieced = [a for a in args if isinstance(a, LT) and a.pieces is not None]
        if pieced:
            return self.on_pieces(n, packet, args, kwargs, dtype)
        if packet in ("_to_copy", "to", "type_as", "convert_element_type", "_convert_element_type"):
            x = args[0]
            if x.node.dtype == dtype:
                return x
            return LT(x.axes, Pointwise(dtype, "cast", (x.node,)))
        if packet in ("view", "_unsafe_view", "reshape", "view_copy"):
            return self.view(n, args[0], [as_size(s) for s in args[1]])
        if packet in ("expand", "expand_copy"):
            return self.expand(args[0], [as_size(s) for s in args[1]])
        if packet == "unsqueeze":
            x, d = args
            d = d % (x.ndim + 1)
            return LT(x.axes[:d] + [[]] + x.axes[d:], x.node)
        if packet == "squeeze":
            x = args[0]
            dims = range(x.ndim) if len(args) == 1 else ([args[1]] if isinstance(args[1], int) else args[1])
            dims = {d % max(x.ndim, 1) for d in dims}
            keep = [ax for i, ax in enumerate(x.axes) if not (i in dims and is_one(axis_extent(ax)))]
            return LT(keep, x.node)
        if packet in ("permute",):
            x, perm = args
            return LT([x.axes[p % x.ndim] for p in perm], x.node)
        if packet in ("transpose", "t", "swapaxes"):
            x = args[0]
            a, b = (args[1], args[2]) if len(args) > 2 else (0, 1)
            axes = list(x.axes)
            a, b = a % x.ndim, b % x.ndim
            axes[a], axes[b] = axes[b], axes[a]
            return LT(axes, x.node)
        if packet == "slice":
            return self.slice(n, *args)
        if packet == "select":
            return self.select(n, *args)
        if packet == "arange":
            return self.arange(n, args, kwargs, dtype)
        if packet in ("scalar_tensor", "full") and packet == "scalar_tensor":
            return LT([], Const(dtype, args[0]))
        if packet == "full":
            size = [as_size(s) for s in args[0]]
            return LT([[(None, s)] if not is_one(s) else [] for s in size], Const(dtype, args[1]))
        if packet in ("zeros", "ones", "new_zeros", "new_ones", "new_full"):
            size_arg = args[1] if packet.startswith("new_") else args[0]
            value = {"zeros": 0, "ones": 1, "new_zeros": 0, "new_ones": 1}.get(packet)
            if value is None:
                value = args[2]
            size = [as_size(s) for s in size_arg]
            return LT([[(None, s)] if not is_one(s) else [] for s in size], Const(dtype, value))
        if packet in ("zeros_like", "ones_like", "full_like"):
            value = {"zeros_like": 0, "ones_like": 1}.get(packet, args[1] if len(args) > 1 else None)
            return LT(list(args[0].axes), Const(dtype, value))
        if t in POINTWISE_UNARY:
            x = args[0]
            return LT(x.axes, Pointwise(dtype, POINTWISE_UNARY[t], (x.node,)))
        if packet == "__invert__":
            return LT(args[0].axes, Pointwise(dtype, "not", (args[0].node,)))
        if packet in ("gelu",):
            return LT(args[0].axes, Pointwise(dtype, "gelu", (args[0].node,)))
        if packet in POINTWISE_BINARY or packet in ("rsub",):
            a, b = args[0], args[1]
            alpha = kwargs.get("alpha", args[2] if len(args) > 2 and packet in ("add", "sub", "rsub") else 1)
            op = POINTWISE_BINARY.get(packet, "sub")
            a = self.scalar(a, dtype)
            b = self.scalar(b, dtype)
            if alpha not in (1, None):
                b = LT(b.axes, Pointwise(dtype, "mul", (b.node, Const(dtype, alpha))))
            if packet == "rsub":
                a, b = b, a
            if packet == "div" and kwargs.get("rounding_mode") == "floor":
                op = "floordiv"
            elif packet == "div" and kwargs.get("rounding_mode") == "trunc":
                op = "truncdiv"
            axes, (na, nb) = self.broadcast(n.name, [a, b])
            return LT(axes, Pointwise(dtype, op, (na, nb)))
        if packet in ("where",):
            c, a, b = (self.scalar(x, dtype) for x in args)
            axes, nodes = self.broadcast(n.name, [c, a, b])
            return LT(axes, Pointwise(dtype, "where", tuple(nodes)))
        if packet == "masked_fill":
            x, m, v = args
            axes, (nx, nm, nv) = self.broadcast(n.name, [x, m, self.scalar(v, dtype)])
            return LT(axes, Pointwise(dtype, "where", (nm, nv, nx)))
        if packet in ("clamp", "clamp_min", "clamp_max"):
            x = args[0]
            lo = args[1] if packet in ("clamp", "clamp_min") and len(args) > 1 else kwargs.get("min")
            hi = (args[2] if len(args) > 2 else kwargs.get("max")) if packet == "clamp" else (
                args[1] if packet == "clamp_max" else None)
            node = x.node
            if lo is not None:
                node = Pointwise(dtype, "maximum", (node, Const(dtype, lo)))
            if hi is not None:
                node = Pointwise(dtype, "minimum", (node, Const(dtype, hi)))
            return LT(x.axes, node)
        if packet in ("amax", "amin", "sum", "mean"):
            return self.reduce(n, packet, args, kwargs, dtype)
        if packet in ("_softmax", "softmax", "_safe_softmax", "_log_softmax", "log_softmax"):
            return self.softmax(n, packet, args, dtype)
        if packet in ("bmm", "mm", "matmul", "mv", "dot"):
            return self.matmul(n, args[0], args[1], dtype)
        if packet == "index" and t == aten.index.Tensor:
            return self.gather(n, args[0], args[1], dtype)
        raise Unsupported(n.name, f"operator {t} is not handled by the generator")

    # -- concatenation (attention sinks) ------------------------------------------------------
    def cat(self, n: torch.fx.Node, parts: list, dim: int) -> LT:
        parts = [p for p in parts if isinstance(p, LT)]
        nd = parts[0].ndim
        dim %= nd
        for p in parts:
            if p.pieces is not None:
                raise Unsupported(n.name, "concatenation of a concatenation")
        # the other axes must agree; unify them like a broadcast would
        others = [LT([ax for a, ax in enumerate(p.axes) if a != dim], p.node) for p in parts]
        axes, _ = self.broadcast(n.name, others)
        total = size_prod(axis_extent(p.axes[dim]) for p in parts)
        out_axes = axes[:dim] + [[(None, total)]] + axes[dim:]
        return LT(out_axes, parts[0].node, pieces=list(parts), piece_axis=dim)

    def on_pieces(self, n: torch.fx.Node, packet: str, args: list, kwargs: dict, dtype: torch.dtype) -> LT:
        x = args[0]
        if not isinstance(x, LT) or x.pieces is None or any(
                isinstance(a, LT) and a.pieces is not None for a in args[1:]):
            raise Unsupported(n.name, f"{packet} on a concatenated tensor")
        dim = x.piece_axis
        if packet in ("_to_copy", "to", "type_as", "convert_element_type", "_convert_element_type",
                      "clone", "alias", "detach", "contiguous"):
            pieces = [p if p.node.dtype == dtype else LT(p.axes, Pointwise(dtype, "cast", (p.node,)))
                      for p in x.pieces]
            return LT(x.axes, pieces[0].node, pieces=pieces, piece_axis=dim)
        if packet in ("amax", "amin"):
            dims = args[1] if len(args) > 1 else kwargs.get("dim")
            dims = [dims] if isinstance(dims, int) else list(dims or [])
            if [d % x.ndim for d in dims] != [dim]:
                raise Unsupported(n.name, f"{packet} of a concatenated tensor along another axis")
            parts = [self.reduce(n, packet, [p, *args[1:]], kwargs, dtype) for p in x.pieces]
            node = parts[0].node
            for other in parts[1:]:
                node = Pointwise(dtype, "maximum" if packet == "amax" else "minimum", (node, other.node))
            return LT(parts[0].axes, node)
        if packet in ("sub", "add", "mul", "div") and len(args) == 2 and isinstance(args[1], (LT, int, float)):
            other = self.scalar(args[1], dtype)
            if other.ndim == x.ndim and not is_one(axis_extent(other.axes[dim])):
                raise Unsupported(n.name, f"{packet} of a concatenated tensor and a tensor varying along its parts")
            pieces = []
            for p in x.pieces:
                axes, (a, b) = self.broadcast(n.name, [p, other])
                pieces.append(LT(axes, Pointwise(dtype, packet, (a, b))))
            return LT(x.axes, pieces[0].node, pieces=pieces, piece_axis=dim)
        if packet in ("_softmax", "softmax") and args[1] % x.ndim == dim:
            nodes = [p.node if p.node.dtype == dtype else Pointwise(dtype, "cast", (p.node,)) for p in x.pieces]
            nodes = _shift_free(nodes, {v for p in x.pieces for v, _ in p.axes[dim] if v is not None}, self)
            maxes = [self.reduce_axis(n.name, "max", nd, p.axes[dim], dtype) for nd, p in zip(nodes, x.pieces)]
            m = maxes[0]
            for other in maxes[1:]:
                m = Pointwise(dtype, "maximum", (m, other))
            exps = [Pointwise(dtype, "exp", (Pointwise(dtype, "sub", (nd, m)),)) for nd in nodes]
            sums = [self.reduce_axis(n.name, "sum", e, p.axes[dim], dtype) for e, p in zip(exps, x.pieces)]
            total = sums[0]
            for other in sums[1:]:
                total = Pointwise(dtype, "add", (total, other))
            pieces = [LT(p.axes, Pointwise(dtype, "div", (e, total))) for e, p in zip(exps, x.pieces)]
            return LT(x.axes, pieces[0].node, pieces=pieces, piece_axis=dim)
        if packet == "slice" and args[1] % x.ndim == dim:
            start = as_size(args[2]) if len(args) > 2 and args[2] is not None else 0
            offset: Size = 0
            want_extent = as_size(self.val(n).shape[dim])
            for p in x.pieces:
                ext = axis_extent(p.axes[dim])
                if size_eq(offset, start) and size_eq(ext, want_extent):
                    return LT(p.axes, p.node)
                offset = offset + ext
            raise Unsupported(n.name, "a slice that does not select exactly one concatenated part")
        raise Unsupported(n.name, f"{packet} on a concatenated tensor")

    # -- shape ops -------------------------------------------------------------------------
    def view(self, n: torch.fx.Node, x: LT, shape: list[Size]) -> LT:
        if -1 in shape:
            total = size_prod(axis_extent(a) for a in x.axes)
            known = size_prod(s for s in shape if not (isinstance(s, int) and s == -1))
            shape = [sympy.simplify(total / known) if s == -1 else s for s in shape]
            shape = [int(s) if isinstance(s, sympy.Expr) and s.is_number else s for s in shape]
        factors = [f for ax in x.axes for f in (ax or [(None, 1)])]
        out: list[Axis] = []
        fi = 0
        for target in shape:
            if is_one(target):
                # a size-1 axis keeps the variable of a size-1 source axis (a one-query step)
                if fi < len(factors) and is_one(factors[fi][1]):
                    out.append([factors[fi]] if factors[fi][0] is not None else [])
                    fi += 1
                else:
                    out.append([])
                continue
            while fi < len(factors) and is_one(factors[fi][1]):
                fi += 1
            group: Axis = []
            acc: Size = 1
            while not size_eq(acc, target):
                if fi >= len(factors):
                    raise Unsupported(n.name, f"view to {shape} does not split the axes {x.axes}")
                v, e = factors[fi]
                remaining = sympy.simplify(sympy.sympify(target) / sympy.sympify(acc))
                ratio = sympy.simplify(sympy.sympify(e) / remaining)
                if ratio.is_number and ratio > 1:  # the factor must be split
                    inner = int(ratio) if ratio.is_integer else None
                    if inner is None:
                        raise Unsupported(n.name, f"view splits {e} by {remaining}")
                    outer_e = remaining if not (isinstance(remaining, sympy.Expr) and remaining.is_number) else int(remaining)
                    if v is None:
                        factors[fi:fi + 1] = [(None, outer_e), (None, inner)]
                    else:
                        vo, vi = self.new_var(outer_e, f"{v.name}o"), self.new_var(inner, f"{v.name}i")
                        self.define(v, IExpr("add", (IExpr("mul", (IExpr.var(vo), IExpr.const(inner))),
                                                     IExpr.var(vi))), n.name)
                        factors[fi:fi + 1] = [(vo, outer_e), (vi, inner)]
                    continue
                group.append((v, e))
                acc = size_prod([acc, e])
                fi += 1
            out.append(group)
        if any(not is_one(e) for _, e in factors[fi:]):
            raise Unsupported(n.name, f"view to {shape} leaves factors {factors[fi:]}")
        return LT(out, x.node)

    def expand(self, x: LT, sizes: list[Size]) -> LT:
        lead = len(sizes) - x.ndim
        axes: list[Axis] = [[(None, s)] if not is_one(s) else [] for s in sizes[:lead]]
        for ax, s in zip(x.axes, sizes[lead:]):
            if isinstance(s, int) and s == -1:
                axes.append(ax)
            elif is_one(axis_extent(ax)) and not is_one(s):
                axes.append([(None, s)])
            else:
                axes.append(ax)
        return LT(axes, x.node)

    def slice(self, n: torch.fx.Node, x: LT, dim: int = 0, start: Any = None, end: Any = None, step: int = 1) -> LT:
        dim %= x.ndim
        ax = x.axes[dim]
        extent = axis_extent(ax)
        start = 0 if start is None else as_size(start)
        out_extent = as_size(self.val(n).shape[dim])
        if (isinstance(start, int) and start == 0 and step == 1 and size_eq(out_extent, extent)):
            return x
        real = [(v, e) for v, e in ax if not is_one(e)]
        if len(real) != 1:
            raise Unsupported(n.name, "slice of a merged axis")
        v, _ = real[0]
        if v is None:
            return LT(x.axes[:dim] + [[(None, out_extent)]] + x.axes[dim + 1:], x.node)
        nv = self.new_var(out_extent, f"{v.name}s")
        expr = IExpr.var(nv)
        if step != 1:
            expr = IExpr("mul", (expr, IExpr.const(step)))
        if not (isinstance(start, int) and start == 0):
            expr = IExpr("add", (expr, IExpr.const(start)))
        node = substitute(x.node, {self.find(v): self.resolve(expr)}, self)
        return LT(x.axes[:dim] + [[(nv, out_extent)]] + x.axes[dim + 1:], node)

    def select(self, n: torch.fx.Node, x: LT, dim: int, index: Any) -> LT:
        dim %= x.ndim
        real = [(v, e) for v, e in x.axes[dim] if not is_one(e)]
        node = x.node
        if len(real) == 1 and real[0][0] is not None:
            idx = as_size(index)
            if isinstance(idx, int) and idx < 0:
                idx = real[0][1] + idx
            node = substitute(node, {self.find(real[0][0]): IExpr.const(idx)}, self)
        elif real:
            raise Unsupported(n.name, "select on a merged axis")
        return LT(x.axes[:dim] + x.axes[dim + 1:], node)

    def arange(self, n: torch.fx.Node, args: list, kwargs: dict, dtype: torch.dtype) -> LT:
        start, step = 0, 1
        if len(args) == 1:
            (end,) = args
        elif len(args) == 2:
            start, end = args
        else:
            start, end, step = args[:3]
        extent = as_size(self.val(n).shape[0])
        v = self.new_var(extent, "ar")
        expr = IExpr.var(v)
        if step != 1:
            expr = IExpr("mul", (expr, IExpr.const(as_size(step))))
        if not (isinstance(start, int) and start == 0):
            expr = IExpr("add", (expr, IExpr.const(as_size(start))))
        return LT([[(v, extent)]], Index(dtype, expr))

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

    # -- reductions ------------------------------------------------------------------------
    def reduce_axis(self, where: str, op: str, node: Node, ax: Axis, dtype: torch.dtype) -> Node:
        for v, e in ax:
            if is_one(e) and v is None:
                continue
            if v is None:
                if op == "sum":
                    node = Pointwise(dtype, "mul", (node, Const(dtype, e)))
                continue
            node = Reduce(dtype, op, self.find(v), node)
        return node

    def reduce(self, n: torch.fx.Node, packet: str, args: list, kwargs: dict, dtype: torch.dtype) -> LT:
        x = args[0]
        dims = args[1] if len(args) > 1 else kwargs.get("dim")
        keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
        if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
            dims = list(range(x.ndim))
        if isinstance(dims, int):
            dims = [dims]
        dims = sorted({d % x.ndim for d in dims})
        op = {"amax": "max", "amin": "min", "sum": "sum", "mean": "sum"}[packet]
        node = x.node
        if node.dtype != dtype and op == "sum":
            node = Pointwise(dtype, "cast", (node,))
        count: Size = 1
        for d in dims:
            node = self.reduce_axis(n.name, op, node, x.axes[d], dtype)
            count = size_prod([count, axis_extent(x.axes[d])])
        if packet == "mean":
            node = Pointwise(dtype, "div", (node, Const(dtype, count)))
        axes = [([] if i in dims else ax) for i, ax in enumerate(x.axes)] if keepdim else \
            [ax for i, ax in enumerate(x.axes) if i not in dims]
        return LT(axes, node)

    def softmax(self, n: torch.fx.Node, packet: str, args: list, dtype: torch.dtype) -> LT:
        if not dtype.is_floating_point:  # eager has no integer softmax (on CUDA it raises late)
            raise Unsupported(n.name, f"softmax of {dtype} values")
        x, dim = args[0], args[1] % args[0].ndim
        node = x.node
        if node.dtype != dtype:
            node = Pointwise(dtype, "cast", (node,))
        ax = x.axes[dim]
        m = self.reduce_axis(n.name, "max", node, ax, dtype)
        shifted = Pointwise(dtype, "sub", (node, m))
        e = Pointwise(dtype, "exp", (shifted,))
        s = self.reduce_axis(n.name, "sum", e, ax, dtype)
        if packet in ("_log_softmax", "log_softmax"):
            return LT(x.axes, Pointwise(dtype, "sub", (shifted, Pointwise(dtype, "log", (s,)))))
        out: Node = Pointwise(dtype, "div", (e, s))
        if packet == "_safe_softmax":
            out = Pointwise(dtype, "where", (Pointwise(torch.bool, "eq", (m, Const(dtype, float("-inf")))),
                                             Const(dtype, 0.0), out))
        return LT(x.axes, out)

    def matmul(self, n: torch.fx.Node, a: LT, b: LT, dtype: torch.dtype) -> LT:
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
        batch, _ = self.broadcast(n.name, [batch_a, batch_b]) if (a.ndim > 2 or b.ndim > 2) else ([], None)
        k_axis = self.unify_axes(ka, kb, n.name)
        prod: Node = Pointwise(dtype, "mul", (a.node, b.node))
        node = prod
        for v, e in k_axis:
            if v is None:
                if not is_one(e):
                    node = Pointwise(dtype, "mul", (node, Const(dtype, e)))
                continue
            node = Reduce(dtype, "sum", self.find(v), node)
        axes = batch + ([] if squeeze_a else [a.axes[-2]]) + ([] if squeeze_b else [b.axes[-1]])
        return LT(axes, node)

    def gather(self, n: torch.fx.Node, x: LT, indices: list, dtype: torch.dtype) -> LT:
        """``x[i0, i1, ...]``: index tensors on the leading axes of a program input (a padding mask
        read at ``[batch, key]``, an ALiBi slope per head, document ids per key). The index
        tensors broadcast together; each replaces its axis's variable in the load."""
        if not isinstance(x.node, Load):
            raise Unsupported(n.name, "indexing a computed tensor (only program inputs can be gathered from)")
        if not indices or any(i is None for i in indices) or len(indices) > x.ndim:
            raise Unsupported(n.name, "advanced indexing other than index tensors on the leading axes")
        if not all(isinstance(i, LT) for i in indices):
            raise Unsupported(n.name, "an index that is not a tensor")
        replace: dict[Var, Node] = {}
        for k, idx in enumerate(indices):
            real = [(v, e) for v, e in x.axes[k] if not is_one(e)]
            if len(real) > 1 or (real and real[0][0] is None):
                raise Unsupported(n.name, "gather along a merged axis")
            if not real:
                continue  # a size-1 axis: every index is 0 (out of range otherwise, as in eager)
            replace[self.find(real[0][0])] = idx
        axes = self.broadcast(n.name, list(indices))[0] if len(indices) > 1 else indices[0].axes
        new_index = []
        for e in x.node.index:
            if isinstance(e, IExpr) and e.op == "var" and self.find(e.args[0]) in replace:
                new_index.append(replace[self.find(e.args[0])].node)
            else:
                new_index.append(e)
        return LT(list(axes) + list(x.axes[len(indices):]), Load(x.node.dtype, x.node.input, tuple(new_index)))

    # -- output ----------------------------------------------------------------------------
    def finish(self, n: torch.fx.Node) -> Program:
        outs = n.args[0]
        if isinstance(outs, (list, tuple)):
            if len(outs) != 1:
                raise Unsupported("output", f"the program returns {len(outs)} values; one tensor is supported")
            outs = outs[0]
        out = self.env[outs]
        if not isinstance(out, LT):
            raise Unsupported("output", "the program does not return a tensor")
        val = self.val(outs)
        axes = [[(self.find(v) if v is not None else None, e) for v, e in ax] for ax in out.axes]
        # A variable of extent 1 always indexes 0; only the output's own (a one-query decode
        # step's rows) stay variables, so the loop nest keeps its shape.
        kept = {v for ax in axes for v, _ in ax if v is not None}
        for v in list(self._all_vars()):
            r = self.find(v)
            if is_one(r.extent) and r not in kept and r not in self.defs:
                self.defs[r] = IExpr.const(0)
        node = canonicalize(out.node, self)
        input_axis_vars = []
        for k in range(len(self.input_shapes)):
            per_axis: list[list[Var]] = [[] for _ in self.input_shapes[k]]
            for use in self.input_uses.get(k, []):
                for a, v in enumerate(use):
                    r = self.find(v)
                    if r not in per_axis[a]:
                        per_axis[a].append(r)
            input_axis_vars.append(per_axis)
        defs = {v: self.resolve(IExpr.var(v)) for v in list(self.defs)}
        return Program(output=node, out_axes=axes, out_dtype=val.dtype, input_shapes=self.input_shapes,
                       input_dtypes=self.input_dtypes, bindings=self.bindings,
                       input_axis_vars=input_axis_vars, defs=defs, size_ranges=dict(self.captured.size_ranges))


def map_indices(root: Node, on_expr: Callable[[IExpr], IExpr],
                on_reduce: Callable[[Var], Var | None]) -> Node:
    """Rebuild ``root`` with every index expression mapped by ``on_expr`` and every reduction
    variable by ``on_reduce`` (``None`` drops the reduction: it runs over a single element).
    The one tree rewriter behind slicing, canonicalisation and renaming."""
    memo: dict[int, Node] = {}

    def go(x: Node) -> Node:
        if id(x) in memo:
            return memo[id(x)]
        if isinstance(x, Load):
            r: Node = Load(x.dtype, x.input, tuple(on_expr(e) if isinstance(e, IExpr) else go(e) for e in x.index))
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


def substitute(node: Node, m: dict[Var, IExpr], lab: Labeller) -> Node:
    """Re-index a node: every index variable ``v`` in ``m`` becomes ``m[v]`` (slices, selects)."""

    def on_reduce(v: Var) -> Var:
        if lab.find(v) in m:
            raise Unsupported("slice", "slicing along a reduced axis")
        return v

    return map_indices(node, lambda e: lab.resolve(e).subst(m), on_reduce)


class _NotHandled:
    """A value the labeller does not model (a max's indices): harmless until an op reads it."""

    def __init__(self, where: str, reason: str):
        self._where, self._reason = where, reason

    def __getattr__(self, name: str) -> Any:
        raise Unsupported(object.__getattribute__(self, "_where"), object.__getattribute__(self, "_reason"))


def _shift_free(nodes: list[Node], axis_vars: set, lab: "Labeller") -> list[Node]:
    """``softmax(x − c)`` is ``softmax(x)`` when ``c`` is constant along the softmax axis (a row
    max subtracted before the softmax, as GPT-OSS's eager code does): drop the shift, so the
    online rewrite sees scores, not scores minus another key reduction."""
    shifts = {id(x.args[1]) for x in nodes if isinstance(x, Pointwise) and x.op == "sub"}
    if len(shifts) != 1 or not all(isinstance(x, Pointwise) and x.op == "sub" for x in nodes):
        return nodes
    c = nodes[0].args[1]
    roots = {lab.find(v) for v in axis_vars}
    if _free_roots(c, lab, {}) & roots:
        return nodes
    return [x.args[0] for x in nodes]


def _free_roots(x: Node, lab: "Labeller", memo: dict) -> set:
    """The variables ``x`` depends on, as union-find roots (before canonicalisation a reduction's
    argument may still name its variable by an alias)."""
    if id(x) in memo:
        return memo[id(x)]
    if isinstance(x, Reduce):
        out = _free_roots(x.arg, lab, memo) - {lab.find(x.var)}
    elif isinstance(x, (Load, Index)):
        out = {lab.find(v) for v in x.vars}
        for c in x.children():
            out |= _free_roots(c, lab, memo)
    else:
        out = set()
        for c in x.children():
            out |= _free_roots(c, lab, memo)
    memo[id(x)] = out
    return out


def canonicalize(node: Node, lab: Labeller) -> Node:
    """Resolve every index variable to its root form (derived variables become expressions)."""

    def on_reduce(v: Var) -> Var | None:
        root = lab.resolve(IExpr.var(v))
        if root.op == "const":  # reduction over an axis of extent 1
            return None
        if root.op != "var":
            raise Unsupported("reduction", f"reduction over derived index {root}")
        return root.args[0]

    return map_indices(node, lab.resolve, on_reduce)


def build_ir(captured: Captured) -> Program:
    """Label the captured graph and return its IR. Raises :class:`Unsupported` with the node."""
    return Labeller(captured).run()


def format_node_tree(root: Node) -> str:
    """One line per distinct node, in topological order: ``%k = op(args)  [vars] reduces v``."""
    order: list[Node] = []
    seen: dict[int, int] = {}

    def visit(x: Node) -> None:
        if id(x) in seen:
            return
        for c in x.children():
            visit(c)
        seen[id(x)] = len(order)
        order.append(x)

    visit(root)
    lines = []
    for k, x in enumerate(order):
        ref = lambda c: f"%{seen[id(c)]}"  # noqa: E731
        if isinstance(x, Load):
            idx = ", ".join(str(e) if isinstance(e, IExpr) else ref(e) for e in x.index)
            body = f"load in{x.input}[{idx}]"
        elif isinstance(x, Index):
            body = f"index {x.expr}"
        elif isinstance(x, Const):
            body = f"const {x.value}"
        elif isinstance(x, Pointwise):
            body = f"{x.op}(" + ", ".join(ref(a) for a in x.args) + ")"
        elif isinstance(x, Reduce):
            body = f"reduce_{x.op}[{x.var}]({ref(x.arg)})"
        else:  # pragma: no cover
            body = type(x).__name__
        keeps = ",".join(sorted(v.name for v in x.vars))
        lines.append(f"%{k} = {body}  : {str(x.dtype).replace('torch.', '')} keeps[{keeps}]")
    return "\n".join(lines)
