"""What :func:`compile` returns: the builds of one function, looked up per call.

A call finds its build by exact shapes first (one dict lookup), then among the symbolic builds
(checked against the traced program's shape relations once per set of shapes), then builds a
new one with :func:`flashlight_hf.compiler.driver.build`. Python values the function reads from
outside are guarded (:mod:`flashlight_hf.compiler.guards`). Every key holds the autocast state
of the call's devices (:mod:`flashlight_hf.compiler.runtime.autocast`): a build traced inside a
``torch.autocast`` region holds its casts and serves only calls in the same state.
"""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from flashlight_hf.compiler import advice
from flashlight_hf.compiler import capture as cap
from flashlight_hf.compiler import guards as guards_
from flashlight_hf.compiler import state as state_
from flashlight_hf.compiler.driver import Build, build
from flashlight_hf.compiler.guards import Guards
from flashlight_hf.compiler.runtime import EagerTrain, autocast, graphs, shape_mismatch


def _spec_key(args: tuple, kwargs: dict) -> Any:
    tensors, constants, spec = cap.split_args(args, kwargs)
    metas = tuple((t.dtype, t.dim(), t.device.type, tuple(int(s) for s in t.shape)) for t in tensors)
    consts = tuple(repr(c) for c in constants if c is not None)
    return metas, consts, str(spec), autocast.of_tensors(tensors)


def _symbolic_key(build_: Build, args: tuple, kwargs: dict) -> Any:
    """Key that ignores the sizes a symbolic kernel takes at run time (sizes 0 and 1 specialise:
    they are kept)."""
    tensors, constants, spec = cap.split_args(args, kwargs)
    dyn = build_.dynamic_axes or []
    metas = []
    for k, t in enumerate(tensors):
        axes = dyn[k] if k < len(dyn) else {}
        shape = tuple(("dyn", min(int(s), 2)) if a in axes else int(s) for a, s in enumerate(t.shape))
        metas.append((t.dtype, t.dim(), t.device.type, shape))
    return tuple(metas), tuple(repr(c) for c in constants if c is not None), str(spec), autocast.of_tensors(tensors)


def _tracing() -> bool:
    """Whether torch.compile or torch.export is tracing the caller right now."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return bool(torch.compiler.is_compiling() or exporting())


def _fast_key(args: tuple, kwargs: dict) -> Any | None:
    """Exact-shape key for the common call ``f(t0, t1, ..., scalar...)``; None for nested args.
    Its last element is the autocast state of the tensors' devices."""
    key = []
    types = set()
    for a in args:
        if isinstance(a, torch.Tensor):
            device = a.device
            key.append((a.dtype, a.shape, device))
            types.add(device.type)
        elif isinstance(a, (int, float, bool, str, type(None))):
            key.append((type(a), a))
        else:
            return None
    if kwargs:
        return None
    key.append(autocast.state(types))
    return tuple(key)


_MEMO_LIMIT = 4096  # exact-shape entries kept per table (a dynamic cache's decode loop: one per step)
_GUARD_TABLES = 16  # sets of guarded values whose builds are kept


