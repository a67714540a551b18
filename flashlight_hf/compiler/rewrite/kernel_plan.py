"""The rewrite stage's result and the state its passes hand on: a :class:`KernelPlan`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from flashlight_hf.compiler.ir import Acc, Node, Program, Var


@dataclass
class KernelPlan:
    """Everything codegen needs: the variables' roles and the rewritten output expression."""

    program: Program
    grid_vars: list[Var]
    row_var: Var
    loop_var: Var
    tile_vars: list[Var]
    out_node: Node
    accs: list[Acc] = field(default_factory=list)
    # Key-range bounds derived from the masks: ("lo", alts) means keys j < min(a*i + c over
    # alts) are masked out for row i, ("hi", alts) means keys j > max(a*i + c over alts) are
    # (several alternatives come from an OR: PrefixLM's ``j <= i or j < P``); tiles outside are
    # never visited.
    key_bounds: list[tuple[str, tuple]] = field(default_factory=list)
    # ``where(mask, -inf, x)`` nodes whose mask the bounds capture exactly, with the kept branch
    # ``x``: in interior tiles (inside every bound) codegen uses ``x`` and skips the mask.
    bounded_masks: list[tuple[Node, Node]] = field(default_factory=list)
    # Per max accumulator (in order), the cheap mask predicates of its ``where(·, -inf, ·)`` chain
    # as (predicate, value that keeps): a key tile where no element is kept for any stream is
    # skipped at run time (data-dependent block sparsity: document ids, key padding).
    tile_skip: list[list[tuple[Node, bool]]] = field(default_factory=list)
    # Where ``tile_skip`` is set: per max accumulator every cheap key-dependent mask of its chain
    # (affine ones too) as (the ``where`` node, predicate, value that keeps, kept branch). A block
    # table computed before the launch from these (codegen's ``block_table``) lists per row tile
    # the key tiles every mask keeps whole and those it keeps in part; the kernels walk the lists
    # instead of testing each tile inside the loop (a test there stops Triton pipelining the loads).
    block_table: list[list[tuple[Node, Node, bool, Node]]] = field(default_factory=list)


Pass = Callable[[KernelPlan], KernelPlan]
"""One rewrite after the roles are known: takes the plan so far, returns the next one."""
