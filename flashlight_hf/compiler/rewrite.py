"""Stage 3 — rewrites: from the reduction IR to a fused loop nest (a :class:`KernelPlan`).

The paper's three transformations, applied to the IR of :mod:`flashlight_hf.compiler.ir`:

* **Dimension demotion.** The key variable ``j`` is parallel in ``QKᵀ`` but reduced by
  everything downstream; it becomes the kernel's sequential loop. It is found structurally: the
  one reduced variable (not in the output) whose reductions contain another reduction.
* **Homomorphic (online) rewrite.** A sum over ``j`` of ``exp(y − M)·z`` where ``M = max_j y``
  becomes a running accumulator rescaled by ``exp(m_old − m_new)`` whenever the running max
  grows; a factor that is itself a ``j``-reduction (the softmax denominator) is constant in
  ``j`` and moves after the loop. This is applied per reduction, so every softmax stream in the
  program gets its own running state (differential attention has two).
* **Tiling-aware elimination.** Every other reduced variable (head dims) has a static extent
  that fits one tile: its reductions become ``tl.dot`` or a row reduction inside one step.

Anything that does not fit raises :class:`~flashlight_hf.compiler.ir.Unsupported` naming the
node, and the caller runs the program unfused.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from flashlight_hf.compiler.ir import (Const, IExpr, Index, Load, Node, Pointwise, Program, Reduce,
                                       Unsupported, Var, is_one, map_indices, size_eq)

MAX_TILE_EXTENT = 256


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


@dataclass
class KernelPlan:
    """Everything codegen needs: the variables' roles and the rewritten output expression."""

    program: Program
    grid_vars: list[Var]
    row_var: Var
    loop_var: Var
    tile_vars: list[Var]
    out_node: Node
    accs: list[Acc] = field(default_factory=list)
    # Key-range bounds derived from the masks: ("lo", alts) means keys j < min(a*i + c over
    # alts) are masked out for row i, ("hi", alts) means keys j > max(a*i + c over alts) are
    # (several alternatives come from an OR: PrefixLM's ``j <= i or j < P``); tiles outside are
    # never visited.
    key_bounds: list[tuple[str, tuple]] = field(default_factory=list)
    # ``where(mask, -inf, x)`` nodes whose mask the bounds capture exactly, with the kept branch
    # ``x``: in interior tiles (inside every bound) codegen uses ``x`` and skips the mask.
    bounded_masks: list[tuple[Node, Node]] = field(default_factory=list)
    # Per max accumulator (in order), the cheap mask predicates of its ``where(·, -inf, ·)`` chain
    # as (predicate, value that keeps): a key tile where no element is kept for any stream is
    # skipped at run time (data-dependent block sparsity: document ids, key padding).
    tile_skip: list[list[tuple[Node, bool]]] = field(default_factory=list)


def walk(root: Node):
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


def _contains(root: Node, pred) -> bool:
    return any(pred(x) for x in walk(root))


def _strip_casts(x: Node) -> Node:
    while isinstance(x, Pointwise) and x.op == "cast":
        x = x.args[0]
    return x


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


def _is_const(x: Node, value: float) -> bool:
    x = _strip_casts(x)
    return isinstance(x, Const) and not isinstance(x.value, bool) and isinstance(x.value, (int, float)) \
        and float(x.value) == value


def _additive_masks_as_selects(root: Node) -> Node:
    """``s + where(keep, 0, −inf)`` → ``where(keep, s, −inf)`` (and the mirrored forms).

    Transformers' eager attention adds its mask to the scores; as a select it is a mask the
    key-bound analysis reads (whole tiles skipped, interior tiles free of it). Exact for every
    finite or −inf score (``s + 0 = s``, ``s + −inf = −inf``)."""
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
                    ws = _strip_casts(w)
                    if isinstance(ws, Pointwise) and ws.op == "where" and ws.dtype.is_floating_point:
                        c, a, b = ws.args
                        if _is_const(a, 0.0) and _is_const(b, float("-inf")):
                            r = Pointwise(x.dtype, "where", (c, s_, Const(x.dtype, float("-inf"))))
                            break
                        if _is_const(a, float("-inf")) and _is_const(b, 0.0):
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


