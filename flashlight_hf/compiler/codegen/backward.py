"""The generated backward's kernels, from a :class:`~flashlight_hf.compiler.rewrite.backward.BackwardPlan`.

``dkdv_kernel``: one program per (key tile, grid point), looping over the query tiles its keys
meet (the masks' bounds turned around, :mod:`~flashlight_hf.compiler.rewrite.query_bounds`):
per tile it recomputes the scores side ``P`` of every contraction from the stored per-row
statistics (``p = exp2(s·log2 e − m − log2 D)``), ``dP = dA·Wᵀ``, the dot products' adjoints
``dX`` from the derivative pass, and accumulates ``dW += Pᵀ·dA`` and ``dK += dXᵀ·Q``.
``dq_kernel``: one program per (row tile, grid point), looping over the forward's key range,
accumulating ``dQ += dX·K``. No atomics: each program owns the rows or keys it stores.

Both kernels are written like the forward: loads that do not change along the loop before it,
one tile of the loop as a ``@triton.jit`` helper that the boundary and interior ranges call
(interior tiles evaluate neither bounds nor the analysed masks), one statement per IR node.
After the loop each gradient goes through its side's elementwise chain (a cast, a scale) and
is stored into an expanded buffer over the load's variables (the runtime folds it into the
input's gradient).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from flashlight_hf.compiler.abi import BLOCK_M, BLOCK_N, KERNEL_BWD_DKDV, KERNEL_BWD_DQ
from flashlight_hf.compiler.codegen.backward_info import BackwardInfo, BackwardSource, StoreInfo, describe
from flashlight_hf.compiler.codegen import backward_stores as after
from flashlight_hf.compiler.codegen.block_table import table_loops, table_plan
from flashlight_hf.compiler.codegen.bounds import emit_key_range, offset_text, work_falls_with_row
from flashlight_hf.compiler.codegen.emitter import Emitter
from flashlight_hf.compiler.codegen.kernels import Options, coordinates
from flashlight_hf.compiler.codegen.keyloop import TileHelper, merged_body, tile_skip_guard
from flashlight_hf.compiler.codegen.source import TL_DTYPE
from flashlight_hf.compiler.ir import (Acc, Adjoint, Const, Load, Node, Pointwise, RunningMax, Unsupported, Var,
                                       walk)
from flashlight_hf.compiler.rewrite.backward import BackwardPlan, GradStore, TermStore
from flashlight_hf.compiler.rewrite.query_bounds import row_range, triton_expressions

DKDV_INNER = "_attn_bwd_dkdv_inner"
DQ_INNER = "_attn_bwd_dq_inner"


def _table(bp: BackwardPlan) -> BackwardPlan:
    """The plan the kernels are generated from: with data-dependent masks, the one that walks a
    block table (:mod:`~flashlight_hf.compiler.codegen.block_table`), as the forward does."""
    return replace(bp, kp=table_plan(bp.kp)) if bp.kp.block_table else bp


def _emitter(bp: BackwardPlan, opt: Options, loop: Var) -> Emitter:
    em = Emitter(bp.kp, opt.interpret, opt.allow_tf32, opt.input_names)
    em.table = bool(bp.kp.block_table)
    em.loop = loop
    if loop is bp.kp.row_var:
        # the dK/dV kernel holds its tiles keys-major ([BLOCK_N, BLOCK_M]): Pᵀ, dPᵀ and dXᵀ come
        # out of the MMAs in the layout dV += Pᵀ·dA and dK += dXᵀ·Q read, with no transposes
        em.rank[em.j], em.rank[em.i] = 0, 1
    em.running_max_in_loop = False  # a running max is the stored statistic of a row
    for k in bp.streams:
        em.normaliser[id(bp.kp.accs[k])] = f"ld_acc{k}"
    _bound_adjoint_masks(em, bp)
    return em


def _bound_adjoint_masks(em: Emitter, bp: BackwardPlan) -> None:
    """The adjoint of an analysed mask ``where(keep, s, −inf)`` is ``where(keep, g, 0)``:
    interior tiles, where the mask keeps everything, read it as ``g``."""
    conds = {}
    for w, kept in bp.kp.bounded_masks:
        if isinstance(w, Pointwise) and w.op == "where":
            pos = 1 if em.skey(w.args[1]) == em.skey(kept) else 2
            conds[em.skey(w.args[0])] = pos
    if not conds:
        return
    for d in bp.dots:
        for x in walk(d.d_dot):
            if isinstance(x, Pointwise) and x.op == "where" and em.skey(x.args[0]) in conds:
                pos = conds[em.skey(x.args[0])]
                zero = x.args[3 - pos]
                if isinstance(zero, Const) and zero.value == 0:
                    em.bounded[em.skey(x)] = x.args[pos]


def _has(x: Node, kinds: tuple) -> bool:
    return any(isinstance(y, kinds) for y in walk(x))


def _hoist(em: Emitter, roots: list[Node], only: Any = None) -> None:
    """Emit every value the tile reads that does not change along the loop, before it
    (``only``: those it holds true for)."""
    for root in roots:
        for x in walk(root):
            if em.loop in x.vars or isinstance(x, (Const, RunningMax, Acc, Adjoint)):
                continue
            if _has(x, (Adjoint, RunningMax, Acc)) or only is not None and not only(x):
                continue
            em.node(x)


def _roots(bp: BackwardPlan) -> list[Node]:
    out: list[Node] = []
    for c in bp.contractions:
        out += [c.scores] + ([c.values] if c.values is not None else [])
    for d in bp.dots:
        out += [d.d_dot, d.row_side, d.key_side]
    return out + [st.expr for st in [*bp.stores, *bp.terms] if st.kind]


def _mma_dtype(em: Emitter, dtype: torch.dtype) -> tuple[str, str]:
    """(operand dtype, precision argument) of a ``tl.dot`` whose tensor side has ``dtype``."""
    if dtype in (torch.float16, torch.bfloat16) and not (em.interpret and dtype == torch.bfloat16):
        return TL_DTYPE[dtype], ""
    prec = ', input_precision="tf32"' if em.allow_tf32 and not em.interpret else ', input_precision="ieee"'
    return "tl.float32", prec


def _dot(em: Emitter, a: str, b: str, dtype: torch.dtype, carried: str | None = None) -> str:
    dt, prec = _mma_dtype(em, dtype)
    acc = f", {carried}" if carried else ""
    return f"tl.dot({a}.to({dt}), {b}.to({dt}){acc}{prec})"


def _stats(em: Emitter, bp: BackwardPlan, masked: bool) -> None:
    """Each softmax stream's stored running max (log2 units) and log2 denominator for the rows."""
    for n, k in enumerate(bp.streams):
        terms = " + ".join(after.grid_terms(em, f"stride_st{n}") + [f"offs_m * stride_st{n}_m"])
        mask = ", mask=mask_m, other=0.0" if masked else ""
        em.emit(f"row_mx{n} = tl.load(mx{n}_ptr + {terms}{mask})  # running max of acc{k}, log2 units")
        em.emit(f"m_safe_acc{k} = tl.where(row_mx{n} == float(\"-inf\"), 0.0, row_mx{n})")
        em.emit(f"ld_acc{k} = tl.load(ld{n}_ptr + {terms}{mask})  # log2 of the row's softmax denominator")


