"""Golden files: the generated Triton source users read in ``explain`` is snapshotted.

A change to codegen shows up as a readable diff here. To accept a deliberate change, rerun with
``FLASHLIGHT_UPDATE_GOLDEN=1`` and review the diff of ``tests/golden/`` like code.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest
import torch

from flashlight_hf.compiler.driver import dynamic_axes
from flashlight_hf.compiler import capture
from flashlight_hf.compiler.codegen import generate
from flashlight_hf.compiler.ir import build_ir
from flashlight_hf.compiler.rewrite import plan
from tests.test_generator import causal_kv_offset, differential, document_mask, evoformer, key_gate, vanilla

GOLDEN = Path(__file__).parent / "golden"


def _source(fn, args) -> str:
    kp = plan(build_ir(capture.trace_static(fn, args, {})))
    sym = capture.trace_symbolic(fn, args, {}, dynamic_axes(kp))
    kp = plan(build_ir(sym))
    params = list(inspect.signature(fn).parameters)  # every argument here is a tensor
    names = [params[b] if isinstance(b, int) else None for b in kp.program.bindings]
    return generate(kp, interpret=True, allow_tf32=False, input_names=names).source


CASES = {
    "vanilla": (vanilla, lambda: (torch.randn(2, 4, 37, 64), torch.randn(2, 4, 53, 64), torch.randn(2, 4, 53, 64))),
    "causal_kv_offset": (causal_kv_offset, lambda: (torch.randn(2, 4, 37, 64), torch.randn(2, 4, 53, 64),
                                                     torch.randn(2, 4, 53, 64))),
    "differential": (differential, lambda: (torch.randn(2, 4, 37, 64), torch.randn(2, 4, 53, 64),
                                            torch.randn(2, 4, 53, 32), torch.rand(4))),
    "evoformer": (evoformer, lambda: [torch.randn(1, 3, 40, 2, 16) for _ in range(3)] + [
        torch.randn(1, 3, 1, 1, 40), torch.randn(1, 1, 2, 40, 40), torch.randn(1, 3, 40, 2, 16)]),
    # data-dependent: a per-key bias computed from K, and a document-id mask (tile skipping)
    "key_gate": (key_gate, lambda: (torch.randn(2, 4, 37, 32), torch.randn(2, 4, 53, 32),
                                    torch.randn(2, 4, 53, 32), torch.randn(32))),
    "document_mask": (document_mask, lambda: (torch.randn(2, 4, 40, 32), torch.randn(2, 4, 40, 32),
                                              torch.randn(2, 4, 40, 32),
                                              torch.sort(torch.randint(0, 4, (40,))).values)),
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
