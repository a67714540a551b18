"""The loop nests: one function per kernel a plan yields.

``single_kernel``: one program per row tile, the whole key axis. The split-KV kernels serve
decoding, where a few query rows meet a long KV cache and one program per row tile would leave
most of the GPU idle: ``split_kernel`` reduces a share of the key axis per program and stores
its accumulators as partials; ``combine_kernel`` merges the partials with their log-sum-exp
rescaling, then runs the epilogue; ``split_fused_kernel`` does both in one launch (the program
that finishes its row tile's shares last, counted through a per-tile atomic ticket, combines).
``training_kernel`` is the single launch that also stores each softmax stream's per-row
log-sum-exp (:mod:`.lse`), the first kernel of the generated backward (not yet used by autograd).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from flashlight_hf.compiler.abi import (BLOCK_M, BLOCK_N, KERNEL_COMBINE, KERNEL_SINGLE, KERNEL_SPLIT,
                                        KERNEL_SPLIT_FUSED, KERNEL_TRAIN, NUM_SPLITS)
from flashlight_hf.compiler.codegen.block_table import table_loops, table_plan
from flashlight_hf.compiler.codegen.bounds import emit_key_range, work_rises_with_row
from flashlight_hf.compiler.codegen.emitter import Emitter, atom, has_running_max
from flashlight_hf.compiler.codegen.keyloop import InnerHelper, running_max
from flashlight_hf.compiler.codegen.lse import lse_stores, softmax_streams
from flashlight_hf.compiler.codegen.scores import scaled
from flashlight_hf.compiler.codegen.signature import assemble
from flashlight_hf.compiler.codegen.source import LOG2E, KernelSource
from flashlight_hf.compiler.ir import Acc, Const, IExpr, RunningMax, Unsupported, walk
from flashlight_hf.compiler.rewrite import KernelPlan


@dataclass(frozen=True)
class Options:
    """How to generate: for the interpreter or a GPU, TF32 dots, warp-specialised interior loop,
    and the program's argument names where the driver knows them (per program input)."""

    interpret: bool
    allow_tf32: bool = False
    warp_specialize: bool = False
    input_names: Sequence[str | None] | None = None


def _emitter(kp: KernelPlan, opt: Options) -> Emitter:
    return Emitter(kp, opt.interpret, opt.allow_tf32, opt.input_names)


def _whole_key_axis(kp: KernelPlan, opt: Options) -> Emitter:
    """The body of a single-launch kernel: every key of a row tile, then the output stored.
    Data-dependent masks: the key tiles come from a block table (:mod:`.block_table`)."""
    table = bool(kp.block_table)
    em = _emitter(table_plan(kp) if table else kp, opt)
    em.table = table
    coordinates(em, split=False, partials=False)
    _acc_init(em)
    _key_loops(em, opt, split=False)
    _epilogue_store(em)
    return em


def _key_share(kp: KernelPlan, opt: Options) -> Emitter:
    """The body of a split-KV kernel: one share of the keys, its accumulators stored as partials."""
    em = _emitter(kp, opt)
    coordinates(em, split=True, partials=True)
    _acc_init(em)
    _key_loops(em, opt, split=True)
    _partial_stores(em)
    return em


def single_kernel(kp: KernelPlan, opt: Options) -> KernelSource:
    return assemble(_whole_key_axis(kp, opt), KERNEL_SINGLE, "single", partials=False, with_out=True)


def training_kernel(kp: KernelPlan, opt: Options) -> KernelSource:
    """The single launch plus, per softmax stream, a store of the row's log-sum-exp."""
    em = _whole_key_axis(kp, opt)
    streams = softmax_streams(em)
    lse_stores(em, streams)
    src = assemble(em, KERNEL_TRAIN, "train", partials=False, with_out=True, lse=len(streams))
    src.lse_accs = [st.max_acc for st in streams]
    src.train_accs = list(em.train_accs)
    src.dropout = em.uses_dropout
    return src


def split_kernel(kp: KernelPlan, opt: Options) -> KernelSource:
    return assemble(_key_share(kp, opt), KERNEL_SPLIT, "split", partials=True, with_out=False)


def combine_kernel(kp: KernelPlan, opt: Options) -> KernelSource:
    em = _emitter(kp, opt)
    coordinates(em, split=False, partials=True)
    _acc_init(em)
    _combine(em)
    _epilogue_store(em)
    return assemble(em, KERNEL_COMBINE, "combine", partials=True, with_out=True)