def plan(program: Program) -> KernelPlan:
    """Classify variables, demote the key axis and rewrite every softmax stream to online form."""
    out = program.output
    out_vars: list[Var] = []
    for ax in program.out_axes:
        for v, e in ax:
            if v is None:
                if not is_one(e):
                    raise Unsupported("output", "the output is broadcast along an axis (expand before return)")
                continue
            out_vars.append(v)
    out_set = set(out_vars)
    reduces = [x for x in walk(out) if isinstance(x, Reduce)]
    candidates = {r.var for r in reduces if r.var not in out_set}
    nested = {r.var for r in reduces if r.var in candidates and
              _contains(r.arg, lambda y, r=r: isinstance(y, Reduce) and y.var is not r.var and y.var in candidates)}
    if len(nested) > 1:
        # Reductions over different dummy variables of equal extent (two softmax streams each
        # reading K and V) are one key loop: renaming a bound variable changes nothing.
        # Only streams side by side: a reduction over one of them that contains a reduction over
        # another (``(P @ V) @ Vᵀ`` with as many keys as head dims) is a chain, and renaming
        # would merge two different axes.
        first, *rest = sorted(nested, key=lambda v: v.uid)
        chained = any(r.var in nested and _contains(r.arg, lambda y, r=r: isinstance(y, Reduce) and y.var in nested
                                                    and y.var is not r.var) for r in reduces)
        if not chained and all(size_eq(v.extent, first.extent) for v in rest):
            out = rename_bound(out, {v: first for v in rest})
            program = replace(program, output=out)
            reduces = [x for x in walk(out) if isinstance(x, Reduce)]
            candidates = {r.var for r in reduces if r.var not in out_set}
            nested = {first}
    if len(nested) != 1:
        raise Unsupported("program", "no key axis found: expected one reduced axis (the keys) whose reductions "
                          "contain another reduction (the QKᵀ contraction)" if not nested else
                          f"several nested reduction axes {sorted(v.name for v in nested)}")
    (j,) = nested
    tile_vars = sorted((v for v in candidates if v is not j), key=lambda v: v.uid)  # creation order: stable source
    for v in tile_vars:
        if not isinstance(v.extent, int) or v.extent > MAX_TILE_EXTENT:
            raise Unsupported(v.name, f"contracted axis of extent {v.extent} does not fit one tile "
                              f"(at most {MAX_TILE_EXTENT})")

    # rows (i) and value dims (e): from the contraction that takes j away (…ᵀ · V)
    row, value_dims = _rows_and_value_dims(out, j, out_set)
    tile_vars += [v for v in value_dims if v not in tile_vars]
    for v in value_dims:
        if not isinstance(v.extent, int) or v.extent > MAX_TILE_EXTENT:
            raise Unsupported(v.name, f"value head dim of extent {v.extent} is too large for one tile")
    grid = [v for v in out_vars if v is not row and v not in value_dims]
    rewritten, accs = _online(_additive_masks_as_selects(out), j)
    kp = KernelPlan(program=program, grid_vars=grid, row_var=row, loop_var=j, tile_vars=tile_vars,
                    out_node=rewritten, accs=accs)
    kp.key_bounds, kp.bounded_masks = key_bounds(kp)
    kp.tile_skip = tile_skip_predicates(kp)
    return kp


