"""The kernel benchmark harness (benchmarks/), checked on CPU at tiny shapes.

* each variant's eager program (float32) matches its float64 reference;
* its FlexAttention score_mod / mask_mod, evaluated by a plain-PyTorch emulation over an index
  grid (flex_attention itself is not needed), means the same as the eager program;
* its SDPA form (where it has one) matches too;
* density / FLOP counting;
* main() end to end: table, json, a row per (variant, D, impl), sdpa rows pass the gate.
"""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.bench_attention import main, markdown_table
from benchmarks.impls import IMPLS
from benchmarks.variants import VARIANTS, NotApplicable, flex_emulate
from flashlight_hf.testing import rel_error, tolerance

B, H, S, D = 2, 4, 96, 16
OPTS = {"window": 24, "softcap": 5.0, "num_docs": 4, "prefix": 8}  # small enough that they actually bite


def _variant(name, **kw):
    return VARIANTS[name](B, H, S, "cpu", seed=3, **{**OPTS, **kw})


def _qkv(dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(B, H, S, D, generator=g) * scale).to(dtype) for _ in range(3)]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_eager_program_matches_float64_reference(name):
    var = _variant(name)
    q, k, v = _qkv(scale=2.0)
    ref = var.reference(q, k, v)
    assert ref.dtype == torch.float64
    out = var.eager(q, k, v)
    assert out.dtype == torch.float32 and out.shape == (B, H, S, D)
    err = rel_error(out, ref)
    assert err <= tolerance(torch.float32), f"{name}: {err:.2e}"
    assert not torch.isnan(ref).any()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_flex_mods_mean_the_eager_program(name):
    var = _variant(name)
    q, k, v = [t.double() for t in _qkv(scale=2.0)]
    emulated = flex_emulate(q, k, v, var.score_mod(), var.mask_mod())
    ref = var.reference(q, k, v)
    assert rel_error(emulated, ref) <= 1e-10, name


@pytest.mark.parametrize("name", list(VARIANTS))
def test_sdpa_form_matches_or_is_declared_na(name):
    var = _variant(name)
    q, k, v = _qkv()
    if var.sdpa_form is None:
        with pytest.raises(NotApplicable):
            IMPLS["sdpa"].make(var, q, k, v)
        return
    fn = IMPLS["sdpa"].make(var, q, k, v)
    assert (getattr(fn, "note", None) == "mask tensor") == (var.sdpa_form == "mask tensor")
    assert rel_error(fn(), var.reference(q, k, v)) <= tolerance(torch.float32)


def test_variants_are_not_trivial():
    """The mods change the result (a mod that does nothing would pass the checks above)."""
    q, k, v = [t.double() for t in _qkv(scale=2.0)]
    full = _variant("full").reference(q, k, v)
    outs = {n: _variant(n).reference(q, k, v) for n in VARIANTS if n != "full"}
    for n, o in outs.items():
        assert rel_error(o, full) > 1e-2, n
    assert rel_error(outs["alibi"], outs["causal"]) > 1e-2
    assert rel_error(outs["sliding_window"], outs["causal"]) > 1e-2
    assert rel_error(outs["document_mask"], outs["causal"]) > 1e-2
    assert rel_error(outs["prefix_lm"], outs["causal"]) > 1e-2


def test_sliced_reference_is_a_slice_of_the_full_one():
    """The gate compares a [:cb, :ch] slice: aux tensors (slopes per head, ids per row) must slice along."""
    q, k, v = [t.double() for t in _qkv()]
    for name in ("alibi", "document_mask"):
        var = _variant(name)
        full = var.reference(q, k, v)
        part = var.sliced(1, 2).reference(q[:1, :2], k[:1, :2], v[:1, :2])
        assert torch.allclose(part, full[:1, :2], rtol=0, atol=1e-12), name
        part = var.sliced(2, 1).reference(q[:, :1], k[:, :1], v[:, :1])
        assert torch.allclose(part, full[:, :1], rtol=0, atol=1e-12), name


def test_density_and_flops():
    Sx = 64
    full = VARIANTS["full"](2, 3, Sx, "cpu")
    causal = VARIANTS["causal"](2, 3, Sx, "cpu")
    assert full.density() == 1.0
    assert causal.density() == pytest.approx((Sx + 1) / (2 * Sx))
    # the closed form agrees with counting the mask over the grid (the base-class method)
    assert VARIANTS["causal"].__mro__[1].density(causal) == pytest.approx((Sx + 1) / (2 * Sx))
    assert full.flops(32) == 4 * 2 * 3 * Sx * Sx * 32
    assert causal.flops(32) == pytest.approx(4 * 2 * 3 * Sx * Sx * 32 * (Sx + 1) / (2 * Sx))
    w = 16
    sw = VARIANTS["sliding_window"](1, 1, Sx, "cpu", window=w)
    assert sw.density(q_chunk=7) == pytest.approx(sum(min(i + 1, w) for i in range(Sx)) / Sx**2)
    doc = VARIANTS["document_mask"](2, 1, Sx, "cpu", num_docs=3, seed=1)
    ids = doc.doc_ids
    assert ids.shape == (2, Sx) and int(ids.max()) == 2 and bool((ids.diff(dim=1) >= 0).all())
    expect = 0
    for row in ids:
        for L in torch.bincount(row).tolist():
            expect += L * (L + 1) // 2
    assert doc.density() == pytest.approx(expect / (2 * Sx * Sx))


