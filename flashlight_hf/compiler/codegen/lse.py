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


def identity_epilogue(em: "Emitter", streams: list[SoftmaxStream]) -> bool:
    """Whether the output is one softmax stream's numerator over its own row sum (through casts):
    then the normalised numerator is the output itself and the training forward stores nothing
    more than the statistics."""
    out = strip_casts(em.kp.out_node)
    if not (isinstance(out, Pointwise) and out.op == "div" and len(streams) == 1):
        return False
    num, den = (strip_casts(a) for a in out.args)
    if not (isinstance(num, Acc) and isinstance(den, Acc)) or den.kind != "sum" or num.kind != "sum":
        return False
    m = em.kp.accs[streams[0].max_acc]
    return num.tied is m and den.tied is m and streams[0].denominator is den and \
        len([a for a in em.kp.accs if a.kind == "sum"]) == 2


def lse_stores(em: "Emitter", streams: list[SoftmaxStream]) -> None:
    """After the epilogue, per stream its running max ``m`` (log2 units, −inf for a row that kept
    nothing) and ``log2(D)`` at ``mx{n}_ptr`` / ``ld{n}_ptr + Σ_g off_g·stride + offs_m·stride``;
    unless the epilogue is the identity (:func:`identity_epilogue`), also every sum accumulator
    normalised by its stream's denominator (``nacc{k}_ptr``: the backward's preprocess
    differentiates the epilogue at those values). Two numbers, not ``m·ln 2 + ln D``: a row whose
    scores all sit at the clamped float minimum has ``s·log2 e − m = 0`` exactly only against
    ``m`` itself."""
    em.phase = "post"
    em.train_accs = []
    if streams:
        em.emit("")
        em.emit("# training mode: per softmax stream the row's running max (log2 units) and log2 of its")
        em.emit("# denominator, for the backward: p = exp2(s * log2(e) - m - log2(D))")
    for n, st in enumerate(streams):
        den = em.f32(st.denominator, (em.i,))
        terms = [f"{em.nm.offs[g]} * {lse_stride(em, n, em.nm.letter[g])}" for g in em.kp.grid_vars]
        terms.append(f"offs_m * {lse_stride(em, n, 'm')}")
        where = " + ".join(terms)
        em.emit(f"tl.store(mx{n}_ptr + {where}, acc{st.max_acc}, mask=mask_m)")
        em.emit(f"tl.store(ld{n}_ptr + {where}, tl.log2({den}), mask=mask_m)")
    if identity_epilogue(em, streams):
        return
    denominators = {st.max_acc: st.denominator for st in streams}
    for k, a in enumerate(em.kp.accs):
        if a.kind != "sum":
            continue
        lay = em.layout(a)
        if not lay or lay[0] is not em.i or len(lay) > 2:
            raise Unsupported("training", f"acc{k} is not per row (or per row and value column)")
        value = f"acc{k}"
        if a.tied is not None:
            kt = em.kp.accs.index(a.tied)
            if kt not in denominators:
                raise Unsupported("training", f"acc{k} is tied to a running max with no denominator")
            den = em.f32(denominators[kt], (em.i,))
            value = f"acc{k} / {den}" if len(lay) == 1 else f"acc{k} / {den}[:, None]"
        terms = [f"{em.nm.offs[g]} * stride_na{k}_{em.nm.letter[g]}" for g in em.kp.grid_vars]
        if len(lay) == 1:
            terms.append(f"offs_m * stride_na{k}_m")
            mask = "mask_m"
        else:
            terms += [f"offs_m[:, None] * stride_na{k}_m", f"{em.nm.offs[lay[1]]}[None, :] * stride_na{k}_d"]
            mask = em.bounds_mask(lay)
        em.emit(f"tl.store(nacc{k}_ptr + {' + '.join(terms)}, {value}, mask={mask})  # acc{k}, normalised")
        em.train_accs.append((k, len(lay), int(lay[1].extent) if len(lay) == 2 else None))


def lse_stride(em: "Emitter", n: int, letter: str) -> str:
    """The name of stream ``n``'s statistics' stride along the axis of role ``letter`` (grid letters, ``m``)."""
    return f"stride_st{n}_{letter}"


def lse_parameters(em: "Emitter", count: int) -> list[str]:
    """The training outputs' parameters: per stream the pointers of its running max and log2
    denominator and their (shared) strides per grid variable and rows; then per normalised
    accumulator its pointer and strides (grid variables, rows, value column)."""
    params = []
    for n in range(count):
        params += [f"mx{n}_ptr", f"ld{n}_ptr"]
        params += [lse_stride(em, n, em.nm.letter[g]) for g in em.kp.grid_vars]
        params.append(lse_stride(em, n, "m"))
    for k, rank, _ in getattr(em, "train_accs", []):
        params.append(f"nacc{k}_ptr")
        params += [f"stride_na{k}_{em.nm.letter[g]}" for g in em.kp.grid_vars] + [f"stride_na{k}_m"]
        if rank == 2:
            params.append(f"stride_na{k}_d")
    return params
