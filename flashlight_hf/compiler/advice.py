"""What a user can change when a program runs unfused: one line per kind of fallback.

A fallback names the node and the reason (the stage's own words). The reason says what the
generator met; this says what to do about it, so the warning ends in an action, not only a
diagnosis. Matched on the node and the reason's wording; a reason no rule knows gets the
general advice (``flashlight_hf.explain`` shows the IR), never nothing.
"""

from __future__ import annotations

import re

_EXPLAIN = "flashlight_hf.explain(fn, *args) shows the IR and where the node sits"

# (pattern over "node: reason", advice); the first match wins
_RULES: list[tuple[str, str]] = [
    (r"FakeTensor|non-fake|allow_non_fake_inputs",
     "pass the tensor as an argument, or keep it in a closure variable, a global, an instance attribute, a "
     "module parameter or buffer, or a list or dict: those are read at every call"),
    (r"^capture:", "keep the function to tensor operations on its arguments (no data-dependent Python control "
                   "flow such as `if x.any():` or `.item()`); compute such values outside and pass them in"),
    (r"^inputs:", "move the inputs to a CUDA device (or set TRITON_INTERPRET=1 to run CPU tensors through Triton's "
                  "interpreter)"),
    (r"float64|complex", "run the program in float32, float16 or bfloat16 (kernels compute in float32 at most)"),
    (r"is not handled by the generator", "rewrite it with ops the generator handles (pointwise maths, matmuls, "
                                         "softmax, sums and maxima over the keys), or compute it outside the "
                                         "compiled function and pass the result in as an argument"),
    (r"returns \d+ values|does not return a tensor",
     "return one tensor; compile each output as its own function if several are needed"),
    (r"broadcast along an axis|broadcast in part|does not vary along",
     "return the result before expanding it (expand or repeat after the call)"),
    (r"no key axis found|no `scores @ V`",
     "write the attention as softmax(scores) @ V (or sigmoid/relu scores @ V): one reduction over the keys "
     "that multiplies the values; other contractions are not attention"),
    (r"does not fit one tile|too large for one tile",
     "use a head dim of at most 256 (split a wider one into heads)"),
    (r"^reduction:|needs the whole key axis",
     "keep reductions over the keys to max/sum/logsumexp feeding a softmax; a statistic that needs every key "
     "first (a sort, a median, a top-k over the keys) cannot stream: compute it outside and pass it in"),
    (r"^gather:|indexing a computed tensor|advanced indexing|index that is not a tensor|gather along",
     "gather from program inputs with index tensors on leading axes (table[idx]); precompute other gathers "
     "outside and pass the result in"),
    (r"merged axis|view to|view splits", "index or slice the tensor before merging its axes, or pass it in "
                                         "already laid out as [..., rows, keys]"),
    (r"concatenat", "concatenate along the key axis once (sinks: cat, softmax, slice), or pass the parts "
                    "separately"),
    (r"^launch:|^compiler:", "this is flashlight's error, not your program's: please report it with the "
                             "warning's text; the program runs correctly as written meanwhile"),
]


def advice(node: str, reason: str) -> str:
    """What the user can change about the fallback ``(node, reason)``: one sentence."""
    text = f"{node}: {reason}"
    for pattern, what in _RULES:
        if re.search(pattern, text):
            return what
    return f"simplify or move the node out of the compiled function; {_EXPLAIN}"


def with_advice(node: str, reason: str) -> str:
    """``reason`` followed by what to change (once: a reason that already says it is kept)."""
    if "what to change:" in reason or "Pass it as an argument" in reason:
        return reason
    return f"{reason} (what to change: {advice(node, reason)})"
