"""The IR's meaning, executed: evaluate a scalar-expression node over its variables with torch.

Why: a node is the expression of *one element*; what it means is that expression at every
point of its variables. This evaluator computes it densely (float64 where asked), with each
variable on an axis of its own, so a rewrite (a derivative, a reassociation) can be checked
against the expression it came from, and against torch autograd, without generating a kernel.
It is a reference for tests: dense, slow, and complete only for the node kinds of the
expression IR (loads, indices, constants, pointwise ops, reductions), not the loop-nest nodes.
"""

from __future__ import annotations

from typing import Sequence

import sympy
import torch

from flashlight_hf.compiler.ir.nodes import Const, IExpr, Index, Load, Node, Pointwise, Reduce, Unsupported, Var

_BINARY = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "pow": torch.pow,
    "maximum": torch.maximum, "minimum": torch.minimum, "gt": torch.gt, "ge": torch.ge, "lt": torch.lt,
    "le": torch.le, "eq": torch.eq, "ne": torch.ne, "and": torch.bitwise_and, "or": torch.bitwise_or,
    "xor": torch.bitwise_xor, "mod": torch.remainder, "fmod": torch.fmod, "atan2": torch.atan2,
    "shl": torch.bitwise_left_shift, "shr": torch.bitwise_right_shift, "hypot": torch.hypot,
    "floordiv": lambda a, b: torch.div(a, b, rounding_mode="floor"),
    "truncdiv": lambda a, b: torch.div(a, b, rounding_mode="trunc"),
}
_UNARY = {
    "exp": torch.exp, "exp2": torch.exp2, "log": torch.log, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
    "relu": torch.relu, "neg": torch.neg, "abs": torch.abs, "sqrt": torch.sqrt, "rsqrt": torch.rsqrt,
    "not": torch.logical_not, "sin": torch.sin, "cos": torch.cos, "reciprocal": torch.reciprocal,
    "sign": torch.sign, "log1p": torch.log1p, "expm1": torch.expm1, "erf": torch.erf, "floor": torch.floor,
    "ceil": torch.ceil, "isnan": torch.isnan, "silu": torch.nn.functional.silu, "square": torch.square,
    "gelu": torch.nn.functional.gelu, "invert": torch.bitwise_not, "erfc": torch.erfc, "round": torch.round,
    "trunc": torch.trunc, "signbit": torch.signbit, "tan": torch.tan, "atan": torch.atan, "asin": torch.asin,
    "acos": torch.acos, "sinh": torch.sinh, "cosh": torch.cosh, "asinh": torch.asinh, "acosh": torch.acosh,
    "atanh": torch.atanh, "log2": torch.log2, "log10": torch.log10,
}