class CompiledAttention:
    """What :func:`compile` returns: same signature and results as the wrapped function.

    Builds are looked up by exact shapes first (one dict lookup), then among the symbolic
    builds, which serve a new set of shapes only when :func:`shape_mismatch` finds them inside
    what the traced program holds for (checked once: the exact-shape memo remembers it). Python
    values the function reads from outside (:class:`~flashlight_hf.compiler.guards.Guards`)
    are read at every call; other values select another table of builds.

    Tensors it reads from outside (closures, globals, attributes, a module's parameters and
    buffers: :mod:`~flashlight_hf.compiler.state`) are read at every call too and appended to
    its tensors: kernel inputs, never constants.

    ``guard=False`` skips reading either: for programs built by this package whose outside
    values are part of the key they are cached under (the registry's layer programs)."""

    def __init__(self, fn: Callable, *, guard: bool = True):
        self.fn = fn
        self._warned: set[tuple[str, str]] = set()
        scanned = guards_.scan(fn) if guard else None
        self._guards = Guards(fn, scanned) if guard else None
        if self._guards is not None and not self._guards:
            self._guards = None
        state = state_.find(fn, scanned) if guard else None
        self._state = state if state else None
        # what the compiler traces and replays: fn reading its state from trailing arguments
        self._traced = self._state.functional() if self._state is not None else fn
        self._tables: dict[Any, tuple[dict, list, dict, dict]] = {}
        self._guard_vals: Any = None
        self._use_table(self._guards.values() if self._guards is not None else None)
        # a module's __dict__ holds its parameters and submodules: not this wrapper's to copy
        functools.update_wrapper(self, fn, updated=() if isinstance(fn, torch.nn.Module) else ("__dict__",))

    def with_state(self, args: tuple) -> tuple | None:
        """``args`` followed by the state tensors as they are now; None when the state can no
        longer be read (a deleted attribute: the function then runs as written)."""
        if self._state is None:
            return args
        values = self._state.read()
        return None if values is None else args + values

    def _with_state_or_raise(self, args: tuple) -> tuple:
        """:meth:`with_state` for paths with no function as written to run instead."""
        full = self.with_state(args)
        if full is None:
            raise RuntimeError(f"flashlight: {self._name()} reads a tensor from outside its arguments that is "
                               "no longer there (a deleted attribute or global)")
        return full

    def _use_table(self, vals: Any) -> None:
        table = self._tables.get(vals)
        if table is None:
            if len(self._tables) >= _GUARD_TABLES:
                self._tables.pop(next(iter(self._tables)))
            table = self._tables[vals] = ({}, [], {}, {})
        # builds made (by exact specialisation), symbolic builds, the exact-shape memo of
        # positional calls, and the specialisations a symbolic build was checked to serve
        self._builds, self._symbolic, self._fast, self._checked = table
        self._guard_vals = vals

    def _check_guards(self) -> None:
        vals = self._guards.values()
        if vals != self._guard_vals:
            self._use_table(vals)

    def build_for(self, args: tuple, kwargs: dict) -> Build:
        k = _spec_key(args, kwargs)
        if k in self._builds:
            return self._builds[k]
        if k in self._checked:
            return self._checked[k]
        tensors = None
        for skey, b in self._symbolic:
            if _symbolic_key(b, args, kwargs) == skey:
                tensors = cap.split_args(args, kwargs)[0] if tensors is None else tensors
                if shape_mismatch(b.kernel.program, b.kernel.bound_inputs(tensors)) is None:
                    self._remember(self._checked, k, b)  # these shapes fit it: not checked again
                    return b
        tensors = cap.split_args(args, kwargs)[0] if tensors is None else tensors
        state = autocast.describe(autocast.of_tensors(tensors))
        if _tracing():
            raise RuntimeError(
                f"flashlight: {self._name()} has no kernel for these input shapes yet, and it cannot be generated "
                "while torch.compile / torch.export is tracing. Call the compiled function once eagerly with inputs "
                f"of the same shapes and dtypes, in the same autocast state (this call: {state}), before compiling "
                "or exporting the code that uses it.")
        if tensors:
            graphs.refuse_cold(tensors[0].device, f"{self._name()} has no kernel for these input shapes, dtypes and "
                                                  f"autocast state ({state}) yet: building one traces the program "
                                                  "and compiles it")
        before = self._guard_vals
        b = build(self._traced, args, kwargs, training=True)
        if self._guards is not None:
            after = self._guards.values()
            if after != before:  # tracing itself changed what the function reads: key the table by that
                table = self._tables.pop(before)
                self._tables[after] = table
                self._guard_vals = after
        self._builds[k] = b  # one per build made: bounded by what the caller compiles
        if b.symbolic and b.kernel is not None:
            self._symbolic.append((_symbolic_key(b, args, kwargs), b))
        return b

    def builds(self) -> list[Build]:
        """The builds made so far under the guard values in force, one per specialisation,
        oldest first (a fallback's build has ``kernel=None`` and a ``fallback`` reason): for
        benchmarks and tools that look at the kernels a function runs as."""
        return list(self._builds.values())

    @staticmethod
    def _remember(memo: dict, key: Any, b: Build) -> None:
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()
        memo[key] = b

    def _lookup(self, args: tuple, kwargs: dict) -> tuple[Any | None, Build]:
        """(exact-shape fast key or None, the build for these arguments): the fast key's table
        first, then :meth:`build_for`."""
        if self._guards is not None:
            self._check_guards()
        fast = _fast_key(args, kwargs)
        b = self._fast.get(fast) if fast is not None else None
        if b is None:
            b = self.build_for(args, kwargs)
            if fast is not None:
                self._remember(self._fast, fast, b)
        return fast, b

    def _eager(self, b: Build, args: tuple, kwargs: dict) -> Any:
        """The program as written (``args`` hold the state last); a fallback warns once, after
        eager ran (when eager itself rejects the inputs, its error is what the caller sees)."""
        out = self._traced(*args, **kwargs)
        if b.fallback is not None and b.fallback not in self._warned:
            self._warned.add(b.fallback)
            warnings.warn(f"flashlight: running {self._name()} unfused "
                          f"(eager PyTorch): node {b.fallback[0]!r}: {self._advice(b.fallback)}", stacklevel=3)
        return out

    def _advice(self, fallback: tuple[str, str]) -> str:
        """The fallback's reason followed by what the user can change (:mod:`..advice`), naming
        the tensors the function reads from places no value can be put for a call."""
        node, why = fallback
        left = self._state_left_out()
        if left and node == "capture":
            why = (f"it reads {', '.join(left)} from outside its arguments through a place no value can be put "
                   f"for a call (a property, a call's result, a tuple); {why}")
        return advice.with_advice(node, why)

    def _state_left_out(self) -> list[str]:
        return self._state.left_out if self._state is not None else []

    def _name(self) -> str:
        fn = getattr(self.fn, "func", self.fn)  # a functools.partial: its function's name
        return getattr(fn, "__name__", None) or type(fn).__name__

    def _first_launch(self, b: Build, launch: Callable[[], Any], device: torch.device) -> Any:
        """A build's first launch: an error there (Triton cannot compile the source, a kernel
        rule that fails at run time) turns the build into a fallback instead of a crash. Not
        under CUDA graph capture (it compiles and tunes): that raises, naming the warm-up."""
        graphs.refuse_cold(device, f"the first launch of {self._name()}'s kernel compiles and tunes it")
        t0 = time.perf_counter()
        try:
            out = launch()
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # the first result, not its launch: what a user waits for
        except graphs.GraphCaptureError:
            raise
        except Exception as exc:  # noqa: BLE001 - the generated kernel failed: run the program as written
            b.kernel, b.fallback = None, ("launch", f"the generated kernel failed: {type(exc).__name__}: {exc}")
            return _FAILED
        b.launched = True
        b.timings["first_launch"] = time.perf_counter() - t0  # Triton compiles (and tunes) here
        return out

    def dropout(self, p: float) -> Callable[..., Any]:
        """The program with attention dropout ``p`` on its probabilities, as Transformers applies
        it in training (``dropout(softmax(s)) @ V``), inside the generated kernels: the mask is a
        counter-based draw seeded from PyTorch's generator (``torch.manual_seed`` reproduces a
        run) and regenerated by the backward. ``p == 0`` is the program itself. Raises where
        the program has no value contraction to drop out or no generated backward for it (the
        function as written has no dropout to fall back to)."""
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"flashlight: dropout p must be in [0, 1), got {p}")
        if float(p) == 0.0:
            return self

        def call(*args: Any, **kwargs: Any) -> Any:
            args = self._with_state_or_raise(args)
            _, b = self._lookup(args, kwargs)
            if b.kernel is None or not b.kernel.supports_dropout():
                why = b.fallback or ("backward", b.source.backward_error if b.source is not None and
                                     b.source.backward_error else "no value contraction to drop out")
                raise NotImplementedError(f"flashlight: attention dropout cannot run inside the kernels of "
                                          f"{getattr(self.fn, '__name__', 'the program')}: node {why[0]!r}: {why[1]}")
            tensors = cap.split_args(args, kwargs)[0]
            graphs.refuse(tensors[0].device, f"attention dropout in {self._name()} draws its mask's seed on the host "
                                             "at every call, so a captured CUDA graph would replay one dropout mask at "
                                             "every step: capture the step without dropout, or run it uncaptured")
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())  # PyTorch's CPU generator: no device sync
            return _train_forward(b.op_key, tensors, float(p), seed)
        return call

    def supports_dropout(self, *args: Any, **kwargs: Any) -> bool:
        """Whether :meth:`dropout` runs in the kernels for arguments like these."""
        full = self.with_state(args)
        if full is None:
            return False
        _, b = self._lookup(full, kwargs)
        return b.kernel is not None and b.kernel.supports_dropout()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._state is not None:
            full = self.with_state(args)
            if full is None:  # its state is gone: what the function as written does (raises, mostly)
                out = self.fn(*args, **kwargs)
                if ("state", "gone") not in self._warned:
                    self._warned.add(("state", "gone"))
                    warnings.warn(f"flashlight: running {self._name()} unfused (eager PyTorch): a tensor it read "
                                  "from outside its arguments when compiled is no longer there", stacklevel=2)
                return out
            args = full
        fast, b = self._lookup(args, kwargs)
        if b.kernel is None:
            return self._eager(b, args, kwargs)
        # the fast key admits only flat positional arguments, so the tensors are those of args
        tensors = [a for a in args if isinstance(a, torch.Tensor)] if fast is not None else \
            cap.split_args(args, kwargs)[0]
        direct = fast is not None and _plain_eager_call(tensors)
        if not direct and _wants_grad(tensors) and not b.kernel.has_backward():
            self._warn_recompute(b)
        if not direct and _wants_grad(tensors) and b.kernel.has_backward():
            # training: the forward that keeps the per-row statistics the generated backward reads
            run = functools.partial(_train_forward, b.op_key, tensors)
            if b.launched:
                return run()
            out = self._first_launch(b, run, tensors[0].device)
            return self._eager(b, args, kwargs) if out is _FAILED else out
        if b.launched:
            # nothing to differentiate, trace or export: launch directly (the custom op's
            # dispatch costs tens of microseconds per call, a decode step's layers add them up)
            return b.kernel(tensors) if direct else torch.ops.flashlight.fused(b.op_key, tensors)
        run = functools.partial(b.kernel, tensors) if direct else \
            functools.partial(torch.ops.flashlight.fused, b.op_key, tensors)
        out = self._first_launch(b, run, tensors[0].device)
        return self._eager(b, args, kwargs) if out is _FAILED else out

    def _warn_recompute(self, b: Build) -> None:
        """Once per build: its gradient is the exact recompute backward, and why."""
        why = b.source.backward_error or "no generated backward"
        if ("backward", why) not in self._warned:
            self._warned.add(("backward", why))
            warnings.warn(f"flashlight: the backward of {getattr(self.fn, '__name__', 'the program')} re-runs it "
                          f"eagerly under autograd (exact, N×N memory): {why}", stacklevel=3)

    def into(self, out: torch.Tensor, *args: Any) -> torch.Tensor:
        """``out.copy_(self(*args))`` without the copy where the kernel can write ``out`` itself
        (any strides: a caller's final layout; ``out`` of the dtype the call returns, which an
        autocast region may change). ``args`` are flat positional arguments."""
        full = self.with_state(args)
        if full is None:
            return out.copy_(self(*args))
        fast, b = self._lookup(full, {})
        tensors = [a for a in full if isinstance(a, torch.Tensor)]
        if fast is not None and b.kernel is not None and out.dtype == b.kernel.program.out_dtype and \
                _plain_eager_call(tensors + [out]):
            if b.launched:
                return b.kernel(tensors, out=out)
            if self._first_launch(b, functools.partial(b.kernel, tensors, out=out), out.device) is not _FAILED:
                return out
        return out.copy_(self(*args))