def _dacc(em: Emitter, bp: BackwardPlan) -> None:
    """Each contraction's dA for the rows (the preprocess's output)."""
    for n, c in enumerate(bp.contractions):
        lay = em.layout(c.d_acc)
        terms = after.grid_terms(em, f"stride_da{n}")
        if len(lay) == 1:
            terms.append(f"offs_m * stride_da{n}_m")
        else:
            e = lay[1]
            terms += [f"offs_m[:, None] * stride_da{n}_m", f"{em.nm.offs[e]}[None, :] * stride_da{n}_d"]
        mask = em.bounds_mask(lay)
        extra = f", mask={mask}, other=0.0" if mask else ""
        name = f"dacc{n}"
        em.emit(f"{name} = tl.load(dacc{n}_ptr + {' + '.join(terms)}{extra})  # dA of acc{c.acc}")
        em.adjoints[c.d_acc.what] = name



def _tile(em: Emitter, bp: BackwardPlan, side: str, interior: bool) -> tuple[list[str], None, list[str]]:
    """One tile of the backward loop (a query tile in dK/dV, a key tile in dQ)."""
    i, j = em.i, em.j
    saved = em.lines, em.indent, dict(em.adjoints)
    em.lines, em.indent, em.interior, em.phase, em.loop_names = [], 1, interior, "loop", {}
    try:
        if side == "key":
            em.emit(f"offs_m = start_m + tl.arange(0, {BLOCK_M})")
            if not interior:
                em.emit(f"mask_m = offs_m < {em.size(i.extent)}")
            _stats(em, bp, masked=not interior)
        else:
            em.emit(f"offs_n = start_n + tl.arange(0, {BLOCK_N})")
            if not interior:
                em.emit(f"mask_n = offs_n < {em.size(j.extent)}")
        # the forward's run-time skip of tiles its data-dependent masks drop whole (document
        # ids): the same test here, so the backward skips the same tiles. A row masked whole
        # (row max −inf) keeps its tiles: eager's gradient of such a row is NaN, and so is ours
        empty = [f"tl.max((row_mx{n} == float(\"-inf\")).to(tl.int32))" for n in range(len(bp.streams))]
        guard_at = len(em.lines) if em.kp.tile_skip and tile_skip_guard(em, empty) else None
        if side == "key":
            _dacc(em, bp)
        full = em.sort((i, j))  # (rows, keys) in dQ, (keys, rows) in dK/dV
        keys_major = full[0] is j
        shape = f"[{BLOCK_N}, {BLOCK_M}]" if keys_major else f"[{BLOCK_M}, {BLOCK_N}]"
        inside = None if interior else \
            f"{em.broadcast('mask_m', (i,), full)} & {em.broadcast('mask_n', (j,), full)}"
        for n, c in enumerate(bp.contractions):
            p = em.f32(c.scores, full)
            dacc = em.adjoints[c.d_acc.what]
            dp = f"dp{n}"
            if c.values is None:
                em.emit(f"{dp} = {em.broadcast(dacc, (i,), full)} + tl.zeros({shape}, tl.float32)"
                        f"  # dP of acc{c.acc}: its row's dA")
            else:
                w = em.value(c.values, em.sort(em.layout(c.values)))
                if keys_major:
                    em.emit(f"{dp} = {_dot(em, w, f'tl.trans({dacc})', c.values.dtype)}  # dPᵀ of acc{c.acc} = W · dAᵀ")
                    pm = p if inside is None else f"tl.where({inside}, {p}, 0.0)"
                    dv = bp.value_adjoints[n].what  # shared by the streams of one values side
                    em.emit(f"{dv} = {_dot(em, pm, dacc, c.values.dtype, dv)}  # dW of acc{c.acc} += Pᵀ · dA")
                else:
                    em.emit(f"{dp} = {_dot(em, dacc, f'tl.trans({w})', c.values.dtype)}  # dP of acc{c.acc} = dA · Wᵀ")
            em.adjoints[c.d_scores.what] = dp
        for st in bp.buffers(side):
            if st.kind:
                _captured_in_tile(em, st, full, inside)
        for t, d in enumerate(bp.dots):
            dx = em.f32(d.d_dot, full)
            name = f"dx{t}"
            if inside is None:
                em.emit(f"{name} = {dx}  # the adjoint of {em.hint(d.node)} (derivative pass)")
            else:
                em.emit(f"{name} = tl.where({inside}, {dx}, 0.0)  # the adjoint of the dot product, rows and keys "
                        "in range")
            if side == "key":
                a = em.value(d.row_side, em.sort(em.layout(d.row_side)))
                em.emit(f"dk{t} = {_dot(em, name, a, d.row_side.dtype, f'dk{t}')}  # += dXᵀ · Q")
            else:
                b = em.value(d.key_side, em.sort(em.layout(d.key_side)))
                em.emit(f"dq{t} = {_dot(em, name, b, d.key_side.dtype, f'dq{t}')}  # += dX · K")
        lines = em.lines
    finally:
        em.lines, em.indent, em.adjoints = saved
        em.interior, em.phase, em.loop_names = False, "post", {}
    if guard_at is None:
        return lines, None, []
    return lines[:guard_at], lines[guard_at], lines[guard_at + 1:]