def _run_main(tmp_path, *extra, plot=False):
    argv = ["--device", "cpu", "--batch", "2", "--heads", "2", "--seqlen", "64", "--head-dim", "16", "32",
            "--dtype", "fp32", "--warmup", "1", "--rep", "3", "--window", "16", "--num-docs", "3",
            "--out", str(tmp_path), *extra] + ([] if plot else ["--no-plot"])
    res = main(argv)
    data = json.loads((tmp_path / "results.json").read_text())
    table = (tmp_path / "table.md").read_text()
    return res, data, table


def test_main_all_variants_cpu(tmp_path, capsys):
    impls = ["sdpa", "eager"]  # compiled flex: see the next test (compiling all six costs ~20 s on CPU)
    res, data, table = _run_main(tmp_path, "--impls", ",".join(impls))
    rows = data["rows"]
    assert len(rows) == len(VARIANTS) * 2 * len(impls)
    assert {(r["variant"], r["head_dim"], r["impl"]) for r in rows} == {
        (vn, d, i) for vn in VARIANTS for d in (16, 32) for i in impls}
    for r in rows:
        if r["impl"] == "sdpa" and r["variant"] == "softcap":
            assert r["status"] == "n/a"
        else:
            assert r["status"] == "ok", r
            assert r["rel_err"] <= tolerance(torch.float32) and r["ms"] > 0 and r["tflops"] > 0
        if r["impl"] == "sdpa" and r["status"] == "ok":
            assert r["x_sdpa"] == pytest.approx(1.0)
    assert {r["label"] for r in rows if r["impl"] == "sdpa"} == {"sdpa", "sdpa (mask tensor)"}
    for vn in VARIANTS:
        assert f"| {vn} | 16 |" in table and f"| {vn} | 32 |" in table
    assert "| variant | D | impl | ms | TFLOP/s | ×flex | ×sdpa | rel err |" in table
    assert data["meta"]["env"]["torch"] == torch.__version__ and "date" in data["meta"]["env"]
    printed = capsys.readouterr().out
    assert printed.rstrip().endswith(table.split("\n\n")[1].rstrip())  # the table is printed last


def test_main_default_impls_compile_flex_cpu(tmp_path):
    """Default impls (sdpa, compiled flex, compiled eager, flashlight) on one variant; the compiled
    ones may error on CPU (torch.compile needs a C++ compiler there); sdpa and flashlight (the
    generated kernel, through the interpreter) may not."""
    res, data, table = _run_main(tmp_path, "--variants", "alibi", "--head-dim", "16", plot=True)
    assert (tmp_path / "tflops.png").read_bytes()[:4] == b"\x89PNG"
    rows = data["rows"]
    assert [r["impl"] for r in rows] == ["sdpa", "flex", "eager_compiled", "flashlight"]
    sdpa, flex, compiled, flashlight = rows
    assert flashlight["status"] == "ok" and flashlight["rel_err"] <= tolerance(torch.float32)
    assert sdpa["status"] == "ok" and sdpa["label"] == "sdpa (mask tensor)"
    assert flex["status"] in ("ok", "error") and compiled["status"] in ("ok", "error")
    if compiled["status"] == "ok":
        assert compiled["rel_err"] <= tolerance(torch.float32)
    if flex["status"] == "ok":
        assert flex["rel_err"] <= tolerance(torch.float32) and flex["x_flex"] == pytest.approx(1.0)
        assert sdpa["x_flex"] == pytest.approx(flex["ms"] / sdpa["ms"])


def test_failing_impl_is_marked_and_not_timed(tmp_path, monkeypatch):
    from benchmarks import impls as impls_mod

    def make_wrong(variant, q, k, v):
        return lambda: variant.eager(q, k, v) * 1.1

    def make_raises(variant, q, k, v):
        raise RuntimeError("boom")

    monkeypatch.setitem(impls_mod.IMPLS, "wrong", impls_mod.Impl("wrong", make_wrong, "test"))
    monkeypatch.setitem(impls_mod.IMPLS, "raises", impls_mod.Impl("raises", make_raises, "test"))
    res, data, table = _run_main(tmp_path, "--variants", "causal", "--head-dim", "16",
                                 "--impls", "wrong,raises,sdpa")
    by = {r["impl"]: r for r in data["rows"]}
    assert by["wrong"]["status"] == "FAIL" and by["wrong"]["ms"] is None and by["wrong"]["rel_err"] > 0.05
    assert by["raises"]["status"] == "error" and "boom" in by["raises"]["error"]
    assert by["sdpa"]["status"] == "ok"
    assert "FAIL" in table and "boom" in table


def test_markdown_table_formats_missing_values():
    rows = [{"variant": "v", "head_dim": 64, "label": "x", "ms": None, "tflops": None, "x_flex": None,
             "x_sdpa": None, "rel_err": None, "status": "n/a", "error": "why"}]
    assert "| v | 64 | x | — | — | — | — | — | n/a: why |" in markdown_table(rows)
