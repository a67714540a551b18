"""The generated GPU kernel, compiled ahead of time for sm_90 on this CPU machine
(benchmarks/kernel_stats.py): properties its speed depends on, checked without a GPU.

For full attention at head dim 64 with 128×64 tiles and 8 warps: the two contractions run on
Hopper's tensor cores (``HGMMA``), the K/V tiles arrive by asynchronous copies (``LDGSTS``: the
loop is software-pipelined), and nothing spills to local memory. A codegen change that breaks
pipelining (say, loads Triton cannot vectorise) or bloats registers fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton

ROOT = Path(__file__).resolve().parent.parent
TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"

pytestmark = pytest.mark.skipif(not (TOOLS / "ptxas").exists() or not (TOOLS / "cuobjdump").exists(),
                                reason="this Triton wheel has no bundled ptxas / cuobjdump")


def test_full_attention_kernel_is_pipelined_on_tensor_cores(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "0", "FLASHLIGHT_CACHE_DIR": str(tmp_path / "cache")}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernel_stats.py"), "--programs", "full",
                    "--variants", "generated", "--configs", "128,64,8,3", "--out", str(tmp_path)],
                   cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=300)
    (row,) = json.loads((tmp_path / "kernel_stats.json").read_text())
    assert "error" not in row, row
    assert row["HGMMA"] > 0 and row["MUFU.EX2"] > 0, row
    assert row["LDGSTS"] > 0, f"K/V loads are not asynchronous copies (the key loop is not pipelined): {row}"
    assert row["STL"] == 0 and row["LDL"] == 0, f"the kernel spills registers: {row}"
    assert 0 < row["regs"] <= 255 and row["shared"] > 0, row


def test_one_launch_split_kv_kernel_compiles_for_hopper(tmp_path):
    """The fused split-KV kernel (the default split-KV launch) compiles for sm_90 with its ticket
    atomic and fences (the interpreter runs it without compiling it)."""
    code = (
        "import sys, json, torch; sys.path.insert(0, '.')\n"
        "from benchmarks.kernel_stats import fused_split_stats\n"
        "from benchmarks.bench_programs import diff_attention\n"
        "ex = (torch.randn(1, 8, 1, 128, dtype=torch.bfloat16), torch.randn(1, 8, 4096, 128, dtype=torch.bfloat16),\n"
        "      torch.randn(1, 8, 4096, 64, dtype=torch.bfloat16), torch.rand(8, dtype=torch.bfloat16))\n"
        "print(json.dumps(fused_split_stats(diff_attention, ex)))\n")
    env = {**os.environ, "TRITON_INTERPRET": "0", "FLASHLIGHT_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True,
                          text=True, timeout=300)
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert stats["ATOMG"] > 0 and stats["MEMBAR"] > 0, stats
    assert stats["STL"] == 0, stats
