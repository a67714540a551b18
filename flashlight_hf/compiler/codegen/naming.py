"""Names in the generated source: what each variable, pointer and stride is called.

The kernel is read in ``explain``, so names come from the program where it says what a thing
is: input pointers after the program's arguments when the driver passes their names (``q_ptr``,
``query_ptr``) or after their role (query rows, keys, values); strides after the axis a stride
walks (``stride_qb``, ``stride_qh``, ``stride_qm``, ``stride_kn``, ``stride_qd``: batch, heads,
query rows, keys, head dim; the axis number where the role is not one of those); grid
coordinates ``off_b`` / ``off_h``; row and key offsets ``offs_m`` / ``offs_n`` and their index
values ``q_idx`` / ``kv_idx`` as in FlexAttention's mask functions. Temporaries are named after
the IR node's op with a counter (``dot_1``, ``where_2``) and are unique in the kernel.
"""

from __future__ import annotations

import keyword
import re
from typing import Sequence

from flashlight_hf.compiler.abi import BLOCK_M, BLOCK_N, NUM_SPLITS
from flashlight_hf.compiler.ir import IExpr, Load, Var, is_one, walk
from flashlight_hf.compiler.rewrite import KernelPlan

# Names the kernels spell out; a program's argument never takes one of them.
FIXED = {"tl", "triton", "float", "range", "pid", "split", "n_row_tiles", "tile_m", "rest", "grid_lin",
         "row_lo", "row_hi", "key_lo", "key_hi", "interior_lo", "interior_hi", "chunk", "split_lo",
         "ticket_ptr", "ticket", "s", "out", "o", "out_ptr", "count_ptr", "n_grid", "start_n",
         BLOCK_M, BLOCK_N, NUM_SPLITS, "BOUNDARY",
         # the backward kernels'
         "n_key_tiles", "tile_n", "start_m", "col_lo", "col_hi", "row_first", "row_last", "q_start", "q_end",
         "end_tile", "i_first", "i_last", "interior_start", "interior_end", "dropout_seed", "dropout_p",
         # the block table's (codegen/block_table.py)
         "tbl", "n_full", "n_part", "t", "tile_u", "dead", "tile", "u", "inside", "in_range", "is_full",
         "is_part", "TILES", "n_runs", "run", "state_row"}
_GENERATED = re.compile(r"^(acc|m_new_acc|m_safe_acc|alpha|m_tile|m_part|beta|part|z)\d+$"
                        r"|^(dk|dv|dq|dp|dacc|dx|p|pm|mx|ld|ld_acc|row_mx|nacc|g|dc|db|kept|miss|hit)\d+$"
                        r"|^(offs|mask)_(m|n|d\d*|dv\d*)$|^off_(b|h|g\d+)$|^stride_|_ptr$")


def _usable(name: object) -> bool:
    return (isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)
            and not name.startswith("_") and name not in FIXED and not _GENERATED.search(name))