def _captured_in_tile(em: Emitter, st: GradStore | TermStore, full: tuple, inside: str | None) -> None:
    """A captured tensor's (or a term's) adjoint in this tile: stored per (row, key), or summed
    into its loop-carried partial."""
    g = em.f32(st.expr, full)
    name = f"dc{st.buffer}"
    what = after.label(em, st)
    em.emit(f"{name} = {g if inside is None else f'tl.where({inside}, {g}, 0.0)'}  # d {what} per (row, key)")
    if st.kind == "element":
        terms = after.grid_terms(em, f"stride_g{st.buffer}")
        terms += [f"{em.broadcast('offs_m', (em.i,), full)} * stride_g{st.buffer}_0",
                  f"{em.broadcast('offs_n', (em.j,), full)} * stride_g{st.buffer}_1"]
        # interior tiles skip the loop's bounds, not the program's own: its tile may end past the end
        fixed = em.broadcast("mask_n", (em.j,), full) if em.loop is em.i else em.broadcast("mask_m", (em.i,), full)
        em.emit(f"tl.store(g{st.buffer}_ptr + {' + '.join(terms)}, {name}.to(g{st.buffer}_ptr.dtype.element_ty), "
                f"mask={inside or fixed})  # d {what}, this tile")
        return
    keep = em.j if st.kind in ("key", "scalar") else em.i
    other = em.i if keep is em.j else em.j
    em.emit(f"db{st.buffer} = db{st.buffer} + tl.sum({name}, axis={full.index(other)})  # d {what}, "
            f"summed over the {'rows' if other is em.i else 'keys'}")


