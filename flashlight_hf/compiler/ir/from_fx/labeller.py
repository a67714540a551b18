"""The walk over the FX graph: inputs, one handler per ``call_function`` node, the output.

Why a dispatch table: every op family (one module each) contributes a ``HANDLERS`` map from
overload-packet name to handler; :data:`DISPATCH` is their union. Supporting a new op is a
handler in its family's module, nothing here.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.fx

from flashlight_hf.compiler.capture import Captured
from flashlight_hf.compiler.ir.from_fx import composite, creation, matmul, pointwise, reductions, slicing, views
from flashlight_hf.compiler.ir.from_fx.concat import cat, on_pieces
from flashlight_hf.compiler.ir.from_fx.core import LT, Handler, LabelState, OpCall, canonicalize, not_handled
from flashlight_hf.compiler.ir.nodes import IExpr, Unsupported, Var, is_one
from flashlight_hf.compiler.ir.program import Program

aten = torch.ops.aten


def _merge(*tables: dict[str, Handler]) -> dict[str, Handler]:
    out: dict[str, Handler] = {}
    for t in tables:
        clash = set(out) & set(t)
        assert not clash, f"two op families handle {sorted(clash)}"
        out.update(t)
    return out


DISPATCH: dict[str, Handler] = _merge(pointwise.HANDLERS, composite.HANDLERS, creation.HANDLERS,
                                      views.HANDLERS, reductions.HANDLERS, matmul.HANDLERS, slicing.HANDLERS)

_SIZE_OPS = {operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv, operator.neg,
             operator.pow, operator.mod, torch.sym_float, torch.sym_int, math.sqrt,
             aten.sym_size.int, aten.sym_numel.default, aten.sym_stride.int}

# dtypes the kernels do not compute in: running them in float32 would lose precision silently
_UNSUPPORTED_DTYPES = (torch.float64, torch.complex64, torch.complex128, torch.complex32)


class _NotHandled:
    """A value the labeller does not model (a max's indices): harmless until an op reads it."""

    def __init__(self, where: str, reason: str):
        self._where, self._reason = where, reason

    def __getattr__(self, name: str) -> Any:
        raise Unsupported(object.__getattribute__(self, "_where"), object.__getattribute__(self, "_reason"))


class Labeller(LabelState):
    """Walks the FX graph once, turning every tensor into an :class:`LT`."""

    def run(self) -> Program:
        gm = self.captured.graph_module
        placeholder_index = 0
        for fx_node in gm.graph.nodes:
            val = fx_node.meta.get("val")
            if isinstance(val, torch.Tensor) and val.dtype in _UNSUPPORTED_DTYPES:
                raise Unsupported(fx_node.name, f"{val.dtype} values: generated kernels compute in float32 at "
                                  "most, and a result must not be less precise than its dtype")
            try:
                if fx_node.op == "placeholder":
                    self.env[fx_node] = self.placeholder(fx_node, placeholder_index)
                    placeholder_index += 1
                elif fx_node.op == "get_attr":
                    value = getattr(gm, fx_node.target)
                    if isinstance(value, torch.Tensor) and value.dtype in _UNSUPPORTED_DTYPES:
                        raise Unsupported(fx_node.name, f"a {value.dtype} constant: generated kernels compute "
                                          "in float32 at most")
                    self.bindings.append(value)
                    self.env[fx_node] = self.tensor_input(fx_node, len(self.bindings) - 1, value)
                elif fx_node.op == "call_function":
                    self.env[fx_node] = self.call(fx_node)
                elif fx_node.op == "output":
                    return self.finish(fx_node)
            except Unsupported:
                raise
            except Exception as exc:  # a labelling rule hit something it did not expect
                raise Unsupported(fx_node.name, f"{type(exc).__name__}: {exc}") from exc
        raise Unsupported("output", "graph has no output")

    def placeholder(self, n: torch.fx.Node, k: int) -> Any:
        val = n.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise Unsupported(n.name, "non-tensor graph input")
        return self.tensor_input(n, k, val)

    def call(self, n: torch.fx.Node) -> Any:
        t = n.target
        args = [self.arg(a) for a in n.args]
        kwargs = {k: self.arg(v) for k, v in n.kwargs.items()}
        val = self.val(n)
        # symbolic-size arithmetic (python operators on SymInts) and sym_size: the traced value
        # itself (a SymInt / SymFloat, or a number) is what later ops read
        if t in _SIZE_OPS:
            return val
        if t is operator.getitem and isinstance(args[0], tuple):
            got = args[0][args[1]]
            return _NotHandled(n.name, "the indices of a max/min (argmax) are not handled") if got is None else got
        if t in (aten._assert_tensor_metadata.default, aten._assert_scalar.default,
                 aten.sym_constrain_range_for_size.default) or str(t).startswith("aten._assert"):
            return None
        name = getattr(t, "__name__", str(t))
        packet = name.split(".")[0]
        dtype = val.dtype if isinstance(val, torch.Tensor) else torch.float32

        if packet in ("clone", "alias", "detach", "lift_fresh_copy", "contiguous", "dropout") and isinstance(args[0], LT):
            if packet == "dropout" and len(args) > 1 and args[1] not in (0, 0.0):
                raise Unsupported(n.name, "dropout with p > 0")
            return args[0]
        if packet == "cat":
            return cat(self, n, args[0], args[1] if len(args) > 1 else kwargs.get("dim", 0))
        if packet in ("max", "min") and t in (aten.max.dim, aten.min.dim):
            # (values, indices): the values are amax/amin; the indices are not supported
            dtype = self.val(n)[0].dtype
            values = self.call_packet(n, "amax" if packet == "max" else "amin", t, args, kwargs, dtype)
            return (values, None)
        return self.call_packet(n, packet, t, args, kwargs, dtype)

    def call_packet(self, n: torch.fx.Node, packet: str, t: Any, args: list, kwargs: dict,
                    dtype: torch.dtype) -> Any:
        pieced = [a for a in args if isinstance(a, LT) and a.pieces is not None]
        if pieced:
            return on_pieces(self, n, packet, args, kwargs, dtype)
        c = OpCall(n, t, packet, args, kwargs, dtype)
        handler = DISPATCH.get(packet)
        if handler is None:
            raise not_handled(c)
        return handler(self, c)

    # -- output ----------------------------------------------------------------------------
    def finish(self, n: torch.fx.Node) -> Program:
        outs = n.args[0]
        if isinstance(outs, (list, tuple)):
            if len(outs) != 1:
                raise Unsupported("output", f"the program returns {len(outs)} values; one tensor is supported")
            outs = outs[0]
        out = self.env[outs]
        if not isinstance(out, LT):
            raise Unsupported("output", "the program does not return a tensor")
        val = self.val(outs)
        axes = [[(self.find(v) if v is not None else None, e) for v, e in ax] for ax in out.axes]
        # A variable of extent 1 always indexes 0; only the output's own (a one-query decode
        # step's rows) stay variables, so the loop nest keeps its shape.
        kept = {v for ax in axes for v, _ in ax if v is not None}
        for v in list(self._all_vars()):
            r = self.find(v)
            if is_one(r.extent) and r not in kept and r not in self.defs:
                self.defs[r] = IExpr.const(0)
        node = canonicalize(out.node, self)
        input_axis_vars = []
        for k in range(len(self.input_shapes)):
            per_axis: list[list[Var]] = [[] for _ in self.input_shapes[k]]
            for use in self.input_uses.get(k, []):
                for a, v in enumerate(use):
                    r = self.find(v)
                    if r not in per_axis[a]:
                        per_axis[a].append(r)
            input_axis_vars.append(per_axis)
        defs = {v: self.resolve(IExpr.var(v)) for v in list(self.defs)}
        return Program(output=node, out_axes=axes, out_dtype=val.dtype, input_shapes=self.input_shapes,
                       input_dtypes=self.input_dtypes, bindings=self.bindings,
                       input_axis_vars=input_axis_vars, defs=defs, size_ranges=dict(self.captured.size_ranges))


def build_ir(captured: Captured) -> Program:
    """Label the captured graph and return its IR. Raises :class:`Unsupported` with the node."""
    return Labeller(captured).run()
