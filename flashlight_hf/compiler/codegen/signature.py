"""A kernel's parameter list, its header comment, and the finished :class:`KernelSource`.

The parameter order is the launch contract with the runtime (see :class:`KernelSource`); only
the names are codegen's to choose. One parameter per line; above the kernel a comment says
what each input is: its name, shape in the traced program, dtype, the axes it is read along and
its role.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flashlight_hf.compiler.abi import BLOCK_M, BLOCK_N, KERNEL_SPLIT_FUSED, NUM_SPLITS
from flashlight_hf.compiler.codegen.lse import lse_parameters
from flashlight_hf.compiler.codegen.source import KernelSource

if TYPE_CHECKING:
    from flashlight_hf.compiler.codegen.emitter import Emitter

_WORDS = {"b": "batch", "h": "heads", "m": "query rows", "n": "keys"}
WHAT = {
    "single": "one program per (row tile of BLOCK_M query rows, grid point); the whole key axis",
    "split": "one program per (share of the keys, row tile, grid point); stores partial accumulators",
    "combine": "one program per (row tile, grid point); merges the shares' partials, then the epilogue",
    "fused": "one program per (share, row tile, grid point); the last share of a row tile merges them",
    "train": "one program per (row tile, grid point); the whole key axis; also stores each softmax "
             "stream's per-row log-sum-exp (training mode)",
}


def parameters(em: "Emitter", name: str, *, partials: bool, with_out: bool, lse: int = 0) -> list[str]:
    """The kernel's parameters in launch order (constexprs annotated); ``lse``: how many
    log-sum-exp tensors the kernel stores after the output (training mode)."""
    prog, nm = em.kp.program, em.nm
    params = []
    for k in sorted(em.inputs):
        params.append(nm.ptr(k))
        params += [nm.stride(k, d) for d in range(len(prog.input_shapes[k]))]
    if partials:
        params += [f"part{k}_ptr" for k in range(len(em.kp.accs))] + ["n_grid"]
    if name == KERNEL_SPLIT_FUSED:
        params.append("count_ptr")
    if with_out:
        params.append("out_ptr")
        params += [nm.out_stride(d) for d in range(len(prog.out_axes))]
    params += lse_parameters(em, lse)
    if em.table:
        params.append("tbl_ptr")
    if em.uses_dropout:
        params += ["dropout_seed", "dropout_p"]
    params += [f"z{k}" for k in range(len(em.sizes))]
    params += [f"{BLOCK_M}: tl.constexpr", f"{BLOCK_N}: tl.constexpr"]
    if partials:
        params.append(f"{NUM_SPLITS}: tl.constexpr")
    return params


def header(em: "Emitter", name: str, kind: str) -> list[str]:
    """The comment above the kernel: what it computes per program, its inputs, its sizes."""
    prog, nm = em.kp.program, em.nm
    rows = []
    for k in sorted(em.inputs):
        shape = "[" + ", ".join(str(s) for s in prog.input_shapes[k]) + "]"
        axes = "(" + ", ".join(nm.axis_suffix(k, d) for d in range(len(prog.input_shapes[k]))) + ")"
        dtype = str(prog.input_dtypes[k]).replace("torch.", "")
        rows.append((nm.ptr(k), shape, dtype, axes, nm.role(k)))
    widths = [max((len(r[c]) for r in rows), default=0) for c in range(4)]
    out = [f"# {name}: {WHAT[kind]}.", "# inputs (shape in the traced program, dtype, axes read along, role):"]
    for r in rows:
        out.append("#   " + "  ".join(r[c].ljust(widths[c]) for c in range(4)) + "  " + r[4])
    out.append(f"# output: {str(prog.out_dtype).replace('torch.', '')}. Axes: b batch, h heads, m query rows, "
               "n keys, d head dim")
    out.append("# (a number: an axis with no single one of those roles)")
    if em.sizes:
        extents = {}
        for v in [em.i, em.j, *em.kp.grid_vars]:
            extents.setdefault(str(v.extent), _WORDS.get(em.nm.letter.get(v), em.label(v)))
        sizes = [f"z{k} = {s}" + (f" ({extents[str(s)]})" if str(s) in extents else "")
                 for k, s in enumerate(em.sizes)]
        out.append(f"# sizes read per call: {', '.join(sizes)}")
    return out


def assemble(em: "Emitter", name: str, kind: str, *, partials: bool, with_out: bool,
             lse: int = 0) -> KernelSource:
    """The module text (imports, the key-tile helper, the kernel) and what the runtime needs."""
    kp = em.kp
    params = parameters(em, name, partials=partials, with_out=with_out, lse=lse)
    text = ["import triton", "import triton.language as tl", "", ""]
    helper = getattr(em, "helper", None)
    if helper is not None:
        text += helper.lines + ["", ""]
    text += header(em, name, kind) + ["@triton.jit", f"def {name}("] + [f"    {p}," for p in params] + ["):"]
    src = "\n".join(text + em.lines) + "\n"
    widths = [tuple(em.pads[v.name] for v in em.layout(a)[1:]) for a in kp.accs]
    return KernelSource(name=name, source=src, input_args=sorted(em.inputs), runtime_sizes=list(em.sizes),
                        grid_extents=[g.extent for g in kp.grid_vars], row_extent=kp.row_var.extent,
                        loop_extent=kp.loop_var.extent, tile_pads=dict(em.pads), acc_widths=widths)
