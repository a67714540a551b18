"""State: the tensors a compiled function reads from outside its arguments.

FlexAttention users write captured buffers as closures (ALiBi slopes, document ids, a bias
table), nanoGPT keeps its causal mask as a registered buffer, and ``flashlight_hf.compile``
takes an ``nn.Module``. Tracing such a function in fake mode meets a real tensor and fails; and
baking the tensor into the kernel as a constant would be wrong the moment the tensor changes
(an in-place update, a parameter being trained, a new tensor bound to the same name).

So those tensors become kernel inputs, like the arguments: found once from the function's
bytecode (:func:`flashlight_hf.compiler.guards.scan`: closure cells, globals, attribute chains
off them and off ``self``, small containers of tensors, every parameter and buffer of a module
reached), **read again at every call** and appended to the call's tensors. The builds key on
their shapes and dtypes like any argument's, never on their values, and gradients reach them
(the generated backward differentiates every kernel input).

To trace the function with them as inputs, :func:`State.functional` returns a function of
``(*args, *state)`` that, for the duration of the call, puts the given values where the
function reads them (a closure cell's contents, a global, an attribute, a container item, a
module's ``_parameters`` / ``_buffers`` entry) and puts the originals back after — as
``torch.func.functional_call`` does for a module's parameters. The tracer runs it with fake
tensors; the recompute backward and the shape fallback run it with real ones. A place that
cannot be written (a property, a tuple held by a tuple, a ``functools.partial``'s bound
arguments nested inside the function) is left out: tracing then meets the real tensor and the
program runs unfused with a warning saying what to change — never a wrong answer.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from flashlight_hf.compiler import guards

_MISSING = object()
_LOCK = threading.RLock()  # values are swapped into shared Python state: one swap at a time
_MAX_TENSORS = 64  # state tensors per function (more: the function is probably not an attention program)


@dataclass(frozen=True)
class Ref:
    """Where one state tensor lives: a root and a path of steps from it.

    ``root``: ``("cell", cell, name)``, ``("global", globals, name)``, ``("self", object)`` or
    ``("partial", partial_object)``; each step is ``("attr", name)``, ``("item", key)``,
    ``("param", name)`` / ``("buffer", name)`` (an ``nn.Module``'s) or, from a partial,
    ``("arg", index)`` / ``("kwarg", name)``."""

    root: tuple
    steps: tuple[tuple[str, Any], ...]
    name: str  # a readable identifier (the generated source names the kernel's pointer after it)

    def read(self) -> Any:
        """The value there now, or ``_MISSING``."""
        try:
            obj = _root_value(self.root)
            for step in self.steps:
                obj = _step(obj, step)
            return obj
        except (AttributeError, KeyError, IndexError, TypeError, ValueError):
            return _MISSING


def _root_value(root: tuple) -> Any:
    kind = root[0]
    if kind == "cell":
        return root[1].cell_contents
    if kind == "global":
        return root[1][root[2]]
    return root[1]


def _step(obj: Any, step: tuple[str, Any]) -> Any:
    kind, key = step
    if kind == "attr":
        return getattr(obj, key)
    if kind == "param":
        return obj._parameters[key]
    if kind == "buffer":
        return obj._buffers[key]
    if kind == "arg":
        return obj.args[key]
    if kind == "kwarg":
        return obj.keywords[key]
    return obj[key]


def _set_root(root: tuple, value: Any) -> None:
    if root[0] == "cell":
        root[1].cell_contents = value
    elif root[0] == "global":
        root[1][root[2]] = value
    else:
        raise TypeError("the object itself cannot be replaced")


def _set_step(parent: Any, step: tuple[str, Any], value: Any) -> None:
    """Write ``value`` at ``step`` of ``parent`` (a place :func:`_writable` accepted)."""
    kind, key = step
    if kind == "param":
        parent._parameters[key] = value
    elif kind == "buffer":
        parent._buffers[key] = value
    elif kind == "attr":
        if isinstance(parent, torch.nn.Module):
            parent.__dict__[key] = value
        else:
            setattr(parent, key, value)
    else:
        parent[key] = value


def _writable(parent: Any, step: tuple[str, Any]) -> bool:
    """Whether ``step`` of ``parent`` is a place a value can be put for a call and taken back:
    instance attributes, module parameters and buffers, list and dict items."""
    kind, key = step
    if kind in ("param", "buffer"):
        return True
    if kind == "attr":
        try:
            return key in vars(parent)
        except TypeError:
            return False
    if kind == "item":
        return isinstance(parent, (list, dict))
    return False


def _identifier(text: str) -> str:
    out = "".join(c if c.isalnum() else "_" for c in text).strip("_") or "state"
    return out if not out[0].isdigit() else f"t_{out}"


class _Finder:
    """Expands what the scan found into one :class:`Ref` per tensor."""

    def __init__(self) -> None:
        self.refs: list[Ref] = []
        self.left_out: list[str] = []  # tensors found where no value can be put (described)
        self.seen: set[int] = set()  # tensors already found (one input per tensor object)

    def tensor(self, root: tuple, steps: tuple, name: str, value: torch.Tensor, parent: Any) -> None:
        if id(value) in self.seen or len(self.refs) >= _MAX_TENSORS:
            return
        self.seen.add(id(value))
        if root[0] != "partial" and (steps and not _writable(parent, steps[-1]) or
                                     not steps and root[0] not in ("cell", "global")):
            self.left_out.append(name)
            return
        self.refs.append(Ref(root, steps, _identifier(name)))

    def value(self, root: tuple, steps: tuple, name: str, value: Any, parent: Any, depth: int = 0) -> None:
        if isinstance(value, torch.Tensor):
            self.tensor(root, steps, name, value, parent)
        elif isinstance(value, torch.nn.Module):
            for mod_name, mod in value.named_modules(remove_duplicate=False):
                path = tuple(("attr", p) for p in mod_name.split(".")) if mod_name else ()
                for kind, table in (("param", mod._parameters), ("buffer", mod._buffers)):
                    for key, t in table.items():
                        if t is not None:
                            label = ".".join(x for x in (name, mod_name, key) if x)
                            self.tensor(root, steps + path + ((kind, key),), label, t, mod)
        elif depth < 2 and isinstance(value, (list, tuple)):
            for n, x in enumerate(value):
                self.value(root, steps + (("item", n),), f"{name}_{n}", x, value, depth + 1)
        elif depth < 2 and isinstance(value, dict):
            for key, x in value.items():
                if isinstance(key, (str, int)):
                    self.value(root, steps + (("item", key),), f"{name}_{key}", x, value, depth + 1)


class State:
    """The state tensors of one function: where each lives, how to read them all, and the
    function of ``(*args, *state)`` the compiler traces."""

    def __init__(self, fn: Callable[..., Any], refs: list[Ref], left_out: list[str]):
        self.fn = fn
        self.refs = refs
        self.left_out = left_out  # tensors it reads where no value can be put for a call
        self._partial = isinstance(fn, functools.partial)

    def __bool__(self) -> bool:
        return bool(self.refs)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.refs]

    def read(self) -> tuple | None:
        """Every state tensor as it is now (a new tensor bound to the same name included); None
        when one can no longer be read (the function then runs as written, raising what it raises)."""
        out = tuple(r.read() for r in self.refs)
        return None if any(v is _MISSING for v in out) else out

    @contextlib.contextmanager
    def _swapped(self, values: tuple) -> Iterator[None]:
        """The given values where the function reads its state, the originals back after."""
        done: list[tuple[Ref, Any, Any]] = []
        with _LOCK:
            try:
                for ref, value in zip(self.refs, values):
                    if ref.root[0] == "partial":
                        continue  # the call passes these itself
                    parent = _root_value(ref.root)
                    for step in ref.steps[:-1]:
                        parent = _step(parent, step)
                    if ref.steps:
                        old = _step(parent, ref.steps[-1])
                        _set_step(parent, ref.steps[-1], value)
                    else:
                        old = _root_value(ref.root)
                        _set_root(ref.root, value)
                    done.append((ref, parent, old))
                yield
            finally:
                for ref, parent, old in reversed(done):
                    if ref.steps:
                        _set_step(parent, ref.steps[-1], old)
                    else:
                        _set_root(ref.root, old)

    def call(self, args: tuple, kwargs: dict, values: tuple) -> Any:
        """``fn(*args, **kwargs)`` reading ``values`` as its state (called as is where they are
        the state's own tensors: a function that rebinds its state keeps what it did)."""
        if all(r.read() is v for r, v in zip(self.refs, values)):
            return self.fn(*args, **kwargs)
        with self._swapped(values):
            if not self._partial:
                return self.fn(*args, **kwargs)
            p = self.fn
            bound_args, bound_kwargs = list(p.args), dict(p.keywords)
            for ref, value in zip(self.refs, values):
                if ref.root[0] == "partial":
                    kind, key = ref.steps[0]
                    if kind == "arg":
                        bound_args[key] = value
                    else:
                        bound_kwargs[key] = value
            return p.func(*bound_args, *args, **{**bound_kwargs, **kwargs})

    def functional(self) -> Callable[..., Any]:
        """A function of ``(*args, *state)`` (the state last, in :attr:`refs` order), for the
        compiler to trace and to replay: ``fn`` reading its state from the trailing arguments."""
        n = len(self.refs)

        def with_state(*args: Any, **kwargs: Any) -> Any:
            return self.call(args[:len(args) - n], kwargs, args[len(args) - n:])

        with_state.__flashlight_code__ = self.fn  # type: ignore[attr-defined]  # whose code keys the disk cache
        with_state.__name__ = getattr(self.fn, "__name__", type(self.fn).__name__)
        with_state.__qualname__ = getattr(self.fn, "__qualname__", with_state.__name__)
        sig = _signature(self.fn.forward if isinstance(self.fn, torch.nn.Module) else self.fn, self.names)
        if sig is not None:
            with_state.__signature__ = sig  # type: ignore[attr-defined]  # names the kernel's pointers
        return with_state


def _signature(fn: Callable[..., Any], names: list[str]) -> inspect.Signature | None:
    """``fn``'s positional parameters followed by the state's names, where that is how a call
    lines up (no defaults, no ``*args``); else None (the generated source then uses plain names)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) or p.default is not p.empty for p in params):
        return None
    taken = {p.name for p in params}
    extra = []
    for name in names:
        while name in taken:
            name = f"{name}_"
        taken.add(name)
        extra.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD))
    return inspect.Signature([p.replace(kind=p.POSITIONAL_OR_KEYWORD) for p in params] + extra)


def _attr_step(parent: Any, attr: str) -> tuple[str, str]:
    """Reading ``parent.attr``: a module's parameter and buffer live in their own tables."""
    if isinstance(parent, torch.nn.Module):
        if attr in parent._parameters:
            return ("param", attr)
        if attr in parent._buffers:
            return ("buffer", attr)
    return ("attr", attr)


def find(fn: Callable[..., Any], scanned: Any | None = None) -> State:
    """The state of ``fn``: closures, globals, attribute chains off them and off ``self``, a
    ``functools.partial``'s bound tensors, and for an ``nn.Module`` every parameter and buffer
    (``scanned``: :func:`flashlight_hf.compiler.guards.scan`'s result, when already made)."""
    s = scanned if scanned is not None else guards.scan(fn)
    finder = _Finder()
    if isinstance(fn, torch.nn.Module):
        finder.value(("self", fn), (), "", fn, None)
    if isinstance(fn, functools.partial):
        for n, a in enumerate(fn.args):
            if isinstance(a, torch.Tensor):
                finder.tensor(("partial", fn), (("arg", n),), f"arg{n}", a, fn)
        for key, a in fn.keywords.items():
            if isinstance(a, torch.Tensor):
                finder.tensor(("partial", fn), (("kwarg", key),), key, a, fn)
    for root, chain, _what in s.state:
        value, parent, steps = _root_value(root), None, []
        for attr in chain:
            parent = value
            steps.append(_attr_step(parent, attr))
            value = _step(parent, steps[-1])
        head = root[2] if root[0] in ("cell", "global") else ""
        label = "_".join(x for x in (head, *chain) if x) or "self"
        finder.value(root, tuple(steps), label, value, parent)
    return State(fn, finder.refs, finder.left_out)
