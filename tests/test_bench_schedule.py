"""The loop-schedule transforms of benchmarks/bench_schedule.py, checked on CPU.

* on every golden source (tests/golden/): each transform gives source that parses; the
  reorderings keep every statement of the key-tile helper exactly once, in its branch of
  ``if BOUNDARY``; ``tma_kv`` changes nothing boundary tiles run and puts interior K/V loads on
  tensor descriptors;
* the reorderings mean what they say on differential attention's two streams;
* the transformed kernels compute what the generated one does (Triton's interpreter, keys
  not a multiple of the tile, so boundary and interior tiles both run).

Compiling them for sm_90 (``tma_kv`` in particular) is kernel_stats.py's business:
``TRITON_INTERPRET=0 python benchmarks/kernel_stats.py --variants generated,mma_first,stream_order,tma_kv``.
"""

from __future__ import annotations

import ast
import dataclasses
from collections import Counter
from pathlib import Path

import pytest
import torch

import flashlight_hf
import flashlight_hf.compiler.driver as api
from benchmarks.bench_configs import programs
from benchmarks.bench_schedule import VARIANTS, _boundary_test
from flashlight_hf import settings
from flashlight_hf.testing import rel_error

GOLDEN = sorted((Path(__file__).parent / "golden").glob("*.py.txt"))


def _helper(src: str) -> ast.FunctionDef:
    (fn,) = [f for f in ast.parse(src).body if isinstance(f, ast.FunctionDef) and f.name == "_attn_fwd_inner"]
    return fn


def _statements(block: list[ast.stmt], tag: bool | None = None, path: tuple = ()) -> list[tuple]:
    """(branch of ``if BOUNDARY``, enclosing statements, text) of every simple statement."""
    out = []
    for s in block:
        b = _boundary_test(s)
        if b is not None:
            out += _statements(s.body, b, path) + _statements(s.orelse, not b, path)
        elif isinstance(s, (ast.If, ast.For, ast.While)):
            head = ast.unparse(s.iter if isinstance(s, ast.For) else s.test)
            out += _statements(s.body, tag, path + (head,)) + _statements(s.orelse, tag, path + ("else " + head,))
        else:
            out.append((tag, path, ast.unparse(s)))
    return out


def _body(src: str) -> list[str]:
    return [t for _, _, t in _statements(_helper(src).body)]


@pytest.mark.parametrize("golden", GOLDEN, ids=lambda p: p.name.split(".")[0])
def test_transforms_keep_the_key_tile_body(golden):
    src = golden.read_text()
    before = Counter(_statements(_helper(src).body))
    for name in ("mma_first", "stream_order"):
        assert Counter(_statements(_helper(VARIANTS[name](src)).body)) == before, name
    out = VARIANTS["tma_kv"](src)
    after = Counter(_statements(_helper(out).body))
    runs_on_boundary = lambda c: Counter({k: n for k, n in c.items() if k[0] is not False})  # noqa: E731
    assert runs_on_boundary(after) == runs_on_boundary(before)
    gone, new = before - after, after - before
    assert gone and all(k[0] is False and "tl.load(" in k[2] and "mask=" not in k[2] for k in gone)
    assert sum(new.values()) == sum(gone.values()) and all(" = desc_" in k[2] for k in new)
    assert out.count("tl.make_tensor_descriptor(") == 2  # K and V, once per program
    assert "exp2_mixed(" in VARIANTS["exp_mixed"](src)
    for name in VARIANTS:
        ast.parse(VARIANTS[name](src))


def test_schedules_on_two_streams():
    src = (Path(__file__).parent / "golden" / "differential.py.txt").read_text()
    at = lambda body, prefix: next(i for i, t in enumerate(body) if t.startswith(prefix))  # noqa: E731
    body = _body(VARIANTS["mma_first"](src))
    assert at(body, "dot_2 = ") < at(body, "m_tile0 = ")  # the second Q·Kᵀ before the first softmax
    assert at(body, "v = ") < at(body, "m_tile0 = ")
    body = _body(VARIANTS["stream_order"](src))
    assert at(body, "acc2 = ") < at(body, "k_2 = ")  # stream 0 done (P·V) before stream 1's K tile
    assert body[-3:] == ["acc0 = m_new_acc0", "acc3 = m_new_acc3", "return (acc0, acc1, acc2, acc3, acc4, acc5)"]


@pytest.mark.parametrize("program", ["differential", "full"])
def test_transformed_kernels_compute_the_same(program, device, monkeypatch, flashlight_env):
    flashlight_env("FLASHLIGHT_DISK_CACHE", "0")
    if device == "cuda":  # TMA descriptors made in a kernel live in a scratch buffer the caller gives
        import triton

        triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    fn, _, inputs, _ = programs(1, 1, 40, 16, device, torch.float32)[program]
    ref = fn(*[t.double() for t in inputs])
    original = api.generate
    for name in ("mma_first", "stream_order", "tma_kv"):
        ran = []

        def generate(*a, _t=VARIANTS[name], **k):
            src = original(*a, **k)
            ran.append(_t(src.source))
            return dataclasses.replace(src, source=ran[-1])

        monkeypatch.setattr(api, "generate", generate)
        with settings.override(configs="16,16,4,1"):  # 40 keys: two interior tiles, one boundary
            compiled = flashlight_hf.compile(fn)
            out = compiled(*inputs)
            assert ran and compiled.builds()[-1].kernel is not None, name  # the transformed kernel ran
        assert rel_error(out, ref) < 1e-5, name
