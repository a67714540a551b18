"""Find attention regions inside a larger FX graph and replace each with one fused kernel.

Used by the ``flashlight`` TorchDynamo backend for graphs that are more than one attention
program (a whole model layer: projections, attention, output projection). A region is grown
backwards from a matmul ``C`` (the candidate ``scores @ V``): every ancestor of ``C`` that
depends on another matmul ``M1`` among those ancestors (the ``QKᵀ`` and everything computed from
the scores), plus index arithmetic that reads no graph input (``arange`` masks), plus the
pure view/expand chains feeding them (``repeat_kv``). Everything else feeding the region becomes
its input. The region is cut out as its own graph and handed to the generator; where it fuses,
the graph calls the ``flashlight::fused`` op instead, and the rest of the graph is left to
Inductor (or run as is on CPU).
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import torch
import torch.fx

_MATMULS = {operator.matmul, torch.matmul, torch.bmm, torch.Tensor.matmul, torch.Tensor.bmm}
_MATMUL_METHODS = {"matmul", "bmm", "__matmul__"}
_VIEW_METHODS = {"view", "reshape", "expand", "transpose", "permute", "unsqueeze", "squeeze", "contiguous",
                 "clone", "repeat_interleave", "flatten", "unflatten", "t", "mT"}
_VIEW_FUNCS = {torch.reshape, torch.transpose, torch.permute, torch.unsqueeze, torch.squeeze,
               torch.repeat_interleave, torch.flatten, operator.getitem}


def _is_matmul(n: torch.fx.Node) -> bool:
    return (n.op == "call_function" and n.target in _MATMULS) or \
        (n.op == "call_method" and n.target in _MATMUL_METHODS)


def _is_view(n: torch.fx.Node) -> bool:
    return (n.op == "call_method" and n.target in _VIEW_METHODS) or \
        (n.op == "call_function" and n.target in _VIEW_FUNCS)


def _ancestors(n: torch.fx.Node) -> set[torch.fx.Node]:
    out: set[torch.fx.Node] = set()
    stack = list(n.all_input_nodes)
    while stack:
        x = stack.pop()
        if x not in out:
            out.add(x)
            stack.extend(x.all_input_nodes)
    return out


def _reads_input(n: torch.fx.Node, anc: dict) -> bool:
    return n.op in ("placeholder", "get_attr") or any(a.op in ("placeholder", "get_attr") for a in anc[n])


def region_for(c: torch.fx.Node) -> set[torch.fx.Node] | None:
    """The node set of the attention region ending at matmul ``c``, or None."""
    anc_c = _ancestors(c)
    anc = {n: _ancestors(n) for n in anc_c | {c}}
    mms = [m for m in anc_c if _is_matmul(m)]
    # the nearest contractions only (QKᵀ), not the projections that produced q and k
    firsts = [m for m in mms if not any(m in anc[o] for o in mms if o is not m)]
    if not firsts:
        return None
    region = {c} | set(firsts)
    region |= {n for n in anc_c if any(m in anc[n] for m in firsts)}
    # index arithmetic and constants that read no graph input (arange, masks built from it)
    region |= {n for n in anc_c if n.op in ("call_function", "call_method") and not _reads_input(n, anc)}
    # view chains feeding the region (repeat_kv's expand + reshape)
    changed = True
    while changed:
        changed = False
        for n in list(region):
            for a in n.all_input_nodes:
                if a not in region and _is_view(a) and len(a.users) == 1:
                    region.add(a)
                    changed = True
    return region


def fuse_regions(gm: torch.fx.GraphModule, values: dict[torch.fx.Node, Any],
                 build: Callable) -> tuple[int, list[tuple[str, str]]]:
    """Replace every fusable attention region of ``gm`` in place. ``values`` holds each node's
    value from one eager run (example inputs for the regions). Returns (fused, fallbacks)."""
    fused, fallbacks = 0, []
    taken: set[torch.fx.Node] = set()
    for c in reversed(list(gm.graph.nodes)):
        if not _is_matmul(c) or c in taken:
            continue
        region = region_for(c)
        if not region or region & taken:
            continue
        escaping = [n for n in region if n is not c and any(u not in region for u in n.users)]
        if escaping:
            fallbacks.append((escaping[0].name, "an intermediate of the attention region is used outside it"))
            continue
        inputs = []
        for n in gm.graph.nodes:  # topological order keeps the inputs deterministic
            if n in region:
                for a in n.all_input_nodes:
                    if a not in region and a not in inputs:
                        inputs.append(a)
        if not all(isinstance(values.get(a), torch.Tensor) for a in inputs):
            fallbacks.append((c.name, "a region input is not a tensor"))
            continue
        sub = torch.fx.Graph()
        env: dict[torch.fx.Node, torch.fx.Node] = {a: sub.placeholder(f"in_{k}") for k, a in enumerate(inputs)}
        for n in gm.graph.nodes:
            if n in region:
                env[n] = sub.node_copy(n, lambda a: env[a])
        sub.output(env[c])
        sub_gm = torch.fx.GraphModule(gm, sub)
        b = build(sub_gm, tuple(values[a] for a in inputs), {})
        if b.kernel is None:
            fallbacks.append(b.fallback or (c.name, "not fusable"))
            continue
        with gm.graph.inserting_before(c):
            call = gm.graph.call_function(torch.ops.flashlight.fused.default, (b.op_key, list(inputs)))
        c.replace_all_uses_with(call)
        taken |= region
        fused += 1
    if fused:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return fused, fallbacks


def run_and_record(gm: torch.fx.GraphModule, *args: Any) -> tuple[Any, dict[torch.fx.Node, Any]]:
    """Run ``gm`` eagerly once, keeping every node's value."""
    values: dict[torch.fx.Node, Any] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            out = super().run_node(n)
            values[n] = out
            return out

    out = Recorder(gm).run(*args)
    return out, values