# ----------------------------------------------------------------------------------------------
# Block sparsity: which key tiles a row tile can skip, derived from the mask predicates.
def _affine(x: Node, i: Var, j: Var) -> dict | None:
    """``x`` as ``{i: a, j: b, 1: c}`` (a, b ints; c int or size expression) or None."""
    x = _strip_casts(x)
    if isinstance(x, Index):
        e = x.expr
        if e.op == "var" and e.args[0] in (i, j):
            return {e.args[0]: 1, 1: 0}
        if e.op == "const":
            return {1: e.args[0]}
        if e.op == "sym":
            return {1: e.args[0]}
        if e.op == "add" and all(a.op in ("var", "const", "sym") for a in e.args):
            out: dict = {1: 0}
            for a in e.args:
                part = _affine(Index(x.dtype, a), i, j)
                if part is None:
                    return None
                out = _add_affine(out, part, 1)
            return out
        return None
    if isinstance(x, Const):
        v = x.value
        if isinstance(v, bool) or not (isinstance(v, int) or hasattr(v, "free_symbols")):
            return None
        return {1: v}
    if isinstance(x, Pointwise) and x.op in ("add", "sub"):
        a, b = (_affine(y, i, j) for y in x.args)
        if a is None or b is None:
            return None
        return _add_affine(a, b, 1 if x.op == "add" else -1)
    if isinstance(x, Pointwise) and x.op == "neg":
        a = _affine(x.args[0], i, j)
        return None if a is None else {k: -v for k, v in a.items()}
    if i not in x.vars and j not in x.vars and x.dtype in (torch.int32, torch.int64) \
            and not any(isinstance(y, (Reduce,)) for y in walk(x)):
        # a run-time integer the same for every row and key of a program (a KV-cache offset
        # read from a tensor): an opaque term of the bound, evaluated once per program
        return {1: 0, x: 1}
    return None


def _add_affine(a: dict, b: dict, sign: int) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + sign * v
    return out


def _keep_atoms(pred: Node, keep: bool, i: Var, j: Var) -> tuple[list[tuple[str, tuple]], bool]:
    """Bounds on j implied by ``pred == keep`` for every kept element (conjunctions only).

    The flag says whether the bounds are *exactly* the predicate (every part understood).
    """
    pred = _strip_casts(pred)
    if isinstance(pred, Pointwise) and pred.op == "not":
        return _keep_atoms(pred.args[0], not keep, i, j)
    if isinstance(pred, Pointwise) and pred.op == "eq" and isinstance(_strip_casts(pred.args[1]), Const) \
            and _strip_casts(pred.args[1]).value in (0, False):
        return _keep_atoms(pred.args[0], not keep, i, j)
    if isinstance(pred, Pointwise) and ((pred.op == "and" and keep) or (pred.op == "or" and not keep)):
        a, ca = _keep_atoms(pred.args[0], keep, i, j)
        b, cb = _keep_atoms(pred.args[1], keep, i, j)
        return a + b, ca and cb
    if isinstance(pred, Pointwise) and ((pred.op == "or" and keep) or (pred.op == "and" and not keep)):
        # kept if either side keeps: one bound of the same kind on each side becomes their max/min
        a, ca = _keep_atoms(pred.args[0], keep, i, j)
        b, cb = _keep_atoms(pred.args[1], keep, i, j)
        if len(a) == 1 and len(b) == 1 and a[0][0] == b[0][0]:
            return [(a[0][0], a[0][1] + b[0][1])], ca and cb
        return [], False
    if isinstance(pred, Pointwise) and pred.op in ("lt", "le", "gt", "ge"):
        a, b = (_affine(y, i, j) for y in pred.args)
        if a is None or b is None:
            return [], False
        op = pred.op if keep else {"lt": "ge", "le": "gt", "gt": "le", "ge": "lt"}[pred.op]
        d = _add_affine(a, b, -1)  # d (op) 0
        cj, ci, c = d.get(j, 0), d.get(i, 0), d.get(1, 0)
        terms = {k: v for k, v in d.items() if isinstance(k, Node) and v != 0}
        if cj not in (1, -1) or ci not in (-1, 0, 1):
            return [], False
        if cj == -1:  # -j + ci*i + c (op) 0  ->  j (flipped op) ci*i + c
            op = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le"}[op]
        else:         # j + ci*i + c (op) 0  ->  j (op) -ci*i - c
            ci, c = -ci, -c
            terms = {k: -v for k, v in terms.items()}
        if ci not in (0, 1):
            return [], False
        if terms:  # run-time terms ride along with the constant: c + Σ coef·value
            c = RuntimeOffset(c, tuple(sorted(terms.items(), key=lambda kv: id(kv[0]))))
        # now: j (op) ci*i + c
        if op == "lt":
            return [("hi", ((ci, c - 1),))], True
        if op == "le":
            return [("hi", ((ci, c),))], True
        if op == "gt":
            return [("lo", ((ci, c + 1),))], True
        return [("lo", ((ci, c),))], True
    return [], False


