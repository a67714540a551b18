"""Data-dependent block sparsity through a block table built before the launch.

Why: a mask read from the data (document ids, key padding) cannot bound the key loop at compile
time. Testing each key tile inside the loop (``if any key survives:``) is exact but puts the
tile's loads under a branch, and Triton does not software-pipeline loads inside a branch: a
document mask then ran slower than a causal one with twice its work (RESULTS.md, session 10).
So, as FlexAttention's block masks do, one small kernel (:func:`table_kernel`) evaluates the
masks of the plan's ``block_table`` per (row tile, key tile) before the launch, and the runtime
compacts that into, per row tile (or per key tile for the dK/dV kernel, "key major"), two lists: the tiles every mask
keeps whole and in range (run with no mask arithmetic, as interior tiles are) and the tiles some
mask keeps in part. The attention kernels walk the lists (:func:`table_loops`); tiles in
neither are never visited.

Table layout, int32 ``[table grid..., outer tiles, 2 + inner tiles]``: per outer tile the count
of whole tiles, the count of partial ones, then the whole tiles' indices from the front and the
partial ones' from the back. The table grid is the grid variables the masks read (a document
mask reads the batch, not the head): one table serves every head.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from flashlight_hf.compiler.abi import BLOCK_M, BLOCK_N, KERNEL_BLOCK_TABLE
from flashlight_hf.compiler.codegen.source import KernelSource
from flashlight_hf.compiler.ir import Var
from flashlight_hf.compiler.rewrite import KernelPlan

if TYPE_CHECKING:
    from flashlight_hf.compiler.codegen.emitter import Emitter
    from flashlight_hf.compiler.codegen.keyloop import TileHelper

def table_plan(kp: KernelPlan) -> KernelPlan:
    """The plan the table-walking kernels are generated from: every mask the table evaluates is
    dropped in whole tiles (as the masks the key bounds capture are in interior tiles), and no
    tile is tested inside the loop."""
    known = {id(w) for w, _ in kp.bounded_masks}
    extra = [(w, kept) for chain in kp.block_table for w, _, _, kept in chain if id(w) not in known]
    return replace(kp, bounded_masks=list(kp.bounded_masks) + extra, tile_skip=[])


def table_vars(kp: KernelPlan) -> list[Var]:
    """The grid variables the table's masks read, outermost first: the table's own grid."""
    read: set[Var] = set()
    for chain in kp.block_table:
        for _, pred, _, _ in chain:
            read |= set(pred.vars)
    return [g for g in kp.grid_vars if g in read]


def _mixed_radix(em: "Emitter", grid: list[Var]) -> str:
    """The program's point of ``grid`` (its offsets along those variables, outermost first) as
    one number, in source text."""
    out = "0"
    for g in grid:
        off = em.nm.offs[g]
        out = off if out == "0" else f"({out}) * {em.size(g.extent)} + {off}"
    return out


def table_index(em: "Emitter") -> str:
    """The program's point of the table's grid (the variables the masks read)."""
    return _mixed_radix(em, table_vars(em.kp))


def grid_index(em: "Emitter") -> str:
    """The program's point of the whole grid."""
    return _mixed_radix(em, em.kp.grid_vars)