def split_fused_kernel(kp: KernelPlan, opt: Options) -> KernelSource:
    em = _key_share(kp, opt)
    em.emit("")
    em.emit("# the program that stores its row tile's last share merges them all (no combine launch):")
    em.emit("# every thread's stores are issued before the ticket, released with it at GPU scope")
    em.emit("tl.debug_barrier()")
    em.emit("ticket_ptr = count_ptr + grid_lin * n_row_tiles + tile_m")
    em.emit('ticket = tl.atomic_add(ticket_ptr, 1, sem="acq_rel", scope="gpu")')
    em.emit("tl.debug_barrier()  # the acquire is ordered before every thread's loads of the partials")
    em.emit(f"if ticket == {NUM_SPLITS} - 1:")
    em.indent += 1
    em.emit("tl.atomic_xchg(ticket_ptr, 0)  # the counter is ready for the next launch")
    _acc_init(em)
    _combine(em, cache_modifier='cache_modifier=".cg", ')
    _epilogue_store(em)
    return assemble(em, KERNEL_SPLIT_FUSED, "fused", partials=True, with_out=True)


def coordinates(em: Emitter, *, split: bool, partials: bool) -> None:
    """The program's row tile and grid point, the row offsets and the head-dim tiles."""
    kp, i = em.kp, em.i
    em.emit("# program coordinates: one program per (row tile, grid point)")
    em.emit("pid = tl.program_id(0)")
    if split:
        em.emit(f"split = pid % {NUM_SPLITS}  # which share of the key axis this program reduces")
        em.emit(f"pid = pid // {NUM_SPLITS}")
    em.emit(f"n_row_tiles = tl.cdiv({em.size(i.extent)}, {BLOCK_M})")
    if not split and not partials and work_rises_with_row(kp):
        em.emit("tile_m = n_row_tiles - 1 - pid % n_row_tiles  # the longest row tiles (most keys) first")
    else:
        em.emit("tile_m = pid % n_row_tiles")
    if kp.grid_vars or partials:
        em.emit("rest = pid // n_row_tiles")
    if partials:
        em.emit("grid_lin = rest  # the grid point as one number: its block of the partials")
    for n, g in enumerate(reversed(kp.grid_vars)):
        em.emit(f"{em.nm.offs[g]} = rest % {em.size(g.extent)}")
        if n < len(kp.grid_vars) - 1:  # the outermost coordinate is the last: no rest after it
            em.emit(f"rest = rest // {em.size(g.extent)}")
    em.emit(f"offs_m = tile_m * {BLOCK_M} + tl.arange(0, {BLOCK_M})")
    em.emit(f"mask_m = offs_m < {em.size(i.extent)}")
    for v in kp.tile_vars:
        em.emit(f"{em.nm.offs[v]} = tl.arange(0, {em.pads[v.name]})")
        if em.pads[v.name] != v.extent:  # a padded head-dim tile: its columns past the extent masked
            em.emit(f"{em.mask_name(v)} = {em.nm.offs[v]} < {v.extent}")


def _acc_init(em: Emitter) -> None:
    """Each accumulator's starting value: −inf for a running max (or its key-independent floor),
    0 for a sum."""
    if em.lines and em.lines[-1]:
        em.emit("")
    em.emit("# loop-carried state: one accumulator per key reduction (online softmax state per stream)")
    for k, a in enumerate(em.kp.accs):
        lay = em.layout(a)
        shape = ", ".join(BLOCK_M if v is em.i else str(em.pads[v.name]) for v in lay)
        init = 'float("-inf")' if a.kind == "max" else "0.0"
        em.emit(f"acc{k} = tl.full([{shape}], {init}, tl.float32)  # {a.kind} over {em.label(em.j)}")
        if a.init is not None:
            start = scaled(em, a.init, LOG2E, lay)
            em.emit(f"acc{k} = tl.maximum(acc{k}, {start})  # the max starts from a key-independent value "
                    "(a sink or a floor), log2 units")


def _key_loops(em: Emitter, opt: Options, *, split: bool) -> None:
    """Key-independent values, the key range, and its three loops over the key-tile helper."""
    j = em.j
    em.emit("")
    em.emit("# key-independent values the loop uses, computed once")
    for a in em.kp.accs:
        for x in walk(a.body):
            if j not in x.vars and not has_running_max(x) and not isinstance(x, (Const, RunningMax, Acc)):
                em.node(x)
    em.emit("")
    if em.table:
        em.helper = InnerHelper(em)
        table_loops(em, em.helper, key_major=False, warp_specialize=opt.warp_specialize)
        em.phase = "post"
        return
    emit_key_range(em, split)
    em.helper = helper = InnerHelper(em)
    for start, end, interior, what in (("key_lo", "interior_lo", False, "boundary tiles before the interior"),
                                       ("interior_lo", "interior_hi", True, "interior tiles: no masks evaluated"),
                                       ("interior_hi", "key_hi", False, "boundary tiles after the interior")):
        em.emit("")
        em.emit(f"# {what}")
        if interior and opt.warp_specialize:  # producer/consumer warps (FLASHLIGHT_WARP_SPECIALIZE=1)
            em.emit(f"for start_n in tl.range({start}, {end}, {BLOCK_N}, warp_specialize=True):")
        else:
            em.emit(f"for start_n in range({start}, {end}, {BLOCK_N}):")
        em.lines += helper.call(not interior, "    " * (em.indent + 1))
    em.phase = "post"


