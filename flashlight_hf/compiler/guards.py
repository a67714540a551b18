"""Guards: the Python values a compiled function reads from outside itself.

Tracing bakes every Python value the function reads into the graph: a module-level
``TEMPERATURE = 2.0``, a closure's ``scale``, ``config.softcap``, a default argument. Rebinding
such a value after compiling must not leave the old one in the kernel (that would be a silent
wrong answer), so, as ``torch.compile``'s guards do, the driver reads them again at every call
and keys its builds on what it read: a changed value selects (or makes) another build.

What is guarded is found from the function's bytecode, never by running it:

* a global or closure variable the code loads, with any chain of attribute loads after it
  (``cfg.attn.temperature``), whose value is a plain Python value (number, bool, string, None,
  dtype) or a small list / tuple / dict / set of such values (compared by value);
* a Python function reached that way (a score-mod helper) by identity, and what *it* reads, in
  turn (code of torch, triton, transformers and flashlight-hf itself is not followed);
* the function's default arguments; for a bound method, the attribute chains read off ``self``;
  for a ``functools.partial``, its function.

Tensors read from outside are not guarded: they are the function's *state*, read at every call
and passed to the kernel as inputs (:mod:`flashlight_hf.compiler.state`). The scan that finds
the guarded values also records where each tensor (or module, or small container of tensors)
was read from (``scan(fn).state``), so the two never disagree about what the function reads.

The reads are compiled into one small Python function, so a call with guards costs a few
hundred nanoseconds; a function that reads nothing from outside costs nothing.
"""

from __future__ import annotations

import builtins
import dis
import functools
import hashlib
import sys
import types
from typing import Any, Callable

import torch

# modules whose functions are not followed: library code reads no user configuration
_LIBRARY_PREFIXES = ("torch", "triton", "transformers", "flashlight_hf", "numpy", "sympy", "math", "operator",
                     "functools", "builtins", "typing", "accelerate", "collections", "itertools", "contextlib")
_PLAIN = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device, torch.memory_format)
_MAX_ITEMS = 256  # containers larger than this are not compared by value (identity instead)
_MAX_DEPTH = 4  # function nesting followed
_MISSING = object()


def _is_library(obj: Any) -> bool:
    mod = getattr(obj, "__module__", None) or ""
    if isinstance(obj, types.ModuleType):
        mod = obj.__name__
    root = mod.split(".")[0]
    return root in _LIBRARY_PREFIXES or root in sys.stdlib_module_names


_PLAIN_TYPES = frozenset(_PLAIN)  # exact types: one set lookup per item on the hot path


def freeze(x: Any, budget: list[int] | None = None) -> Any:
    """A hashable, comparable snapshot of a plain value or small container of plain values;
    ``_MISSING`` when ``x`` is neither (then it is not compared by value)."""
    t = type(x)
    if t in _PLAIN_TYPES or isinstance(x, _PLAIN):
        return (t, x) if t is not float or x == x else (float, "nan")
    if t is tuple or t is list:  # the common case first: numbers only, one pass
        if len(x) <= _MAX_ITEMS and all(type(i) in _PLAIN_TYPES for i in x):
            return (t, tuple(x))
    elif t is dict:
        if len(x) <= _MAX_ITEMS and all(type(k) in _PLAIN_TYPES and type(v) in _PLAIN_TYPES for k, v in x.items()):
            return (t, tuple(x.items()))
    budget = [_MAX_ITEMS] if budget is None else budget
    if isinstance(x, (list, tuple, set, frozenset)):
        budget[0] -= len(x)
        if budget[0] < 0:
            return _MISSING
        items = sorted(x, key=repr) if isinstance(x, (set, frozenset)) else x
        out = tuple(freeze(i, budget) for i in items)
        return _MISSING if any(o is _MISSING for o in out) else (type(x), out)
    if isinstance(x, dict):
        budget[0] -= len(x)
        if budget[0] < 0:
            return _MISSING
        out = tuple((freeze(k, budget), freeze(v, budget)) for k, v in x.items())
        return _MISSING if any(a is _MISSING or b is _MISSING for a, b in out) else (dict, out)
    return _MISSING


