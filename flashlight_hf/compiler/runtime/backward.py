"""The generated backward at run time: the preprocess, the dK/dV and dQ launches, the gradients.

Why here: codegen hands over the backward's kernels with their contract
(:class:`~flashlight_hf.compiler.codegen.BackwardInfo`); this module runs them for one call:

1. **Preprocess** — ``dA = ∂E/∂A · dOut`` for every accumulator the epilogue ``E`` reads. When
   the epilogue is one softmax stream's ``numerator / row sum`` that is ``dA_num = dOut`` and
   ``dA_sum = −Σ_e dOut·out`` (FlashAttention's Δ). Otherwise the epilogue is evaluated with
   torch on the normalised accumulators the training forward stored (row-local, O(rows × width))
   and differentiated by autograd, which also gives the gradients of tensors only the epilogue
   reads (an output gate, DiffLlama's λ).
2. **dK/dV** (a program per key tile) and **dQ** (a program per row tile), writing each load's
   gradient into a buffer over the load's variables.
3. **Fold** — each buffer into its input's gradient at the load's indices (a view where the load
   reads the input as it is laid out, ``index_put_(accumulate=True)`` otherwise: GQA's shared
   key heads); a score term over keys or rows alone (a key gate) carried from its stored
   adjoint to the loads under it (:mod:`.backward_terms`). Fixed order, no atomics: the same
   bits on every run.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import sympy
import torch

from flashlight_hf.compiler.codegen import KernelSource
from flashlight_hf.compiler.codegen.backward_info import BackwardInfo, BackwardSource, StoreInfo
from flashlight_hf.compiler.codegen.source import LN2
from flashlight_hf.compiler.ir import Acc, Program, Var
from flashlight_hf.compiler.ir.evaluate import Evaluator
from flashlight_hf.compiler.runtime import graphs
from flashlight_hf.compiler.runtime.backward_fold import fold, grouped_view, in_place_views
from flashlight_hf.compiler.runtime.backward_terms import term_gradients
from flashlight_hf.compiler.runtime.hooks import launch_hooks
from flashlight_hf.compiler.runtime.launch import Launcher
from flashlight_hf.compiler.runtime.plan import tensor_args
from flashlight_hf.compiler.runtime.block_table import BlockTable, dead_rows
from flashlight_hf.compiler.runtime.sizes import SizeFunction
from flashlight_hf import settings
from flashlight_hf.compiler.runtime.tune import (ChoiceStore, LaunchConfig, bucket, device_id, gpu_ms, keep_choice,
                                                 kernel_id, stored_choice, time_options, tune_on_call)

# tile candidates of the backward launches, per kernel side: the dK/dV kernel keeps a key tile
# (BLOCK_N) resident and streams query tiles (BLOCK_M), the dQ kernel the other way round. Timed
# once per shape bucket on a GPU (FLASHLIGHT_AUTOTUNE=0: the first); the interpreter runs small
# tiles so the tests cross tile edges
_CANDIDATES = {
    "key": [LaunchConfig(32, 128, 4, 3), LaunchConfig(64, 128, 8, 3), LaunchConfig(64, 64, 4, 3),
            LaunchConfig(32, 64, 4, 3), LaunchConfig(64, 128, 4, 2), LaunchConfig(128, 128, 8, 2),
            LaunchConfig(32, 128, 4, 5), LaunchConfig(16, 128, 4, 4),
            # many loop-carried gradients (two streams, a wide V): small tiles that do not spill
            LaunchConfig(16, 64, 4, 3), LaunchConfig(32, 64, 8, 2),
            LaunchConfig(64, 128, 8, 2), LaunchConfig(32, 128, 8, 3)],
    "row": [LaunchConfig(128, 32, 4, 3), LaunchConfig(128, 64, 8, 3), LaunchConfig(64, 64, 4, 3),
            LaunchConfig(128, 64, 4, 2), LaunchConfig(64, 32, 4, 3), LaunchConfig(128, 128, 8, 2),
            LaunchConfig(128, 32, 4, 5), LaunchConfig(128, 16, 4, 4),
            LaunchConfig(128, 64, 8, 2), LaunchConfig(64, 128, 4, 3)],
}
_INTERPRET = LaunchConfig(16, 16, 1, 1)


def _symbols(program: Program, inputs: Sequence[torch.Tensor]) -> dict:
    out: dict = {}
    for k, shape in enumerate(program.input_shapes):
        for a, s in enumerate(shape):
            if isinstance(s, sympy.Symbol) and s not in out:
                out[s] = int(inputs[k].shape[a])
    return out


class GeneratedBackward:
    """One program's backward kernels, loaded on first use."""

    def __init__(self, program: Program, info: BackwardInfo, train: KernelSource, load: Callable[[Any], Any],
                 interpret: bool, choices: ChoiceStore | None = None):
        self.program, self.info, self.train = program, info, train
        self.launchers = [(bs, Launcher(load(bs))) for bs in info.kernels]
        self.interpret = interpret
        self._vars = [*info.grid_vars, info.row_var, info.loop_var, *info.tile_vars]
        self._extents = SizeFunction(program, [v.extent for v in self._vars])
        self._runtime = [SizeFunction(program, bs.runtime_sizes) for bs in info.kernels]
        # data-dependent masks: each kernel walks a block table for its own tiles
        self._table = BlockTable(program, info.table, load) if info.table is not None else None
        self._chosen: dict[tuple, LaunchConfig] = {}
        self._timed: dict[tuple, list[tuple[LaunchConfig, float | None]]] = {}  # per key, each candidate's ms
        self._dims: dict[int, list[int]] = {}
        self._calls: dict[tuple, int] = {}  # calls per key not yet tuned (tuning waits, as the forward's)
        self._choices = choices
        self._kernel_id = kernel_id("".join(bs.source for bs in info.kernels))

    def _config(self, side: str, ext: dict, n_grid: int, launch: Callable[[LaunchConfig], None],
                device: torch.device) -> LaunchConfig:
        """The tiles of one side's launch: timed once per (rows, keys) power-of-two bucket."""
        if self.interpret:
            return _INTERPRET
        key = (side, bucket(ext[self.info.row_var]), bucket(ext[self.info.loop_var]), n_grid)
        got = self._chosen.get(key)
        if got is not None:
            return got
        graphs.refuse_cold(device, f"the backward kernels of {self.train.name} have not run for {ext[self.info.row_var]} "
                                   f"rows and {ext[self.info.loop_var]} keys yet: a first launch tunes and compiles them")
        cands = _CANDIDATES[side]
        if not settings.current().autotune:
            self._chosen[key] = cands[0]
            return cands[0]
        options = [(c, 1) for c in cands]
        where = f"{device_id(device)}|{key!r}"
        stored = stored_choice(self._choices, self._kernel_id, where, options)
        if stored is not None:
            self._chosen[key] = stored[0]
            return stored[0]
        self._calls[key] = self._calls.get(key, 0) + 1
        if self._calls[key] < tune_on_call():
            return cands[0]  # the default tiles: tuning waits for a later call in this bucket
        timings: dict[LaunchConfig, float] = {}

        def time_one(cfg: LaunchConfig, _: int) -> float:
            timings[cfg] = gpu_ms(lambda: launch(cfg), reps=5)
            return timings[cfg]
        _, (best, _) = min(time_options(options, time_one), key=lambda t: t[0])
        keep_choice(self._choices, self._kernel_id, where, (best, 1))
        self._chosen[key] = best
        self._timed[key] = [(c, timings.get(c)) for c in cands]  # None: Triton could not compile or run it
        return best

    def chosen_tiles(self) -> dict[tuple, LaunchConfig]:
        """The launch configuration picked per (side, rows bucket, keys bucket, grid) so far."""
        return dict(self._chosen)

    def tuning_times(self) -> dict[tuple, list[tuple[LaunchConfig, float | None]]]:
        """Per (side, rows bucket, keys bucket, grid) each candidate's GPU ms when it was tuned
        (None: Triton could not compile or launch it), for benchmark reports."""
        return {k: list(v) for k, v in self._timed.items()}

    def _syms(self, inputs: Sequence[torch.Tensor]) -> dict:
        return _symbols(self.program, inputs)

    # -- which gradients ---------------------------------------------------------------------------
    def missing(self, wanted: Sequence[bool]) -> tuple[str, str] | None:
        """(node, reason) for the first kernel input that wants a gradient the kernels do not give."""
        for k, want in enumerate(wanted):
            if want and k in self.info.no_grad:
                return self.info.no_grad[k]
        return None

    # -- one call ------------------------------------------------------------------------------------
    def _saved(self, saved: Sequence[torch.Tensor]) -> tuple[dict, dict]:
        """(per max accumulator its (max, log2 denominator), per sum accumulator its normalised value)."""
        n_streams = len(self.train.lse_accs)
        stats = {acc: (saved[2 * n], saved[2 * n + 1]) for n, acc in enumerate(self.train.lse_accs)}
        naccs = dict(zip([k for k, _, _ in self.train.train_accs], saved[2 * n_streams:]))
        return stats, naccs

    def preprocess(self, inputs: list[torch.Tensor], out: torch.Tensor, saved: Sequence[torch.Tensor],
                   grad_out: torch.Tensor, wanted: Sequence[bool]) -> tuple[list[torch.Tensor], dict]:
        """(dA per contraction, {input: gradient} of the loads only the epilogue reads). Plain
        torch (and autograd, for a general epilogue): it runs where autograd records, outside
        the kernels' custom op, and under torch.compile Inductor fuses it."""
        ext = dict(zip(self._vars, self._extents(inputs)))
        stats, naccs = self._saved(saved)
        return self._preprocess(inputs, out, grad_out, stats, naccs, ext, wanted)

    def kernels(self, inputs: list[torch.Tensor], saved: Sequence[torch.Tensor], daccs: Sequence[torch.Tensor],
                wanted: Sequence[bool], dropout: tuple[int, float] | None = None) -> list[torch.Tensor | None]:
        """The dK/dV and dQ launches and the fold of their buffers: per input its gradient
        (None where not wanted or not reached)."""
        info = self.info
        ext = dict(zip(self._vars, self._extents(inputs)))
        stats, _ = self._saved(saved)
        device = inputs[0].device
        buffers: dict[int, torch.Tensor] = {}
        direct: dict[int, torch.Tensor] = {}  # input -> its gradient, written by the kernel in place
        grouped: dict[int, torch.Tensor] = {}  # buffer -> the whole fp32 gradient it is a view of
        per_input = [st.load.input for st in info.stores]
        syms = self._syms(inputs)
        in_place = in_place_views(info.stores, inputs, ext, syms, wanted)
        for st in info.stores:
            k = st.load.input
            if st.group is not None:
                # accumulated over a GQA group in the kernel: it writes the input's gradient at the
                # load's own indices (a view of it; one zeroed fp32 copy per load where the input is
                # read twice, or where the load covers only part of it)
                own = per_input.count(k) == 1 and wanted[k]
                shape = [ext[v] if v is not st.group[0] else ext[v] // (st.group[1] or ext[v]) for v in st.variables]
                view, whole = grouped_view(st, inputs[k], shape, own)
                if own:
                    direct[k] = whole
                else:
                    grouped[st.buffer] = whole
                buffers[st.buffer] = view
                continue
            if st.buffer in in_place:
                # the load reads a box of the input, one element per buffer element, and no other
                # load's box meets it: the kernel writes the gradient itself, in the input's dtype
                direct[k], buffers[st.buffer] = in_place[st.buffer]
                continue
            shape = [ext[v] for v in st.variables]
            if st.kind == "scalar":  # one partial per key tile (of the smallest tile any launch uses)
                shape.append(-(-ext[info.loop_var] // 16))
            make = torch.zeros if st.kind else torch.empty  # tiles a mask skips are never written
            buffers[st.buffer] = make(shape, dtype=_buffer_dtype(st, inputs[k]), device=device)
        for term in info.terms:  # a term's adjoint, summed over the rows (keys) in the kernel
            shape = [ext[v] for v in term.variables]
            if term.kind == "scalar":  # one partial per key tile, as for a captured scalar
                shape.append(-(-ext[info.loop_var] // 16))
            buffers[term.buffer] = torch.zeros(shape, dtype=torch.float32, device=device)
        n_grid = 1
        for g in info.grid_vars:
            n_grid *= ext[g]
        dead = dead_rows([mx for mx, _ in stats.values()]) if self._table is not None else None
        for (bs, launcher), runtime in zip(self.launchers, self._runtime):
            args = tensor_args(inputs, bs.input_args)
            for acc in bs.streams:
                mx, ld = stats[acc]
                args += [mx, ld, *mx.stride()]
            for d in daccs:
                args += [d, *d.stride()]
            for b in bs.stores:
                args += [buffers[b], *buffers[b].stride()]
            at_table = len(args)  # the block table (built per tile choice) and the dead-row flags go here
            if bs.dropout:  # the forward's mask, regenerated from its seed
                args += [int(dropout[0]), float(dropout[1])]
            args += list(runtime(inputs))
            along = ext[info.loop_var] if bs.side == "key" else ext[info.row_var]
            # a GQA group's query heads loop inside one program
            programs = n_grid if bs.group is None else n_grid // (bs.group[1] or ext[bs.group[0]])

            def launch(cfg: LaunchConfig, bs: BackwardSource = bs, launcher: Launcher = launcher,
                       args: list = args, along: int = along, programs: int = programs, at: int = at_table) -> None:
                block = cfg.block_n if bs.side == "key" else cfg.block_m
                if bs.table:
                    table = self._table(inputs, cfg.block_m, cfg.block_n, bs.side == "key")
                    args = args[:at] + [table, dead] + args[at:]
                launcher(-(-along // block) * programs, args, (("BLOCK_M", cfg.block_m), ("BLOCK_N", cfg.block_n)),
                         cfg.num_warps, cfg.num_stages)
            for hook in launch_hooks():
                hook(bs.name)
            launch(self._config(bs.side, ext, n_grid, launch, device))
        grads: list[torch.Tensor | None] = [None] * len(inputs)
        for st in info.stores:
            k = st.load.input
            if k in direct:
                grads[k] = direct[k]
                continue
            if not wanted[k]:
                continue
            g = grouped[st.buffer] if st.buffer in grouped else \
                fold(st, buffers[st.buffer], inputs[k], ext, syms, inputs)
            grads[k] = g if grads[k] is None else grads[k] + g
        for term in info.terms:
            for k, g in term_gradients(term, buffers[term.buffer], inputs, ext, syms, wanted):
                grads[k] = g if grads[k] is None else grads[k] + g
        return grads

    # -- the preprocess --------------------------------------------------------------------------------
    def _layout_vars(self) -> list[Var]:
        """The preprocess's variables: grid, rows, head dims."""
        info = self.info
        return [*info.grid_vars, info.row_var, *info.tile_vars]

    def _out_view(self, t: torch.Tensor, ext: dict) -> torch.Tensor:
        """The output (or its gradient) with one axis per variable of :meth:`_layout_vars`
        (size 1 where it does not vary)."""
        axes = self.program.out_axes
        shape, order = [], []
        for ax in axes:
            for v, e in ax:
                shape.append(ext.get(v, e) if v is not None else int(e))
                order.append(v)
        t = t.reshape(shape)
        lay = self._layout_vars()
        perm = [order.index(v) for v in lay if v in order]
        t = t.permute(perm)
        full = []
        it = iter(range(t.dim()))
        for v in lay:
            full.append(t.shape[next(it)] if v in order else 1)
        return t.reshape(full)

    def _acc_dims(self, acc: Acc) -> list[int]:
        """Which of the preprocess's axes an accumulator has (grid, rows, and its value column)."""
        got = self._dims.get(id(acc))
        if got is None:
            lay = self._layout_vars()
            vs = acc.vars
            got = self._dims[id(acc)] = [n for n, v in enumerate(lay) if v in vs]
        return got

    def _stored_dims(self, acc: Acc, rank: int) -> list[int]:
        """The preprocess's axes of a stored statistic or accumulator of ``rank`` axes: the
        accumulator's own (:meth:`_acc_dims`), or, where the kernel stored it per grid point
        along a grid axis it does not vary on (a batch of one indexed as 0), every grid axis,
        the rows and its value column."""
        own = self._acc_dims(acc)
        if rank == len(own):
            return own
        info = self.info
        return [n for n, v in enumerate(self._layout_vars())
                if v in info.grid_vars or v is info.row_var or (v in info.tile_vars and v in acc.vars)]

    def _preprocess(self, inputs: list[torch.Tensor], out: torch.Tensor, grad_out: torch.Tensor, stats: dict,
                    naccs: dict, ext: dict, wanted: Sequence[bool]) -> tuple[list[torch.Tensor], dict]:
        info = self.info
        lay = self._layout_vars()
        g_view = self._out_view(grad_out, ext)
        squeeze = [n for n, v in enumerate(lay) if v in info.tile_vars]
        if info.identity:
            o_view = self._out_view(out, ext)
            num = next(k for k in info.contraction_accs if len(self._acc_dims(info.accs[k])) > len(info.grid_vars) + 1)
            g_num, o_num = (_squeeze_to(t, self._acc_dims(info.accs[num])) for t in (g_view, o_view))
            neg_delta = neg_row_dot(g_num, o_num)
            return [g_num if k == num else neg_delta for k in info.contraction_accs], {}
        # the epilogue differentiated by autograd at the stored normalised accumulators (the
        # caller may be a backward pass, where grad mode is off)
        with torch.enable_grad():
            return self._differentiate_epilogue(inputs, g_view, stats, naccs, wanted, lay, out.device)

    def _differentiate_epilogue(self, inputs: list[torch.Tensor], g_view: torch.Tensor, stats: dict, naccs: dict,
                                wanted: Sequence[bool], lay: list[Var], device: torch.device) -> tuple:
        info = self.info
        given: dict[int, torch.Tensor] = {}
        leaves: list[torch.Tensor] = []
        for k, a in enumerate(info.accs):
            if a.kind == "max":
                mx, ld = stats[k]
                given[id(a)] = _expand_to(((mx + ld) * LN2), self._stored_dims(a, mx.dim()), len(lay))
            else:
                t = naccs[k].detach().requires_grad_(True)
                leaves.append(t)
                given[id(a)] = _expand_to(t, self._stored_dims(a, t.dim()), len(lay))
        inputs_req = [t.detach().requires_grad_(want and t.is_floating_point()) for t, want in zip(inputs, wanted)]
        ev = Evaluator(lay, inputs_req, dtype=torch.float32, sizes=self._syms(inputs), given=given, device=device)
        value = ev(info.epilogue)
        seeds = g_view.float().expand(value.shape) if value.shape != g_view.shape else g_view.float()
        epi = [t for t in inputs_req if t.requires_grad]
        if not value.requires_grad:
            return [torch.zeros_like(naccs[k], dtype=dt) for k, dt in zip(info.contraction_accs, info.dacc_dtypes)], {}
        got = torch.autograd.grad(value, leaves + epi, seeds, allow_unused=True)
        acc_grads = dict(zip([k for k, a in enumerate(info.accs) if a.kind != "max"], got[:len(leaves)]))
        daccs = []
        for k, dt in zip(info.contraction_accs, info.dacc_dtypes):
            g = acc_grads.get(k)
            daccs.append(torch.zeros_like(naccs[k], dtype=dt) if g is None else g.to(dt).contiguous())
        epilogue_grads = {}
        it = iter(got[len(leaves):])
        for k, t in enumerate(inputs_req):
            if t.requires_grad:
                g = next(it)
                if g is not None:
                    epilogue_grads[k] = g.float()
        return daccs, epilogue_grads


def _buffer_dtype(st: StoreInfo, like: torch.Tensor) -> torch.dtype:
    """A gradient buffer's dtype: fp32, but a captured tensor's adjoint per (row, key) in its own
    16-bit dtype. Why: that buffer is as big as the scores over every grid point (Evoformer's pair
    bias, broadcast over N: 1 GiB in fp32 at B4 N256 S256 H4), and eager autograd rounds that
    adjoint to the tensor's dtype too before summing it over the broadcast axes."""
    if st.kind == "element" and like.dtype in (torch.bfloat16, torch.float16):
        return like.dtype
    return torch.float32


_ROW_DOT: Any = None


def _row_dot_kernel() -> Any:
    """``d[r] = −Σ_e g[r, e]·o[r, e]`` over rows indexed by up to three axes (fp32), built on
    first use (``triton.jit`` reads ``TRITON_INTERPRET`` when it wraps the function)."""
    global _ROW_DOT
    if _ROW_DOT is None:
        import triton
        import triton.language as tl

        @triton.jit
        def neg_row_dot(g_ptr, o_ptr, d_ptr, n_rows, width, n1, n2, sg0, sg1, sg2, sge, so0, so1, so2, soe,
                        sd0, sd1, sd2, BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr):
            r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
            c = r % n2
            b = (r // n2) % n1
            a = r // (n2 * n1)
            e = tl.arange(0, BLOCK_E)
            keep = (r < n_rows)[:, None] & (e < width)[None, :]
            g = tl.load(g_ptr + (a * sg0 + b * sg1 + c * sg2)[:, None] + e[None, :] * sge, mask=keep, other=0.0)
            o = tl.load(o_ptr + (a * so0 + b * so1 + c * so2)[:, None] + e[None, :] * soe, mask=keep, other=0.0)
            delta = tl.sum(g.to(tl.float32) * o.to(tl.float32), axis=1)
            tl.store(d_ptr + a * sd0 + b * sd1 + c * sd2, -delta, mask=r < n_rows)
        _ROW_DOT = neg_row_dot
    return _ROW_DOT


def neg_row_dot(g: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """FlashAttention's ``−Δ = −Σ_e dOut·out`` per row (fp32 ``g.shape[:-1]``), one pass over both
    (any strides); torch where the rows have more than three axes or the tensors are not where
    kernels run."""
    rows = g.shape[:-1]
    traced = torch.compiler.is_compiling() or type(g) is not torch.Tensor or type(o) is not torch.Tensor
    if len(rows) > 3 or g.device.type not in ("cuda", "cpu") or traced:  # fake / traced tensors: torch ops
        return (g.float() * o.float()).sum(-1).neg()
    out = torch.empty(rows, dtype=torch.float32, device=g.device)
    pad = 3 - len(rows)
    gs = [0] * pad + list(g.stride()[:-1])
    os_ = [0] * pad + list(o.stride()[:-1])
    ds = [0] * pad + list(out.stride())
    sizes = [1] * pad + list(rows)
    n_rows, width = out.numel(), g.shape[-1]
    if n_rows == 0:
        return out
    block_e = max(16, 1 << (int(width) - 1).bit_length())
    block_r = max(1, min(64, 4096 // block_e))
    grid = (-(-n_rows // block_r),)
    _row_dot_kernel()[grid](g, o, out, n_rows, width, sizes[1], sizes[2], *gs, g.stride(-1), *os_, o.stride(-1),
                            *ds, BLOCK_R=block_r, BLOCK_E=block_e)
    return out


def _squeeze_to(t: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """``t`` with only the axes ``dims`` (the others have size 1 and are dropped)."""
    drop = [n for n in range(t.dim()) if n not in dims]
    for n in reversed(drop):
        t = t.squeeze(n) if t.shape[n] == 1 else t.sum(n)
    return t


def _expand_to(t: torch.Tensor, dims: list[int], rank: int) -> torch.Tensor:
    """A ``[grid..., rows(, width)]`` tensor as one with an axis per preprocess variable."""
    shape = [1] * rank
    for n, d in enumerate(dims):
        shape[d] = t.shape[n]
    return t.reshape(shape)


__all__ = ["BackwardSource", "GeneratedBackward"]
