"""The key loop's body: one key tile of every accumulator, written once as a ``@triton.jit``
helper (like ``_attn_fwd_inner`` in Triton's fused-attention tutorial) that each key range calls.

What differs between the ranges is a constexpr, ``BOUNDARY``: a boundary tile may hold keys
past the end or keys an analysed mask drops, so it checks bounds and applies those masks; an
interior tile does neither. The body is emitted once per value of the flag and the two
statement sequences are merged: statements they share are written once, the rest under
``if BOUNDARY:`` / ``else:``; for each value of the flag the statements that run are exactly
that emission's, in its order. Triton inlines the helper and resolves the flag at compile time.
"""

from __future__ import annotations

import ast
import difflib
import textwrap
from typing import TYPE_CHECKING, Sequence

import torch

from flashlight_hf.compiler.abi import BLOCK_M, BLOCK_N, NUM_SPLITS
from flashlight_hf.compiler.codegen import scores
from flashlight_hf.compiler.codegen.source import TL_DTYPE
from flashlight_hf.compiler.ir import Const, Node, Pointwise, Unsupported, Var, mul_factors

if TYPE_CHECKING:
    from flashlight_hf.compiler.codegen.emitter import Emitter

INNER = "_attn_fwd_inner"  # the helper's name in the generated module
FLAG = "BOUNDARY"
_CONSTEXPRS = (BLOCK_M, BLOCK_N, NUM_SPLITS)
_GLOBALS = {"tl", "triton", "float", "range", FLAG}


def running_max(em: "Emitter", k: int, incoming: str) -> None:
    """Max accumulator ``k`` meets ``incoming`` (a key tile's max, or a share's): the new max,
    a safe copy for exponents (a row that has seen only −inf stays finite), and the factor
    ``alpha`` that rescales the sums tied to it."""
    em.emit(f"m_new_acc{k} = tl.maximum(acc{k}, {incoming})  # running max")
    em.emit(f"m_safe_acc{k} = tl.where(m_new_acc{k} == float(\"-inf\"), 0.0, m_new_acc{k})")
    em.emit(f"alpha{k} = tl.exp2(acc{k} - m_safe_acc{k})  # rescales the sums tied to this max")


def tile_skip_guard(em: "Emitter", keep_if: Sequence[str] = ()) -> bool:
    """Emit ``if <some key of this tile is kept>:`` for data-dependent masks; True if emitted.
    ``keep_if``: more int32 scalars, any of them above 0 keeps the tile (the backward keeps a
    tile holding a fully masked row, whose gradient eager makes NaN)."""
    terms = []
    for s, preds in enumerate(em.kp.tile_skip):
        parts = []
        for pred, keep in preds:
            lay = em.layout(pred)
            if em.j not in lay:
                continue
            v = em.value(pred)
            parts.append((v if keep else f"({v} == 0)", lay))
        if not parts:
            return False  # this stream keeps whole tiles: nothing to skip on
        lay = em.sort(x for _, l in parts for x in l)
        kept = " & ".join(em.broadcast(f"({p})", l, lay) for p, l in parts)
        if not em.interior:
            kept = f"({kept}) & {em.broadcast('mask_n', (em.j,), lay)}"
        name = em.tmp("tile_keeps", ("tile_keeps", s))
        em.emit(f"{name} = tl.max(({kept}).to(tl.int32))  # does any key of this tile survive the masks?")
        terms.append(name)
    if not terms:
        return False
    terms += list(keep_if)
    em.emit(f"if {' + '.join(terms)} > 0:  # data-dependent block sparsity: skip fully masked tiles")
    em.indent += 1
    return True