class _Scanner:
    """Collects guard expressions (Python source reading one value each) from bytecode."""

    def __init__(self) -> None:
        self.scope: dict[str, Any] = {"_freeze": freeze, "_MISSING": _MISSING}
        self.exprs: list[str] = []
        self.seen_exprs: set[str] = set()
        self.seen_code: set[int] = set()
        self.codes: list[types.CodeType] = []  # every code object read, in the order met
        self.values: list[str] = []  # the plain values read (reprs, in the order met)
        self.descriptions: list[str] = []
        # (root, attribute chain, description) of every tensor, module or container of tensors
        # read: root is ("cell", cell) | ("global", globals dict, name) | ("self", object)
        self.state: list[tuple[tuple, tuple[str, ...], str]] = []
        self.seen_state: set[tuple] = set()

    def bind(self, obj: Any) -> str:
        name = f"_o{len(self.scope)}"
        self.scope[name] = obj
        return name

    def add(self, expr: str, value: Any, what: str, depth: int, ref: tuple | None = None) -> None:
        if expr in self.seen_exprs:
            return
        self.seen_exprs.add(expr)
        if isinstance(value, types.ModuleType) or isinstance(value, type):
            return  # modules and classes: only attribute chains through them matter
        if isinstance(value, torch.Tensor) or isinstance(value, torch.nn.Module) or _holds_tensors(value):
            # state, read at every call (compiler/state.py); a module's attribute chains are guarded
            where = None if ref is None else (id(ref[0][1]),) + ref[0][2:] + ref[1]
            if where is not None and where not in self.seen_state:
                self.seen_state.add(where)
                self.state.append((ref[0], ref[1], what))
            return
        if isinstance(value, _PLAIN) and not (isinstance(value, float) and value != value):
            self.exprs.append(expr)  # compared as is: a tuple compare of numbers costs nothing
            self.descriptions.append(what)
            self.values.append(f"{what}={value!r}")
            return
        if type(value) is tuple and all(type(i) in _PLAIN_TYPES for i in value):
            self.exprs.append(f"id({expr})")  # immutable all the way down: a new value is a new tuple
            self.descriptions.append(what)
            self.values.append(f"{what}={value!r}")
            return
        frozen = freeze(value)
        if frozen is not _MISSING:
            self.values.append(f"{what}={frozen!r}")
            self.exprs.append(f"_freeze({expr})")
            self.descriptions.append(what)
            return
        if isinstance(value, (types.FunctionType, functools.partial, types.MethodType)):
            self.exprs.append(f"id({expr})")  # rebinding a helper changes the program
            self.descriptions.append(what)
            if not _is_library(getattr(value, "func", value)):
                self.function(value, depth + 1)

    def function(self, fn: Any, depth: int = 0) -> None:
        if depth > _MAX_DEPTH:
            return
        if isinstance(fn, functools.partial):
            self.function(fn.func, depth + 1)
            return
        self_name = None
        if isinstance(fn, types.MethodType):
            self_name, fn = self.bind(fn.__self__), fn.__func__
        if not isinstance(fn, types.FunctionType) or id(fn.__code__) in self.seen_code:
            return
        self.seen_code.add(id(fn.__code__))
        self.codes.append(fn.__code__)
        fn_ref = self.bind(fn)
        label = getattr(fn, "__qualname__", "the function")
        if fn.__defaults__:
            self.add(f"{fn_ref}.__defaults__", fn.__defaults__, f"{label}'s default arguments", depth)
        if fn.__kwdefaults__:
            self.add(f"{fn_ref}.__kwdefaults__", fn.__kwdefaults__, f"{label}'s default arguments", depth)
        cells = dict(zip(fn.__code__.co_freevars, fn.__closure__ or ()))
        self.code(fn.__code__, fn, cells, self_name, label, depth)

    def code(self, code: types.CodeType, fn: types.FunctionType, cells: dict, self_name: str | None,
             label: str, depth: int) -> None:
        globs = fn.__globals__
        chain: list[str] | None = None
        root_expr, root_val, root_ref = "", None, ()

        def flush() -> None:
            if chain is None:
                return
            if isinstance(root_val, types.ModuleType) and _is_library(root_val):
                return  # torch.float32, math.pi: library constants
            expr, val = root_expr, root_val
            walked: list[str] = []
            for attr in chain:
                if isinstance(val, torch.Tensor):
                    break  # ``slopes.sum()``, ``self.tril[:T]``: the tensor is what is read
                nxt = getattr(val, attr, _MISSING)
                if nxt is _MISSING or not attr.isidentifier():
                    return
                if isinstance(nxt, types.MethodType) and isinstance(val, torch.nn.Module):
                    # ``self.rel_bias(x)``, ``self.proj.forward(x)``: the module's tensors are read
                    self.add(expr, val, f"{label}: {root_expr_desc}{''.join('.' + a for a in walked)}", depth,
                             (root_ref, tuple(walked)))
                expr, val = f"getattr({expr}, {attr!r}, _MISSING)", nxt
                walked.append(attr)
            if walked or not isinstance(val, types.ModuleType):
                self.add(expr, val, f"{label}: {root_expr_desc}{''.join('.' + a for a in walked)}", depth,
                         (root_ref, tuple(walked)))

        root_expr_desc = ""
        for ins in dis.get_instructions(code):
            op = ins.opname
            if op in ("LOAD_ATTR", "LOAD_METHOD") and chain is not None:
                chain.append(str(ins.argval))
                continue
            flush()
            chain = None
            name = ins.argval
            if op == "LOAD_GLOBAL":
                if name in globs:
                    g = self.bind(globs)
                    root_expr, root_val, root_expr_desc = f"{g}.get({name!r}, _MISSING)", globs[name], name
                    root_ref = ("global", globs, name)
                    chain = []
                elif not hasattr(builtins, name):
                    continue
            elif op == "LOAD_DEREF" and name in cells:
                try:
                    val = cells[name].cell_contents
                except ValueError:  # an empty cell (assigned later)
                    continue
                c = self.bind(cells[name])
                root_expr, root_val, root_expr_desc = f"{c}.cell_contents", val, name
                root_ref = ("cell", cells[name], name)
                chain = []
            elif op == "LOAD_FAST" and self_name is not None and name == code.co_varnames[0]:
                root_expr, root_val, root_expr_desc = self_name, self.scope[self_name], "self"
                root_ref = ("self", self.scope[self_name])
                chain = []
        flush()
        for const in code.co_consts:  # nested functions and lambdas: their global reads
            if isinstance(const, types.CodeType) and id(const) not in self.seen_code:
                self.seen_code.add(id(const))
                self.codes.append(const)
                self.code(const, fn, cells, None, label, depth)


