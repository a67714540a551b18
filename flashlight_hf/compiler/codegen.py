"""Stage 4 — code generation: a :class:`KernelPlan` becomes Triton source text.

The source is meant to be read (``explain``): one statement per IR node with a named
temporary and a comment naming the node, laid out like a Triton tutorial kernel — the
program's coordinates, loads before the key loop, the loop with its accumulators, the epilogue,
the store.

Tiles: every value has a *layout*, the kernel-local variables it depends on in a fixed order
(rows ``i``, keys ``j``, then head-dim tile variables); grid variables are scalars. A value of
one variable is a 1-D block, two variables a 2-D block; broadcasting to a larger layout inserts
``[:, None]`` / ``[None, :]``. A contraction ``Σ_d A[i,d]·B[j,d]`` becomes ``tl.dot``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import sympy
import torch

from flashlight_hf.compiler.ir import Const, IExpr, Index, Load, Node, Pointwise, Reduce, Unsupported, Var
from flashlight_hf.compiler.rewrite import Acc, KernelPlan, RunningMax, RuntimeOffset, _mul_factors, walk

LOG2E = 1.4426950408889634  # softmax streams run in base 2: exp(x) = exp2(x·log2 e)
LN2 = 0.6931471805599453
FLT_MAX = 3.4028234663852886e38

_TL_DTYPE = {torch.float32: "tl.float32", torch.float16: "tl.float16", torch.bfloat16: "tl.bfloat16",
             torch.float64: "tl.float64", torch.int32: "tl.int32", torch.int64: "tl.int64", torch.bool: "tl.int1"}


@dataclass
class KernelSource:
    """Generated source plus what the runtime needs to launch it."""

    name: str
    source: str
    input_args: list[int]          # program inputs passed as pointers, in order
    runtime_sizes: list[Any]       # sympy expressions / ints evaluated per call (args z0, z1, ...)
    grid_extents: list[Any]        # extents of the grid variables (sizes)
    row_extent: Any
    loop_extent: Any
    tile_pads: dict[str, int]
    acc_widths: list = field(default_factory=list)  # per accumulator: its columns per row (partials)
    split: "tuple[KernelSource, KernelSource] | None" = None  # split-KV (partials, combine) pair
    split_fused: "KernelSource | None" = None  # split-KV in one launch: the last share combines


def _pow2(n: int) -> int:
    return max(16, 1 << (int(n) - 1).bit_length())


class _Emitter:
    def __init__(self, kp: KernelPlan, interpret: bool, allow_tf32: bool):
        self.kp = kp
        self.interpret = interpret
        self.allow_tf32 = allow_tf32
        self.i, self.j = kp.row_var, kp.loop_var
        self.tiles = list(kp.tile_vars)
        self.rank = {self.i: 0, self.j: 1, **{v: 2 + k for k, v in enumerate(self.tiles)}}
        self.grid = list(kp.grid_vars)
        self.lines: list[str] = []
        self.indent = 1
        self.names: dict[int, str] = {}
        self.count = 0
        self.sizes: list[Any] = []  # runtime size expressions -> z{k}
        self.inputs: list[int] = []
        self.phase = "pre"
        self.loop_names: dict[int, str] = {}
        self.acc_names: dict[int, str] = {}
        self.skeys: dict[int, Any] = {}
        self.keep: list[Node] = []  # keeps keyed nodes alive so their ids stay unique
        self.warp_specialize = False
        self.interior = False
        self.pads = {v.name: _pow2(v.extent) for v in kp.tile_vars}
        self.bounded = {self.skey(w): kept for w, kept in kp.bounded_masks}

    # -- helpers -------------------------------------------------------------------------------
    def size(self, s: Any) -> str:
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
        self.lines.append("    " * self.indent + line)

    def tmp(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def layout(self, x: Node) -> tuple[Var, ...]:
        local = [v for v in x.vars if v in self.rank]
        other = [v for v in x.vars if v not in self.rank and v not in self.grid]
        if other:
            raise Unsupported("codegen", f"value depends on index {other[0]} that is neither a grid, row, key "
                              "nor head-dim variable")
        return tuple(sorted(local, key=lambda v: self.rank[v]))

    def var_offsets(self, v: Var) -> str:
        if v is self.i:
            return "offs_i"
        if v is self.j:
            return "offs_j"
        if v in self.rank:
            return f"offs_{v.name}"
        return f"idx_{v.name}"

    def broadcast(self, name: str, frm: tuple[Var, ...], to: tuple[Var, ...]) -> str:
        if frm == to or not frm:
            return name
        if len(to) == 2 and len(frm) == 1:
            return f"{name}[:, None]" if frm[0] is to[0] else f"{name}[None, :]"
        raise Unsupported("codegen", f"cannot broadcast a value over {frm} to {to}")

    def iexpr(self, e: IExpr, to: tuple[Var, ...]) -> str:
        if e.op == "var":
            v = e.args[0]
            name = self.var_offsets(v)
            if v in self.rank:
                return self.broadcast(name, (v,), to)
            return name
        if e.op == "const":
            return str(e.args[0])
        if e.op == "sym":
            return self.size(e.args[0])
        sym = {"add": "+", "mul": "*", "floordiv": "//", "mod": "%"}[e.op]
        return "(" + f" {sym} ".join(self.iexpr(a, to) for a in e.args) + ")"

    def bounds_mask(self, vars_: tuple[Var, ...]) -> str | None:
        parts = []
        for v in vars_:
            if v is self.j and self.interior:
                continue  # interior key tiles are in range
            if v in self.rank and v is not self.i and v is not self.j and self.pads.get(v.name) == v.extent:
                continue  # a head-dim tile with no padding
            parts.append(self.broadcast(f"mask_{self.short(v)}", (v,), vars_))
        return " & ".join(parts) if parts else None

    def short(self, v: Var) -> str:
        return "i" if v is self.i else "j" if v is self.j else v.name

    # -- nodes -----------------------------------------------------------------------------
    def value(self, x: Node, to: tuple[Var, ...] | None = None) -> str:
        name = self.node(x)
        return self.broadcast(name, self.layout(x), to) if to is not None else name

    def f32(self, x: Node, to: tuple[Var, ...]) -> str:
        v = self.value(x, to)
        if x.dtype in (torch.float16, torch.bfloat16) and not isinstance(x, Const):
            return f"{v}.to(tl.float32)"
        return v

    def skey(self, x: Node) -> Any:
        """Structural key: equal expressions built twice by the rewrites are emitted once (CSE)."""
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
            self.skeys[id(x)] = k
            self.keep.append(x)
        return k

    def node(self, x: Node) -> str:
        key = self.skey(x)
        if key in self.names:
            return self.names[key]
        if self.phase == "loop" and key in self.loop_names:
            return self.loop_names[key]
        if isinstance(x, Acc):
            name = self.acc_names[id(x)]
            return f"({name} * {LN2!r})" if x.kind == "max" else name  # max accumulators hold log2 units
        in_loop = self.kp.loop_var in x.vars or isinstance(x, RunningMax) or _has_running_max(x)
        if in_loop and self.phase != "loop":
            raise Unsupported("codegen", f"a key-loop value ({_hint(x)} over {sorted(v.name for v in x.vars)}) "
                              "is needed outside the loop")
        try:
            name = self._emit_node(x)
        except Unsupported:
            raise
        except Exception as exc:  # a rule met a node it did not expect: name the node, fall back
            raise Unsupported(f"codegen ({_hint(x)} over {sorted(v.name for v in x.vars)})",
                              f"{type(exc).__name__}: {exc}") from exc
        (self.loop_names if in_loop else self.names)[key] = name
        return name

    def _emit_node(self, x: Node) -> str:
        lay = self.layout(x)
        if self.interior and isinstance(x, Pointwise) and self.skey(x) in self.bounded:
            return self.value(self.bounded[self.skey(x)], lay)  # the mask keeps every key here
        if isinstance(x, RunningMax):
            return f"(m_safe_{self.acc_names[id(x.acc)]} * {LN2!r})"  # log2 units -> natural
        if isinstance(x, Pointwise) and x.op == "exp":
            online = self.online_exp(x, lay)
            if online is not None:
                name = self.tmp("exp")
                self.emit(f"{name} = {online}  # exp, in base 2 against the running max")
                return name
        if isinstance(x, Const):
            if isinstance(x.value, (sympy.Expr,)):
                return self.size(x.value)
            if isinstance(x.value, bool):
                return "1" if x.value else "0"
            v = float(x.value) if not isinstance(x.value, int) else x.value
            if isinstance(v, float) and math.isinf(v):
                return 'float("-inf")' if v < 0 else 'float("inf")'
            if isinstance(v, float) and math.isnan(v):
                return 'float("nan")'
            return repr(v)
        name = self.tmp(_hint(x))
        if isinstance(x, Load):
            self.emit_load(x, name, lay)
            return name
        if isinstance(x, Index):
            self.emit(f"{name} = {self.iexpr(x.expr, lay)}  # index {x.expr}")
            return name
        if isinstance(x, Reduce):
            self.emit_reduce(x, name, lay)
            return name
        if isinstance(x, Pointwise):
            self.emit(f"{name} = {self.pointwise(x, lay)}  # {x.op}")
            return name
        raise Unsupported("codegen", f"node {type(x).__name__}")

    def emit_load(self, x: Load, name: str, lay: tuple[Var, ...]) -> None:
        k = x.input
        if k not in self.inputs:
            self.inputs.append(k)
        terms = []
        for d, e in enumerate(x.index):
            idx = self.iexpr(e, lay) if isinstance(e, IExpr) else self.value(e, lay)
            if idx == "0":
                continue
            terms.append(f"({idx}) * in{k}_s{d}")
        ptr = f"in{k}_ptr + " + " + ".join(terms) if terms else f"in{k}_ptr"
        mask = self.bounds_mask(lay)
        if mask:
            self.emit(f"{name} = tl.load({ptr}, mask={mask}, other=0.0)  # load input {k}")
        else:
            self.emit(f"{name} = tl.load({ptr})  # load input {k}")

    def emit_reduce(self, x: Reduce, name: str, lay: tuple[Var, ...]) -> None:
        arg = x.arg
        while isinstance(arg, Pointwise) and arg.op == "cast":
            arg = arg.args[0]
        full = tuple(sorted(set(lay) | {x.var}, key=lambda v: self.rank[v]))
        if len(full) == 3 and x.op == "sum" and isinstance(arg, Pointwise) and arg.op == "mul":
            a, b = arg.args
            la, lb = self.layout(a), self.layout(b)
            if x.var in la and x.var in lb and len(la) == 2 and len(lb) == 2 and len(lay) == 2:
                r, c = lay
                lhs = a if r in la else b
                rhs = b if lhs is a else a
                av = self.dot_operand(lhs)
                bv = self.dot_operand(rhs)
                if self.layout(lhs)[0] is x.var:
                    av = f"tl.trans({av})"
                if self.layout(rhs)[1] is x.var:
                    bv = f"tl.trans({bv})"
                self.emit(f"{name} = tl.dot({av}, {bv}{self.dot_precision(lhs, rhs)})  # sum over {x.var}: contraction")
                return
        if len(full) > 2:
            raise Unsupported("codegen", f"reduction over {x.var} of a 3-D intermediate that is not a matmul")
        body = self.f32(x.arg, full)
        if full != self.layout(x.arg) or x.var not in self.layout(x.arg):
            pass
        ident = {"sum": "0.0", "max": 'float("-inf")', "min": 'float("inf")'}[x.op]
        axis = full.index(x.var)
        fn = {"sum": "tl.sum", "max": "tl.max", "min": "tl.min"}[x.op]
        mask = self.bounds_mask((x.var,))
        if mask is not None:
            body = f"tl.where({self.broadcast(mask, (x.var,), full)}, {body}, {ident})"
        self.emit(f"{name} = {fn}({body}, axis={axis})  # {x.op} over {x.var}")

    def key_loop(self, start: str, end: str, interior: bool) -> None:
        """One loop over key tiles. ``interior``: keys in range and analysed masks all true."""
        i, j, accs = self.i, self.j, self.kp.accs
        self.interior = interior
        if interior and self.warp_specialize:  # producer/consumer warps (FLASHLIGHT_WARP_SPECIALIZE=1)
            self.emit(f"for start_j in tl.range({start}, {end}, BLOCK_N, warp_specialize=True):")
        else:
            self.emit(f"for start_j in range({start}, {end}, BLOCK_N):")
        self.indent += 1
        self.phase = "loop"
        self.loop_names = {}
        self.emit("offs_j = start_j + tl.arange(0, BLOCK_N)")
        if not interior:
            self.emit(f"mask_j = offs_j < {self.size(j.extent)}")
        skipping = self.tile_skip_guard(interior)
        for k, a in enumerate(accs):
            if a.kind == "max":
                lay_full = tuple(sorted(set(self.layout(a)) | {j}, key=lambda v: self.rank[v]))
                body, scale = self.log2_scaled(a.body, lay_full)
                if not interior:
                    body = f"tl.where({self.broadcast('mask_j', (j,), lay_full)}, {body}, float(\"-inf\"))"
                self.emit(f"m_tile{k} = tl.max({body}, axis={lay_full.index(j)}) * {scale}  # in log2 units")
                self.running_max(k, f"m_tile{k}")
        for k, a in enumerate(accs):
            if a.kind != "sum":
                continue
            lay_acc = self.layout(a)
            scale = ""
            if a.tied is not None:
                if lay_acc and lay_acc[0] is not i:
                    raise Unsupported("codegen", "a softmax-tied accumulator without the row variable")
                kt = accs.index(a.tied)
                scale = f"alpha{kt}" if len(lay_acc) <= 1 else f"alpha{kt}[:, None]"
            carried = f"acc{k} * {scale}" if scale else f"acc{k}"
            contrib = self.contraction(a.body, lay_acc, carried)
            if contrib.startswith("tl.dot("):  # the MMA accumulates into the rescaled state in place
                self.emit(f"acc{k} = {contrib}  # {'online rescale + ' if scale else ''}this key tile")
            elif scale:
                self.emit(f"acc{k} = {carried} + {contrib}  # online rescale + this key tile")
            else:
                self.emit(f"acc{k} = acc{k} + {contrib}")
        for k, a in enumerate(accs):
            if a.kind == "max":
                self.emit(f"acc{k} = m_new_acc{k}")
        self.indent -= 2 if skipping else 1
        self.interior = False

    def running_max(self, k: int, incoming: str) -> None:
        """Max accumulator ``k`` meets ``incoming`` (a key tile's max, or a share's): the new max,
        a safe copy for exponents (a row that has seen only −inf stays finite), and the factor
        ``alpha`` that rescales the sums tied to it."""
        self.emit(f"m_new_acc{k} = tl.maximum(acc{k}, {incoming})  # running max")
        self.emit(f"m_safe_acc{k} = tl.where(m_new_acc{k} == float(\"-inf\"), 0.0, m_new_acc{k})")
        self.emit(f"alpha{k} = tl.exp2(acc{k} - m_safe_acc{k})  # rescales the sums tied to this max")

    def tile_skip_guard(self, interior: bool) -> bool:
        """Emit ``if <some key of this tile is kept>:`` for data-dependent masks; True if emitted."""
        streams = self.kp.tile_skip
        terms = []
        for preds in streams:
            parts = []
            for pred, keep in preds:
                lay = self.layout(pred)
                if self.j not in lay:
                    continue
                v = self.value(pred)
                parts.append((v if keep else f"({v} == 0)", lay))
            if not parts:
                return False  # this stream keeps whole tiles: nothing to skip on
            lay = tuple(sorted({x for _, l in parts for x in l}, key=lambda x: self.rank[x]))
            kept = " & ".join(self.broadcast(f"({p})", l, lay) for p, l in parts)
            if not interior:
                kept = f"({kept}) & {self.broadcast('mask_j', (self.j,), lay)}"
            name = self.tmp("tile_keeps")
            self.emit(f"{name} = tl.max(({kept}).to(tl.int32))  # does any key of this tile survive the masks?")
            terms.append(name)
        if not terms:
            return False
        self.emit(f"if {' + '.join(terms)} > 0:  # data-dependent block sparsity: skip fully masked tiles")
        self.indent += 1
        return True

    def contraction(self, body: Node, lay_acc: tuple[Var, ...], carried: str) -> str:
        """This key tile's contribution to a sum accumulator: ``tl.dot(P, V, carried)`` (the MMA
        adds into the carried state) or a row sum (the caller adds it)."""
        j = self.j
        full = tuple(sorted(set(lay_acc) | {j}, key=lambda v: self.rank[v]))
        mj = self.broadcast("mask_j", (j,), full if len(full) <= 2 else (self.i, j))
        if len(full) <= 2:
            b = self.f32(body, full)
            return f"tl.sum({b if self.interior else f'tl.where({mj}, {b}, 0.0)'}, axis={full.index(j)})"
        if len(full) != 3 or full[0] is not self.i:
            raise Unsupported("codegen", f"key contraction producing layout {lay_acc}")
        num, den = _mul_factors(body)
        if den:
            raise Unsupported("codegen", "division inside a key contraction")
        left = [f for f in num if all(v in (self.i, j) for v in self.layout(f))]
        right = [f for f in num if f not in left]
        if not right or any(self.i in self.layout(f) for f in right):
            raise Unsupported("codegen", "the key contraction does not split into scores × values")
        p = left[0] if left else Const(torch.float32, 1.0)
        for f in left[1:]:
            p = Pointwise(torch.float32, "mul", (p, f))
        v = right[0]
        for f in right[1:]:
            v = Pointwise(v.dtype, "mul", (v, f))
        p_name = self.tmp("p")
        if self.interior:
            self.emit(f"{p_name} = {self.f32(p, (self.i, j))}  # scores side")
        else:
            self.emit(f"{p_name} = tl.where({mj}, {self.f32(p, (self.i, j))}, 0.0)  # scores side, out-of-range keys zeroed")
        v_lay = self.layout(v)
        v_name = self.value(v)
        if v_lay and v_lay[0] is not j:
            v_name = f"tl.trans({v_name})"
        dt = v.dtype if v.dtype in (torch.float16, torch.bfloat16) else torch.float32
        if self.interpret and dt == torch.bfloat16:
            p_op, v_op, prec = p_name, f"{v_name}.to(tl.float32)", ', input_precision="ieee"'
        elif dt == torch.float32:
            p_op, v_op = p_name, f"{v_name}.to(tl.float32)"
            prec = ', input_precision="tf32"' if (self.allow_tf32 and not self.interpret) else ', input_precision="ieee"'
        else:
            p_op, v_op, prec = f"{p_name}.to({_TL_DTYPE[dt]})", f"{v_name}.to({_TL_DTYPE[dt]})", ""
        return f"tl.dot({p_op}, {v_op}, {carried}{prec})"

    def log2_scaled(self, x: Node, lay: tuple[Var, ...]) -> tuple[str, str]:
        """``x·log2 e`` for a softmax stream that runs in base 2: ``(pre, post)`` with
        ``max(x·log2 e) = tl.max(pre) · post`` and ``exp2(x·log2 e − m) = exp2(pre · post − m)``.

        ``exp2`` is the hardware's exponential; a constant scale of the scores (``q·k·d^-½``)
        folds with log2 e into one multiply-add ``s·(c·log2 e) − m`` per score where ``exp``
        costs a multiply, a subtract and its own multiply by log2 e. Huge finite values (a
        ``finfo.min`` mask) must not overflow to −inf when scaled (a fully masked row is uniform in
        eager, not NaN): those terms are clamped to the most negative finite float."""
        x = self._strip_scaling_noise(x)
        base, c = x, 1.0
        while isinstance(base, Pointwise) and base.op == "mul":
            k = _positive_const(base.args[1]) or _positive_const(base.args[0])
            if k is None:
                break
            c *= k
            base = base.args[0] if _positive_const(base.args[1]) else base.args[1]
            base = self._strip_scaling_noise(base)
        if _overflow_free(base):
            return self.f32(base, lay), repr(c * LOG2E)
        key = ("log2", self.skey(x), lay)
        cache = self.loop_names if self.phase == "loop" else self.names
        if key not in cache:
            name = self.tmp("s2")
            self.emit(f"{name} = {self.scaled(x, LOG2E, lay)}  # scores in log2 units")
            cache[key] = name
        return cache[key], "1.0"

    def _strip_scaling_noise(self, x: Node) -> Node:
        """Drop what does not change a score's value here: masks the interior tiles keep
        everywhere, and widening casts."""
        while True:
            if self.interior and isinstance(x, Pointwise) and self.skey(x) in self.bounded:
                x = self.bounded[self.skey(x)]
            elif isinstance(x, Pointwise) and x.op == "cast" and x.dtype in (torch.float32, torch.float64) \
                    and x.args[0].dtype in (torch.float16, torch.bfloat16, torch.float32):
                x = x.args[0]
            else:
                return x

    def scaled(self, x: Node, k: float, lay: tuple[Var, ...]) -> str:
        """``x·k`` distributed over adds and selects, constants folded and clamped (see log2_scaled)."""
        x = self._strip_scaling_noise(x)
        if isinstance(x, Const) and isinstance(x.value, (int, float)) and not isinstance(x.value, bool):
            v = float(x.value) * k
            if abs(v) > FLT_MAX and math.isfinite(float(x.value)):  # would overflow float32
                v = math.copysign(FLT_MAX, v)
            return 'float("-inf")' if v == -math.inf else 'float("inf")' if v == math.inf else repr(v)
        if isinstance(x, Pointwise):
            if x.op == "mul":
                for a, b in (x.args, x.args[::-1]):
                    c = _positive_const(b)
                    if c is not None:
                        return self.scaled(a, k * c, lay)
            if x.op in ("add", "sub"):
                a, b = (self.scaled(y, k, lay) for y in x.args)
                return f"({a} {'+' if x.op == 'add' else '-'} {b})"
            if x.op == "where":
                cond = self.value(x.args[0], lay)
                a, b = (self.scaled(y, k, lay) for y in x.args[1:])
                return f"tl.where({cond}, {a}, {b})"
        v = self.f32(x, lay)
        if _overflow_free(x):
            return f"{v} * {k!r}"
        # a loaded bias may hold finfo.min: keep −inf and NaN, clamp finite overflow
        return f"tl.where({v} > float(\"-inf\"), tl.maximum({v} * {k!r}, {-FLT_MAX!r}), {v})"

    def online_exp(self, x: Pointwise, lay: tuple[Var, ...]) -> str | None:
        """``exp(y − M)`` with ``M`` a running max (log2 units) as ``exp2(y·log2 e − M)``."""
        arg = x.args[0]
        while isinstance(arg, Pointwise) and arg.op == "cast" and arg.dtype in (torch.float32, torch.float64):
            arg = arg.args[0]
        if not (isinstance(arg, Pointwise) and arg.op == "sub" and isinstance(arg.args[1], RunningMax)):
            return None
        pre, post = self.log2_scaled(arg.args[0], lay)
        acc = arg.args[1].acc
        m = self.broadcast(f"m_safe_{self.acc_names[id(acc)]}", self.layout(arg.args[1]), lay)
        e = f"{pre} - {m}" if post == "1.0" else f"{pre} * {post} - {m}"
        return f"tl.exp2({e})"

    def dot_operand(self, x: Node) -> str:
        name = self.node(x)
        dt = x.dtype
        if dt not in (torch.float16, torch.bfloat16, torch.float32):
            dt = torch.float32
        if self.interpret and dt == torch.bfloat16:
            return f"{name}.to(tl.float32)"  # the interpreter multiplies raw bf16 bits (triton#11584)
        if isinstance(x, Load):
            return name if dt == x.dtype else f"{name}.to({_TL_DTYPE[dt]})"
        return f"{name}.to({_TL_DTYPE[dt]})"

    def dot_precision(self, a: Node, b: Node) -> str:
        if a.dtype == torch.float32 or b.dtype == torch.float32 or self.interpret:
            return ", input_precision=\"tf32\"" if self.allow_tf32 and not self.interpret else ", input_precision=\"ieee\""
        return ""

    def pointwise(self, x: Pointwise, lay: tuple[Var, ...]) -> str:
        op = x.op
        if op == "cast":
            a = x.args[0]
            if x.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
                # arithmetic stays in fp32; the rounding of a narrower cast is kept where it matters
                return self.f32(a, lay) if x.dtype != torch.float64 else f"{self.value(a, lay)}.to(tl.float32)"
            return f"{self.value(a, lay)}.to({_TL_DTYPE[x.dtype]})"
        args = [self.f32(a, lay) if a.dtype != torch.bool else self.value(a, lay) for a in x.args]
        bin_ = {"add": "+", "sub": "-", "mul": "*", "div": "/", "gt": ">", "ge": ">=", "lt": "<", "le": "<=",
                "eq": "==", "ne": "!=", "and": "&", "or": "|", "xor": "^"}
        if op in ("mod", "fmod", "floordiv"):
            return self.division(op, x, args)
        if op in bin_:
            a, b = args
            if op == "div" and all(y.dtype in (torch.int32, torch.int64) for y in x.args):
                return f"({a}).to(tl.float32) / {b}"
            return f"{a} {bin_[op]} {b}"
        if op == "where":
            c, a, b = args
            return f"tl.where({c}, {a}, {b})"
        if op == "maximum":
            return f"tl.maximum({args[0]}, {args[1]})"
        if op == "minimum":
            return f"tl.minimum({args[0]}, {args[1]})"
        a = args[0]
        unary = {"exp": "tl.exp({})", "exp2": "tl.exp2({})", "log": "tl.log({})", "sqrt": "tl.sqrt({})",
                 "rsqrt": "tl.rsqrt({})", "abs": "tl.abs({})", "neg": "-({})", "sigmoid": "tl.sigmoid({})",
                 "relu": "tl.maximum({}, 0.0)", "sin": "tl.sin({})", "cos": "tl.cos({})",
                 "reciprocal": "1.0 / ({})", "not": "({}) == 0", "erf": "tl.erf({})", "floor": "tl.floor({})",
                 "ceil": "tl.ceil({})", "isnan": "({0}) != ({0})", "square": "({0}) * ({0})",
                 "silu": "({0}) * tl.sigmoid({0})", "log1p": "tl.log(1.0 + ({}))", "expm1": "(tl.exp({}) - 1.0)",
                 "sign": "tl.where(({0}) > 0, 1.0, tl.where(({0}) < 0, -1.0, 0.0))"}
        if op in unary:
            return unary[op].format(a)
        if op == "tanh":
            # tanh without libdevice (the interpreter has none): odd series near 0, exp form elsewhere
            t = self.tmp("tanh_in")
            self.emit(f"{t} = {a}")
            return (f"tl.where(tl.abs({t}) < 0.125, {t} * (1.0 + {t} * {t} * (-1.0 / 3.0 + {t} * {t} * "
                    f"(2.0 / 15.0 + {t} * {t} * (-17.0 / 315.0 + {t} * {t} * (62.0 / 2835.0))))), "
                    f"tl.where({t} >= 0, 1.0, -1.0) * (1.0 - tl.exp(-2.0 * tl.abs({t}))) / "
                    f"(1.0 + tl.exp(-2.0 * tl.abs({t}))))")
        if op == "gelu":
            return f"0.5 * ({a}) * (1.0 + tl.erf(({a}) * 0.7071067811865476))"
        if op == "pow":
            b = x.args[1]
            if isinstance(b, Const) and not isinstance(b.value, sympy.Expr):
                e = float(b.value)
                if e == 2.0:
                    return f"({a}) * ({a})"
                if e == 1.0:
                    return a
                if e == 0.5:
                    return f"tl.sqrt({a})"
                if e == -0.5:
                    return f"tl.rsqrt({a})"
                if e == -1.0:
                    return f"1.0 / ({a})"
                if e == 3.0:
                    return f"({a}) * ({a}) * ({a})"
            if isinstance(x.args[0], Const):
                return f"tl.exp({args[1]} * {math.log(float(x.args[0].value))!r})"
            return f"tl.exp({args[1]} * tl.log({a}))"
        raise Unsupported("codegen", f"pointwise op {op}")


    def division(self, op: str, x: Pointwise, args: list[str]) -> str:
        """``remainder`` (the divisor's sign), ``fmod`` (the dividend's sign) and ``floor_divide``
        with torch's semantics whatever ``%`` means where the kernel runs: Triton's ``%`` takes
        the dividend's sign on the GPU, the interpreter's (numpy) the divisor's. ``r = a % b``
        is corrected to the sign wanted; a floor division is then the exact ``(a - r) / b``."""
        a, b = (self.tmp("num"), self.tmp("den"))
        self.emit(f"{a} = {args[0]}")
        self.emit(f"{b} = {args[1]}")
        r = self.tmp("rem")
        self.emit(f"{r} = {a} % {b}")
        if op == "fmod":
            return f"tl.where(({r} != 0) & (({r} < 0) != ({a} < 0)), {r} - {b}, {r})"
        m = self.tmp("mod")
        self.emit(f"{m} = tl.where(({r} != 0) & (({r} < 0) != ({b} < 0)), {r} + {b}, {r})")
        if op == "mod":
            return m
        if all(y.dtype in (torch.int32, torch.int64) for y in x.args):
            return f"({a} - {m}) // {b}"  # exact: the same under either rounding of //
        return f"tl.floor(({a} - {m}) / {b} + 0.5)"  # (a - r) / b is an integer up to rounding


def _has_running_max(x: Node) -> bool:
    """Whether ``x`` reads a running max (so it lives inside the key loop); stops at accumulators."""
    stack, seen = [x], set()
    while stack:
        y = stack.pop()
        if id(y) in seen or isinstance(y, Acc):
            continue
        seen.add(id(y))
        if isinstance(y, RunningMax):
            return True
        stack.extend(y.children())
    return False


def _hint(x: Node) -> str:
    if isinstance(x, Load):
        return f"in{x.input}"
    if isinstance(x, Index):
        return "idx"
    if isinstance(x, Reduce):
        return "dot" if x.op == "sum" else x.op
    if isinstance(x, Pointwise):
        return x.op
    return "t"


def generate(kp: KernelPlan, *, interpret: bool, allow_tf32: bool = False,
             warp_specialize: bool = False) -> KernelSource:
    """Emit the forward kernel for ``kp`` and, where the accumulators allow it, its split-KV pair
    (``KernelSource.split``). Raises :class:`Unsupported` for shapes it cannot tile."""
    main = _generate(kp, interpret, allow_tf32, warp_specialize, "single")
    try:
        part = _generate(kp, interpret, allow_tf32, warp_specialize, "split")
        combine = _generate(kp, interpret, allow_tf32, warp_specialize, "combine")
        main.split = (part, combine)
        main.split_fused = _generate(kp, interpret, allow_tf32, warp_specialize, "fused")
    except Exception:  # noqa: BLE001 - Unsupported or a rule's error: decode runs the single kernel
        main.split = main.split_fused = None
    return main


def _generate(kp: KernelPlan, interpret: bool, allow_tf32: bool, warp_specialize: bool,
              mode: str) -> KernelSource:
    """One kernel. ``mode``: ``single`` (the whole key axis per program); ``split`` (a share of
    the key axis per program, accumulators written as partials: decoding, where a few query rows
    meet a long KV cache and one program per row tile would leave most of the GPU idle);
    ``combine`` (merges the partials with their log-sum-exp rescaling, then the epilogue);
    ``fused`` (``split`` then, in the program that finishes its row tile's shares last, the
    ``combine``: one launch instead of two, counted through a per-tile atomic ticket)."""
    em = _Emitter(kp, interpret, allow_tf32)
    em.warp_specialize = warp_specialize
    prog = kp.program
    i, j = kp.row_var, kp.loop_var
    out_lay = em.layout(kp.out_node)
    pads = {}
    for v in kp.tile_vars:
        pads[v.name] = _pow2(v.extent)

    # -- coordinates -------------------------------------------------------------------------
    em.emit("# program coordinates: one program per (row tile, grid point)")
    em.emit("pid = tl.program_id(0)")
    if mode in ("split", "fused"):
        em.emit("split = pid % NUM_SPLITS  # which share of the key axis this program reduces")
        em.emit("pid = pid // NUM_SPLITS")
    em.emit(f"n_row_tiles = tl.cdiv({em.size(i.extent)}, BLOCK_M)")
    em.emit("tile_m = pid % n_row_tiles")
    em.emit("rest = pid // n_row_tiles")
    if mode != "single":
        em.emit("grid_lin = rest  # the grid point as one number: its block of the partials")
    for g in reversed(kp.grid_vars):
        em.emit(f"idx_{g.name} = rest % {em.size(g.extent)}")
        em.emit(f"rest = rest // {em.size(g.extent)}")
    em.emit("offs_i = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)")
    em.emit(f"mask_i = offs_i < {em.size(i.extent)}")
    for v in kp.tile_vars:
        em.emit(f"offs_{v.name} = tl.arange(0, {pads[v.name]})")
        em.emit(f"mask_{v.name} = offs_{v.name} < {v.extent}")

    # -- the key loop ---------------------------------------------------------------------------
    accs = kp.accs
    for k, a in enumerate(accs):
        em.acc_names[id(a)] = f"acc{k}"
    em.emit("")
    em.emit("# loop-carried state: one accumulator per key reduction (online softmax state per stream)")
    _emit_acc_init(em, kp, pads)
    if mode == "combine":
        _emit_combine(em, kp, pads)
    else:
        _emit_key_loops(em, kp, mode)
    if mode == "split":
        _emit_partial_stores(em, kp, pads)
        return _assemble(em, kp, pads, mode, with_out=False)
    if mode == "fused":
        _emit_partial_stores(em, kp, pads)
        em.emit("")
        em.emit("# the program that stores its row tile's last share merges them all (no combine launch):")
        em.emit("# every thread's stores are issued before the ticket, released with it at GPU scope")
        em.emit("tl.debug_barrier()")
        em.emit("ticket_ptr = count_ptr + grid_lin * n_row_tiles + tile_m")
        em.emit('ticket = tl.atomic_add(ticket_ptr, 1, sem="acq_rel", scope="gpu")')
        em.emit("tl.debug_barrier()  # the acquire is ordered before every thread's loads of the partials")
        em.emit("if ticket == NUM_SPLITS - 1:")
        em.indent += 1
        em.emit("tl.atomic_xchg(ticket_ptr, 0)  # the counter is ready for the next launch")
        _emit_acc_init(em, kp, pads)
        _emit_combine(em, kp, pads, cache_modifier='cache_modifier=".cg", ')

    # -- epilogue ------------------------------------------------------------------------------
    em.emit("")
    em.emit("# epilogue: everything after the last key reduction")
    out = em.value(kp.out_node, out_lay)
    # -- store ---------------------------------------------------------------------------------
    terms = []
    for d, ax in enumerate(prog.out_axes):
        vs = [v for v, e in ax if v is not None]
        if not vs:
            continue
        # a merged axis (e.g. [Hk, G] -> H) is a mixed-radix number of its variables
        idx: IExpr | None = None
        for v, e in ax:
            if v is None:
                raise Unsupported("output", "an output axis that is broadcast in part")
            idx = IExpr.var(v) if idx is None else IExpr("add", (IExpr("mul", (idx, IExpr.const(e))), IExpr.var(v)))
        terms.append(f"({em.iexpr(idx, out_lay)}) * out_s{d}")
    missing = [v for v in (i, *[t for t in kp.tile_vars if t in kp.out_node.vars]) if v not in out_lay]
    if missing:
        raise Unsupported("output", f"the output does not vary along {missing}")
    mask = em.bounds_mask(out_lay)
    em.emit(f"tl.store(out_ptr + {' + '.join(terms)}, {out}.to(out_ptr.dtype.element_ty), mask={mask})")
    return _assemble(em, kp, pads, mode, with_out=True)


def _emit_acc_init(em: "_Emitter", kp: KernelPlan, pads: dict) -> None:
    """Each accumulator's starting value: −inf for a running max (or its key-independent floor),
    0 for a sum."""
    i, j = kp.row_var, kp.loop_var
    for k, a in enumerate(kp.accs):
        lay = em.layout(a)
        shape = ", ".join("BLOCK_M" if v is i else str(pads[v.name]) for v in lay)
        init = 'float("-inf")' if a.kind == "max" else "0.0"
        em.emit(f"acc{k} = tl.full([{shape}], {init}, tl.float32)  # {a.kind} over {j.name}")
        if a.init is not None:
            start = em.scaled(a.init, LOG2E, lay)
            em.emit(f"acc{k} = tl.maximum(acc{k}, {start})  # the max starts from a key-independent value "
                    "(a sink or a floor), log2 units")


def _emit_key_loops(em: "_Emitter", kp: KernelPlan, mode: str) -> None:
    """The loop ranges (block sparsity from the masks; a split's share) and the three loops."""
    i, j, accs = kp.row_var, kp.loop_var, kp.accs
    em.emit("")
    em.emit("# key-independent values the loop uses, computed once")
    for a in accs:
        for x in walk(a.body):
            if j not in x.vars and not _has_running_max(x) and not isinstance(x, (Const, RunningMax, Acc)):
                em.node(x)
    em.emit("")
    sk = em.size(j.extent)
    em.emit("# key tiles this row tile touches (block sparsity derived from the masks), and the")
    em.emit("# interior ones where every key is in range and every analysed mask keeps it")
    em.emit("row_lo = tile_m * BLOCK_M")
    em.emit(f"row_hi = tl.minimum(tile_m * BLOCK_M + BLOCK_M, {em.size(i.extent)}) - 1")
    def offset(c: Any) -> str:
        """A bound's constant: an int, a size expression, or one with run-time terms."""
        if isinstance(c, RuntimeOffset):
            parts = [offset(c.const)] + [f"{coef} * {em.value(node)}" for node, coef in c.terms]
            return "(" + " + ".join(parts) + ")"
        return str(c) if isinstance(c, int) else em.size(c)

    def bound_value(kind: str, alts: tuple, row: str) -> str:
        """One bound's key index for ``row``: an OR of atoms keeps the widest of them."""
        terms = [f"{row} * {a} + {offset(c)}" for a, c in alts]
        fn = "tl.maximum" if kind == "hi" else "tl.minimum"
        out = terms[0]
        for t in terms[1:]:
            out = f"{fn}({out}, {t})"
        return out

    def fold(name: str, start: str, kind: str, row: str, extra: str = "", note: str = "") -> None:
        """``name`` narrowed by every bound of one kind, evaluated at ``row``."""
        em.emit(f"{name} = {start}")
        fn = "maximum" if kind == "lo" else "minimum"
        for k, alts in kp.key_bounds:
            if k == kind:
                em.emit(f"{name} = tl.{fn}({name}, {bound_value(kind, alts, row)}{extra}){note}")

    fold("key_lo", "0", "lo", "row_lo", note="  # keys below are masked for every row")
    em.emit("key_lo = (key_lo // BLOCK_N) * BLOCK_N")
    fold("key_hi", sk, "hi", "row_hi", " + 1", "  # keys above are masked for every row")
    fold("interior_lo", "key_lo", "lo", "row_hi")
    em.emit("interior_lo = tl.minimum(tl.cdiv(interior_lo, BLOCK_N) * BLOCK_N, key_hi)")
    fold("interior_hi", sk, "hi", "row_lo", " + 1")
    em.emit("interior_hi = tl.minimum(tl.maximum((interior_hi // BLOCK_N) * BLOCK_N, interior_lo), key_hi)")
    if mode in ("split", "fused"):
        em.emit("# this program's share: whole key tiles [split_lo, split_hi)")
        em.emit(f"chunk = tl.cdiv(tl.cdiv({sk}, NUM_SPLITS), BLOCK_N) * BLOCK_N")
        em.emit("split_lo = split * chunk")
        em.emit("key_lo = tl.maximum(key_lo, split_lo)")
        em.emit("key_hi = tl.maximum(tl.minimum(key_hi, split_lo + chunk), key_lo)")
        em.emit("interior_lo = tl.minimum(tl.maximum(interior_lo, key_lo), key_hi)")
        em.emit("interior_hi = tl.minimum(tl.maximum(interior_hi, interior_lo), key_hi)")
    for start_, end_, interior, what in (("key_lo", "interior_lo", False, "boundary tiles before the interior"),
                                         ("interior_lo", "interior_hi", True, "interior tiles: no masks evaluated"),
                                         ("interior_hi", "key_hi", False, "boundary tiles after the interior")):
        em.emit("")
        em.emit(f"# {what}")
        em.key_loop(start_, end_, interior)
    em.phase = "post"


def _partial_ptr(em: "_Emitter", kp: KernelPlan, k: int, lay: tuple, pads: dict, split: str) -> tuple[str, str]:
    """Address and mask of accumulator ``k``'s partials: a ``[NUM_SPLITS, grid, rows, width]`` block."""
    i = kp.row_var
    if not lay or lay[0] is not i or len(lay) > 2:
        raise Unsupported("split", "an accumulator that is not per row (or per row and value column)")
    rows = em.size(i.extent)
    if len(lay) == 1:
        return f"part{k}_ptr + ({split} * n_grid + grid_lin) * {rows} + offs_i", "mask_i"
    w = pads[lay[1].name]
    return (f"part{k}_ptr + (({split} * n_grid + grid_lin) * {rows} + offs_i[:, None]) * {w} + "
            f"offs_{lay[1].name}[None, :]", "mask_i[:, None]")


def _emit_partial_stores(em: "_Emitter", kp: KernelPlan, pads: dict) -> None:
    em.phase = "post"
    em.emit("")
    em.emit("# this share's accumulators (max in log2 units, sums against that max) for the combine kernel")
    for k, a in enumerate(kp.accs):
        ptr, mask = _partial_ptr(em, kp, k, em.layout(a), pads, "split")
        em.emit(f"tl.store({ptr}, acc{k}, mask={mask})")


def _emit_combine(em: "_Emitter", kp: KernelPlan, pads: dict, cache_modifier: str = "") -> None:
    """Merge the shares: the running max over shares, each sum rescaled to it (log-sum-exp).
    ``cache_modifier``: in the fused kernel the partials were written by other programs, so
    they are read past the (non-coherent) L1 cache."""
    accs = kp.accs
    em.emit("")
    em.emit("# merge the shares of the key axis, as the key loop merges tiles")
    em.emit("for s in range(0, NUM_SPLITS):")
    em.indent += 1
    for k, a in enumerate(accs):
        if a.kind != "max":
            continue
        ptr, mask = _partial_ptr(em, kp, k, em.layout(a), pads, "s")
        em.emit(f"m_part{k} = tl.load({ptr}, mask={mask}, other=float(\"-inf\"), {cache_modifier})".replace(", )", ")"))
        em.running_max(k, f"m_part{k}")
        em.emit(f"beta{k} = tl.exp2(m_part{k} - m_safe_acc{k})  # this share's sums, to the merged max")
    for k, a in enumerate(accs):
        if a.kind != "sum":
            continue
        lay = em.layout(a)
        ptr, mask = _partial_ptr(em, kp, k, lay, pads, "s")
        em.emit(f"part{k} = tl.load({ptr}, mask={mask}, other=0.0, {cache_modifier})".replace(", )", ")"))
        if a.tied is None:
            em.emit(f"acc{k} = acc{k} + part{k}")
        else:
            kt = accs.index(a.tied)
            sfx = "[:, None]" if len(lay) > 1 else ""
            em.emit(f"acc{k} = acc{k} * alpha{kt}{sfx} + part{k} * beta{kt}{sfx}")
    for k, a in enumerate(accs):
        if a.kind == "max":
            em.emit(f"acc{k} = m_new_acc{k}")
    em.indent -= 1
    em.phase = "post"


def _assemble(em: "_Emitter", kp: KernelPlan, pads: dict, mode: str, *, with_out: bool) -> KernelSource:
    prog, i, j = kp.program, kp.row_var, kp.loop_var
    inputs = sorted(em.inputs)
    params = []
    for k in inputs:
        params.append(f"in{k}_ptr")
        params += [f"in{k}_s{d}" for d in range(len(prog.input_shapes[k]))]
    if mode != "single":
        params += [f"part{k}_ptr" for k in range(len(kp.accs))] + ["n_grid"]
    if mode == "fused":
        params.append("count_ptr")
    if with_out:
        params.append("out_ptr")
        params += [f"out_s{d}" for d in range(len(prog.out_axes))]
    params += [f"z{k}" for k in range(len(em.sizes))]
    params += ["BLOCK_M: tl.constexpr", "BLOCK_N: tl.constexpr"]
    if mode != "single":
        params.append("NUM_SPLITS: tl.constexpr")
    name = {"single": "flashlight_fwd", "split": "flashlight_fwd_split", "combine": "flashlight_fwd_combine",
            "fused": "flashlight_fwd_split_fused"}[mode]
    header = [
        "import triton",
        "import triton.language as tl",
        "",
        "",
        "@triton.jit",
        f"def {name}(" + ", ".join(params) + "):",
    ]
    src = "\n".join(header + em.lines) + "\n"
    widths = [tuple(pads[v.name] for v in em.layout(a)[1:]) for a in kp.accs]
    return KernelSource(name=name, source=src, input_args=inputs,
                        runtime_sizes=list(em.sizes),
                        grid_extents=[g.extent for g in kp.grid_vars], row_extent=i.extent,
                        loop_extent=j.extent, tile_pads=pads, acc_widths=widths)


def _positive_const(x: Node) -> float | None:
    """The value of a finite positive numeric constant, else None."""
    if isinstance(x, Const) and isinstance(x.value, (int, float)) and not isinstance(x.value, bool):
        v = float(x.value)
        if math.isfinite(v) and v > 0:
            return v
    return None


def _overflow_free(x: Node) -> bool:
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
