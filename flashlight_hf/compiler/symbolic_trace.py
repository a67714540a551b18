"""One ``make_fx`` trace with chosen axes symbolic: the fast path of capture's second trace.

Why: :func:`flashlight_hf.compiler.capture.trace_symbolic` used ``torch.export``, which traces
twice itself (a pre-dispatch trace, then ``run_decompositions``): about 0.8 s per new program,
much of a first call's host time (issue 14: a new program's first result in under 2 s). One
``make_fx`` trace in symbolic mode, over fake inputs whose chosen axes are symbols and the
others static, gives the same ATen graph the first trace gives, with the sizes symbolic.

What it holds for: the symbols' ranges, and nothing else. Shapes the program forces equal
(K's and V's key lengths) become one symbol as the trace meets them; a guard that only bounds a
symbol narrows its range; any other guard (a size specialised to its example value, a
divisibility test, a relation between two sizes that is not equality) makes this path give up
(:class:`FastTraceUnavailable`), and capture takes ``torch.export``'s path, as it does when
these APIs are not there.

This is the one module that touches PyTorch's private tracing API (``FakeTensorMode``,
``ShapeEnv``, ``StatelessSymbolicContext``, ``DimDynamic``, ``ConstantSource``);
``tests/test_symbolic_trace.py`` fails loudly when they move.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import sympy
import torch
import torch.fx


class FastTraceUnavailable(Exception):
    """This path cannot trace the program faithfully (or its APIs moved): use torch.export."""


def private_api() -> dict[str, Any]:
    """The private names this module needs (an ImportError / AttributeError when they moved)."""
    from torch._dynamo.source import ConstantSource
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    return {"ConstantSource": ConstantSource, "FakeTensorMode": FakeTensorMode, "DimDynamic": DimDynamic,
            "ShapeEnv": ShapeEnv, "StatelessSymbolicContext": StatelessSymbolicContext}


def trace(f: Callable[..., Any], tensors: Sequence[torch.Tensor],
          dynamic_axes: Sequence[dict[int, str]]) -> tuple[torch.fx.GraphModule, dict[Any, tuple[int, int | None]]]:
    """``f`` traced with ``make_fx`` over fake copies of ``tensors`` whose ``dynamic_axes`` are
    symbols: (graph module, per symbol the (lowest, highest or None) size it holds for)."""
    try:
        api = private_api()
    except (ImportError, AttributeError) as exc:
        raise FastTraceUnavailable(f"PyTorch's tracing internals moved: {exc}") from exc
    from torch.fx.experimental.proxy_tensor import make_fx

    shape_env = api["ShapeEnv"](duck_shape=False)  # equal example sizes are not one size
    mode = api["FakeTensorMode"](shape_env=shape_env, allow_non_fake_inputs=False)
    fakes, dynamic = [], set()
    for n, (t, axes) in enumerate(zip(tensors, dynamic_axes)):
        dims = [api["DimDynamic"].DYNAMIC if a in axes and t.shape[a] >= 2 else api["DimDynamic"].STATIC
                for a in range(t.dim())]
        ctx = api["StatelessSymbolicContext"](dynamic_sizes=dims)
        fake = mode.from_tensor(t, source=api["ConstantSource"](f"flashlight_input_{n}"), symbolic_context=ctx)
        fakes.append(fake)
        for a in range(t.dim()):
            s = fake.shape[a]
            if isinstance(s, torch.SymInt):
                dynamic |= s.node.expr.free_symbols
    try:
        with torch.no_grad():
            gm = make_fx(f, tracing_mode="symbolic")(*fakes)
    except Exception as exc:  # noqa: BLE001 - whatever this path cannot trace, export may
        raise FastTraceUnavailable(f"{type(exc).__name__}: {exc}") from exc
    return gm, _ranges(shape_env, dynamic)


def _ranges(shape_env: Any, dynamic: set) -> dict[Any, tuple[int, int | None]]:
    """Each surviving symbol's range, after checking that every guard the trace added is one this
    kernel can honour: a bound on one symbol (folded into its range) or two symbols equal."""
    for sym in dynamic:
        rep = shape_env.replacements.get(sym)
        if rep is not None and not rep.free_symbols:
            raise FastTraceUnavailable(f"the trace specialised {sym} to {rep}")
    bounds: dict[Any, list] = {}
    for s in dynamic:
        vr = shape_env.var_to_range.get(s)
        bounds[s] = [max(2, finite(vr.lower) or 0) if vr is not None else 2,
                     finite(vr.upper) if vr is not None else None]
    for guard in shape_env.guards:
        expr = shape_env.simplify(guard.expr)
        if expr is sympy.true:
            continue
        sym_bound = _one_symbol_bound(expr)
        if sym_bound is not None and sym_bound[0] in bounds:
            sym, lo, hi = sym_bound
            if lo is not None:
                bounds[sym][0] = max(bounds[sym][0], lo)
            bounds[sym][1] = _lower_of(bounds[sym][1], hi)
            continue
        if isinstance(expr, sympy.Eq) and all(isinstance(x, sympy.Symbol) for x in expr.args):
            continue  # two sizes the program forces equal: one symbol in the graph
        raise FastTraceUnavailable(f"a guard this path does not keep: {expr}")
    canonical: dict[Any, tuple[int, int | None]] = {}
    for s, (lo, hi) in bounds.items():
        root = shape_env.replacements.get(s, s)
        if isinstance(root, sympy.Symbol):
            old = canonical.get(root)
            if old is not None:
                lo, hi = max(lo, old[0]), _lower_of(hi, old[1])
            canonical[root] = (lo, hi)
    return canonical


def _one_symbol_bound(expr: Any) -> tuple[Any, int | None, int | None] | None:
    """``(symbol, lowest, highest)`` for ``s >= c``, ``s > c``, ``s <= c``, ``s < c`` (either
    side), else None."""
    if not isinstance(expr, (sympy.Ge, sympy.Gt, sympy.Le, sympy.Lt)):
        return None
    lhs, rhs = expr.lhs, expr.rhs
    if isinstance(lhs, sympy.Symbol) and rhs.is_Integer:
        sym, c, flip = lhs, int(rhs), False
    elif isinstance(rhs, sympy.Symbol) and lhs.is_Integer:
        sym, c, flip = rhs, int(lhs), True
    else:
        return None
    op = type(expr)
    if flip:
        op = {sympy.Ge: sympy.Le, sympy.Gt: sympy.Lt, sympy.Le: sympy.Ge, sympy.Lt: sympy.Gt}[op]
    if op is sympy.Ge:
        return sym, c, None
    if op is sympy.Gt:
        return sym, c + 1, None
    if op is sympy.Le:
        return sym, None, c
    return sym, None, c - 1


def _lower_of(a: int | None, b: int | None) -> int | None:
    """The tighter of two upper bounds (None: unbounded)."""
    return b if a is None else a if b is None else min(a, b)


def finite(x: Any) -> int | None:
    """An integer range bound, or None for an infinite one (sympy's ``oo`` / torch's ``int_oo``)."""
    if isinstance(x, int):
        return x
    return int(x) if getattr(x, "is_Integer", False) else None
