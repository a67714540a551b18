"""Run-time sizes: a kernel's size expressions (sympy) as one compiled Python function of the
input shapes, so a launch costs a few integer operations instead of symbolic substitution."""

from __future__ import annotations

from typing import Any, Sequence

import sympy
from sympy.printing.pycode import PythonCodePrinter
import torch

from flashlight_hf.compiler.ir import Program, Unsupported


class _SizePrinter(PythonCodePrinter):
    """Python source for size expressions, including the integer functions torch's symbolic
    shapes use (``FloorDiv``, ``CeilDiv``, ``Mod``, true divisions)."""

    def _print_FloorDiv(self, e):  # noqa: ANN001, ANN202
        return f"(({self._print(e.args[0])}) // ({self._print(e.args[1])}))"

    def _print_CeilDiv(self, e):  # noqa: ANN001, ANN202
        return f"(-((-({self._print(e.args[0])})) // ({self._print(e.args[1])})))"

    def _print_PythonMod(self, e):  # noqa: ANN001, ANN202
        return f"(({self._print(e.args[0])}) % ({self._print(e.args[1])}))"

    _print_Mod = _print_PythonMod

    def _print_FloatTrueDiv(self, e):  # noqa: ANN001, ANN202
        return f"(({self._print(e.args[0])}) / ({self._print(e.args[1])}))"

    _print_IntTrueDiv = _print_FloatTrueDiv

    def _print_ToFloat(self, e):  # noqa: ANN001, ANN202
        return f"float({self._print(e.args[0])})"

    def _print_TruncToInt(self, e):  # noqa: ANN001, ANN202
        return f"int({self._print(e.args[0])})"


def _is_float_size(e: sympy.Expr) -> bool:
    """A size expression with a real value (a scale ``1 / n``), not an index extent: printed
    as ``float(...)``; ``int(...)`` would silently truncate it."""
    if e.is_integer is True:
        return False
    if e.is_integer is False or e.atoms(sympy.Float):
        return True
    return any(type(f).__name__ in ("FloatTrueDiv", "ToFloat", "IntTrueDiv") for f in e.atoms(sympy.Function))


class SizeFunction:
    """All run-time sizes of a kernel as one compiled Python function of the input shapes.

    Built once per kernel from the symbolic sizes (sympy), so a launch costs a few integer
    operations instead of symbolic substitution (which alone costs more than a GPU kernel).
    """

    def __init__(self, program: Program, exprs: Sequence[Any]):
        positions: dict[sympy.Symbol, tuple[int, int]] = {}
        for k, shape in enumerate(program.input_shapes):
            for a, s in enumerate(shape):
                if isinstance(s, sympy.Symbol) and s not in positions:
                    positions[s] = (k, a)
        symbols = list(positions)
        self.positions = [positions[s] for s in symbols]
        body = []
        for e in exprs:
            if isinstance(e, int):
                body.append(repr(e))
                continue
            e = sympy.sympify(e)
            try:
                code = _SizePrinter().doprint(e)
            except Exception as exc:  # noqa: BLE001 - an expression we cannot print: the program falls back
                raise Unsupported("sizes", f"a run-time size {e} cannot be computed ({type(exc).__name__})") from None
            body.append(f"float({code})" if _is_float_size(e) else f"int({code})")
        names = [str(s) for s in symbols]
        src = f"def sizes({', '.join(names)}):\n    return ({', '.join(body)}{',' if len(body) == 1 else ''})\n"
        scope: dict[str, Any] = {"math": __import__("math")}
        exec(compile(src, "<flashlight sizes>", "exec"), scope)
        self._fn = scope["sizes"]
        self.source = src

    def __call__(self, tensors: Sequence[torch.Tensor]) -> tuple:
        return self._fn(*[tensors[k].shape[a] for k, a in self.positions])


def sum_extent(ax: list) -> Any:
    """The extent of an output axis made of several program axes: the product of theirs."""
    out: Any = 1
    for _, e in ax:
        out = out * e
    return out