def _parameters(em: Emitter, bp: BackwardPlan, stores: list[int], ranks: list[int]) -> list[str]:
    prog, nm = em.kp.program, em.nm
    params = []
    for k in sorted(em.inputs):
        params.append(nm.ptr(k))
        params += [nm.stride(k, d) for d in range(len(prog.input_shapes[k]))]
    letters = [em.nm.letter[g] for g in em.kp.grid_vars]
    for n in range(len(bp.streams)):
        params += [f"mx{n}_ptr", f"ld{n}_ptr"] + [f"stride_st{n}_{x}" for x in letters] + [f"stride_st{n}_m"]
    for n, c in enumerate(bp.contractions):
        params += [f"dacc{n}_ptr"] + [f"stride_da{n}_{x}" for x in letters] + [f"stride_da{n}_m"]
        if len(em.layout(c.d_acc)) == 2:
            params.append(f"stride_da{n}_d")
    for b, r in zip(stores, ranks):
        params += [f"g{b}_ptr"] + [f"stride_g{b}_{x}" for x in letters] + [f"stride_g{b}_{k}" for k in range(r)]
    if em.table:
        params += ["tbl_ptr", "dead_ptr"]
    if em.uses_dropout:
        params += ["dropout_seed", "dropout_p"]
    params += [f"z{k}" for k in range(len(em.sizes))]
    params += [f"{BLOCK_M}: tl.constexpr", f"{BLOCK_N}: tl.constexpr"]
    return params


def _assemble(em: Emitter, bp: BackwardPlan, name: str, side: str, helper: TileHelper, stores: list[int],
              ranks: list[int], what: str) -> BackwardSource:
    params = _parameters(em, bp, stores, ranks)
    text = ["import triton", "import triton.language as tl", "", ""] + helper.lines + ["", ""]
    text += [f"# {name}: {what}", "@triton.jit", f"def {name}("] + [f"    {p}," for p in params] + ["):"]
    kp = bp.kp
    return BackwardSource(
        name=name, side=side, source="\n".join(text + em.lines) + "\n", input_args=sorted(em.inputs),
        runtime_sizes=list(em.sizes), grid_extents=[g.extent for g in kp.grid_vars], row_extent=kp.row_var.extent,
        loop_extent=kp.loop_var.extent, streams=list(bp.streams),
        dacc_ranks=[len(em.layout(c.d_acc)) for c in bp.contractions], stores=stores, store_ranks=ranks,
        dropout=em.uses_dropout, table=em.table,
        group=(bp.group.var, bp.group.size) if bp.group is not None and side == "key" else None)


