"""Which variable plays which part in the loop nest: the key loop, the tiled rows, the value
head dims, the grid, and the small contracted axes that fit one tile.

**Dimension demotion.** The key variable ``j`` is parallel in ``QKᵀ`` but reduced by everything
downstream; it becomes the kernel's sequential loop. It is found structurally: the one reduced
variable (not in the output) whose reductions contain another reduction. Side-by-side softmax
streams over keys of equal extent (differential attention) are renamed onto one key loop. An
output with no query-row axis (decode written with ``q [H, D]``) gets one of extent 1
(:mod:`.row_axis`).
"""

from __future__ import annotations

from dataclasses import replace

from flashlight_hf.compiler.ir import (IExpr, Node, Program, Reduce, Unsupported, Var, contains, is_one,
                                       map_indices, mul_factors, size_eq, walk)
from flashlight_hf.compiler.rewrite.kernel_plan import KernelPlan
from flashlight_hf.compiler.rewrite.row_axis import add_row_axis

MAX_TILE_EXTENT = 256


def assign_roles(program: Program) -> KernelPlan:
    """The plan's variables, with ``out_node`` still the program's output (no rewrite yet)."""
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
              contains(r.arg, lambda y, r=r: isinstance(y, Reduce) and y.var is not r.var and y.var in candidates)}
    if len(nested) > 1:
        # Reductions over different dummy variables of equal extent (two softmax streams each
        # reading K and V) are one key loop: renaming a bound variable changes nothing.
        # Only streams side by side: a reduction over one of them that contains a reduction over
        # another (``(P @ V) @ Vᵀ`` with as many keys as head dims) is a chain, and renaming
        # would merge two different axes.
        first, *rest = sorted(nested, key=lambda v: v.uid)
        chained = any(r.var in nested and contains(r.arg, lambda y, r=r: isinstance(y, Reduce) and y.var in nested
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
    row, value_dims = rows_and_value_dims(out, j, out_set)
    if row is None:
        # no query axis (a decode step written with q [H, D]): a row axis of extent 1
        program, row = add_row_axis(program, out, j, value_dims, tile_vars)
        out = program.output
        got, _ = rows_and_value_dims(out, j, out_set | {row})
        if got is not row:
            raise Unsupported("program", "the output has no query-row axis, and the scores do not vary along "
                              "the one given to them")
    tile_vars += [v for v in value_dims if v not in tile_vars]
    for v in value_dims:
        if not isinstance(v.extent, int) or v.extent > MAX_TILE_EXTENT:
            raise Unsupported(v.name, f"value head dim of extent {v.extent} is too large for one tile")
    grid = [v for v in out_vars if v is not row and v not in value_dims]
    return KernelPlan(program=program, grid_vars=grid, row_var=row, loop_var=j, tile_vars=tile_vars, out_node=out)


def rename_bound(root: Node, m: dict[Var, Var]) -> Node:
    """Rename index variables everywhere under ``root`` (alpha-renaming of reduction variables)."""
    sub = {v: IExpr.var(w) for v, w in m.items()}
    return map_indices(root, lambda e: e.subst(sub), lambda v: m.get(v, v))


def rows_and_value_dims(out: Node, j: Var, out_set: set[Var]) -> tuple[Var | None, list[Var]]:
    """The row variable and the value head dims, read off the ``scores × values`` sum over ``j``.
    The row is None where that sum has value head dims but the output no row axis (a decode
    step written without a query axis: ``softmax(k @ q) @ v`` with ``q [D]``)."""
    no_rows: list[Var] | None = None
    for r in walk(out):
        if not (isinstance(r, Reduce) and r.var is j and r.op == "sum"):
            continue
        num, den = mul_factors(r.arg)
        # the value factor is read, not computed by a contraction: try factors without a
        # reduction first (else `sigmoid(scores) * V` would take the scores for the values
        # and the value head dim for the rows)
        for f in sorted(num, key=lambda g: contains(g, lambda y: isinstance(y, Reduce))):
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
            if j in f.vars and value_dims and no_rows is None and any(j in g.vars for g in others):
                no_rows = value_dims  # values times weights over the keys (not a softmax's own sum)
    if no_rows is not None:
        return None, no_rows
    raise Unsupported("program", "no `scores @ V` contraction over the key axis found (the rows and value "
                      "head dim of the output could not be identified)")
