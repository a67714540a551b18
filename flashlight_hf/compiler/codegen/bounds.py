"""The key range a row tile visits: block sparsity from the masks, and the interior tiles.

``rewrite`` derives bounds from the masks: ``("lo", alts)`` says keys below ``min(a·i + c)``
are masked for row ``i``, ``("hi", alts)`` keys above ``max(a·i + c)``. A row tile visits the
keys ``[key_lo, key_hi)`` its rows may keep; inside ``[interior_lo, interior_hi)`` every key is
in range and kept by every analysed mask, so those tiles evaluate neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sympy

from flashlight_hf.compiler.abi import BLOCK_M, BLOCK_N, NUM_SPLITS
from flashlight_hf.compiler.ir import RuntimeOffset

if TYPE_CHECKING:
    from flashlight_hf.compiler.codegen.emitter import Emitter


def _plus(parts: list[str], const: int) -> str:
    """``parts`` summed, plus an integer constant, with no ``+ 0``."""
    text = " + ".join(p for p in parts if p)
    if const == 0:
        return text or "0"
    if not text:
        return str(const)
    return f"{text} + {const}" if const > 0 else f"{text} - {-const}"


def _integer(c: Any) -> int | None:
    if isinstance(c, int) and not isinstance(c, bool):
        return c
    if isinstance(c, sympy.Expr) and c.is_Integer:
        return int(c)
    return None


def offset_text(em: "Emitter", c: Any) -> str:
    """A bound's constant that is not an integer: a size expression, or one with run-time terms."""
    if isinstance(c, RuntimeOffset):
        k = _integer(c.const)
        parts = [] if k is not None else [offset_text(em, c.const)]
        parts += [em.value(node) if coef == 1 else f"{coef} * {em.value(node)}" for node, coef in c.terms]
        return "(" + _plus(parts, k or 0) + ")"
    return em.size(c)


def _bound(em: "Emitter", kind: str, alts: tuple, row: str, plus_one: bool) -> str:
    """One bound's key index for ``row`` (plus one: an exclusive end): an OR of atoms keeps the
    widest of them."""
    fold_one = plus_one and len(alts) == 1
    terms = []
    for a, c in alts:
        lead = "" if a == 0 else row if a == 1 else f"{row} * {a}"
        k = _integer(c)
        if k is not None:
            terms.append(_plus([lead], k + fold_one))
        else:
            terms.append(_plus([lead, offset_text(em, c)], int(fold_one)))
    fn = "tl.maximum" if kind == "hi" else "tl.minimum"
    out = terms[0]
    for t in terms[1:]:
        out = f"{fn}({out}, {t})"
    return f"{out} + 1" if plus_one and not fold_one else out


def _rising(kp: Any, kind: str) -> bool:
    """Some bound of ``kind`` moves up with the row: every alternative's row coefficient is
    positive (``key_hi = min(...)`` and ``key_lo = max(...)`` then rise with it)."""
    return any(k == kind and all(a > 0 for a, _ in alts) for k, alts in kp.key_bounds)


def work_rises_with_row(kp: Any) -> bool:
    """Later row tiles visit more key tiles (causal, PrefixLM): their key end rises with the
    row and their start does not. Such kernels launch their row tiles last-first, so the
    longest programs start first and the launch does not end on a tail of long programs."""
    return _rising(kp, "hi") and not _rising(kp, "lo")


def work_falls_with_row(kp: Any) -> bool:
    """Later row tiles visit fewer key tiles (a mask keeping keys at or after the row): the
    dK/dV kernel, whose work per key tile is the opposite, then launches its key tiles last-first."""
    return _rising(kp, "lo") and not _rising(kp, "hi")


def emit_key_range(em: "Emitter", split: bool) -> None:
    """``key_lo``, ``key_hi``, ``interior_lo``, ``interior_hi`` (and, split-KV, narrowed to this
    program's share of the keys)."""
    kp, i, j = em.kp, em.i, em.j
    sk = em.size(j.extent)
    bounds = {"lo": [alts for k, alts in kp.key_bounds if k == "lo"],
              "hi": [alts for k, alts in kp.key_bounds if k == "hi"]}

    def fold(name: str, start: str, kind: str, row: str, note: str = "") -> None:
        """``name`` narrowed by every bound of one kind, evaluated at ``row``."""
        fn = "maximum" if kind == "lo" else "minimum"
        cur = start
        for alts in bounds[kind]:
            em.emit(f"{name} = tl.{fn}({cur}, {_bound(em, kind, alts, row, kind == 'hi')}){note}")
            cur = name
        if cur == start:
            em.emit(f"{name} = {start}")

    em.emit("# key tiles this row tile touches (block sparsity derived from the masks), and the")
    em.emit("# interior ones where every key is in range and every analysed mask keeps it")
    if kp.key_bounds:
        em.emit(f"row_lo = tile_m * {BLOCK_M}")
        em.emit(f"row_hi = tl.minimum(tile_m * {BLOCK_M} + {BLOCK_M}, {em.size(i.extent)}) - 1")
    if bounds["lo"]:
        fold("key_lo", "0", "lo", "row_lo", "  # keys below are masked for every row")
        em.emit(f"key_lo = (key_lo // {BLOCK_N}) * {BLOCK_N}")
    else:
        em.emit("key_lo = 0")
    fold("key_hi", sk, "hi", "row_hi", "  # keys above are masked for every row")
    if bounds["lo"]:
        fold("interior_lo", "key_lo", "lo", "row_hi")
        em.emit(f"interior_lo = tl.minimum(tl.cdiv(interior_lo, {BLOCK_N}) * {BLOCK_N}, key_hi)")
    else:
        em.emit("interior_lo = tl.minimum(0, key_hi)")
    start = sk
    if bounds["hi"]:
        fold("interior_hi", sk, "hi", "row_lo")
        start = "interior_hi"
    em.emit(f"interior_hi = tl.minimum(tl.maximum(({start} // {BLOCK_N}) * {BLOCK_N}, interior_lo), key_hi)")
    if split:
        em.emit("# this program's share: whole key tiles [split_lo, split_hi)")
        em.emit(f"chunk = tl.cdiv(tl.cdiv({sk}, {NUM_SPLITS}), {BLOCK_N}) * {BLOCK_N}")
        em.emit("split_lo = split * chunk")
        em.emit("key_lo = tl.maximum(key_lo, split_lo)")
        em.emit("key_hi = tl.maximum(tl.minimum(key_hi, split_lo + chunk), key_lo)")
        em.emit("interior_lo = tl.minimum(tl.maximum(interior_lo, key_lo), key_hi)")
        em.emit("interior_hi = tl.minimum(tl.maximum(interior_hi, interior_lo), key_hi)")