class Names:
    """The naming of one kernel: fixed per plan, so every kernel of a plan reads alike."""

    def __init__(self, kp: KernelPlan, input_names: Sequence[str | None] | None = None):
        self.kp = kp
        i, j = kp.row_var, kp.loop_var
        self.letter: dict[Var, str] = {i: "m", j: "n"}
        self.offs: dict[Var, str] = {i: "offs_m", j: "offs_n"}
        self.label: dict[Var, str] = {i: "rows", j: "keys"}
        self.value_tiles = {t for t in kp.tile_vars if t in kp.out_node.vars}
        counts = {"d": 0, "dv": 0}
        for t in kp.tile_vars:
            kind = "dv" if t in self.value_tiles else "d"
            counts[kind] += 1
            name = kind if counts[kind] == 1 else f"{kind}{counts[kind]}"
            self.letter[t], self.offs[t], self.label[t] = "d", f"offs_{name}", name
        n = len(kp.grid_vars)
        for k, g in enumerate(kp.grid_vars):  # outermost first: batch ... heads
            ltr = "b" if k == 0 else "h" if k == n - 1 else f"g{k}"
            self.letter[g], self.offs[g], self.label[g] = ltr, f"off_{ltr}", f"off_{ltr}"
        self.used: set[str] = set(FIXED)
        self.counters: dict[str, int] = {}
        self.axis_vars = self._axis_vars()
        self.base = self._bases(input_names)
        self.used |= {f"{b}_ptr" for b in self.base.values()}

    # -- inputs ---------------------------------------------------------------------------------
    def _axis_vars(self) -> dict[int, list[set]]:
        """Per input, per axis: the variables its loads index that axis by (None: not one variable).
        A digit of extent 1 beside another variable (the row of a program without a query axis,
        ``row·D + d``) does not change which axis the index walks; it is kept in ``digits``."""
        shapes = self.kp.program.input_shapes
        out: dict[int, list[set]] = {k: [set() for _ in s] for k, s in enumerate(shapes)}
        self.digits: dict[int, set] = {k: set() for k in out}
        roots = [self.kp.out_node] + [a.init for a in self.kp.accs if a.init is not None]
        for root in roots:
            for x in walk(root):
                if not isinstance(x, Load):
                    continue
                for d, e in enumerate(x.index):
                    vs = e.vars() if isinstance(e, IExpr) else None
                    if vs is not None and len(vs) > 1:
                        ones = {v for v in vs if is_one(v.extent)}
                        if len(vs - ones) == 1:
                            self.digits[x.input] |= ones
                            vs = vs - ones
                    out[x.input][d].add(next(iter(vs)) if vs is not None and len(vs) == 1 else None)
        return out

    def input_vars(self, k: int) -> set:
        return {v for per in self.axis_vars.get(k, []) for v in per if v is not None} | self.digits.get(k, set())

    def role(self, k: int) -> str:
        """What input ``k`` is to the attention, from the axes its loads walk."""
        vs = self.input_vars(k)
        i, j = self.kp.row_var, self.kp.loop_var
        dv = bool(vs & self.value_tiles)
        d = any(v in self.kp.tile_vars and v not in self.value_tiles for v in vs)
        if i in vs and j in vs:
            return "per (row, key): a bias or mask"
        if i in vs:
            return "query rows" if d else "per (row, value column)" if dv else "per row"
        if j in vs:
            return "keys and values" if d and dv else "keys" if d else "values" if dv else "per key"
        return "per program" if vs else "a constant"

    def _bases(self, input_names: Sequence[str | None] | None) -> dict[int, str]:
        short = {"query rows": "q", "keys": "k", "values": "v", "keys and values": "kv"}
        out: dict[int, str] = {}
        taken: set[str] = set()
        for k in range(len(self.kp.program.input_shapes)):
            given = input_names[k] if input_names is not None and k < len(input_names) else None
            name = given if _usable(given) and given not in taken else None
            if name is None:
                guess = short.get(self.role(k))
                name = guess if guess and guess not in taken and not _named(input_names, guess) else f"in{k}"
            out[k] = name
            taken.add(name)
        return out

    def ptr(self, k: int) -> str:
        return f"{self.base[k]}_ptr"

    def axis_suffix(self, k: int, d: int) -> str:
        """The letter of the axis input ``k``'s axis ``d`` walks, or its number."""
        per = self.axis_vars.get(k)
        if per is None or d >= len(per):
            return str(d)
        ltr = self._letter_of(per[d])
        if ltr is None:
            return str(d)
        same = [e for e, vs in enumerate(per) if self._letter_of(vs) == ltr]
        return ltr if same == [d] else str(d)

    def _letter_of(self, vs: set) -> str | None:
        """The one role letter of the variables an axis is read by (two head-dim halves: d)."""
        letters = {self.letter.get(v) for v in vs}
        return next(iter(letters)) if len(letters) == 1 and None not in letters else None

    def stride(self, k: int, d: int) -> str:
        return _stride(self.base[k], self.axis_suffix(k, d))

    def out_stride(self, d: int) -> str:
        ax = self.kp.program.out_axes[d]
        vs = [v for v, _ in ax if v is not None]
        if len(vs) > 1 and len([v for v in vs if not is_one(v.extent)]) == 1:
            vs = [v for v in vs if not is_one(v.extent)]  # a row digit of extent 1 beside the value dim
        suffix = self.letter[vs[0]] if len(vs) == 1 and vs[0] in self.letter else str(d)
        letters = [self.letter.get(v) for a in self.kp.program.out_axes for v, _ in a[:1] if len(a) == 1]
        return _stride("o", suffix if letters.count(suffix) <= 1 else str(d))

    # -- temporaries ----------------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        """``base`` itself if still free, else ``base_2``, ``base_3``, ..."""
        name, n = base, 1
        while name in self.used:
            n += 1
            name = f"{base}_{n}"
        self.used.add(name)
        return name

    def numbered(self, hint: str) -> str:
        """``hint_1``, ``hint_2``, ...: op-named temporaries never shadow a builtin (``max``)."""
        while True:
            n = self.counters.get(hint, 0) + 1
            self.counters[hint] = n
            name = f"{hint}_{n}"
            if name not in self.used:
                self.used.add(name)
                return name


def _named(input_names: Sequence[str | None] | None, name: str) -> bool:
    return input_names is not None and name in input_names


def _stride(base: str, suffix: str) -> str:
    return f"stride_{base}{suffix}" if len(base) == 1 else f"stride_{base}_{suffix}"
