"""The key bounds turned around: which query rows a key tile meets (for the backward's dK/dV).

Why: the forward visits, per row tile, only the key tiles its masks keep
(:func:`~flashlight_hf.compiler.rewrite.mask_bounds.key_bounds`). The generated backward's
dK/dV kernel runs one program per key tile and loops over query tiles, so it needs the inverse
— per key tile, the rows that keep some key of it (tiles outside are never visited) and the
rows that keep every key of it (interior tiles, where the mask arithmetic is skipped) — derived
from the same bounds, so both passes skip the same blocks.

The key bounds are atoms ``("hi", alts)`` — row ``i`` keeps key ``j`` only if
``j <= max(a·i + c over alts)`` — and ``("lo", alts)`` — only if ``j >= min(a·i + c over alts)``,
with ``a`` 0 or 1 (several alternatives come from an OR, PrefixLM's ``j <= i or j < P``).
For a key tile ``[key_lo, key_hi]``:

* a ``hi`` atom lets row ``i`` keep some key of the tile iff some alternative has
  ``a·i + c >= key_lo``: ``i >= key_lo − c`` when ``a = 1``, every row or none when ``a = 0``;
  it keeps every key of the tile under the same condition at ``key_hi``;
* a ``lo`` atom, symmetrically, iff some alternative has ``a·i + c <= key_hi``
  (``i <= key_hi − c``), every key iff it holds at ``key_lo``.

The formulas are written once over an arithmetic (:class:`Arithmetic`) so the same code gives
Python integers (:func:`integers`: the reference the tests check against a dense mask) and
Triton expressions (:func:`triton_expressions`: what the backward's dK/dV kernel will emit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, Sequence, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Arithmetic(Generic[T]):
    """The operations the row-range formulas need, over values of type ``T``."""

    const: Callable[[Any], T]  # a bound's constant ``c`` (an int, or a run-time value) as a T
    sub: Callable[[T, T], T]
    minimum: Callable[[T, T], T]
    maximum: Callable[[T, T], T]
    select: Callable[[T, T, T, T], T]  # select(a, b, yes, no): yes where a >= b, else no
    below: T  # a row index below every row (-1 or less)
    above: T  # a row index above every row


@dataclass(frozen=True)
class RowRange(Generic[T]):
    """Rows ``[visit_lo, visit_hi]`` keep some key of the tile; rows ``[interior_lo,
    interior_hi]`` keep every key of it (both clipped to the rows by the caller)."""

    visit_lo: T
    visit_hi: T
    interior_lo: T
    interior_hi: T


def _first_row(alts: Sequence[tuple[int, Any]], key: T, ar: Arithmetic[T]) -> T:
    """The lowest row some alternative of a ``hi`` atom lets reach ``key``."""
    out: T | None = None
    for a, c in alts:
        if a == 1:
            row = ar.sub(key, ar.const(c))  # a·i + c >= key  <=>  i >= key - c
        else:
            row = ar.select(ar.const(c), key, ar.below, ar.above)  # every row, or none
        out = row if out is None else ar.minimum(out, row)
    return out


def _last_row(alts: Sequence[tuple[int, Any]], key: T, ar: Arithmetic[T]) -> T:
    """The highest row some alternative of a ``lo`` atom lets reach down to ``key``."""
    out: T | None = None
    for a, c in alts:
        if a == 1:
            row = ar.sub(key, ar.const(c))  # a·i + c <= key  <=>  i <= key - c
        else:
            row = ar.select(key, ar.const(c), ar.above, ar.below)  # c <= key: every row
        out = row if out is None else ar.maximum(out, row)
    return out


def row_range(bounds: Sequence[tuple[str, tuple]], key_lo: T, key_hi: T, ar: Arithmetic[T]) -> RowRange[T]:
    """The rows a key tile ``[key_lo, key_hi]`` (inclusive) meets under ``bounds`` (a plan's
    ``key_bounds``), and the rows that keep all of it."""
    visit_lo = interior_lo = ar.below
    visit_hi = interior_hi = ar.above
    for kind, alts in bounds:
        if kind == "hi":
            visit_lo = ar.maximum(visit_lo, _first_row(alts, key_lo, ar))
            interior_lo = ar.maximum(interior_lo, _first_row(alts, key_hi, ar))
        elif kind == "lo":
            visit_hi = ar.minimum(visit_hi, _last_row(alts, key_hi, ar))
            interior_hi = ar.minimum(interior_hi, _last_row(alts, key_lo, ar))
        else:
            raise ValueError(f"unknown key bound kind {kind!r}")
    return RowRange(visit_lo, visit_hi, interior_lo, interior_hi)


def integers(value: Callable[[Any], int] = int, *, rows: int) -> Arithmetic[int]:
    """Python integers: ``value`` turns a bound constant (an int, a size expression, a
    :class:`~flashlight_hf.compiler.ir.RuntimeOffset`) into its value for one call."""
    return Arithmetic(const=value, sub=lambda a, b: a - b, minimum=min, maximum=max,
                      select=lambda a, b, yes, no: yes if a >= b else no, below=-1, above=rows)


def triton_expressions(const: Callable[[Any], str], *, rows: str) -> Arithmetic[str]:
    """Triton source text: each value an expression over scalar integers (``key_lo``,
    ``key_hi``, sizes). ``const`` writes a bound constant (codegen knows how to spell a size
    expression or a run-time offset); ``rows`` is the expression of the row count."""
    return Arithmetic(const=lambda c: f"({const(c)})", sub=lambda a, b: f"({a} - {b})",
                      minimum=lambda a, b: f"tl.minimum({a}, {b})", maximum=lambda a, b: f"tl.maximum({a}, {b})",
                      select=lambda a, b, yes, no: f"tl.where({a} >= {b}, {yes}, {no})",
                      below="-1", above=f"({rows})")
