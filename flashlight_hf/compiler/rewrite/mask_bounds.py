"""Tiling-aware elimination of masks: which key tiles a row tile visits, derived from the masks.

A ``where(pred, −inf, s)`` whose predicate is affine in the row ``i`` and key ``j``
(``j > i + c``, ``j < i − w``, ORs of such: PrefixLM) bounds the key loop per row tile
(:func:`key_bounds`): tiles outside are never visited, and interior tiles drop the mask. Bound
constants may include run-time values (a KV-cache offset read from a tensor):
:class:`~flashlight_hf.compiler.ir.RuntimeOffset`. Other cheap key-dependent predicates
(document ids, key padding) skip a whole key tile at run time when nothing in it is kept
(:func:`tile_skip_predicates`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from flashlight_hf.compiler.ir import (Const, Index, Node, Pointwise, Reduce, RuntimeOffset, Var, strip_casts,
                                       walk)
from flashlight_hf.compiler.rewrite.kernel_plan import KernelPlan


def key_bounds_pass(kp: KernelPlan) -> KernelPlan:
    """The pass: the key bounds every stream's masks imply, and the masks they capture exactly."""
    bounds, exact = key_bounds(kp)
    return replace(kp, key_bounds=bounds, bounded_masks=exact)


def tile_skip_pass(kp: KernelPlan) -> KernelPlan:
    """The pass: the per-stream predicates a run-time key-tile skip tests, and the masks a block
    table built before the launch evaluates instead."""
    skip = tile_skip_predicates(kp)
    return replace(kp, tile_skip=skip, block_table=block_table_masks(kp) if skip else [])


def _affine(x: Node, i: Var, j: Var) -> dict | None:
    """``x`` as ``{i: a, j: b, 1: c}`` (a, b ints; c int or size expression) or None."""
    x = strip_casts(x)
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
    pred = strip_casts(pred)
    if isinstance(pred, Pointwise) and pred.op == "not":
        return _keep_atoms(pred.args[0], not keep, i, j)
    if isinstance(pred, Pointwise) and pred.op == "eq" and isinstance(strip_casts(pred.args[1]), Const) \
            and strip_casts(pred.args[1]).value in (0, False):
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
        body = strip_casts(a.body)
        while isinstance(body, Pointwise) and body.op == "where":
            c, x, y = body.args
            xs, ys = strip_casts(x), strip_casts(y)
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
            body = strip_casts(kept)
        bounds = found if bounds is None else [b for b in bounds if b in found]
    bounds = [b for b in (bounds or []) if all(_scalar_offset(c, kp) for _, c in b[1])]
    # a mask is skipped in interior tiles only if all its bounds are enforced for the loop
    exact = [(w, kept) for w, kept in exact if all(b in bounds for b in _atoms_of(w, i, j))]
    return bounds, exact


def _mask_chain(body: Node) -> list[tuple[Node, bool, Node]]:
    """The ``where(pred, -inf, x)`` / ``where(pred, x, -inf)`` chain at the top of a max body:
    (predicate, value of the predicate that keeps the score, the where node)."""
    out = []
    body = strip_casts(body)
    while isinstance(body, Pointwise) and body.op == "where":
        c, x, y = body.args
        xs, ys = strip_casts(x), strip_casts(y)
        if isinstance(xs, Const) and xs.value == float("-inf"):
            out.append((c, False, body))
            body = strip_casts(y)
        elif isinstance(ys, Const) and ys.value == float("-inf"):
            out.append((c, True, body))
            body = strip_casts(x)
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


def block_table_masks(kp: KernelPlan) -> list[list[tuple[Node, Node, bool, Node]]]:
    """Per max accumulator, every mask of its chain a block table can evaluate per (row, key):
    contraction-free and key-dependent (affine ones included, so one table holds them all) as
    (where node, predicate, value that keeps, kept branch)."""
    out = []
    for a in kp.accs:
        if a.kind != "max":
            continue
        chain = []
        for c, keep, w in _mask_chain(a.body):
            if kp.loop_var in c.vars and not any(isinstance(y, Reduce) for y in walk(c)):
                x, y = w.args[1], w.args[2]
                chain.append((w, c, keep, x if keep else y))
        out.append(chain)
    return out


def _atoms_of(w: Pointwise, i: Var, j: Var) -> list[tuple[str, tuple]]:
    c, x, _ = w.args
    keep = not (isinstance(strip_casts(x), Const) and strip_casts(x).value == float("-inf"))
    return _keep_atoms(c, keep, i, j)[0]