class Evaluator:
    """Evaluates nodes over ``variables`` (one tensor axis each, in that order).

    ``inputs[k]`` is the tensor a ``Load(input=k)`` reads. Results broadcast to
    ``[extent of each variable]``; a value that does not vary along a variable has size 1 there.
    ``dtype`` (default: each node's own) computes every floating value in one dtype: float64
    for references."""

    def __init__(self, variables: Sequence[Var], inputs: Sequence[torch.Tensor], *,
                 dtype: torch.dtype | None = None, sizes: dict | None = None,
                 given: dict[int, torch.Tensor] | None = None, device: torch.device | str | None = None):
        """``sizes``: values of the size symbols (a symbolic program's extents and constants);
        ``given``: tensors to use for nodes (by ``id``) instead of evaluating them — the
        backward's preprocess gives the epilogue its accumulators this way; ``device``: where
        index tensors are made (the inputs' device)."""
        self.variables = list(variables)
        self.inputs = list(inputs)
        self.dtype = dtype
        self.sizes = dict(sizes or {})
        self.device = device
        self._memo: dict[int, torch.Tensor] = dict(given or {})

    def _int(self, e: object) -> int:
        if isinstance(e, sympy.Expr) and not e.is_number:
            if not self.sizes:
                raise Unsupported("evaluate", f"symbolic size {e} has no value here")
            return int(e.subs(self.sizes))
        return int(e)

    def __call__(self, node: Node) -> torch.Tensor:
        got = self._memo.get(id(node))
        if got is None:
            got = self._memo[id(node)] = self._eval(node)
        return got

    # -- index arithmetic ---------------------------------------------------------------------
    def _axis(self, v: Var) -> torch.Tensor:
        if v not in self.variables:
            raise KeyError(f"variable {v} has no axis in this evaluation (give it one in `variables`)")
        shape = [1] * len(self.variables)
        shape[self.variables.index(v)] = self._int(v.extent)
        return torch.arange(self._int(v.extent), device=self.device).reshape(shape)

    def index(self, e: IExpr) -> torch.Tensor:
        if e.op == "var":
            return self._axis(e.args[0])
        if e.op in ("const", "sym"):
            return torch.full((), self._int(e.args[0]), device=self.device)
        parts = [self.index(a) if isinstance(a, IExpr) else torch.full((), self._int(a), device=self.device)
                 for a in e.args]
        out = parts[0]
        for p in parts[1:]:
            out = {"add": torch.add, "mul": torch.mul, "floordiv": torch.floor_divide,
                   "mod": torch.remainder}[e.op](out, p)
        return out

    # -- values ---------------------------------------------------------------------------------
    def _float(self, dtype: torch.dtype) -> torch.dtype:
        return self.dtype if self.dtype is not None and dtype.is_floating_point else dtype

    def _eval(self, x: Node) -> torch.Tensor:
        if isinstance(x, Const):
            value = x.value
            if isinstance(value, sympy.Expr):
                if not value.is_number:
                    if not self.sizes:
                        raise Unsupported("evaluate", f"symbolic constant {value} has no value here")
                    value = value.subs(self.sizes)
                value = float(value) if x.dtype.is_floating_point else int(value)
            # torch.full, not torch.tensor: no host-to-device copy (which syncs, and which a CUDA
            # graph cannot capture) for a constant of the backward's epilogue
            return torch.full((), value, dtype=self._float(x.dtype), device=self.device)
        if isinstance(x, Index):
            return self.index(x.expr).to(self._float(x.dtype))
        if isinstance(x, Load):
            src = self.inputs[x.input]
            src = src.to(self._float(src.dtype)) if src.dtype.is_floating_point else src
            view = self._view_load(x, src)
            if view is not None:
                return view
            idx = [self.index(e) if isinstance(e, IExpr) else self(e).long() for e in x.index]
            if not idx:
                return src.reshape([1] * len(self.variables)) if self.variables else src
            idx = torch.broadcast_tensors(*idx)
            return src[tuple(idx)]
        if isinstance(x, Reduce):
            arg = self(x.arg)
            dim = self.variables.index(x.var)
            arg = arg.expand(*[self._int(v.extent) if k == dim else arg.shape[k] for k, v in enumerate(self.variables)])
            if x.op == "sum":
                return arg.sum(dim, keepdim=True)
            if x.op == "max":
                return arg.amax(dim, keepdim=True)
            if x.op == "min":
                return arg.amin(dim, keepdim=True)
            raise Unsupported("evaluate", f"reduction {x.op!r}")
        if isinstance(x, Pointwise):
            return self._pointwise(x)
        raise Unsupported("evaluate", f"{type(x).__name__} nodes are loop state, not expressions")

    def _view_load(self, x: Load, src: torch.Tensor) -> torch.Tensor | None:
        """A load as a view of its input where every index is a variable (each once), a variable
        plus a constant (a slice) or a constant: no gather, so autograd's backward of it is a
        plain add, not a sort-based scatter over the whole input (the epilogue's gate in the
        preprocess: tens of ms on a GPU). None where the index is anything else."""
        if not x.index or len(x.index) != src.dim():
            return None
        t, names = src, []
        for a, e in reversed(list(enumerate(x.index))):
            if not isinstance(e, IExpr):
                return None
            if e.op in ("const", "sym"):
                t = t.select(a, self._int(e.args[0]))
                continue
            slice_ = e.offset_var()
            if slice_ is None:
                return None
            v, start = slice_[0], self._int(slice_[1])
            if v not in self.variables or v in names:
                return None
            size = self._int(v.extent)
            if start < 0 or start + size > t.shape[a]:
                return None
            if start != 0 or size != t.shape[a]:  # a whole axis stays as it is: narrow's backward
                t = t.narrow(a, start, size)  # zero-fills and copies the whole input, per axis
            names.insert(0, v)
        t = t.permute([names.index(v) for v in self.variables if v in names])
        return t.reshape([self._int(v.extent) if v in names else 1 for v in self.variables])

    def _pointwise(self, x: Pointwise) -> torch.Tensor:
        args = [self(a) for a in x.args]
        out_dtype = self._float(x.dtype)
        if x.op == "cast":
            return args[0].to(out_dtype)
        if x.op == "where":
            return torch.where(args[0].bool(), args[1], args[2]).to(out_dtype)
        if x.op in _UNARY:
            return _UNARY[x.op](args[0]).to(out_dtype)
        if x.op in _BINARY:
            a, b = args
            if a.dtype != b.dtype and x.op not in ("and", "or", "xor"):
                common = torch.promote_types(a.dtype, b.dtype)
                a, b = a.to(common), b.to(common)
            return _BINARY[x.op](a, b).to(out_dtype)
        raise Unsupported("evaluate", f"pointwise op {x.op!r}")


def evaluate(node: Node, variables: Sequence[Var], inputs: Sequence[torch.Tensor], *,
             dtype: torch.dtype | None = None) -> torch.Tensor:
    """``node`` at every point of ``variables`` (see :class:`Evaluator`)."""
    return Evaluator(variables, inputs, dtype=dtype)(node)

