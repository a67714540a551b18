"""The backward's plan: what the generated dK/dV and dQ kernels compute, derived from the forward's.

Why here: the backward is a rewrite of the forward plan (BACKWARD.md), the way the online
softmax is. After :func:`~flashlight_hf.compiler.rewrite.plan` every key reduction of the
program is an accumulator ``A(i[, e]) = Σ_j P(i, j) · W(j[, e])``: a *scores side* ``P`` over
rows and keys (``exp(s − M)`` for a softmax stream, ``sigmoid(s)`` for sigmoid attention) and a
*values side* ``W`` over keys and value columns (``V``; none for a row sum). The output is the
epilogue ``E`` of the accumulators. Given ``dA = ∂E/∂A · dOut`` (the preprocess, row-local):

* ``dP(i, j) = Σ_e dA(i, e) · W(j, e)`` (``dA(i)`` for a row sum), ``dW(j, e) = Σ_i P(i, j) · dA(i, e)``;
* the scores' adjoint, from the derivative pass over the program's own expressions
  (:func:`~flashlight_hf.compiler.ir.derivative.vjp` of ``Σ_A P·dP``), reaches every dot
  product ``x_t = Σ_d Q_t(i, d) · K_t(j, d)`` as an expression ``dX_t(i, j)``;
* ``dQ_t(i, d) = Σ_j dX_t · K_t`` (the dQ kernel's loop over key tiles) and
  ``dK_t(j, d) = Σ_i dX_tᵀ · Q_t`` (the dK/dV kernel's loop over query tiles), then through the
  elementwise expressions of each side down to the loads of the inputs (``q.float()``,
  a pre-scaled query).

A softmax stream's running max ``M`` is read as its stored log-sum-exp, a constant: the output
does not change with ``M`` (numerators and denominators scale together), so no gradient flows
through it. A sum over a head dim of a term over keys alone (a key gate ``sigmoid(k @ w)``) or
rows alone (a per-row temperature ``sigmoid(q @ u)``) is a per-key (per-row) vector ``t``: its
adjoint ``Σ_i dS ∘ ∂S/∂t`` is reduced inside the kernel that loops over the other axis, like a
captured per-key bias's (:class:`TermStore`), and carried down to the loads under ``t`` after the
kernels. Anything outside this shape raises :class:`Unsupported` naming it, and the caller
keeps the exact recompute backward; a captured tensor whose gradient is not generated is
listed in :attr:`BackwardPlan.no_grad` (the runtime recomputes when one of them needs a grad).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from flashlight_hf.compiler.ir import (Acc, Adjoint, Const, IExpr, Index, Load, Node, Pointwise, Reduce, RunningMax,
                                       Unsupported, Var, mul_factors, strip_casts, walk, walk_outside_accs)
from flashlight_hf.compiler.ir.derivative import add, mul, vjp
from flashlight_hf.compiler.rewrite.kernel_plan import KernelPlan


@dataclass
class Contraction:
    """Sum accumulator ``acc`` (its index in the plan's accumulators) as ``Σ_j P · W``."""

    acc: int
    scores: Node          # P: rows × keys (grid variables aside)
    values: Node | None   # W: keys × value columns; None for a row sum
    d_acc: Adjoint        # dA, what the preprocess computes: rows (× value columns)
    d_scores: Adjoint     # dP, computed per tile


@dataclass
class Dot:
    """A dot product of the scores, ``Σ_d row_side(i, d) · key_side(j, d)``, and its adjoint."""

    node: Reduce
    row_side: Node
    key_side: Node
    d_dot: Node           # dX(i, j): an expression over tile values and the Adjoints
    d_row: Adjoint        # Σ_j dX · key_side, accumulated by the dQ kernel: rows × d
    d_key: Adjoint        # Σ_i dXᵀ · row_side, accumulated by the dK/dV kernel: keys × d


@dataclass
class GradStore:
    """One load's gradient, stored by a kernel after its loop into an expanded buffer over the
    load's variables ``[grid..., rows or keys, head dims...]`` (``buffer``: its number); the
    runtime adds each buffer into the input's gradient at the load's indices."""

    load: Load
    side: str             # "row" (the dQ kernel) or "key" (the dK/dV kernel)
    expr: Node            # the load's adjoint over the accumulated Adjoints (elementwise chain)
    buffer: int
    # a tensor the scores read outside the dot products (a bias, slopes, a table): "element"
    # (its adjoint per (row, key), stored per tile), "key" / "row" (summed over the other of the
    # two inside the kernel), "scalar" (summed over the tile: one partial per program); "" for a
    # dot product's or the values' operand (an accumulated gradient through its chain)
    kind: str = ""


@dataclass
class TermStore:
    """A term of the scores over keys alone or rows alone, ``t = Σ_d a(·, d)`` over a head dim
    ``d`` (a key gate's ``k @ w``). Why a store of its own: ``t`` is one number per key (row), so
    its adjoint ``expr`` per (row, key) is summed over the rows (keys) inside the kernel that loops
    over them (``kind`` "key": dK/dV, "row": dQ) and stored into buffer ``buffer`` ``[grid...,
    keys or rows]``, the way a captured per-key bias's is (``kind`` "scalar": one number per grid
    point, one partial per key tile of dK/dV, summed after); what ``t`` reads is not a dot product's
    operand, so no kernel accumulates it. After the kernels, ``chains`` carry the buffer (``seed``)
    through ``a``: per float load under it, its gradient as an expression over ``seed`` and the
    loads, varying along the grid, the keys (rows) and ``d``, which the runtime evaluates densely
    (O(keys × d), like the loads themselves) and adds into the input's gradient."""

    node: Reduce
    side: str
    expr: Node
    buffer: int
    kind: str
    seed: Adjoint
    chains: list[tuple[Load, Node]]


@dataclass(frozen=True)
class HeadGroup:
    """GQA in the dK/dV kernel: the key-side loads read grid variable ``var`` only as
    ``var // size`` (``repeat_kv``, ``repeat_interleave``) or not at all (a 5-D view's head in
    the group, an MQA broadcast: ``size`` None, the group is the variable's whole extent). One
    program then owns a key tile of one key head and loops over the query heads that share it,
    accumulating dK and dV in registers: the gradients are written once, in place, with no
    per-query-head buffer and no sum after."""

    var: Var
    size: int | None

    def invariant(self, x: Node) -> bool:
        """Whether ``x`` is the same for every query head of a group (it reads ``var`` at most as
        ``var // size``): the dK/dV kernel computes it once, before the group loop."""
        for y in walk(x):
            if isinstance(y, (Adjoint, Acc, RunningMax)):
                return False
            if isinstance(y, Index) and self.var in y.vars:
                return False
            if isinstance(y, Load) and _group_of(y, self.var) not in (0, self.size or 0):
                return False
        return True


@dataclass
class BackwardPlan:
    kp: KernelPlan
    contractions: list[Contraction]
    dots: list[Dot]
    value_adjoints: dict[int, Adjoint]   # contraction index -> dW, accumulated by the dK/dV kernel
    stores: list[GradStore]
    # per float program input whose gradient the kernels do not produce: the node and why
    no_grad: dict[int, tuple[str, str]] = field(default_factory=dict)
    # the max accumulators whose running max the scores read (their stored statistics)
    streams: list[int] = field(default_factory=list)
    group: HeadGroup | None = None  # the dK/dV kernel's loop over a GQA group's query heads
    terms: list[TermStore] = field(default_factory=list)  # the scores' terms over keys or rows alone

    def grouped(self, st: GradStore | TermStore) -> bool:
        """Whether ``st`` is accumulated over the head group (a key-side operand's gradient)."""
        return self.group is not None and st.side == "key" and not st.kind

    def buffers(self, side: str) -> list[GradStore | TermStore]:
        """Every buffer one side's kernel stores: the loads' gradients and the terms' adjoints,
        in buffer order (the kernel's parameters)."""
        return sorted((s for s in [*self.stores, *self.terms] if s.side == side), key=lambda s: s.buffer)


def _local(x: Node, kp: KernelPlan) -> set[Var]:
    """The kernel-local variables of ``x`` (rows, keys, head dims)."""
    return {v for v in x.vars if v is kp.row_var or v is kp.loop_var or v in kp.tile_vars}


def _split(body: Node, kp: KernelPlan) -> tuple[Node, Node | None]:
    """A sum accumulator's body as (scores side, values side), as the forward's contraction splits it."""
    i, j = kp.row_var, kp.loop_var
    num, den = mul_factors(body)
    if den:
        raise Unsupported("backward", "a division inside a key contraction")
    left = [f for f in num if _local(f, kp) <= {i, j}]
    right = [f for f in num if f not in left]
    if any(i in _local(f, kp) for f in right):
        raise Unsupported("backward", "a key contraction that does not split into scores × values")
    p: Node = left[0] if left else Const(torch.float32, 1.0)
    for f in left[1:]:
        p = Pointwise(torch.float32, "mul", (p, f))
    if not right:
        return p, None
    w = right[0]
    for f in right[1:]:
        w = Pointwise(w.dtype, "mul", (w, f))
    return p, w


def describe(x: Node) -> str:
    """A node as the backward's messages name it: its kind and the inputs it reads."""
    reads = sorted({y.input for y in walk(x) if isinstance(y, Load)})
    what = f"{x.op} over {x.var.name}" if isinstance(x, Reduce) else getattr(x, "op", type(x).__name__)
    return f"{what} of input{'s' if len(reads) != 1 else ''} {', '.join(map(str, reads))}" if reads else what


def _sides(dot: Reduce, kp: KernelPlan) -> tuple[Node, Node]:
    """(row side, key side) of a score dot product, or Unsupported."""
    arg = strip_casts(dot.arg)
    if dot.op != "sum" or not (isinstance(arg, Pointwise) and arg.op == "mul") or dot.var not in kp.tile_vars:
        raise Unsupported(describe(dot), "a reduction in the scores that is not a dot product over a head dim")
    a, b = arg.args
    i, j = kp.row_var, kp.loop_var
    la, lb = _local(a, kp), _local(b, kp)
    if la == {i, dot.var} and lb == {j, dot.var}:
        return a, b
    if lb == {i, dot.var} and la == {j, dot.var}:
        return b, a
    raise Unsupported(describe(dot), "a dot product in the scores that is neither rows × keys nor a term over "
                      "keys or rows alone (such as a key gate k @ w): its backward is not derived")


def _term_kind(dot: Reduce, kp: KernelPlan) -> str | None:
    """"key" / "row" where ``dot`` sums, over a head dim, a term that varies along the keys
    (rows) alone, "scalar" where along neither (a temperature from a parameter vector); None
    otherwise (:class:`TermStore`)."""
    if dot.op != "sum" or dot.var not in kp.tile_vars:
        return None
    kinds = {frozenset({kp.loop_var}): "key", frozenset({kp.row_var}): "row", frozenset(): "scalar"}
    return kinds.get(frozenset(_local(dot, kp)))


def _float_loads(x: Node) -> list[Load]:
    return [y for y in walk(x) if isinstance(y, Load) and y.dtype.is_floating_point]


def _chain(side: Node, seed: Adjoint, what: str) -> list[tuple[Load, Node]]:
    """The adjoint of every float load under an elementwise side expression, given the side's."""
    for y in walk(side):
        if not isinstance(y, (Load, Const, Index, Pointwise)):
            raise Unsupported("backward", f"the {what} side holds a {type(y).__name__}: no elementwise chain")
        if isinstance(y, Load) and any(isinstance(e, Node) for e in y.index):
            raise Unsupported("backward", f"a gathered load on the {what} side")
    loads = _float_loads(side)
    grads = vjp(side, seed, loads)
    return [(ld, g) for ld, g in zip(loads, grads) if g is not None]


def derive(kp: KernelPlan) -> BackwardPlan:
    """The backward plan of ``kp``; raises Unsupported naming what it cannot differentiate."""
    i, j = kp.row_var, kp.loop_var
    grid = frozenset(kp.grid_vars)
    accs = kp.accs
    maxes = [k for k, a in enumerate(accs) if a.kind == "max"]
    for k in maxes:
        if not any(b.kind == "sum" and b.tied is accs[k] for b in accs):
            raise Unsupported("backward", f"a running max (acc{k}) that no sum is normalised by: its "
                              "gradient does not cancel")
    contractions: list[Contraction] = []
    for k, a in enumerate(accs):
        if a.kind != "sum":
            continue
        lay = _local(a, kp)
        p, w = _split(a.body, kp)
        if lay == {i}:
            if w is not None:
                raise Unsupported("backward", f"acc{k}: a per-row sum with a values side")
        elif len(lay) != 2 or i not in lay or w is None:
            raise Unsupported("backward", f"acc{k}: an accumulator over {sorted(v.name for v in lay)}")
        d_acc = Adjoint(torch.float32, f"dacc{k}", grid | lay)
        d_scores = Adjoint(torch.float32, f"dp{k}", grid | {i, j})
        contractions.append(Contraction(k, p, w, d_acc, d_scores))
    if not contractions:
        raise Unsupported("backward", "no key contraction to differentiate")
    # the scores' adjoint: one reverse pass over Σ P·dP, stopping at the dot products
    root: Node | None = None
    for c in contractions:
        root = add(root, mul(c.scores, c.d_scores))
    under = [x for c in contractions for x in walk(c.scores)]
    dots = _unique([x for x in under if isinstance(x, Reduce)])
    loads = _unique([x for x in under if isinstance(x, Load) and x.dtype.is_floating_point and
                     not any(x in walk(d) for d in dots)])
    grads = vjp(root, Const(torch.float32, 1.0), dots + loads)
    no_grad: dict[int, tuple[str, str]] = {}
    out_dots: list[Dot] = []
    stores: list[GradStore] = []
    for ld, g in zip(loads, grads[len(dots):]):
        if g is None:
            continue
        kind = _captured_kind(ld, kp)
        if kind is None:
            no_grad.setdefault(ld.input, (f"load of input {ld.input}", "a tensor the scores read along a head dim "
                                          "outside a dot product: its gradient is not generated"))
            continue
        side = "row" if kind == "row" else "key"
        stores.append(GradStore(ld, side, g, len(stores), kind))
    terms: list[TermStore] = []
    for d, g in zip(dots, grads[:len(dots)]):
        kind = _term_kind(d, kp) if g is not None else None
        if kind is None:
            continue
        seed = Adjoint(torch.float32, f"dt{len(terms)}", grid | _local(d, kp))
        chains = _chain(d.arg, seed, f"{kind} term")
        side = "row" if kind == "row" else "key"  # a scalar's partials: one per key tile of dK/dV
        terms.append(TermStore(d, side, g, len(stores) + len(terms), kind, seed, chains))
    for d, g in zip(dots, grads[:len(dots)]):
        if g is None or any(tm.node is d for tm in terms):
            continue
        t = len(out_dots)
        a_side, b_side = _sides(d, kp)
        d_row = Adjoint(torch.float32, f"dq{t}", grid | {i, d.var})
        d_key = Adjoint(torch.float32, f"dk{t}", grid | {j, d.var})
        out_dots.append(Dot(d, a_side, b_side, g, d_row, d_key))
        for ld, e in _chain(a_side, d_row, "query"):
            stores.append(GradStore(ld, "row", e, len(stores) + len(terms)))
        for ld, e in _chain(b_side, d_key, "key"):
            stores.append(GradStore(ld, "key", e, len(stores) + len(terms)))
    value_adjoints: dict[int, Adjoint] = {}
    shared: dict[object, Adjoint] = {}
    for n, c in enumerate(contractions):
        if c.values is None:
            continue
        key = _structure(c.values)
        if key is not None and key in shared:
            # streams sharing one values side (DiffLlama's V): one dW, Σ_n P_nᵀ·dA_n, one
            # accumulator in the dK/dV kernel and one store
            value_adjoints[n] = shared[key]
            continue
        lay = _local(c.values, kp)
        value_adjoints[n] = dw = Adjoint(torch.float32, f"dv{n}", grid | lay)
        if key is not None:
            shared[key] = dw
        for ld, e in _chain(c.values, dw, "value"):
            stores.append(GradStore(ld, "key", e, len(stores) + len(terms)))
    streams = sorted({k for c in contractions for x in walk(c.scores) if isinstance(x, RunningMax)
                      for k in [accs.index(x.acc)]})
    for x in walk_outside_accs(kp.out_node):
        if isinstance(x, RunningMax):
            raise Unsupported("backward", "the epilogue reads a running max inside the loop")
    return BackwardPlan(kp, contractions, out_dots, value_adjoints, stores, no_grad, streams,
                        head_group(kp, stores), terms)


def _structure(x: Node) -> object | None:
    """A key equal for two values sides that compute the same thing (loads of one input at equal
    indices through the same elementwise ops); None for anything else (kept apart)."""
    if isinstance(x, Load):
        if any(isinstance(e, Node) for e in x.index):
            return None
        return ("load", x.input, x.dtype, tuple(x.index))
    if isinstance(x, Const):
        return ("const", x.dtype, repr(x.value))
    if isinstance(x, Pointwise):
        args = tuple(_structure(a) for a in x.args)
        return None if any(a is None for a in args) else ("pw", x.op, x.dtype, args)
    return None


def _group_of(ld: Load, h: Var) -> int | None:
    """How a load reads grid variable ``h``: ``G`` where only as ``h // G``, 0 where not at all,
    None otherwise (plainly, in arithmetic, through a gather)."""
    found = 0
    for e in ld.index:
        if isinstance(e, Node):
            return None
        if h not in e.vars():
            continue
        a, b = (e.args + (None, None))[:2]
        if e.op == "floordiv" and a == IExpr.var(h) and isinstance(b, IExpr) and b.op == "const" and not found:
            found = int(b.args[0])
        else:
            return None
    return found


def _plain_axes(ld: Load, h: Var) -> bool:
    """Every axis of the load indexed by one variable (each once), ``h // G`` or ``0``: the
    runtime can view the input's gradient as the kernel's buffer."""
    seen: set[Var] = set()
    for e in ld.index:
        if e.op == "var" and e.args[0] is not h and e.args[0] not in seen:
            seen.add(e.args[0])
        elif not (e.op == "floordiv" and e.args[0] == IExpr.var(h) or e.op == "const" and int(e.args[0]) == 0):
            return False
    return True


def head_group(kp: KernelPlan, stores: list[GradStore]) -> HeadGroup | None:
    """The GQA group the dK/dV kernel can loop over (see :class:`HeadGroup`), if any."""
    keyed = [st for st in stores if st.side == "key" and not st.kind]
    if not keyed:
        return None
    for h in kp.grid_vars:
        static = isinstance(h.extent, int) or getattr(h.extent, "is_Integer", False)
        if static and int(h.extent) < 2:
            continue
        sizes = {_group_of(st.load, h) for st in keyed}
        if len(sizes) != 1 or None in sizes or not all(_plain_axes(st.load, h) for st in keyed):
            continue
        g = sizes.pop()
        if g == 1 or g and static and int(h.extent) % g:
            continue
        group = HeadGroup(h, g or None)  # g == 0: no key-side load reads h, the group is every value of h
        # the chain after the loop (a cast, a scale) must be the same for every head of the group
        if all(group.invariant(y) for st in keyed for y in walk(st.expr) if isinstance(y, (Load, Index))):
            return group
    return None


def _captured_kind(ld: Load, kp: KernelPlan) -> str | None:
    """How a tensor the scores read gets its gradient (see :attr:`GradStore.kind`), from the
    kernel-local variables of its load; a gathered load is stored per element."""
    lay = _local(ld, kp)
    if any(v in kp.tile_vars for v in lay):
        return None
    gathered = any(isinstance(e, Node) for e in ld.index)
    i, j = kp.row_var, kp.loop_var
    if gathered or lay == {i, j}:
        return "element"
    return {frozenset({j}): "key", frozenset({i}): "row", frozenset(): "scalar"}[frozenset(lay)]


def _unique(xs: list[Node]) -> list[Node]:
    seen: set[int] = set()
    out = []
    for x in xs:
        if id(x) not in seen:
            seen.add(id(x))
            out.append(x)
    return out


def epilogue_accs(kp: KernelPlan) -> list[Acc]:
    """The accumulators the epilogue reads (the preprocess differentiates with respect to them)."""
    return [x for x in walk_outside_accs(kp.out_node) if isinstance(x, Acc)]