def table_loops(em: "Emitter", helper: "TileHelper", *, key_major: bool, dead: bool = False,
                warp_specialize: bool = False) -> None:
    """The loops over one program's lists: whole tiles (no masks), then partial ones.

    ``key_major``: the program owns a key tile and walks query tiles (dK/dV). ``dead``: the
    backward, where a grid point with a row every mask drops (row max −inf; eager's gradient
    there is NaN, and so is every key's) walks every tile with the masks applied instead, so the
    NaN reaches the same gradients it does in eager."""
    rows, keys = em.size(em.i.extent), em.size(em.j.extent)
    own, start, block, n_inner = (("tile_n", "start_m", BLOCK_M, "n_row_tiles") if key_major else
                                  ("tile_m", "start_n", BLOCK_N, "n_key_tiles"))
    n_outer = "n_key_tiles" if key_major else "n_row_tiles"
    if em.lines and em.lines[-1]:
        em.emit("")
    em.emit("# the tiles this program visits, from the block table built before the launch")
    em.emit(f"{n_inner} = tl.cdiv({rows if key_major else keys}, {block})")
    at = table_index(em)
    at = own if at == "0" else f"({at}) * {n_outer} + {own}"
    em.emit(f"tbl = tbl_ptr + ({at}) * ({n_inner} + 2)")
    em.emit("n_full = tl.load(tbl)  # tiles every mask keeps whole")
    em.emit("n_part = tl.load(tbl + 1)  # tiles some mask keeps in part")
    if dead:
        em.emit(f"dead = tl.load(dead_ptr + {grid_index(em)})  # a row here that every mask drops")
        em.emit("n_full = tl.where(dead != 0, 0, n_full)")
        em.emit(f"n_part = tl.where(dead != 0, {n_inner}, n_part)  # then every tile, masks applied")
    indent = "    " * (em.indent + 1)
    em.emit("")
    em.emit("# whole tiles: no masks evaluated")
    rng = "tl.range(0, n_full, warp_specialize=True)" if warp_specialize else "range(0, n_full)"
    em.emit(f"for t in {rng}:")
    em.emit(f"    {start} = tl.load(tbl + 2 + t) * {block}")
    em.lines += helper.call(False, indent)
    em.emit("")
    em.emit("# tiles a mask keeps in part, or that end past the last row or key: masks applied")
    em.emit("for t in range(0, n_part):")
    if dead:
        em.emit(f"    tile_u = tl.where(dead != 0, t, tl.load(tbl + 1 + {n_inner} - t, mask=dead == 0, other=0))")
        em.emit(f"    {start} = tile_u * {block}")
    else:
        em.emit(f"    {start} = tl.load(tbl + 1 + {n_inner} - t) * {block}")
    em.lines += helper.call(True, indent)


