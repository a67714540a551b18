"""A new process for the cache tests: compiles one program, checks it against float64 eager and
prints one JSON line (``from_disk``, the relative error, the flashlight warnings).

Run as ``python -m tests.cache_child [program]`` with ``FLASHLIGHT_CACHE_DIR`` set by the test.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from flashlight_hf.compiler.driver import build  # noqa: E402
from flashlight_hf.testing import rel_error  # noqa: E402


def softcap(q, k, v):
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    return torch.softmax(25.0 * torch.tanh(s / 25.0), dim=-1) @ v


def shifted(q, k, v):
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    return torch.softmax(s - 0.5, dim=-1) @ v * 2.0


PROGRAMS = {"softcap": softcap, "shifted": shifted}


def main() -> None:
    fn = PROGRAMS[sys.argv[1] if len(sys.argv) > 1 else "softcap"]
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v = (torch.randn(1, 2, 9, 16, device=dev), torch.randn(1, 2, 21, 16, device=dev),
               torch.randn(1, 2, 21, 16, device=dev))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b = build(fn, (q, k, v), {})
        out = torch.ops.flashlight.fused(b.op_key, [q, k, v]) if b.kernel is not None else fn(q, k, v)
    err = rel_error(out, fn(q.double(), k.double(), v.double()))
    print(json.dumps({"from_disk": b.from_disk, "fused": b.kernel is not None, "error": err,
                      "warnings": [str(w.message) for w in caught if "flashlight" in str(w.message)]}))


if __name__ == "__main__":
    main()
