"""A score term over keys or rows alone, from its adjoint down to the inputs it reads.

Why after the kernels: a key gate's ``t(j) = Σ_d k[j, d]·w[d]`` is one number per key. The
dK/dV kernel sums its adjoint ``Σ_i dS ∘ ∂S/∂t`` over the rows it loops over and stores it per
key (:class:`~flashlight_hf.compiler.codegen.backward_info.TermInfo`); what remains is the chain
rule through ``Σ_d a(j, d)``, elementwise in ``(j, d)`` — O(keys × head dim), the size of the
loads themselves, against the kernels' O(rows × keys). Each load's gradient expression (derived
by the rewrite stage) is evaluated densely with torch over the grid, the keys (rows) and ``d``,
and folded into the input's gradient like a kernel's buffer. No autograd (this runs inside the
backward's custom op), no scatter where the loads are views: the same bits on every run.
"""

from __future__ import annotations

from typing import Sequence

import torch

from flashlight_hf.compiler.codegen.backward_info import TermInfo
from flashlight_hf.compiler.ir.evaluate import Evaluator
from flashlight_hf.compiler.runtime.backward_fold import fold


def term_gradients(term: TermInfo, buffer: torch.Tensor, inputs: Sequence[torch.Tensor], ext: dict, syms: dict,
                   wanted: Sequence[bool]) -> list[tuple[int, torch.Tensor]]:
    """(input, its gradient through ``term``) per float load under the term whose input wants
    one; ``buffer``: the term's adjoint the kernels stored, over ``term.variables``."""
    out: list[tuple[int, torch.Tensor]] = []
    chains = [(st, e) for st, e in term.chains if wanted[st.load.input]]
    if not chains:
        return out
    axes = chains[0][0].variables  # every chain's: the grid, the keys or rows, the term's head dim
    if term.kind == "scalar":
        buffer = buffer.sum(-1)  # the key tiles' partials, in a fixed order
    seed = buffer.reshape([ext[v] if v in term.variables else 1 for v in axes])
    ev = Evaluator(axes, inputs, dtype=torch.float32, sizes=syms, given={id(term.seed): seed},
                   device=buffer.device)
    shape = [ext[v] for v in axes]
    for st, expr in chains:
        dense = ev(expr).expand(shape)  # constant along an axis it does not read: fold sums it
        k = st.load.input
        out.append((k, fold(st, dense, inputs[k], ext, syms, inputs)))
    return out


__all__ = ["term_gradients"]
