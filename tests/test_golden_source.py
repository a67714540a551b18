"""Golden files: the generated Triton source users read in ``explain`` is snapshotted.

A change to codegen shows up as a readable diff here. To accept a deliberate change, rerun with
``FLASHLIGHT_UPDATE_GOLDEN=1`` and review the diff of ``tests/golden/`` like code.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from flashlight_hf.compiler.driver import dynamic_axes
from flashlight_hf.compiler import capture
from flashlight_hf.compiler.codegen import generate
from flashlight_hf.compiler.ir import build_ir
from flashlight_hf.compiler.rewrite import plan
from tests.test_generator import causal_kv_offset, differential

GOLDEN = Path(__file__).parent / "golden"


def _source(fn, args) -> str:
    kp = plan(build_ir(capture.trace_static(fn, args, {})))
    sym = capture.trace_symbolic(fn, args, {}, dynamic_axes(kp))
    return generate(plan(build_ir(sym)), interpret=True, allow_tf32=False).source


CASES = {
    "causal_kv_offset": (causal_kv_offset, lambda: (torch.randn(2, 4, 37, 64), torch.randn(2, 4, 53, 64),
                                                     torch.randn(2, 4, 53, 64))),
    "differential": (differential, lambda: (torch.randn(2, 4, 37, 64), torch.randn(2, 4, 53, 64),
                                            torch.randn(2, 4, 53, 32), torch.rand(4))),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_generated_source_matches_golden(name: str):
    fn, make = CASES[name]
    src = _source(fn, make())
    path = GOLDEN / f"{name}.py.txt"
    if os.environ.get("FLASHLIGHT_UPDATE_GOLDEN") == "1" or not path.exists():
        if os.environ.get("CI") and not path.exists():
            pytest.fail(f"golden file {path} is missing")
        path.write_text(src)
    assert src == path.read_text(), f"generated source for {name} changed; see the diff against {path}"
    assert src.count("tl.dot(") >= 2 and "# running max" in src