def _scalar_offset(c: Any, kp: KernelPlan) -> bool:
    """Run-time bound terms must be one value per program (vary at most with the grid)."""
    if not isinstance(c, RuntimeOffset):
        return True
    return all(node.vars <= set(kp.grid_vars) for node, _ in c.terms)


def key_bounds(kp: KernelPlan) -> tuple[list[tuple[str, tuple]], list[tuple[Node, Node]]]:
    """Key bounds valid for every accumulator (softmax streams whose masked scores are −inf),
    and the mask nodes they capture exactly."""
    i, j = kp.row_var, kp.loop_var
    bounds: list[tuple[str, tuple]] | None = None
    exact: list[tuple[Node, Node]] = []
    for a in kp.accs:
        if a.kind == "sum":
            if a.tied is None:
                return [], []  # a plain key sum (sigmoid attention): masked keys may still count
            continue
        found: list[tuple[str, tuple]] = []
        body = _strip_casts(a.body)
        while isinstance(body, Pointwise) and body.op == "where":
            c, x, y = body.args
            xs, ys = _strip_casts(x), _strip_casts(y)
            if isinstance(xs, Const) and xs.value == float("-inf"):
                atoms, complete = _keep_atoms(c, False, i, j)
                kept = y
            elif isinstance(ys, Const) and ys.value == float("-inf"):
                atoms, complete = _keep_atoms(c, True, i, j)
                kept = x
            else:
                break
            found += atoms
            if complete:
                exact.append((body, kept))
            body = _strip_casts(kept)
        bounds = found if bounds is None else [b for b in bounds if b in found]
    bounds = [b for b in (bounds or []) if all(_scalar_offset(c, kp) for _, c in b[1])]
    # a mask is skipped in interior tiles only if all its bounds are enforced for the loop
    exact = [(w, kept) for w, kept in exact if all(b in bounds for b in _atoms_of(w, i, j))]
    return bounds, exact


def _mask_chain(body: Node) -> list[tuple[Node, bool, Node]]:
    """The ``where(pred, -inf, x)`` / ``where(pred, x, -inf)`` chain at the top of a max body:
    (predicate, value of the predicate that keeps the score, the where node)."""
    out = []
    body = _strip_casts(body)
    while isinstance(body, Pointwise) and body.op == "where":
        c, x, y = body.args
        xs, ys = _strip_casts(x), _strip_casts(y)
        if isinstance(xs, Const) and xs.value == float("-inf"):
            out.append((c, False, body))
            body = _strip_casts(y)
        elif isinstance(ys, Const) and ys.value == float("-inf"):
            out.append((c, True, body))
            body = _strip_casts(x)
        else:
            break
    return out


def tile_skip_predicates(kp: KernelPlan) -> list[list[tuple[Node, bool]]]:
    """Cheap (contraction-free) mask predicates per softmax stream, or [] when skipping a fully
    masked key tile would not be exact (a plain key sum, or a stream with no such mask)."""
    if any(a.kind == "sum" and a.tied is None for a in kp.accs):
        return []
    out = []
    for a in kp.accs:
        if a.kind != "max":
            continue
        exact = {id(w) for w, _ in kp.bounded_masks}
        # masks the key bounds capture exactly already shape the loop range: no run-time test
        preds = [(c, keep) for c, keep, w in _mask_chain(a.body)
                 if id(w) not in exact and not any(isinstance(y, Reduce) for y in walk(c))
                 and kp.loop_var in c.vars]
        if not preds:
            return []
        out.append(preds)
    return out


def _atoms_of(w: Pointwise, i: Var, j: Var) -> list[tuple[str, tuple]]:
    c, x, _ = w.args
    keep = not (isinstance(_strip_casts(x), Const) and _strip_casts(x).value == float("-inf"))
    return _keep_atoms(c, keep, i, j)[0]


