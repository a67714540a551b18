"""The training-mode forward's extra output: per softmax stream, the row's log-sum-exp.

Why: the generated backward (issue 13, ``BACKWARD.md``) recomputes each softmax stream's
probabilities key tile by key tile as ``p = exp(s − LSE(i))`` instead of keeping the N×N
matrix; the forward stores ``LSE`` once per row, fp32, O(rows) memory.

Which normaliser: exactly the denominator the forward divides by, so that ``exp(s − LSE)`` are
the probabilities it used. The key loop keeps the running max ``m`` in log2 units of the score
as the program writes it (``m = max_j s·log2 e``, see :mod:`.scores`) and the tied row sum
``l = Σ_j exp2(s·log2 e − m) = Σ_j exp(s − m·ln 2)``; the denominator ``D`` the epilogue divides
by is ``l`` itself or, with an attention sink, ``l + exp(sink − m·ln 2)`` (the sink's term joins
after the loop). Then ``p = exp(s − m·ln 2) / D = exp(s − (m·ln 2 + ln D))``, so
``LSE = m·ln 2 + ln D``. A fully masked row (``m = −inf``, ``D = 0``) stores −inf. Scores the
kernel clamps (a ``finfo.min`` mask scaled past the float range) are read as clamped, the way
the key loop reads them.

Streams without a running max (sigmoid or ReLU² attention: a plain sum) have no normaliser and
no LSE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flashlight_hf.compiler.codegen.source import LN2
from flashlight_hf.compiler.ir import (Acc, Node, Pointwise, Unsupported, mul_factors, strip_casts,
                                       walk_outside_accs)

if TYPE_CHECKING:
    from flashlight_hf.compiler.codegen.emitter import Emitter


@dataclass(frozen=True)
class SoftmaxStream:
    """One softmax stream of a plan: its max accumulator's index in ``kp.accs`` and the
    denominator node the epilogue divides its numerators by."""

    max_acc: int
    denominator: Node


def _accs_under(x: Node) -> set[int]:
    """The ids of the accumulators ``x`` reads (not looking inside them)."""
    return {id(y) for y in walk_outside_accs(x) if isinstance(y, Acc)}


def softmax_streams(em: "Emitter") -> list[SoftmaxStream]:
    """Every max accumulator with a tied per-row sum, with the denominator it is divided by.

    The denominator is found in the epilogue: a divisor (``a / D``, ``a · reciprocal(D)``) that
    reads this stream's per-row sums (and possibly its max: a sink's ``exp(c − M)``) and no
    other accumulator. Without one, the tied per-row sum itself."""
    kp = em.kp
    streams = []
    post = [x for x in walk_outside_accs(kp.out_node) if isinstance(x, Pointwise)]
    for k, m in enumerate(kp.accs):
        if m.kind != "max":
            continue
        row_sums = [a for a in kp.accs if a.kind == "sum" and a.tied is m and em.layout(a) == (em.i,)]
        if not row_sums:
            continue  # a max that no sum is normalised by: not a softmax stream
        mine = {id(m)} | {id(a) for a in row_sums}
        sums = {id(a) for a in row_sums}
        found: dict = {}
        for x in post:
            num, den = mul_factors(x)
            cands = list(den) + [strip_casts(f).args[0] for f in num
                                 if isinstance(strip_casts(f), Pointwise) and strip_casts(f).op == "reciprocal"]
            for d in cands:
                used = _accs_under(d)
                if used and used <= mine and used & sums:
                    found.setdefault(em.skey(d), d)
        if len(found) > 1:
            raise Unsupported("training", f"softmax stream acc{k} is divided by {len(found)} different "
                              "denominators: no one log-sum-exp")
        den = next(iter(found.values())) if found else row_sums[0]
        if em.layout(den) != (em.i,):
            raise Unsupported("training", f"softmax stream acc{k}'s denominator is not one value per row")
        streams.append(SoftmaxStream(k, den))
    return streams


def lse_stores(em: "Emitter", streams: list[SoftmaxStream]) -> None:
    """After the epilogue: ``LSE = m·ln 2 + log(D)`` per stream, stored at
    ``lse{n}_ptr + Σ_g off_g·stride + offs_m·stride`` (masked to the rows in range)."""
    if not streams:
        return
    em.phase = "post"
    em.emit("")
    em.emit("# training mode: per softmax stream the row's log-sum-exp (natural log, fp32) for the backward:")
    em.emit("# p = exp(s - lse) with s the score as the program writes it; -inf for a fully masked row")
    for n, st in enumerate(streams):
        den = em.f32(st.denominator, (em.i,))
        em.emit(f"lse{n} = acc{st.max_acc} * {LN2!r} + tl.log({den})  # max (log2 units -> natural) + log(denominator)")
        terms = [f"{em.nm.offs[g]} * {lse_stride(em, n, em.nm.letter[g])}" for g in em.kp.grid_vars]
        terms.append(f"offs_m * {lse_stride(em, n, 'm')}")
        em.emit(f"tl.store(lse{n}_ptr + {' + '.join(terms)}, lse{n}, mask=mask_m)")


def lse_stride(em: "Emitter", n: int, letter: str) -> str:
    """The name of LSE tensor ``n``'s stride along the axis of role ``letter`` (grid letters, ``m``)."""
    return f"stride_lse{n}_{letter}"


def lse_parameters(em: "Emitter", count: int) -> list[str]:
    """The LSE tensors' parameters: per tensor its pointer, then a stride per grid variable and rows."""
    params = []
    for n in range(count):
        params.append(f"lse{n}_ptr")
        params += [lse_stride(em, n, em.nm.letter[g]) for g in em.kp.grid_vars]
        params.append(lse_stride(em, n, "m"))
    return params