def contraction(em: "Emitter", k: int, body: Node, lay_acc: tuple[Var, ...], carried: str) -> str:
    """This key tile's contribution to sum accumulator ``k``: ``tl.dot(P, V, carried)`` (the MMA
    adds into the carried state) or a row sum (the caller adds it)."""
    i, j = em.i, em.j
    full = em.sort(set(lay_acc) | {j})
    mj = em.broadcast("mask_n", (j,), full if len(full) <= 2 else (i, j))
    if len(full) <= 2:
        b = em.f32(body, full)
        return f"tl.sum({b if em.interior else f'tl.where({mj}, {b}, 0.0)'}, axis={full.index(j)})"
    if len(full) != 3 or full[0] is not i:
        raise Unsupported("codegen", f"key contraction producing layout {lay_acc}")
    num, den = mul_factors(body)
    if den:
        raise Unsupported("codegen", "division inside a key contraction")
    left = [f for f in num if all(v in (i, j) for v in em.layout(f))]
    right = [f for f in num if f not in left]
    if not right or any(i in em.layout(f) for f in right):
        raise Unsupported("codegen", "the key contraction does not split into scores × values")
    p = left[0] if left else Const(torch.float32, 1.0)
    for f in left[1:]:
        p = Pointwise(torch.float32, "mul", (p, f))
    v = right[0]
    for f in right[1:]:
        v = Pointwise(v.dtype, "mul", (v, f))
    p_name = em.tmp("p", ("p", k))
    if em.interior:
        em.emit(f"{p_name} = {em.f32(p, (i, j))}  # scores side")
    else:
        em.emit(f"{p_name} = tl.where({mj}, {em.f32(p, (i, j))}, 0.0)  # scores side, out-of-range keys zeroed")
    v_lay = em.layout(v)
    v_name = em.value(v)
    if v_lay and v_lay[0] is not j:
        v_name = f"tl.trans({v_name})"
    dt = v.dtype if v.dtype in (torch.float16, torch.bfloat16) else torch.float32
    if em.interpret and dt == torch.bfloat16:
        p_op, v_op, prec = p_name, f"{v_name}.to(tl.float32)", ', input_precision="ieee"'
    elif dt == torch.float32:
        p_op, v_op = p_name, f"{v_name}.to(tl.float32)"
        prec = ', input_precision="tf32"' if (em.allow_tf32 and not em.interpret) else ', input_precision="ieee"'
    else:
        p_op, v_op, prec = f"{p_name}.to({TL_DTYPE[dt]})", f"{v_name}.to({TL_DTYPE[dt]})", ""
    return f"tl.dot({p_op}, {v_op}, {carried}{prec})"


def _tile_statements(em: "Emitter", interior: bool) -> tuple[list[str], str | None, list[str]]:
    """One emission of the tile body: the statements before the tile-skip guard, the guard's
    ``if`` line (None without one), the statements under it; indented one level."""
    i, j, accs = em.i, em.j, em.kp.accs
    saved = em.lines, em.indent
    em.lines, em.indent, em.interior, em.phase, em.loop_names = [], 1, interior, "loop", {}
    try:
        em.emit(f"offs_n = start_n + tl.arange(0, {BLOCK_N})")
        if not interior:
            em.emit(f"mask_n = offs_n < {em.size(j.extent)}")
        skipping = tile_skip_guard(em)
        guard_at = len(em.lines) - 1 if skipping else None
        for k, a in enumerate(accs):
            if a.kind == "max":
                lay_full = em.sort(set(em.layout(a)) | {j})
                body, scale = scores.log2_scaled(em, a.body, lay_full)
                if not interior:
                    body = f"tl.where({em.broadcast('mask_n', (j,), lay_full)}, {body}, float(\"-inf\"))"
                scale = "" if scale == "1.0" else f" * {scale}"  # x * 1.0 is x
                em.emit(f"m_tile{k} = tl.max({body}, axis={lay_full.index(j)}){scale}  # in log2 units")
                running_max(em, k, f"m_tile{k}")
        for k, a in enumerate(accs):
            if a.kind != "sum":
                continue
            lay_acc = em.layout(a)
            scale = ""
            if a.tied is not None:
                if lay_acc and lay_acc[0] is not i:
                    raise Unsupported("codegen", "a softmax-tied accumulator without the row variable")
                kt = accs.index(a.tied)
                scale = f"alpha{kt}" if len(lay_acc) <= 1 else f"alpha{kt}[:, None]"
            carried = f"acc{k} * {scale}" if scale else f"acc{k}"
            contrib = contraction(em, k, a.body, lay_acc, carried)
            if contrib.startswith("tl.dot("):  # the MMA accumulates into the rescaled state in place
                em.emit(f"acc{k} = {contrib}  # {'online rescale + ' if scale else ''}this key tile")
            elif scale:
                em.emit(f"acc{k} = {carried} + {contrib}  # online rescale + this key tile")
            else:
                em.emit(f"acc{k} = acc{k} + {contrib}")
        for k, a in enumerate(accs):
            if a.kind == "max":
                em.emit(f"acc{k} = m_new_acc{k}")
        lines = em.lines
    finally:
        em.lines, em.indent = saved
        em.interior, em.phase, em.loop_names = False, "post", {}
    if guard_at is None:
        return lines, None, []
    return lines[:guard_at], lines[guard_at], lines[guard_at + 1:]


