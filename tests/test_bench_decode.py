"""benchmarks/bench_decode.py on CPU (interpreter, no timing): every implementation is checked
against float64 and gets a row; the GQA-rows layout gives the same answer as one program per head."""

from __future__ import annotations

import json

from benchmarks import bench_decode


def test_bench_decode_smoke(tmp_path, device):
    rows = bench_decode.main(["--batch", "1", "2", "--context", "70", "--heads", "4", "--kv-heads", "2",
                              "--head-dim", "16", "--dtype", "fp32", "--device", device, "--out", str(tmp_path)])
    impls = {r["impl"] for r in rows}
    assert {"flashlight", "flashlight_gqa_rows"} <= impls
    assert all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"]
    assert all(r["err"] is not None and r["err"] < 1e-5 for r in rows)
    assert json.loads((tmp_path / "decode.json").read_text()) == rows
    assert "| impl |" in (tmp_path / "decode.md").read_text()
