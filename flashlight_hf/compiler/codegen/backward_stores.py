"""The backward kernels' gradients after their loops: the loop-carried accumulators (zeroed
before the loop), and each load's gradient through its elementwise chain into its buffer, with
the buffer offsets of the grid (a GQA group's index standing for its query heads). Its own
module so :mod:`.backward` reads as the two kernels' structure."""

from __future__ import annotations

from typing import Any

from flashlight_hf.compiler.abi import BLOCK_M, BLOCK_N
from flashlight_hf.compiler.codegen.emitter import Emitter
from flashlight_hf.compiler.ir import Load, Node, Unsupported, Var, walk
from flashlight_hf.compiler.rewrite.backward import BackwardPlan, GradStore, TermStore


def grid_terms(em: Emitter, stride: str, outer: dict[Var, str] | None = None) -> list[str]:
    """Per grid variable its offset times the buffer's stride; ``outer``: variables that stand
    for their head group's index instead (a gradient accumulated over the group)."""
    outer = outer or {}
    return [f"{outer.get(g, em.nm.offs[g])} * {stride}_{em.nm.letter[g]}" for g in em.kp.grid_vars]


def group_size(em: Emitter, group: Any) -> str:
    """How many query heads a program loops over: G, or the variable's whole extent."""
    return str(group.size) if group.size else em.size(group.var.extent)