def _merge(a: list[str], b: list[str]) -> list[str]:
    """One statement list from the boundary (``a``) and interior (``b``) emissions: shared
    statements once, the others under the flag."""
    out: list[str] = []
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal":
            out += a[i1:i2]
            continue
        chunk = a[i1:i2] or b[j1:j2]
        pad = chunk[0][:len(chunk[0]) - len(chunk[0].lstrip())]
        if i2 > i1:
            out.append(f"{pad}if {FLAG}:")
            out += ["    " + s for s in a[i1:i2]]
            if j2 > j1:
                out.append(f"{pad}else:")
        else:
            out.append(f"{pad}if not {FLAG}:")
        out += ["    " + s for s in b[j1:j2]]
    return out


def _free_names(body: list[str]) -> list[str]:
    """Names the body reads before it assigns them, in order of first use."""
    tree = ast.parse("def f():\n" + "\n".join(body))
    seen: list[str] = []
    bound: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Assign):
            visit(node.value)
            for t in node.targets:
                visit(t)
            return
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Store):
                bound.add(node.id)
            elif node.id not in bound and node.id not in seen:
                seen.append(node.id)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    for stmt in tree.body[0].body:
        visit(stmt)
    return seen


def merged_body(boundary: tuple[list[str], str | None, list[str]],
                interior: tuple[list[str], str | None, list[str]]) -> list[str]:
    """One helper body from a tile's two emissions, each (statements before a tile-skip guard,
    the guard's ``if`` line or None, statements under it): shared statements once, the others
    under the flag."""
    pre_a, guard_a, post_a = boundary
    pre_b, guard_b, post_b = interior
    if guard_a == guard_b:
        return _merge(pre_a, pre_b) + ([guard_a] if guard_a else []) + _merge(post_a, post_b)
    # the ranges disagree on the tile skip: the two bodies side by side
    whole_a = pre_a + ([guard_a] if guard_a else []) + post_a
    whole_b = pre_b + ([guard_b] if guard_b else []) + post_b
    return [f"    if {FLAG}:"] + ["    " + s for s in whole_a] + ["    else:"] + ["    " + s for s in whole_b]


class TileHelper:
    """A ``@triton.jit`` helper holding one tile of a loop: its source, and the call each range
    of the loop makes. ``carried``: the loop-carried values it takes and returns; every other
    name its body reads becomes a parameter (constexprs last, then the flag)."""

    def __init__(self, name: str, carried: list[str], body: list[str], doc: list[str]):
        self.name = name
        self.accs = list(carried)
        free = _free_names(body)
        consts = [n for n in _CONSTEXPRS if n in free]
        others = [n for n in free if n not in self.accs and n not in consts and n not in _GLOBALS]
        self.args = self.accs + others + consts
        params = self.args[:len(self.args) - len(consts)] + [f"{n}: tl.constexpr" for n in consts] + \
            [f"{FLAG}: tl.constexpr"]
        ret = ", ".join(self.accs)
        self.lines = ["@triton.jit", f"def {name}("] + [f"    {p}," for p in params] + ["):"] + \
            ["    # " + d for d in doc] + body + ([f"    return {ret}"] if ret else [])

    def call(self, boundary: bool, indent: str) -> list[str]:
        """The statement a loop range runs per tile."""
        lhs = f"{', '.join(self.accs)} = " if self.accs else ""
        args = ", ".join(self.args + [f"{FLAG}={boundary}"])
        head = f"{lhs}{self.name}("
        wrapped = textwrap.wrap(args, width=100 - len(indent) - 4, break_long_words=False, break_on_hyphens=False)
        return [indent + head] + [indent + "    " + w for w in wrapped[:-1]] + [indent + "    " + wrapped[-1] + ")"]


class InnerHelper(TileHelper):
    """The forward's key-tile helper: one key tile of every accumulator."""

    def __init__(self, em: "Emitter"):
        body = merged_body(_tile_statements(em, interior=False), _tile_statements(em, interior=True))
        super().__init__(INNER, [f"acc{k}" for k in range(len(em.kp.accs))], body, [
            "one key tile [start_n, start_n + BLOCK_N) of every accumulator. BOUNDARY: the tile may",
            "hold keys past the end or keys an analysed mask drops (bounds checked, masks applied);",
            "False for interior tiles, where neither is evaluated",
        ])
