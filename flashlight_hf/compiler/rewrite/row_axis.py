"""A row axis of extent 1 for programs whose output has none: decode written without a query axis.

Why: the kernels tile query rows (a row tile of at least 16 rows is the first operand of the
scores' ``tl.dot`` and of ``P·V``), so every plan needs a row variable. A decode reference
written with ``q`` of shape ``[H, D]`` (``einsum('hd,hsd->hs', q, k)``, ``k @ q[..., None]``,
``mv``, a 1-D ``q`` against ``[S, D]`` keys) has none: its output ``[H, D]`` holds one row per
grid point. Such a program computes what the same program with a query axis of extent 1
(``q[:, None]``) computes, and that is what this rewrite makes of it: a new variable ``row`` of
extent 1 (its only value is 0),

* read by every query-side load of the scores — a load under a key reduction that varies along
  a contracted head dim but not along the keys: ``q[h, d]`` becomes ``q[h, row·D + d]``, the
  same element (the address of ``q`` viewed as ``[H, 1, D]``), so the scores, the probabilities
  and the ``P·V`` accumulator vary along the row as in a one-query decode step;
* written as a digit of extent 1 in the output axis that holds the value head dim (``[(row, 1),
  (e, D)]``): the output keeps its shape and strides.

The row tile then holds one real row (the masked 16-row decode tiles), and everything
downstream — online softmax, split-KV, the training forward and the generated backward — is the
one-query program's. Where no load can carry the row (scores computed from the keys alone), the
program falls back and says so.
"""

from __future__ import annotations

from dataclasses import replace

from flashlight_hf.compiler.ir import Axis, IExpr, Load, Node, Program, Reduce, Unsupported, Var, map_indices, walk

ROW_NAME = "row"


def add_row_axis(program: Program, out: Node, j: Var, value_dims: list[Var],
                 contracted: list[Var]) -> tuple[Program, Var]:
    """``program`` with a synthetic row variable of extent 1 read by its query-side loads and
    written in its output axes (see the module docstring); returns it and the new variable.
    ``out``: the program's output (key streams already renamed onto ``j``); ``contracted``: the
    head dims the scores sum over."""
    row = Var(ROW_NAME, 1)
    targets = _query_loads(out, j, set(contracted))
    if not targets:
        raise Unsupported("program", "the output has no query-row axis, and nothing under the key reduction varies "
                          "along a contracted head dim without varying along the keys (a query) to stand for "
                          "one row")

    def on_load(old: Load, new: Load) -> Load:
        if id(old) not in targets:
            return new
        return _read_by_row(new, row, program.input_shapes[new.input], set(contracted))

    rewritten = map_indices(out, lambda e: e, lambda v: v, on_load)
    return replace(program, output=rewritten, out_axes=_row_digit(program.out_axes, row, value_dims)), row


def _query_loads(out: Node, j: Var, contracted: set[Var]) -> set[int]:
    """The ids of the loads under a key reduction that vary along a contracted head dim (in an
    index expression, not a gather) and not along the keys: what the query rows would read."""
    found: set[int] = set()
    for r in walk(out):
        if not (isinstance(r, Reduce) and r.var is j):
            continue
        for x in walk(r.arg):
            if isinstance(x, Load) and j not in x.vars and _row_axis(x, contracted) is not None:
                found.add(id(x))
    return found


def _row_axis(load: Load, contracted: set[Var]) -> int | None:
    """The first axis of ``load`` indexed by an expression over a contracted head dim."""
    for a, e in enumerate(load.index):
        if isinstance(e, IExpr) and e.vars() & contracted:
            return a
    return None


def _read_by_row(load: Load, row: Var, shape: tuple, contracted: set[Var]) -> Load:
    """``load`` with ``row`` as the leading digit of its head-dim axis: ``x -> row·n + x`` where
    ``n`` is that axis's size. ``row`` is always 0, so the element read is the same."""
    a = _row_axis(load, contracted)
    assert a is not None  # _query_loads kept only such loads
    digit = IExpr("mul", (IExpr.var(row), IExpr.const(shape[a])))
    index = list(load.index)
    index[a] = IExpr("add", (digit, index[a]))
    return Load(load.dtype, load.input, tuple(index))


def _row_digit(out_axes: list[Axis], row: Var, value_dims: list[Var]) -> list[Axis]:
    """The output axes with ``(row, 1)`` before the first value head dim's factor."""
    axes = [list(ax) for ax in out_axes]
    for ax in axes:
        for k, (v, _) in enumerate(ax):
            if v in value_dims:
                ax.insert(k, (row, 1))
                return axes
    raise Unsupported("output", "no output axis holds the value head dim")  # value dims are output variables


__all__ = ["ROW_NAME", "add_row_axis"]
