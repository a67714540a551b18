"""Reductions inside one kernel-local value: contractions as ``tl.dot``, the rest as masked
row/column reductions. (Reductions over the key axis are accumulators: ``keyloop``.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from flashlight_hf.compiler.codegen.source import TL_DTYPE
from flashlight_hf.compiler.ir import Load, Node, Pointwise, Reduce, Unsupported, Var

if TYPE_CHECKING:
    from flashlight_hf.compiler.codegen.emitter import Emitter


def emit_reduce(em: "Emitter", x: Reduce, name: str, lay: tuple[Var, ...]) -> None:
    """``x`` over layout ``lay``: a matmul-shaped sum as ``tl.dot``, else a masked ``tl.sum/max/min``."""
    arg = x.arg
    while isinstance(arg, Pointwise) and arg.op == "cast":
        arg = arg.args[0]
    full = em.sort(set(lay) | {x.var})
    if len(full) == 3 and x.op == "sum" and isinstance(arg, Pointwise) and arg.op == "mul":
        a, b = arg.args
        la, lb = em.layout(a), em.layout(b)
        if x.var in la and x.var in lb and len(la) == 2 and len(lb) == 2 and len(lay) == 2:
            r, _ = lay
            lhs = a if r in la else b
            rhs = b if lhs is a else a
            av = dot_operand(em, lhs)
            bv = dot_operand(em, rhs)
            if em.layout(lhs)[0] is x.var:
                av = f"tl.trans({av})"
            if em.layout(rhs)[1] is x.var:
                bv = f"tl.trans({bv})"
            em.emit(f"{name} = tl.dot({av}, {bv}{dot_precision(em, lhs, rhs)})  "
                    f"# sum over {em.label(x.var)}: contraction")
            return
    if len(full) > 2:
        raise Unsupported("codegen", f"reduction over {x.var} of a 3-D intermediate that is not a matmul")
    body = em.f32(x.arg, full)
    ident = {"sum": "0.0", "max": 'float("-inf")', "min": 'float("inf")'}[x.op]
    axis = full.index(x.var)
    fn = {"sum": "tl.sum", "max": "tl.max", "min": "tl.min"}[x.op]
    mask = em.bounds_mask((x.var,))
    if mask is not None:
        body = f"tl.where({em.broadcast(mask, (x.var,), full)}, {body}, {ident})"
    em.emit(f"{name} = {fn}({body}, axis={axis})  # {x.op} over {em.label(x.var)}")

def dot_operand(em: "Emitter", x: Node) -> str:
    """A ``tl.dot`` operand in a dtype the MMA takes (float32 for the interpreter's bf16)."""
    name = em.node(x)
    dt = x.dtype
    if dt not in (torch.float16, torch.bfloat16, torch.float32):
        dt = torch.float32
    if em.interpret and dt == torch.bfloat16:
        return f"{name}.to(tl.float32)"  # the interpreter multiplies raw bf16 bits (triton#11584)
    if isinstance(x, Load):
        return name if dt == x.dtype else f"{name}.to({TL_DTYPE[dt]})"
    return f"{name}.to({TL_DTYPE[dt]})"

def dot_precision(em: "Emitter", a: Node, b: Node) -> str:
    if a.dtype == torch.float32 or b.dtype == torch.float32 or em.interpret:
        return ", input_precision=\"tf32\"" if em.allow_tf32 and not em.interpret else ", input_precision=\"ieee\""
    return ""
