"""The IR as text: the program listing ``explain`` shows (``Program.describe``)."""

from __future__ import annotations

from flashlight_hf.compiler.ir.nodes import Const, IExpr, Index, Load, Node, Pointwise, Reduce


def format_node_tree(root: Node) -> str:
    """One line per distinct node, in topological order: ``%k = op(args)  [vars] reduces v``."""
    order: list[Node] = []
    seen: dict[int, int] = {}

    def visit(x: Node) -> None:
        if id(x) in seen:
            return
        for c in x.children():
            visit(c)
        seen[id(x)] = len(order)
        order.append(x)

    visit(root)
    lines = []
    for k, x in enumerate(order):
        ref = lambda c: f"%{seen[id(c)]}"  # noqa: E731
        if isinstance(x, Load):
            idx = ", ".join(str(e) if isinstance(e, IExpr) else ref(e) for e in x.index)
            body = f"load in{x.input}[{idx}]"
        elif isinstance(x, Index):
            body = f"index {x.expr}"
        elif isinstance(x, Const):
            body = f"const {x.value}"
        elif isinstance(x, Pointwise):
            body = f"{x.op}(" + ", ".join(ref(a) for a in x.args) + ")"
        elif isinstance(x, Reduce):
            body = f"reduce_{x.op}[{x.var}]({ref(x.arg)})"
        else:  # pragma: no cover
            body = type(x).__name__
        keeps = ",".join(sorted(v.name for v in x.vars))
        lines.append(f"%{k} = {body}  : {str(x.dtype).replace('torch.', '')} keeps[{keeps}]")
    return "\n".join(lines)