def _holds_tensors(value: Any, depth: int = 2) -> bool:
    """A small list / tuple / dict holding tensors (a table of biases, per-layer slopes)."""
    if depth < 0:
        return False
    if isinstance(value, (list, tuple)) and len(value) <= _MAX_ITEMS:
        return any(isinstance(x, torch.Tensor) or _holds_tensors(x, depth - 1) for x in value)
    if isinstance(value, dict) and len(value) <= _MAX_ITEMS:
        return any(isinstance(x, torch.Tensor) or _holds_tensors(x, depth - 1) for x in value.values())
    return False


def scan(fn: Callable[..., Any]) -> _Scanner:
    """What ``fn`` reads from outside: guard expressions and state references (empty where its
    bytecode cannot be read)."""
    s = _Scanner()
    try:
        s.function(fn.forward if isinstance(fn, torch.nn.Module) else fn)
    except Exception:  # noqa: BLE001 - bytecode we cannot read: guard the function object only
        s.exprs, s.descriptions, s.state = [], [], []
    return s


def code_fingerprint(fn: Callable[..., Any]) -> str:
    """A digest of the code ``fn`` runs: its bytecode and that of every function it reaches
    (helpers, nested functions, a module's ``forward``), constants and names included.

    Why: the disk cache keys a build on the program's trace at the example's shapes; a symbolic
    build also answers for other shapes, where two functions with the same trace at one size
    can differ (``arange(q.shape[-2])`` against ``arange(50)``, a branch on a size). Two
    functions share a build only when their code is the same too."""
    target = getattr(fn, "__flashlight_code__", fn)
    s = scan(target)
    h = hashlib.sha256()
    for code in s.codes:
        consts = tuple(c for c in code.co_consts if not isinstance(c, types.CodeType))
        h.update(code.co_code)
        h.update(repr((consts, code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars)).encode())
    h.update(repr(s.values).encode())  # a closure's window, a global's threshold: the branches they steer
    if not s.codes:  # bytecode not read (a builtin, a callable object): its type at least
        h.update(repr(type(target)).encode())
    return h.hexdigest()[:32]


class Guards:
    """``values()``: what the function reads from outside now; equal values, the same build."""

    def __init__(self, fn: Callable[..., Any], scanned: _Scanner | None = None):
        s = scanned if scanned is not None else scan(fn)
        self.descriptions = s.descriptions
        if not s.exprs:
            self.values: Callable[[], tuple] = tuple
            return
        body = ", ".join(s.exprs)
        src = f"def _read():\n    try:\n        return ({body},)\n    except Exception:\n        return (_MISSING,)\n"
        exec(compile(src, "<flashlight guards>", "exec"), s.scope)
        self.values = s.scope["_read"]

    def __bool__(self) -> bool:
        return bool(self.descriptions)
