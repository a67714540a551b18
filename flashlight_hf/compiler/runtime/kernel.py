"""A generated kernel bound to its program: the object the driver calls with real tensors.

Generated source is loaded from memory (:mod:`.loader`). Before a set of input shapes' first
launch, the shapes are checked against the relations the traced program imposes
(:func:`~.shapes.shape_mismatch`) and the call's plan is made (:class:`~.plan.ShapePlan`: sizes,
grid, key shares, tile choice), once per set of shapes and launch switches; later calls with
those shapes look the plan up and, on a GPU, relaunch directly with only the pointers new.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from flashlight_hf.compiler.codegen import KernelSource
from flashlight_hf.compiler.ir import Program
from flashlight_hf.compiler.runtime import graphs
from flashlight_hf.compiler.runtime.block_table import BlockTable
from flashlight_hf.compiler.runtime.hooks import launch_hooks
from flashlight_hf.compiler.runtime.launch import Launcher
from flashlight_hf.compiler.runtime.loader import load_kernel
from flashlight_hf.compiler.runtime.plan import ShapePlan, constexprs, row_tiles, tensor_args
from flashlight_hf.compiler.runtime.shapes import ShapeError, shape_mismatch
from flashlight_hf.compiler.runtime.sizes import SizeFunction, sum_extent
from flashlight_hf.compiler.runtime.split_kv import SplitKV
from flashlight_hf.compiler.runtime.switches import LaunchSwitches, launch_switches
from flashlight_hf.compiler.runtime.backward import GeneratedBackward
from flashlight_hf.compiler.runtime.training import TrainingForward, lse_of
from flashlight_hf.compiler.runtime.tune import ChoiceStore, LaunchConfig, Tuner, kernel_id, tune_on_call

_MAX_PLANS = 256  # a dynamic cache's decode loop makes one new set of shapes per step


@dataclass
class CompiledKernel:
    """A generated forward kernel bound to its program; call with the flat tensor inputs.

    Tile sizes are autotuned per (row-count, key-count) power-of-two bucket on the first call
    that lands in a bucket (GPU only, :class:`~.tune.Tuner`); sequence lengths stay runtime
    arguments, so a bucket never recompiles the source. A decode step's bucket also decides
    between one launch and a split-KV launch (:class:`~.split_kv.SplitKV`). What a call's input
    shapes imply (sizes, grid, splits) is computed once per set of shapes: a decode loop
    repeats them at every layer of every step.
    """

    program: Program
    source: KernelSource
    # the file name each generated source is known by (the driver's readable copy), or None
    name_file: Callable[[str], str | None] | None = None
    choices: ChoiceStore | None = None  # where tuning choices outlive the process (the disk cache)
    _plans: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._launcher = Launcher(self._load(self.source))
        self._direct = all(isinstance(b, int) for b in self.program.bindings)  # no constant inputs
        out_extents = [sum_extent(ax) for ax in self.program.out_axes]
        src = self.source
        exprs = out_extents + list(src.runtime_sizes) + [src.row_extent, src.loop_extent] + list(src.grid_extents)
        self._sizes = SizeFunction(self.program, exprs)
        self._n_out, self._n_rt = len(out_extents), len(src.runtime_sizes)
        self._tuner = Tuner(src.tile_pads, self.choices, kernel_id(src.source))
        # data-dependent masks: the key tiles of each launch come from a block table built first
        self._table = BlockTable(self.program, src.table, self._load) if src.table is not None else None
        self._split = None
        self._train: dict[bool, TrainingForward] = {}  # loaded on first use, without and with dropout
        self._backward: dict[bool, GeneratedBackward] = {}
        self._train_tuner: Tuner | None = None  # the training forward's tiles, tuned on its own
        self._train_plans: dict = {}
        if src.split is not None or src.split_fused is not None:
            self._split = SplitKV(self.program, src, self._load)

    def _load(self, src: KernelSource) -> Any:
        return load_kernel(src, self.name_file(src.source) if self.name_file is not None else None)

    def bound_inputs(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The kernel's inputs from the program's: tensors picked by binding, constants moved
        to the inputs' device."""
        bindings = self.program.bindings
        if self._direct:
            return [tensors[b] for b in bindings]
        device = tensors[0].device if tensors else torch.device("cpu")
        return [tensors[b] if isinstance(b, int) else self._constant(b, device) for b in bindings]

    def _constant(self, t: torch.Tensor, device: torch.device) -> torch.Tensor:
        """A tensor the program holds as a constant, on the inputs' device: a copy at every call
        where it lives elsewhere, which a CUDA graph cannot capture (a synchronising host copy)."""
        if t.device == device:
            return t
        graphs.refuse(device, f"{self.source.name} reads a {t.device} tensor of shape {tuple(t.shape)} that its "
                              f"program holds as a constant (created on the host inside it, or closed over) and "
                              f"copies it to {device} at every call, which a CUDA graph cannot capture: create "
                              f"that tensor on {device}, or pass it as an argument")
        return t.to(device)

    # -- public hooks (benchmarks, tests) -----------------------------------------------------------
    def plans(self) -> list[ShapePlan]:
        """The plans made so far, oldest first: one per set of input shapes, strides, dtypes,
        devices and launch switches (``plan.switches``), with their tile choice once launched."""
        return list(self._plans.values())

    def make_plan(self, inputs: list[torch.Tensor], switches: LaunchSwitches | None = None) -> ShapePlan:
        """A fresh plan for these (bound) inputs, not kept: their sizes and key shares, no
        launch configuration yet. Raises :class:`ShapeError` for shapes the program does not
        hold for. ``switches``: the launch switches in force by default."""
        switches = launch_switches() if switches is None else switches
        why = shape_mismatch(self.program, inputs)
        if why is not None:
            raise ShapeError(f"flashlight: {self.source.name} cannot run on inputs of shapes "
                             f"{[tuple(t.shape) for t in inputs]}: {why}")
        sizes = self._sizes(inputs)
        n_out, n_rt = self._n_out, self._n_rt
        n_grid = 1
        for g in sizes[n_out + n_rt + 2:]:
            n_grid *= g
        rows, keys = sizes[n_out + n_rt], sizes[n_out + n_rt + 1]
        out_shape = torch.Size(sizes[:n_out])
        splits = 1 if self._split is None else self._split.num_splits(rows, keys, n_grid, inputs[0].device, switches)
        plan = ShapePlan(out_shape=out_shape, runtime=list(sizes[n_out:n_out + n_rt]), rows=rows, keys=keys,
                         n_grid=n_grid, splits=splits, switches=switches, empty=out_shape.numel() == 0)
        if self._split is not None:
            self._split.fill_sizes(plan, inputs)
        return plan

    def launch_args(self, inputs: list[torch.Tensor], out: torch.Tensor, plan: ShapePlan) -> list[Any]:
        """The single-launch kernel's arguments, in its signature's order: each input with its
        strides, the output with its, the run-time sizes (constexprs not included)."""
        return tensor_args(inputs, self.source.input_args) + [out, *out.stride(), *plan.runtime]

    # -- a call ------------------------------------------------------------------------------------
    def __call__(self, tensors: Sequence[torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
        """Launch on ``tensors`` (the program's inputs); the result goes to a new tensor, or into
        ``out`` (any strides) when given: the caller's final layout, with no copy after."""
        inputs = self.bound_inputs(tensors)
        switches = launch_switches()
        first = inputs[0]
        # strides and dtypes too: a plan's direct launches hold every integer argument
        shape_key = (tuple([(t.shape, t.stride(), t.dtype, t.device) for t in inputs]),
                     None if out is None else out.stride(), first.get_device(), switches)
        plan = self._plans.get(shape_key)
        if plan is None:
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            plan = self._plans[shape_key] = self.make_plan(inputs, switches)
        if out is None:
            out = torch.empty(plan.out_shape, dtype=self.program.out_dtype, device=first.device)
        elif out.shape != plan.out_shape or out.dtype != self.program.out_dtype or \
                out.get_device() != first.get_device():
            raise ValueError(f"flashlight: out= is {tuple(out.shape)} {out.dtype} on {out.device}; this call "
                             f"writes {tuple(plan.out_shape)} {self.program.out_dtype} on {first.device}")
        if plan.empty:
            return out
        if plan.choice is None or plan.provisional:  # tuned (or looked up) once per set of shapes
            graphs.refuse_cold(first.device, f"{self.source.name} has not run on inputs of shapes "
                                             f"{[tuple(t.shape) for t in inputs]} yet" if plan.choice is None else
                               f"{self.source.name} tunes its tiles for inputs of shapes "
                               f"{[tuple(t.shape) for t in inputs]} at their call number {tune_on_call()} "
                               "(FLASHLIGHT_TUNE_ON_CALL): warm up with that many calls, or set it to 1, "
                               "before capturing")
            choice = self._choose(inputs, out, plan, switches)
            if choice != plan.choice:  # the direct launches hold the old tiles
                plan.direct, plan.no_direct, plan.kernel_names = None, False, None
            plan.choice = choice
            plan.provisional = not self._tuner.tuned(plan.rows, plan.keys, plan.n_grid, switches)
        cfg, splits = plan.choice
        hooks = launch_hooks()
        if hooks:
            names = plan.kernel_names or self._kernel_names(plan, switches)
            for hook in hooks:
                for name in names:
                    hook(name)
        if plan.direct is not None and plan.direct(inputs, out):
            return out
        if splits > 1:
            run, _ = self._split.runner(switches)
            run(inputs, out, plan, splits, cfg)
        else:
            self.launch_single(cfg, self.launch_args(inputs, out, plan), plan.rows, plan.n_grid, inputs)
        if plan.direct is None and not plan.no_direct:  # launched (compiled) once: relaunch directly
            plan.direct = self._direct_launch(inputs, out, plan, switches)
            plan.no_direct = plan.direct is None
        return out

    def forward_for_backward(self, tensors: Sequence[torch.Tensor], *, out: torch.Tensor | None = None,
                             saved: list[torch.Tensor] | None = None,
                             dropout: tuple[int, float] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The training-mode forward: the output and what the generated backward reads (per softmax
        stream of ``source.train.lse_accs`` its running max in log2 units and log2 denominator,
        fp32 ``[grid..., rows]``; then the normalised accumulators of ``source.train.train_accs``).
        One launch, the ordinary forward's tile choice for the bucket; no split-KV. Needs a build
        with ``training=True``. ``out`` / ``saved``: buffers to write. ``dropout``: (seed, p) for
        attention dropout in the value contractions (:meth:`supports_dropout`)."""
        train = self.source.train if dropout is None else self.source.train_dropout
        if train is None:
            why = self.source.train_error or ("no dropout variant" if dropout is not None else
                                              "the kernel was generated without training=True")
            raise RuntimeError(f"flashlight: no training-mode kernel for {self.source.name}: {why}")
        variant = dropout is not None
        if variant not in self._train:
            self._train[variant] = TrainingForward(self.program, train, self._load)
        launch = self._train[variant]
        inputs = self.bound_inputs(tensors)
        switches = launch_switches()
        shape_key = (tuple([(t.shape, t.stride(), t.dtype, t.device) for t in inputs]), switches, variant)
        plan = self._train_plans.get(shape_key)
        if plan is None:  # checks the shapes and gives the output's, once per set of shapes
            if len(self._train_plans) >= _MAX_PLANS:
                self._train_plans.clear()
            plan = self._train_plans[shape_key] = self.make_plan(inputs, switches)
        if out is None:
            out = torch.empty(plan.out_shape, dtype=self.program.out_dtype, device=inputs[0].device)
        elif out.shape != plan.out_shape or out.dtype != self.program.out_dtype:
            raise ValueError(f"flashlight: out= is {tuple(out.shape)} {out.dtype}; this call writes "
                             f"{tuple(plan.out_shape)} {self.program.out_dtype}")
        if plan.choice is None or plan.provisional:
            graphs.refuse_cold(out.device, f"the training forward of {self.source.name} has not run on inputs of "
                                           f"shapes {[tuple(t.shape) for t in inputs]} yet (or tunes its tiles at "
                                           f"call number {tune_on_call()}, FLASHLIGHT_TUNE_ON_CALL)")
            if self._train_tuner is None:
                self._train_tuner = Tuner(self.source.tile_pads, self.choices, kernel_id(self.source.train.source))
            plan.choice = self._train_tuner.choose(plan.rows, plan.keys, plan.n_grid, 1, out.device, switches,
                                                   lambda c: launch(inputs, out, c, saved, dropout),
                                                   lambda c, s: None)
            plan.provisional = not self._train_tuner.tuned(plan.rows, plan.keys, plan.n_grid, switches)
        return out, launch(inputs, out, plan.choice[0], saved, dropout)

    def supports_dropout(self) -> bool:
        """Whether attention dropout runs inside the generated training kernels."""
        return self.source.train_dropout is not None

    def forward_with_lse(self, tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The output and, per softmax stream, its per-row log-sum-exp (natural log, fp32
        ``[grid..., rows]``): the stream's probabilities are ``exp(s − lse)``."""
        out, saved = self.forward_for_backward(tensors)
        return out, lse_of(saved, len(self.source.train.lse_accs))

    def has_backward(self) -> bool:
        """Whether the gradient can run as generated kernels (else: the recompute backward)."""
        return self.source.backward is not None

    def _generated_backward(self, dropout: bool = False) -> GeneratedBackward:
        if dropout not in self._backward:
            from flashlight_hf import settings
            src = self.source.train_dropout if dropout else self.source
            self._backward[dropout] = GeneratedBackward(self.program, src.backward, src.train if not dropout else src,
                                                        self._load, settings.current().interpret, self.choices)
        return self._backward[dropout]

    def _bound_wanted(self, wanted: Sequence[bool]) -> list[bool]:
        return [isinstance(b, int) and bool(wanted[b]) for b in self.program.bindings]

    def _per_tensor(self, got: Sequence[torch.Tensor | None], n: int) -> list[torch.Tensor | None]:
        """Gradients per kernel input summed into gradients per program tensor."""
        grads: list[torch.Tensor | None] = [None] * n
        for b, g in zip(self.program.bindings, got):
            if isinstance(b, int) and g is not None:
                grads[b] = g if grads[b] is None else grads[b] + g
        return grads

    def backward_preprocess(self, tensors: Sequence[torch.Tensor], out: torch.Tensor, saved: Sequence[torch.Tensor],
                            grad_out: torch.Tensor, wanted: Sequence[bool],
                            dropout: tuple[int, float] | None = None) -> tuple[list, list]:
        """The backward's first step, in torch (call where autograd records): (dA per
        contraction, per program tensor the gradient of what only the epilogue reads)."""
        daccs, epi = self._generated_backward(dropout is not None).preprocess(self.bound_inputs(tensors), out, saved, grad_out,
                                                           self._bound_wanted(wanted))
        got = [epi.get(k) for k in range(len(self.program.bindings))]
        return daccs, self._per_tensor(got, len(tensors))

    def backward_kernels(self, tensors: Sequence[torch.Tensor], saved: Sequence[torch.Tensor],
                         daccs: Sequence[torch.Tensor], wanted: Sequence[bool],
                         dropout: tuple[int, float] | None = None) -> list[torch.Tensor | None]:
        """The backward's kernels: per program tensor its gradient through the scores and values."""
        got = self._generated_backward(dropout is not None).kernels(self.bound_inputs(tensors), saved, daccs,
                                                                    self._bound_wanted(wanted), dropout)
        return self._per_tensor(got, len(tensors))

    def backward(self, tensors: Sequence[torch.Tensor], out: torch.Tensor, saved: Sequence[torch.Tensor],
                 grad_out: torch.Tensor, wanted: Sequence[bool],
                 dropout: tuple[int, float] | None = None) -> list[torch.Tensor | None]:
        """Per program tensor (``tensors``) its gradient where ``wanted`` says, through the
        generated backward; ``out`` / ``saved`` are :meth:`forward_for_backward`'s (with the same
        ``dropout``)."""
        with torch.enable_grad():
            daccs, epi = self.backward_preprocess(tensors, out, saved, grad_out, wanted, dropout)
        got = self.backward_kernels(tensors, saved, daccs, wanted, dropout)
        return [_add(a, b, t) if w else None for a, b, t, w in zip(got, epi, tensors, wanted)]

    def reached(self) -> set[int]:
        """The program tensors whose gradient the backward's kernels write (through a load of theirs)."""
        info = self.source.backward
        loads = info.reached() if info is not None else set()
        return {b for k, b in enumerate(self.program.bindings) if isinstance(b, int) and k in loads}

    def backward_missing(self, wanted: Sequence[bool]) -> tuple[str, str] | None:
        """(node, reason) when a wanted gradient is not generated (the recompute backward runs)."""
        if self.source.backward is None:
            return ("backward", self.source.backward_error or "no generated backward")
        for k, b in enumerate(self.program.bindings):
            if isinstance(b, int) and b < len(wanted) and wanted[b] and k in self.source.backward.no_grad:
                return self.source.backward.no_grad[k]
        return None

    def launch_single(self, cfg: LaunchConfig, args: list, rows: int, n_grid: int,
                      inputs: list[torch.Tensor] | None = None) -> None:
        """One launch of the single-launch kernel (the whole key loop per program); with
        data-dependent masks, after the block table for ``cfg``'s tiles (built from ``inputs``)."""
        if self._table is not None:
            if inputs is None:
                raise ValueError("flashlight: this kernel walks a block table: launch_single needs the inputs")
            cut = len(args) - len(self.source.runtime_sizes)
            args = args[:cut] + [self._table(inputs, cfg.block_m, cfg.block_n, False)] + args[cut:]
        self._launcher(row_tiles(rows, cfg, n_grid), args, constexprs(cfg), cfg.num_warps, cfg.num_stages)

    def _choose(self, inputs: list[torch.Tensor], out: torch.Tensor, plan: ShapePlan,
                switches: LaunchSwitches) -> tuple[LaunchConfig, int]:
        """(tile configuration, key splits) for this call: :meth:`Tuner.choose` timing this
        call's own launches."""
        args = self.launch_args(inputs, out, plan)
        return self._tuner.choose(
            plan.rows, plan.keys, plan.n_grid, plan.splits, out.device, switches,
            lambda cfg: self.launch_single(cfg, args, plan.rows, plan.n_grid, inputs),
            lambda cfg, splits: self._split.runner(switches)[0](inputs, out, plan, splits, cfg))

    def _kernel_names(self, plan: ShapePlan, switches: LaunchSwitches) -> list[str]:
        """The generated kernels one call with this plan launches (for launch hooks)."""
        plan.kernel_names = self._split.runner(switches)[1] if plan.choice[1] > 1 else [self.source.name]
        return plan.kernel_names

    def _direct_launch(self, inputs: list[torch.Tensor], out: torch.Tensor, plan: ShapePlan,
                       switches: LaunchSwitches) -> Callable[[list, torch.Tensor], bool] | None:
        """``direct(inputs, out) -> bool``: this plan's launches with only the pointers new
        (:class:`flashlight_hf.compiler.runtime.launch.DirectLaunch`), for a decode loop that
        repeats one set of shapes at every layer. None where Triton's path must stay (the
        interpreter, fast launches off, unaligned pointers); False from a call: launch the
        usual way (a pointer not aligned, a launch hook set)."""
        cfg, splits = plan.choice
        if splits > 1:
            return self._split.direct(inputs, out, plan, switches)
        if self._table is not None:
            return None  # the table is built per call, from the call's masks
        n_tiles = row_tiles(plan.rows, cfg, plan.n_grid)
        single = self._launcher.direct(self.launch_args(inputs, out, plan), constexprs(cfg), cfg.num_warps,
                                       cfg.num_stages)
        if single is None:
            return None
        which = self.source.input_args
        return lambda ins, o: single(n_tiles, [ins[k].data_ptr() for k in which] + [o.data_ptr()])


def _add(a: torch.Tensor | None, b: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """The sum of two partial gradients (either may be None), in the input's dtype."""
    if a is None and b is None:
        return None
    g = a if b is None else b if a is None else a + b
    return g.to(like.dtype)
