"""FX graph -> IR: name every tensor axis by index variables and every value by a scalar node.

:func:`build_ir` walks the graph (:mod:`.labeller`); each op family lives in its own module
(:mod:`.pointwise`, :mod:`.creation`, :mod:`.views`, :mod:`.reductions`, :mod:`.matmul`,
:mod:`.slicing`, :mod:`.concat`) on the shared core (:mod:`.core`: labelled tensors, the
union-find over variables, broadcasting).
"""

from flashlight_hf.compiler.ir.from_fx.core import LT, LabelState, OpCall, canonicalize, substitute
from flashlight_hf.compiler.ir.from_fx.labeller import DISPATCH, Labeller, build_ir
from flashlight_hf.compiler.ir.from_fx.pointwise import POINTWISE_BINARY, POINTWISE_UNARY

__all__ = ["DISPATCH", "LT", "LabelState", "Labeller", "OpCall", "POINTWISE_BINARY", "POINTWISE_UNARY",
           "build_ir", "canonicalize", "substitute"]
