"""Expressions: one statement per IR node, with a named temporary and a comment naming the node.

Tiles: every value has a *layout*, the kernel-local variables it depends on in a fixed order
(rows ``m``, keys ``n``, then head-dim tile variables); grid variables are scalars. A value of
one variable is a 1-D block, two variables a 2-D block; broadcasting to a larger layout inserts
``[:, None]`` / ``[None, :]``. A contraction ``Σ_d A[i,d]·B[j,d]`` becomes ``tl.dot``.

Equal expressions the rewrites built twice are emitted once (structural CSE, :meth:`skey`).
Index arithmetic is simplified as it is written (``x * 1``, ``x + 0`` never reach the source).
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import sympy
import torch

from flashlight_hf.compiler.codegen import pointwise, reduce, scores
from flashlight_hf.compiler.codegen.naming import Names
from flashlight_hf.compiler.codegen.source import LN2, pow2
from flashlight_hf.compiler.ir import (Acc, Adjoint, Const, IExpr, Index, Load, Node, Pointwise, Reduce, RunningMax,
                                       Unsupported, Var, walk_outside_accs)
from flashlight_hf.compiler.rewrite import KernelPlan

_ATOM = re.compile(r"[A-Za-z_]\w*(\[[^\]]*\])?|-?\d+(\.\d*)?(e-?\d+)?")


def atom(s: str) -> str:
    """``s`` ready to be an operand of ``*``: names and numbers as they are, the rest in parentheses."""
    if _ATOM.fullmatch(s) or (s.startswith("(") and s.endswith(")") and _balanced(s[1:-1])):
        return s
    return f"({s})"


def _balanced(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += ch == "("
        depth -= ch == ")"
        if depth < 0:
            return False
    return depth == 0


class Emitter:
    """Turns the nodes of one kernel into statements, each value computed once and named."""

    def __init__(self, kp: KernelPlan, interpret: bool, allow_tf32: bool,
                 input_names: Sequence[str | None] | None = None):
        self.kp = kp
        self.interpret = interpret
        self.allow_tf32 = allow_tf32
        self.i, self.j = kp.row_var, kp.loop_var
        self.rank = {self.i: 0, self.j: 1, **{v: 2 + k for k, v in enumerate(kp.tile_vars)}}
        self.grid = list(kp.grid_vars)
        self.nm = Names(kp, input_names)
        self.lines: list[str] = []
        self.indent = 1
        self.names: dict[Any, str] = {}       # values outside the key loop, by structural key
        self.loop_names: dict[Any, str] = {}  # values of the key-tile body being emitted
        self.tmp_names: dict[Any, str] = {}   # every temporary's name: equal in each tile range
        self.sizes: list[Any] = []  # runtime size expressions -> z{k}
        self.inputs: list[int] = []
        self.phase = "pre"
        self.acc_names: dict[int, str] = {id(a): f"acc{k}" for k, a in enumerate(kp.accs)}
        self.skeys: dict[int, Any] = {}
        self.interned: dict[tuple, int] = {}  # structure -> key (skey)
        self.keep: list[Node] = []  # keeps keyed nodes alive so their ids stay unique
        self.interior = False
        self.pads = {v.name: pow2(v.extent) for v in kp.tile_vars}
        self.bounded = {self.skey(w): kept for w, kept in kp.bounded_masks}
        # the backward kernels: the variable their loop walks (the keys in the forward and the dQ
        # kernel, the rows in the dK/dV kernel), the names of the Adjoint values they computed,
        # whether a running max is loop state (the forward) or a stored per-row statistic, and
        # per max accumulator the name of the log2 of its stored denominator (exp(s - lse))
        self.loop = kp.loop_var
        self.adjoints: dict[str, str] = {}
        self.running_max_in_loop = True
        self.normaliser: dict[int, str] = {}
        self.uses_dropout = False  # a dropout scale was emitted: the kernel takes dropout_seed, dropout_p
        self.table = False  # walks a block table (codegen/block_table.py): takes tbl_ptr

    # -- text ------------------------------------------------------------------------------------
    def size(self, s: Any) -> str:
        """A size in the source: a literal, or the run-time size argument ``z{k}`` holding it."""
        if isinstance(s, int):
            return str(s)
        if isinstance(s, sympy.Expr) and s.is_number:
            return repr(float(s)) if not s.is_integer else str(int(s))
        for k, t in enumerate(self.sizes):
            if t == s:
                return f"z{k}"
        self.sizes.append(s)
        return f"z{len(self.sizes) - 1}"

    def emit(self, line: str) -> None:
        self.lines.append("    " * self.indent + line if line else "")

    def tmp(self, hint: str, key: Any, plain: bool = False) -> str:
        """The temporary for ``key``: one name per value, the same in every pass over the key tile.
        ``plain``: the hint itself while it is free (a load ``k``, an index ``kv_idx``)."""
        name = self.tmp_names.get(key)
        if name is None:
            name = self.tmp_names[key] = self.nm.fresh(hint) if plain else self.nm.numbered(hint)
        return name

    def label(self, v: Var) -> str:
        return self.nm.label.get(v, v.name)

    # -- layouts ---------------------------------------------------------------------------------
    def layout(self, x: Node) -> tuple[Var, ...]:
        local = [v for v in x.vars if v in self.rank]
        other = [v for v in x.vars if v not in self.rank and v not in self.grid]
        if other:
            raise Unsupported("codegen", f"value depends on index {other[0]} that is neither a grid, row, key "
                              "nor head-dim variable")
        return tuple(sorted(local, key=lambda v: self.rank[v]))

    def sort(self, vs) -> tuple[Var, ...]:
        return tuple(sorted(set(vs), key=lambda v: self.rank[v]))

    def broadcast(self, name: str, frm: tuple[Var, ...], to: tuple[Var, ...]) -> str:
        if frm == to or not frm:
            return name
        if len(to) == 2 and len(frm) == 1:
            return f"{name}[:, None]" if frm[0] is to[0] else f"{name}[None, :]"
        raise Unsupported("codegen", f"cannot broadcast a value over {frm} to {to}")

    def iexpr(self, e: IExpr, to: tuple[Var, ...]) -> str:
        """Index arithmetic; ``x * 1``, ``x * 0`` and ``x + 0`` are simplified away (integers)."""
        if e.op == "var":
            v = e.args[0]
            if v in self.rank:
                return self.broadcast(self.nm.offs[v], (v,), to)
            return self.nm.offs.get(v, f"idx_{v.name}")
        if e.op == "const":
            return str(e.args[0])
        if e.op == "sym":
            return self.size(e.args[0])
        parts = [self.iexpr(a, to) for a in e.args]
        if e.op == "add":
            parts = [p for p in parts if p != "0"]
            return "0" if not parts else parts[0] if len(parts) == 1 else "(" + " + ".join(parts) + ")"
        if e.op == "mul":
            if "0" in parts:
                return "0"
            parts = [p for p in parts if p != "1"]
            return "1" if not parts else parts[0] if len(parts) == 1 else "(" + " * ".join(parts) + ")"
        sym = {"floordiv": "//", "mod": "%"}[e.op]
        return "(" + f" {sym} ".join(parts) + ")"

    def bounds_mask(self, vars_: tuple[Var, ...]) -> str | None:
        parts = []
        for v in vars_:
            if v is self.loop and self.interior:
                continue  # interior tiles are in range
            if v in self.rank and v is not self.i and v is not self.j and self.pads.get(v.name) == v.extent:
                continue  # a head-dim tile with no padding
            parts.append(self.broadcast(self.mask_name(v), (v,), vars_))
        return " & ".join(parts) if parts else None

    def mask_name(self, v: Var) -> str:
        return "mask_" + self.nm.offs[v][len("offs_"):]

    # -- nodes -----------------------------------------------------------------------------------
    def value(self, x: Node, to: tuple[Var, ...] | None = None) -> str:
        name = self.node(x)
        return self.broadcast(name, self.layout(x), to) if to is not None else name

    def f32(self, x: Node, to: tuple[Var, ...]) -> str:
        v = self.value(x, to)
        if x.dtype in (torch.float16, torch.bfloat16) and not isinstance(x, Const):
            return f"{v}.to(tl.float32)"
        return v

    def skey(self, x: Node) -> Any:
        """Structural key: equal expressions built twice by the rewrites are emitted once (CSE).
        A key is a small int standing for its structure (its operands' keys inside): a nested
        tuple would be hashed whole at every lookup, twice per level where a value is used twice."""
        k = self.skeys.get(id(x))
        if k is None:
            if isinstance(x, Load):
                k = ("load", x.input, tuple(e if isinstance(e, IExpr) else self.skey(e) for e in x.index))
            elif isinstance(x, Index):
                k = ("index", x.expr)
            elif isinstance(x, Const):
                k = ("const", x.dtype, repr(x.value))
            elif isinstance(x, Pointwise):
                k = ("pw", x.op, x.dtype, tuple(self.skey(a) for a in x.args))
            elif isinstance(x, Reduce):
                k = ("red", x.op, x.var.uid, self.skey(x.arg))
            elif isinstance(x, RunningMax):
                k = ("running_max", id(x.acc))
            else:
                k = ("obj", id(x))
            k = self.skeys[id(x)] = self.interned.setdefault(k, len(self.interned))
            self.keep.append(x)
        return k

    def node(self, x: Node) -> str:
        key = self.skey(x)
        if key in self.names:
            return self.names[key]
        if self.phase == "loop" and key in self.loop_names:
            return self.loop_names[key]
        if isinstance(x, Adjoint):
            if x.what not in self.adjoints:
                raise Unsupported("codegen", f"the backward value {x.what} is read before it is computed")
            return self.adjoints[x.what]
        if isinstance(x, Acc):
            name = self.acc_names[id(x)]
            return f"({name} * {LN2!r})" if x.kind == "max" else name  # max accumulators hold log2 units
        in_loop = self.loop in x.vars or (self.running_max_in_loop and (isinstance(x, RunningMax) or
                                                                         has_running_max(x)))
        if in_loop and self.phase != "loop":
            raise Unsupported("codegen", f"a key-loop value ({self.hint(x)} over "
                              f"{sorted(v.name for v in x.vars)}) is needed outside the loop")
        try:
            name = self._emit_node(x)
        except Unsupported:
            raise
        except Exception as exc:  # a rule met a node it did not expect: name the node, fall back
            raise Unsupported(f"codegen ({self.hint(x)} over {sorted(v.name for v in x.vars)})",
                              f"{type(exc).__name__}: {exc}") from exc
        # everything first computed in a key tile stays local to it (the tile body is a helper)
        (self.loop_names if self.phase == "loop" else self.names)[key] = name
        return name

    def _emit_node(self, x: Node) -> str:
        lay = self.layout(x)
        if self.interior and isinstance(x, Pointwise) and self.skey(x) in self.bounded:
            return self.value(self.bounded[self.skey(x)], lay)  # the mask keeps every key here
        if isinstance(x, RunningMax):
            return f"(m_safe_{self.acc_names[id(x.acc)]} * {LN2!r})"  # log2 units -> natural
        if isinstance(x, Pointwise) and x.op == "exp":
            online = scores.online_exp(self, x, lay)
            if online is not None:
                name = self.tmp("exp", ("node", self.skey(x)))
                self.emit(f"{name} = {online}  # exp, in base 2 against the running max")
                return name
        if isinstance(x, Const):
            return self.size(x.value) if isinstance(x.value, sympy.Expr) else const_text(x)
        name = self.tmp(self.hint(x), ("node", self.skey(x)), plain=isinstance(x, (Load, Index)))
        if isinstance(x, Load):
            self.emit_load(x, name, lay)
        elif isinstance(x, Index):
            what = self.label(x.expr.args[0]) if x.expr.op == "var" else "expression"
            self.emit(f"{name} = {self.iexpr(x.expr, lay)}  # index: {what}")
        elif isinstance(x, Reduce):
            reduce.emit_reduce(self, x, name, lay)
        elif isinstance(x, Pointwise):
            self.emit(f"{name} = {pointwise.pointwise(self, x, lay)}  # {x.op}")
        else:
            raise Unsupported("codegen", f"node {type(x).__name__}")
        return name

    def hint(self, x: Node) -> str:
        """The stem of a node's temporary: its input, its index, its op."""
        if isinstance(x, Load):
            return self.nm.base.get(x.input, f"in{x.input}")
        if isinstance(x, Index):
            if x.expr.op == "var" and x.expr.args[0] is self.i:
                return "q_idx"
            if x.expr.op == "var" and x.expr.args[0] is self.j:
                return "kv_idx"
            return "idx"
        if isinstance(x, Reduce):
            return "dot" if x.op == "sum" else x.op
        if isinstance(x, Pointwise):
            return x.op
        return "t"

    def emit_load(self, x: Load, name: str, lay: tuple[Var, ...]) -> None:
        k = x.input
        if k not in self.inputs:
            self.inputs.append(k)
        terms = []
        for d, e in enumerate(x.index):
            idx = self.iexpr(e, lay) if isinstance(e, IExpr) else self.value(e, lay)
            if idx == "0":
                continue
            terms.append(f"{atom(idx)} * {self.nm.stride(k, d)}")
        ptr = " + ".join([self.nm.ptr(k)] + terms)
        mask = self.bounds_mask(lay)
        what = self.nm.base.get(k, f"in{k}")
        if mask:
            self.emit(f"{name} = tl.load({ptr}, mask={mask}, other=0.0)  # load {what}")
        else:
            self.emit(f"{name} = tl.load({ptr})  # load {what}")

def const_text(x: Const) -> str:
    """A numeric constant as a literal (size expressions are run-time arguments: ``Emitter.size``)."""
    if isinstance(x.value, bool):
        return "1" if x.value else "0"
    v = float(x.value) if not isinstance(x.value, int) else x.value
    if isinstance(v, float) and math.isinf(v):
        return 'float("-inf")' if v < 0 else 'float("inf")'
    if isinstance(v, float) and math.isnan(v):
        return 'float("nan")'
    return repr(v)


def has_running_max(x: Node) -> bool:
    """Whether ``x`` reads a running max (so it lives inside the key loop); stops at accumulators."""
    return any(isinstance(y, RunningMax) for y in walk_outside_accs(x))
