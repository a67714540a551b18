"""What codegen hands the runtime for the generated backward: each kernel's source and launch
contract (:class:`BackwardSource`), each gradient buffer (:class:`StoreInfo`), and the whole
(:class:`BackwardInfo`). Its own module so the runtime reads the contract without the emitter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from flashlight_hf.compiler.ir import Acc, Adjoint, Load, Node, Var
from flashlight_hf.compiler.rewrite.backward import BackwardPlan


@dataclass
class BackwardSource:
    """One backward kernel's source and its launch contract. Parameters, in order: each input
    in ``input_args`` (pointer, one stride per axis); per stream in ``streams`` the pointers of
    its stored running max and log2-denominator ``[grid..., rows]`` (fp32, one set of strides
    for both: per grid variable, rows); per contraction the pointer and strides of its ``dA``
    ``[grid..., rows(, width)]``; per store in ``stores`` (indices into the plan's stores) the
    pointer and strides of its buffer ``[grid..., rows or keys, head dims...]``; the run-time
    sizes; BLOCK_M, BLOCK_N."""

    name: str
    side: str                 # "key": dK/dV (a program per key tile); "row": dQ
    source: str
    input_args: list[int]
    runtime_sizes: list[Any]
    grid_extents: list[Any]
    row_extent: Any
    loop_extent: Any
    streams: list[int]
    dacc_ranks: list[int]     # per contraction: 1 ([grid, rows]) or 2 ([grid, rows, width])
    stores: list[int]
    store_ranks: list[int] = field(default_factory=list)
    dropout: bool = False  # takes dropout_seed, dropout_p (before the sizes)
    # (variable, G): a program per key head of a GQA group, looping over its G query heads (the
    # grid is G times smaller along the variable; G None: the variable's whole extent)
    group: tuple[Var, int | None] | None = None
    # walks a block table (codegen/block_table.py): takes the table's pointer and a per grid
    # point int8 flag "a row here every mask drops" (dead_ptr) before dropout
    table: bool = False


@dataclass
class StoreInfo:
    """One gradient buffer: the load it belongs to and the variables of its axes, in order
    (grid variables, then rows or keys, then head dims)."""

    buffer: int
    side: str
    load: Load
    variables: list[Var]
    kind: str = ""  # see GradStore.kind; "scalar": one more axis, the key tiles (partials)
    # (variable, G): the buffer's axis of that grid variable is its head group's index (extent
    # divided by G; G None: one group, extent 1): accumulated over the group's query heads
    group: tuple[Var, int | None] | None = None


@dataclass
class TermInfo:
    """A term of the scores over keys or rows alone (a key gate's ``k @ w``, see
    :class:`~flashlight_hf.compiler.rewrite.backward.TermStore`): the kernels store its adjoint
    into buffer ``buffer`` over ``variables`` (the grid variables, then the keys or the rows;
    "scalar" ``kind``: one more axis, the key tiles' partials);
    per float load under the term, ``chains`` holds where the load's gradient lands (a
    :class:`StoreInfo` over the grid, the keys or rows and the term's head dim, folded like a
    kernel's buffer) and its expression over ``seed``, which stands for the buffer."""

    buffer: int
    kind: str
    seed: Adjoint
    variables: list[Var]
    chains: list[tuple[StoreInfo, Node]]


@dataclass
class BackwardInfo:
    """Everything the runtime needs to run the generated backward of one program."""

    kernels: list[BackwardSource]
    epilogue: Node                    # the plan's output expression over the accumulators
    accs: list[Acc]                   # the plan's accumulators (the epilogue's leaves)
    contraction_accs: list[int]       # per contraction (dA parameter order), its accumulator
    identity: bool                    # out = numerator / row sum: dA from the output itself
    stores: list[StoreInfo]
    no_grad: dict[int, tuple[str, str]]
    grid_vars: list[Var]
    row_var: Var
    loop_var: Var
    tile_vars: list[Var]
    # per contraction (dA parameter order): the dtype its dA is handed to the kernels in. A wide
    # dA (rows × value columns) is only ever a ``tl.dot`` operand against its values side, which
    # rounds it to the values' 16-bit dtype: the preprocess stores it so (half the bytes every
    # query tile loads, half the shared memory its pipeline holds); per-row dAs stay fp32
    dacc_dtypes: list[torch.dtype] = field(default_factory=list)
    # the block-table kernel the kernels' tiles come from (a KernelSource), where they walk one
    table: Any = None
    terms: list[TermInfo] = field(default_factory=list)

    def reached(self) -> set[int]:
        """The inputs the backward gives a gradient through the kernels' buffers (a load's own,
        or a term's carried to the loads under it)."""
        return {st.load.input for st in self.stores} | {st.load.input for t in self.terms for st, _ in t.chains}


def describe(bp: BackwardPlan, kernels: list[BackwardSource], identity: bool) -> BackwardInfo:
    """The contract of a plan's backward kernels with the runtime."""
    kp = bp.kp
    stores = []
    for st in bp.stores:
        if st.kind:
            local = {"element": [kp.row_var, kp.loop_var], "key": [kp.loop_var], "row": [kp.row_var],
                     "scalar": []}[st.kind]
            stores.append(StoreInfo(st.buffer, st.side, st.load, [*kp.grid_vars, *local], st.kind))
            continue
        side_var = kp.row_var if st.side == "row" else kp.loop_var
        heads = [v for v in kp.tile_vars if v in st.load.vars]
        group = (bp.group.var, bp.group.size) if bp.grouped(st) else None
        stores.append(StoreInfo(st.buffer, st.side, st.load, [*kp.grid_vars, side_var, *heads], group=group))
    terms = []
    for tm in bp.terms:
        along = {"key": [kp.loop_var], "row": [kp.row_var], "scalar": []}[tm.kind]
        axes = [*kp.grid_vars, *along, tm.node.var]
        chains = [(StoreInfo(tm.buffer, tm.side, ld, axes), e) for ld, e in tm.chains]
        terms.append(TermInfo(tm.buffer, tm.kind, tm.seed, [*kp.grid_vars, *along], chains))
    half = (torch.float16, torch.bfloat16)
    dacc_dtypes = [c.values.dtype if c.values is not None and c.values.dtype in half else torch.float32
                   for c in bp.contractions]
    return BackwardInfo(kernels, kp.out_node, list(kp.accs), [c.acc for c in bp.contractions], identity, stores,
                        dict(bp.no_grad), list(kp.grid_vars), kp.row_var, kp.loop_var, list(kp.tile_vars),
                        dacc_dtypes, terms=terms)