def _partial_ptr(em: Emitter, k: int, split: str) -> tuple[str, str]:
    """Address and mask of accumulator ``k``'s partials: a ``[NUM_SPLITS, grid, rows, width]`` block."""
    lay = em.layout(em.kp.accs[k])
    if not lay or lay[0] is not em.i or len(lay) > 2:
        raise Unsupported("split", "an accumulator that is not per row (or per row and value column)")
    rows = em.size(em.i.extent)
    if len(lay) == 1:
        return f"part{k}_ptr + ({split} * n_grid + grid_lin) * {rows} + offs_m", "mask_m"
    w = em.pads[lay[1].name]
    return (f"part{k}_ptr + (({split} * n_grid + grid_lin) * {rows} + offs_m[:, None]) * {w} + "
            f"{em.nm.offs[lay[1]]}[None, :]", "mask_m[:, None]")


def _partial_stores(em: Emitter) -> None:
    em.phase = "post"
    em.emit("")
    em.emit("# this share's accumulators (max in log2 units, sums against that max) for the combine kernel")
    for k in range(len(em.kp.accs)):
        ptr, mask = _partial_ptr(em, k, "split")
        em.emit(f"tl.store({ptr}, acc{k}, mask={mask})")


def _combine(em: Emitter, cache_modifier: str = "") -> None:
    """Merge the shares: the running max over shares, each sum rescaled to it (log-sum-exp).
    ``cache_modifier``: in the fused kernel the partials were written by other programs, so
    they are read past the (non-coherent) L1 cache."""
    accs = em.kp.accs
    em.emit("")
    em.emit("# merge the shares of the key axis, as the key loop merges tiles")
    em.emit(f"for s in range(0, {NUM_SPLITS}):")
    em.indent += 1
    for k, a in enumerate(accs):
        if a.kind != "max":
            continue
        ptr, mask = _partial_ptr(em, k, "s")
        em.emit(f"m_part{k} = tl.load({ptr}, mask={mask}, other=float(\"-inf\"), {cache_modifier})".replace(", )", ")"))
        running_max(em, k, f"m_part{k}")
        em.emit(f"beta{k} = tl.exp2(m_part{k} - m_safe_acc{k})  # this share's sums, to the merged max")
    for k, a in enumerate(accs):
        if a.kind != "sum":
            continue
        ptr, mask = _partial_ptr(em, k, "s")
        em.emit(f"part{k} = tl.load({ptr}, mask={mask}, other=0.0, {cache_modifier})".replace(", )", ")"))
        if a.tied is None:
            em.emit(f"acc{k} = acc{k} + part{k}")
        else:
            kt = accs.index(a.tied)
            sfx = "[:, None]" if len(em.layout(a)) > 1 else ""
            em.emit(f"acc{k} = acc{k} * alpha{kt}{sfx} + part{k} * beta{kt}{sfx}")
    for k, a in enumerate(accs):
        if a.kind == "max":
            em.emit(f"acc{k} = m_new_acc{k}")
    em.indent -= 1
    em.phase = "post"


def _epilogue_store(em: Emitter) -> None:
    """Everything after the last key reduction, then the output tile's store."""
    kp, i = em.kp, em.i
    out_lay = em.layout(kp.out_node)
    em.emit("")
    em.emit("# epilogue: everything after the last key reduction")
    out = em.value(kp.out_node, out_lay)
    terms = []
    for d, ax in enumerate(kp.program.out_axes):
        vs = [v for v, e in ax if v is not None]
        if not vs:
            continue
        # a merged axis (e.g. [Hk, G] -> H) is a mixed-radix number of its variables
        idx: IExpr | None = None
        for v, e in ax:
            if v is None:
                raise Unsupported("output", "an output axis that is broadcast in part")
            idx = IExpr.var(v) if idx is None else IExpr("add", (IExpr("mul", (idx, IExpr.const(e))), IExpr.var(v)))
        text = em.iexpr(idx, out_lay)
        terms.append(f"{atom(text)} * {em.nm.out_stride(d)}")
    missing = [v for v in (i, *[t for t in kp.tile_vars if t in kp.out_node.vars]) if v not in out_lay]
    if missing:
        raise Unsupported("output", f"the output does not vary along {missing}")
    mask = em.bounds_mask(out_lay)
    em.emit(f"tl.store(out_ptr + {' + '.join(terms)}, {out}.to(out_ptr.dtype.element_ty), mask={mask})")