def table_kernel(kp: KernelPlan, interpret: bool, input_names=None) -> KernelSource:
    """The kernel that classifies tiles for the block table: one program per (table grid point,
    row tile, run of ``TILES`` key tiles), writing an int8 state per (row tile, key tile) (0: no
    pair kept, 1: some, 2: every pair kept and the tile whole). The runtime then compacts each
    outer tile's states into its two lists (``runtime/block_table.py``), reading the same states
    by key tile for the dK/dV kernel's table.

    Why always row tiles against a run of key tiles: the per-tile reduction is then a plain
    reduction over the rows followed by one over a short run of keys. A key tile against a run
    of query tiles reduced over keys first and then reshaped the result, and that reshape cost
    up to 40x the row-major kernel (RESULTS.md, session 13)."""
    from flashlight_hf.compiler.codegen.emitter import Emitter

    em = Emitter(kp, interpret, False, input_names)
    i, j = em.i, em.j
    rows, keys = em.size(i.extent), em.size(j.extent)
    tvars = table_vars(kp)
    em.emit("# program coordinates: one program per (grid point of the variables the masks read, row tile,")
    em.emit("# run of TILES key tiles). Many tiles per program: the work per tile is a few thousand")
    em.emit("# comparisons, so a launch is bound by its waves of programs, not by that work")
    em.emit("pid = tl.program_id(0)")
    em.emit(f"n_row_tiles = tl.cdiv({rows}, {BLOCK_M})")
    em.emit(f"n_key_tiles = tl.cdiv({keys}, {BLOCK_N})")
    em.emit("n_runs = tl.cdiv(n_key_tiles, TILES)")
    em.emit("run = pid % n_runs")
    em.emit("tile_m = (pid // n_runs) % n_row_tiles")
    if tvars:
        em.emit("rest = pid // (n_runs * n_row_tiles)")
    for n, g in enumerate(reversed(tvars)):
        em.emit(f"{em.nm.offs[g]} = rest % {em.size(g.extent)}")
        if n < len(tvars) - 1:
            em.emit(f"rest = rest // {em.size(g.extent)}")
    em.emit("state_row = state_ptr + (pid // n_runs) * n_key_tiles  # this row tile's states")
    em.emit("u = run * TILES + tl.arange(0, TILES)  # the key tiles this program classifies")
    em.emit(f"offs_m = tile_m * {BLOCK_M} + tl.arange(0, {BLOCK_M})")
    em.emit(f"offs_n = run * TILES * {BLOCK_N} + tl.arange(0, TILES * {BLOCK_N})")
    em.emit(f"in_range = ((tile_m + 1) * {BLOCK_M} <= {rows}) & ((u + 1) * {BLOCK_N} <= {keys})")
    em.emit(f"mask_m = offs_m < {rows}")
    em.emit(f"mask_n = offs_n < {keys}")
    em.emit("inside = mask_m[:, None] & mask_n[None, :]")
    em.phase = "loop"
    whole, some = [], []
    for s, chain in enumerate(kp.block_table):
        parts = []
        for _, pred, keep, _ in chain:
            v = em.value(pred, (i, j))
            parts.append(f"({v})" if keep else f"({v} == 0)")
        if not parts:
            continue
        kept = f"kept{s}"
        em.emit(f"{kept} = {' & '.join(parts)}  # softmax stream {s}: its masks keep (row, key)")
        em.emit(f"miss{s} = ((({kept}) == 0) & inside).to(tl.int32)  # a pair in range its masks drop")
        em.emit(f"miss{s} = tl.max(tl.reshape(tl.max(miss{s}, axis=0), [TILES, {BLOCK_N}]), axis=1)  # per key tile")
        em.emit(f"hit{s} = (({kept}) & inside).to(tl.int32)  # a pair in range its masks keep")
        em.emit(f"hit{s} = tl.max(tl.reshape(tl.max(hit{s}, axis=0), [TILES, {BLOCK_N}]), axis=1)  # per key tile")
        whole.append(f"(1 - miss{s})")
        some.append(f"hit{s}")
    em.emit(f"is_full = ({' & '.join(whole) if whole else '1'}) & in_range.to(tl.int32)  # whole: no masks, no bounds")
    em.emit(f"is_part = ({' | '.join(some) if some else '1'}) & (1 - is_full)")
    em.emit("tl.store(state_row + u, (2 * is_full + is_part).to(tl.int8), mask=u < n_key_tiles)")
    prog, nm = kp.program, em.nm
    params = []
    for k in sorted(em.inputs):
        params.append(nm.ptr(k))
        params += [nm.stride(k, d) for d in range(len(prog.input_shapes[k]))]
    params += ["state_ptr"] + [f"z{k}" for k in range(len(em.sizes))]
    params += [f"{BLOCK_M}: tl.constexpr", f"{BLOCK_N}: tl.constexpr", "TILES: tl.constexpr"]
    text = ["import triton", "import triton.language as tl", "", "",
            f"# {KERNEL_BLOCK_TABLE}: per (outer tile, inner tile) whether the masks keep none of its pairs (0),",
            "# some (1) or all of them in a whole tile (2); compacted into the block table after",
            "@triton.jit", f"def {KERNEL_BLOCK_TABLE}("] + [f"    {p}," for p in params] + ["):"]
    return KernelSource(name=KERNEL_BLOCK_TABLE, source="\n".join(text + em.lines) + "\n",
                        input_args=sorted(em.inputs), runtime_sizes=list(em.sizes),
                        grid_extents=[g.extent for g in tvars], row_extent=kp.row_var.extent,
                        loop_extent=kp.loop_var.extent, tile_pads=dict(em.pads))