def groups(em: Emitter, group: Any) -> str:
    """How many head groups the grid holds: the variable's extent over G (1: one group of all)."""
    if not group.size:
        return "1"
    extent = group.var.extent
    static = isinstance(extent, int) or getattr(extent, "is_Integer", False)
    return str(int(extent) // group.size) if static else f"({em.size(extent)} // {group.size})"


def group_outer(em: Emitter, bp: BackwardPlan) -> dict[Var, str]:
    """The head group's variable -> the name of the group's index (the key head)."""
    return {} if bp.group is None else {bp.group.var: em.nm.offs[bp.group.var] + "_group"}



def carried(bp: BackwardPlan, side: str) -> list[tuple[str, Node | None]]:
    """(name, Adjoint) of the loop-carried accumulators of one side's kernel (a captured
    tensor's partial sums: no Adjoint)."""
    if side == "row":
        out: list[tuple[str, Node | None]] = [(f"dq{t}", d.d_row) for t, d in enumerate(bp.dots)]
    else:
        out = [(f"dk{t}", d.d_key) for t, d in enumerate(bp.dots)]
        seen: set[int] = set()
        for n in sorted(bp.value_adjoints):  # one accumulator per dW (streams may share one)
            adj = bp.value_adjoints[n]
            if id(adj) not in seen:
                seen.add(id(adj))
                out.append((adj.what, adj))
    out += [(f"db{st.buffer}", None) for st in bp.buffers(side) if st.kind in ("key", "row", "scalar")]
    return out


def init_carried(em: Emitter, bp: BackwardPlan, side: str, partials: bool | None = None) -> list[str]:
    """Zero the loop-carried gradients (``partials``: only a captured tensor's partial sums
    (True) or only the accumulated adjoints (False); None: all). Returns every carried name."""
    if any(partials is None or partials == (adj is None) for _, adj in carried(bp, side)):
        em.emit("")
        em.emit("# loop-carried gradients, fp32" if partials is None else
                "# a captured tensor's partial gradients, per query head" if partials else
                "# loop-carried gradients, fp32, accumulated over the query heads of the group")
    names = []
    partial_of = {f"db{st.buffer}": st for st in bp.buffers(side)}
    for name, adj in carried(bp, side):
        names.append(name)
        if partials is not None and partials != (adj is None):
            continue
        if adj is None:
            shape = BLOCK_M if side == "row" else BLOCK_N
            em.emit(f"{name} = tl.zeros([{shape}], tl.float32)  # d {label(em, partial_of[name])}, partial sums")
        else:
            lay = em.layout(adj)
            shape = ", ".join(BLOCK_M if v is em.i else BLOCK_N if v is em.j else str(em.pads[v.name]) for v in lay)
            em.emit(f"{name} = tl.zeros([{shape}], tl.float32)")
    return names


def stores(em: Emitter, bp: BackwardPlan, side: str, captured: bool | None = None) -> tuple[list[int], list[int]]:
    """Each load's gradient through its elementwise chain, stored into its buffer (``captured``:
    only a captured tensor's (True) or only the operands' (False); None: all)."""
    em.phase = "post"
    for name, adj in carried(bp, side):
        if adj is not None:
            em.adjoints[adj.what] = name
    if any(captured is None or captured == bool(st.kind) for st in bp.buffers(side)):
        em.emit("")
        em.emit("# each input load's gradient (through its elementwise chain) into its buffer")
    which, ranks = [], []
    outer = group_outer(em, bp)
    for st in bp.buffers(side):
        if captured is not None and captured != bool(st.kind):
            continue
        if st.kind:
            ranks.append(captured_store(em, st))
            which.append(st.buffer)
            continue
        lay = store_layout(em, st)
        val = em.f32(st.expr, lay)
        terms = grid_terms(em, f"stride_g{st.buffer}", outer if bp.grouped(st) else None)
        for k, v in enumerate(lay):
            idx = em.broadcast(em.nm.offs[v], (v,), lay)
            terms.append(f"{idx} * stride_g{st.buffer}_{k}")
        mask = em.bounds_mask(lay)
        what = em.nm.base.get(st.load.input, f"in{st.load.input}")
        em.emit(f"tl.store(g{st.buffer}_ptr + {' + '.join(terms)}, {val}.to(g{st.buffer}_ptr.dtype.element_ty)"
                f"{f', mask={mask}' if mask else ''})  # d {what}")
        which.append(st.buffer)
        ranks.append(len(lay))
    return which, ranks


def label(em: Emitter, st: GradStore | TermStore) -> str:
    """What a buffer holds the gradient of, as the source's comments name it: the input a load
    reads, or a term as its sum and the inputs under it (``the key term Σ_d2(k, w)``)."""
    if isinstance(st, GradStore):
        return em.nm.base.get(st.load.input, f"in{st.load.input}")
    reads = sorted({x.input for x in walk(st.node) if isinstance(x, Load)})
    names = ", ".join(em.nm.base.get(k, f"in{k}") for k in reads)
    return f"the {st.kind} term Σ_{em.label(st.node.var)}({names})"


def captured_store(em: Emitter, st: GradStore | TermStore) -> int:
    """After the loop, a captured tensor's partial gradient (or a term's adjoint) into its
    buffer; returns the buffer's rank past the grid axes (an element-wise buffer was written in
    the tiles)."""
    if st.kind == "element":
        return 2
    terms = grid_terms(em, f"stride_g{st.buffer}")
    what = label(em, st)
    if st.kind == "scalar":
        terms.append(f"tile_n * stride_g{st.buffer}_0")
        em.emit(f"tl.store(g{st.buffer}_ptr + {' + '.join(terms)}, tl.sum(tl.where(mask_n, db{st.buffer}, 0.0), axis=0))  "
                f"# d {what}: this key tile's partial (summed in a fixed order after)")
        return 1
    offs, mask = ("offs_n", "mask_n") if st.kind == "key" else ("offs_m", "mask_m")
    terms.append(f"{offs} * stride_g{st.buffer}_0")
    em.emit(f"tl.store(g{st.buffer}_ptr + {' + '.join(terms)}, db{st.buffer}, mask={mask})  # d {what}")
    return 1


def store_layout(em: Emitter, st: GradStore) -> tuple[Var, ...]:
    lay = em.layout(st.load)
    want = em.i if st.side == "row" else em.j
    if not lay or lay[0] is not want or len(lay) > 2:
        raise Unsupported("backward", f"a load of input {st.load.input} that is not per "
                          f"{'row' if st.side == 'row' else 'key'} and head dim")
    return lay


__all__ = ["grid_terms", "group_size", "groups", "group_outer", "carried", "init_carried", "stores", "captured_store",
           "label", "store_layout"]