def rename_bound(root: Node, m: dict[Var, Var]) -> Node:
    """Rename index variables everywhere under ``root`` (alpha-renaming of reduction variables)."""
    sub = {v: IExpr.var(w) for v, w in m.items()}
    return map_indices(root, lambda e: e.subst(sub), lambda v: m.get(v, v))


def _mul_factors(x: Node) -> tuple[list[Node], list[Node]]:
    """Split a product/quotient tree (through casts and negations) into numerator/denominator."""
    x0 = x
    x = _strip_casts(x)
    if isinstance(x, Pointwise) and x.op == "mul":
        n1, d1 = _mul_factors(x.args[0])
        n2, d2 = _mul_factors(x.args[1])
        return n1 + n2, d1 + d2
    if isinstance(x, Pointwise) and x.op == "div":
        n1, d1 = _mul_factors(x.args[0])
        n2, d2 = _mul_factors(x.args[1])
        return n1 + d2, d1 + n2
    return [x0], []


def _rows_and_value_dims(out: Node, j: Var, out_set: set[Var]) -> tuple[Var, list[Var]]:
    for r in walk(out):
        if not (isinstance(r, Reduce) and r.var is j and r.op == "sum"):
            continue
        num, den = _mul_factors(r.arg)
        # the value factor is read, not computed by a contraction: try factors without a
        # reduction first (else `sigmoid(scores) * V` would take the scores for the values
        # and the value head dim for the rows)
        for f in sorted(num, key=lambda g: _contains(g, lambda y: isinstance(y, Reduce))):
            others = [g for g in num if g is not f] + den
            other_vars = frozenset().union(*(g.vars for g in others)) if others else frozenset()
            value_dims = [v for v in f.vars & out_set if v not in other_vars]
            rows = [v for v in other_vars & out_set if v not in f.vars]
            if j in f.vars and value_dims and rows:
                # Several query-side variables (a 5-D GQA view's group axis and the query
                # positions): any choice is correct, the others become grid variables; tile
                # the one that varies at run time, else the longest.
                return max(rows, key=lambda v: (not isinstance(v.extent, int),
                                                v.extent if isinstance(v.extent, int) else 0, -v.uid)), value_dims
    raise Unsupported("program", "no `scores @ V` contraction over the key axis found (the rows and value "
                      "head dim of the output could not be identified)")


def _online(out: Node, j: Var) -> tuple[Node, list[Acc]]:
    """Replace every reduction over ``j`` with loop accumulators (online softmax where needed)."""
    accs: list[Acc] = []
    max_accs: dict[int, Acc] = {}
    memo: dict[int, Node] = {}

    def depends_on_j_reduce(x: Node) -> bool:
        return _contains(x, lambda y: isinstance(y, Reduce) and y.var is j)

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
        m = _strip_casts(m)
        if isinstance(m, Reduce) and m.var is j and m.op == "max":
            return m, None
        if isinstance(m, Pointwise) and m.op == "maximum":
            a, b = (_strip_casts(x) for x in m.args)
            for r, c in ((a, b), (b, a)):
                if isinstance(r, Reduce) and r.var is j and r.op == "max" and j not in c.vars \
                        and not depends_on_j_reduce(c):
                    return r, c
        return None

    def online_factor(f: Node) -> tuple[Node, Acc | None]:
        """``exp(y − M)`` with ``M`` a key max → body with the running max; else unchanged."""
        base = _strip_casts(f)
        if not depends_on_j_reduce(base):
            return f, None
        if isinstance(base, Pointwise) and base.op == "exp":
            inner = _strip_casts(base.args[0])
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
        x = _strip_casts(x)
        if isinstance(x, Pointwise) and x.op in ("add", "sub"):
            return sum_terms(x.args[0], sign) + sum_terms(x.args[1], sign if x.op == "add" else -sign)
        if isinstance(x, Pointwise) and x.op == "neg":
            return sum_terms(x.args[0], -sign)
        return [(sign, x0)]

    def rewrite_sum(r: Reduce) -> Node:
        result: Node | None = None
        for sign, term in sum_terms(r.arg):
            num, den = _mul_factors(term)
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