def dkdv_kernel(bp: BackwardPlan, opt: Options) -> BackwardSource:
    """One program per (key tile, grid point): the gradients of the key-side loads. With a head
    group (GQA, :class:`~flashlight_hf.compiler.rewrite.backward.HeadGroup`) the grid point
    names a key head, and the program loops over the query heads that share it."""
    bp = _table(bp)
    kp = bp.kp
    em = _emitter(bp, opt, kp.row_var)
    i, j = em.i, em.j
    group, outer = bp.group, after.group_outer(em, bp)
    em.emit("# program coordinates: one program per (key tile, grid point" +
            (", the query heads of a key head's group looping inside)" if group else ")"))
    em.emit("pid = tl.program_id(0)")
    em.emit(f"n_key_tiles = tl.cdiv({em.size(j.extent)}, {BLOCK_N})")
    if work_falls_with_row(kp):
        em.emit("tile_n = n_key_tiles - 1 - pid % n_key_tiles  # the longest key tiles (most rows) first")
    else:
        em.emit("tile_n = pid % n_key_tiles")
    if kp.grid_vars:
        em.emit("rest = pid // n_key_tiles")
    for n, g in enumerate(reversed(kp.grid_vars)):
        extent = em.size(g.extent) if g not in outer else after.groups(em, group)
        em.emit(f"{outer.get(g, em.nm.offs[g])} = rest % {extent}")
        if n < len(kp.grid_vars) - 1:
            em.emit(f"rest = rest // {extent}")
    em.emit(f"offs_n = tile_n * {BLOCK_N} + tl.arange(0, {BLOCK_N})")
    em.emit(f"mask_n = offs_n < {em.size(j.extent)}")
    for v in kp.tile_vars:
        em.emit(f"{em.nm.offs[v]} = tl.arange(0, {em.pads[v.name]})")
        if em.pads[v.name] != v.extent:
            em.emit(f"{em.mask_name(v)} = {em.nm.offs[v]} < {v.extent}")
    if group:
        h, size = em.nm.offs[group.var], after.group_size(em, group)
        em.emit("")
        em.emit("# key-side values the group's query heads share, loaded once")
        em.emit(f"{h} = {outer[group.var]} * {size}  # the group's first head" +
                (f": {h} // {size} is the key head" if group.size else ""))
        _hoist(em, _roots(bp), only=group.invariant)
        outside = dict(em.names)
        carried = after.init_carried(em, bp, "key", partials=False)
        em.emit("")
        em.emit(f"# the {size} query heads that share this key head")
        em.emit(f"for head_in_group in range(0, {size}):")
        em.indent += 1
        em.emit(f"{h} = {outer[group.var]} * {size} + head_in_group")
    else:
        em.emit("")
        em.emit("# key-side values, loaded once")
    _hoist(em, _roots(bp))
    if not em.table:
        _query_range(em)
    carried = after.init_carried(em, bp, "key", partials=True if group else None)
    body = merged_body(_tile(em, bp, "key", interior=False), _tile(em, bp, "key", interior=True))
    helper = TileHelper(DKDV_INNER, carried, body, [
        "one query tile [start_m, start_m + BLOCK_M) against this program's key tile. BOUNDARY: the",
        "tile may hold rows past the end or pairs an analysed mask drops; False for interior tiles"])
    if em.table:
        table_loops(em, helper, key_major=True, dead=True)
    else:
        _loop_ranges(em, helper, "start_m", BLOCK_M, ("q_start", "interior_start", "interior_end", "q_end"), "query")
    if not group:
        stores, ranks = after.stores(em, bp, "key")
    else:
        stores, ranks = after.stores(em, bp, "key", captured=True)  # per query head, inside the group loop
        em.phase = "pre"
        em.indent -= 1
        em.names = outside  # what the group loop computed is local to it
        em.emit("")
        em.emit(f"{h} = {outer[group.var]} * {size}")
        more, more_ranks = after.stores(em, bp, "key", captured=False)
        stores, ranks = stores + more, ranks + more_ranks
    return _assemble(em, bp, KERNEL_BWD_DKDV, "key", helper, stores, ranks,
                     "one program per (key tile of BLOCK_N keys, grid point); loops over the query tiles "
                     "that meet it and stores the key-side gradients")


def _loop_ranges(em: Emitter, helper: TileHelper, start_var: str, block: str, bounds: tuple[str, str, str, str],
                 what: str) -> None:
    """The loop's three ranges (boundary, interior, boundary) over ``bounds`` = (first, interior
    start, interior end, end), each calling the tile helper with its flag."""
    first, lo, hi, last = bounds
    for start, end, boundary, note in ((first, lo, True, f"boundary {what} tiles before the interior"),
                                       (lo, hi, False, f"interior {what} tiles: no masks"),
                                       (hi, last, True, f"boundary {what} tiles after the interior")):
        em.emit("")
        em.emit(f"# {note}")
        em.emit(f"for {start_var} in range({start}, {end}, {block}):")
        em.lines += helper.call(boundary, "    " * (em.indent + 1))