_FAILED = object()


def _wants_grad(tensors: list[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _train_forward(key: str, tensors: list[torch.Tensor], dropout_p: float = 0.0, seed: int = 0) -> torch.Tensor:
    """The training forward: through ``EagerTrain`` (no dispatcher) on plain eager tensors, else
    the ``fused_train`` op (torch.compile, export, fake and subclass tensors need it)."""
    if _plain_tensors(tensors):
        return EagerTrain.apply(key, dropout_p, seed, *tensors)
    out, _ = torch.ops.flashlight.fused_train(key, tensors, dropout_p, seed)
    return out


def _plain_tensors(tensors: list[torch.Tensor]) -> bool:
    """Real tensors (or parameters) outside torch.compile: nothing traces the call."""
    if torch.compiler.is_compiling():
        return False
    return all(type(t) is torch.Tensor or isinstance(t, torch.nn.Parameter) for t in tensors)


def _plain_eager_call(tensors: list[torch.Tensor]) -> bool:
    """An eager call with real tensors that needs no autograd: the custom op would only add
    dispatch. Under torch.compile / export / fake tensors, or with gradients, the op is used."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return _plain_tensors(tensors)


def compile(fn: Callable) -> CompiledAttention:  # noqa: A001 - the public name the issue asks for
    """Compile an attention function written in plain PyTorch into a fused Triton kernel."""
    return CompiledAttention(fn)


@dataclass
class Explanation:
    """What was fused and why not: see ``str(explanation)``."""

    num_kernels: int
    fallbacks: list[tuple[str, str]] = field(default_factory=list)
    ir: str = ""
    sources: list[str] = field(default_factory=list)
    # the gradient: how many generated kernels it runs as (dK/dV and dQ; 0: the exact recompute
    # backward), why not where it recomputes, and the kernels' sources
    backward_kernels: int = 0
    backward_fallbacks: list[tuple[str, str]] = field(default_factory=list)
    backward_sources: list[str] = field(default_factory=list)
    training_source: str = ""  # the forward training runs instead (it also stores what the backward reads)

    def __str__(self) -> str:
        parts = [f"kernels: {self.num_kernels}", f"backward kernels: {self.backward_kernels}"]
        if self.fallbacks:
            parts.append("fallbacks:\n" + "\n".join(f"  {n}: {r}" for n, r in self.fallbacks))
        if self.backward_fallbacks:
            parts.append("backward fallbacks (the gradient recomputes the program eagerly):\n" +
                         "\n".join(f"  {n}: {r}" for n, r in self.backward_fallbacks))
        if self.ir:
            parts.append("IR:\n" + self.ir)
        for k, s in enumerate(self.sources):
            parts.append(f"kernel {k} source:\n{s}")
        for k, s in enumerate(self.backward_sources):
            parts.append(f"backward kernel {k} source:\n{s}")
        return "\n\n".join(parts)


def explain(fn: Callable, *example_args: Any, **example_kwargs: Any) -> Explanation:
    """Compile ``fn`` for the example inputs and report kernels, fallbacks, IR and sources."""
    c = fn if isinstance(fn, CompiledAttention) else CompiledAttention(fn)
    b = build(c._traced, c._with_state_or_raise(example_args), example_kwargs, training=True)
    ir_text = b.program.describe() if b.program is not None else ""
    if b.kernel is None:
        why = [(b.fallback[0], c._advice(b.fallback))] if b.fallback else []
        return Explanation(0, why, ir_text, [], 0, list(why))
    src = b.source
    if src.backward is None:
        return Explanation(1, [], ir_text, [src.source], 0, [_backward_reason(src.backward_error)])
    kernels = [k.source for k in src.backward.kernels]
    captured = sorted(src.backward.no_grad.values())  # inputs whose gradient recomputes when wanted
    return Explanation(1, [], ir_text, [src.source], len(kernels), captured, kernels, src.train.source)


def _backward_reason(error: str | None) -> tuple[str, str]:
    """``"node 'x': why"`` (codegen's wording) as (node, why)."""
    text = error or "no generated backward"
    if text.startswith("node '") and "': " in text:
        node, why = text[len("node '"):].split("': ", 1)
        return node, why
    return "backward", text
