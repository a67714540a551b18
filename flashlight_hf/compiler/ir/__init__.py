"""Stage 2 — the reduction IR: every value is a scalar expression over named index variables.

Why: "attention" is never assumed. A captured graph is just tensors with shapes; to fuse it we
must know, for every tensor axis, *which loop index* it is. This package names them. Each axis
of each tensor is a list of factors ``(var, extent)`` (a mixed-radix digit list: a merged axis
``[B*H]`` is ``[(b, B), (h, H)]``); ``var`` is ``None`` where the value does not vary along it
(``expand``). Ops unify variables: broadcasting two axes, the batch and contracted axes of a
matmul. A head axis of ``H`` unified with ``[(hk, Hk), (g, G)]`` (HF's ``repeat_kv``) defines
``hk := h // G``: GQA falls out of the labelling, no pattern needed.

Every value becomes an :class:`Node` — a scalar expression over the variables it depends on
(its *sketch*: :attr:`Node.vars`). A matmul is a :class:`Reduce` of a product over its
contracted variable; a softmax is max / exp / sum / div. The rewrite stage works on these
nodes only, never on the FX graph.

Layout: :mod:`.nodes` (the data, shared with rewrite and codegen), :mod:`.algebra` (casts
looked through, products split into factors), :mod:`.program` (:class:`Program`),
:mod:`.printer` (the text ``explain`` shows), :mod:`.from_fx` (the labeller, by op family),
:mod:`.derivative` (reverse-mode derivatives of expressions, for the generated backward) and
:mod:`.evaluate` (an expression computed densely with torch: the reference tests check against).
"""

from flashlight_hf.compiler.ir.algebra import contains, mul_factors, strip_casts
from flashlight_hf.compiler.ir.from_fx import (DISPATCH, LT, POINTWISE_BINARY, POINTWISE_UNARY, LabelState,
                                               Labeller, OpCall, build_ir, canonicalize, substitute)
from flashlight_hf.compiler.ir.nodes import (Acc, Adjoint, Axis, Const, Factor, IExpr, Index, Load, Node, Pointwise,
                                             Reduce, RunningMax, RuntimeOffset, Size, Unsupported, Var, as_size,
                                             axis_extent, is_one, map_indices, size_eq, size_prod, walk,
                                             walk_outside_accs)
from flashlight_hf.compiler.ir.printer import format_node_tree
from flashlight_hf.compiler.ir.program import Program

__all__ = [
    "Acc", "Adjoint", "Axis", "Const", "DISPATCH", "Factor", "IExpr", "Index", "LT", "LabelState", "Labeller", "Load",
    "Node", "OpCall", "POINTWISE_BINARY", "POINTWISE_UNARY", "Pointwise", "Program", "Reduce", "RunningMax",
    "RuntimeOffset", "Size", "Unsupported", "Var", "as_size", "axis_extent", "build_ir", "canonicalize",
    "contains", "format_node_tree", "is_one", "map_indices", "mul_factors", "size_eq", "size_prod",
    "strip_casts", "substitute", "walk", "walk_outside_accs",
]