def _query_range(em: Emitter) -> None:
    """The query tiles this key tile meets and the interior ones (every pair kept, rows in range)."""
    kp = em.kp
    rows = em.size(em.i.extent)

    def const(c: Any) -> str:
        return str(c) if isinstance(c, int) else offset_text(em, c)

    rr = row_range(kp.key_bounds, "col_lo", "col_hi", triton_expressions(const, rows=rows))
    em.emit("")
    em.emit("# query tiles this key tile meets (the masks' key bounds turned around), and the interior")
    em.emit("# ones where every row is in range and every analysed mask keeps every pair")
    em.emit(f"col_lo = tile_n * {BLOCK_N}")
    em.emit(f"col_hi = tl.minimum(col_lo + {BLOCK_N}, {em.size(em.j.extent)}) - 1")
    em.emit(f"row_first = tl.maximum({rr.visit_lo}, 0)")
    em.emit(f"row_last = tl.minimum({rr.visit_hi}, {rows} - 1)")
    em.emit(f"q_start = (row_first // {BLOCK_M}) * {BLOCK_M}")
    em.emit("q_end = tl.maximum(row_last + 1, q_start)")
    em.emit(f"end_tile = tl.cdiv(q_end, {BLOCK_M}) * {BLOCK_M}")
    em.emit(f"i_first = tl.maximum({rr.interior_lo}, 0)")
    em.emit(f"i_last = tl.minimum({rr.interior_hi}, {rows} - 1)")
    em.emit(f"interior_start = tl.minimum(tl.maximum(tl.cdiv(i_first, {BLOCK_M}) * {BLOCK_M}, q_start), end_tile)")
    em.emit(f"interior_end = tl.minimum(tl.maximum(((i_last + 1) // {BLOCK_M}) * {BLOCK_M}, interior_start), "
            "end_tile)")


def dq_kernel(bp: BackwardPlan, opt: Options) -> BackwardSource:
    """One program per (row tile, grid point): the gradients of the row-side loads."""
    bp = _table(bp)
    kp = bp.kp
    em = _emitter(bp, opt, kp.loop_var)
    coordinates(em, split=False, partials=False)
    em.emit("")
    em.emit("# row-side values, loaded once: the rows' statistics and dA, the query side")
    _stats(em, bp, masked=True)
    _dacc(em, bp)
    _hoist(em, _roots(bp))
    em.emit("")
    if not em.table:
        emit_key_range(em, split=False)
    carried = after.init_carried(em, bp, "row")
    body = merged_body(_tile(em, bp, "row", interior=False), _tile(em, bp, "row", interior=True))
    helper = TileHelper(DQ_INNER, carried, body, [
        "one key tile [start_n, start_n + BLOCK_N) against this program's row tile. BOUNDARY: the",
        "tile may hold keys past the end or pairs an analysed mask drops; False for interior tiles"])
    if em.table:
        table_loops(em, helper, key_major=False, dead=True)
    else:
        _loop_ranges(em, helper, "start_n", BLOCK_N, ("key_lo", "interior_lo", "interior_hi", "key_hi"), "key")
    stores, ranks = after.stores(em, bp, "row")
    return _assemble(em, bp, KERNEL_BWD_DQ, "row", helper, stores, ranks,
                     "one program per (row tile of BLOCK_M rows, grid point); loops over the key tiles "
                     "the forward visits and stores the row-side gradients")


def backward_info(bp: BackwardPlan, opt: Options, identity: bool) -> BackwardInfo:
    """The backward's kernels and their contract with the runtime."""
    return describe(bp, backward_kernels(bp, opt), identity)


def backward_kernels(bp: BackwardPlan, opt: Options) -> list[BackwardSource]:
    """The kernels the gradient runs as: dK/dV where there are key-side gradients, dQ where there
    are row-side ones."""
    out = []
    if bp.buffers("key"):
        out.append(dkdv_kernel(bp, opt))
    if bp.buffers("row"):
        out.append(dq_kernel(bp, opt))
    return out


__all__ = ["BackwardInfo", "BackwardSource", "StoreInfo", "backward_info", "backward_kernels", "dkdv_kernel", "dq_kernel"]
