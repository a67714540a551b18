"""What the on-disk build cache trusts: nothing executable from disk, authenticated entries,
private folders, and any bad state a miss with one warning — the answer always right.

New-process behaviour is checked in real subprocesses (``tests/cache_child.py``)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
import torch

from flashlight_hf.compiler.driver import build
from flashlight_hf.compiler import cache
from flashlight_hf.testing import assert_close

REPO = Path(__file__).resolve().parent.parent
_INTERPRET = {} if torch.cuda.is_available() else {"TRITON_INTERPRET": "1"}  # the child runs where we run


def child(cache_dir: Path | str, program: str = "softcap", *, env: dict | None = None) -> dict:
    e = {**os.environ, "FLASHLIGHT_CACHE_DIR": str(cache_dir), **_INTERPRET, **(env or {})}
    res = subprocess.run([sys.executable, "-m", "tests.cache_child", program], cwd=REPO, env=e,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"the child failed:\n{res.stdout}\n{res.stderr[-3000:]}"
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["fused"] and got["error"] <= 1e-5, got
    return got


class Payload:
    """Unpickling this creates a file: proof that a pickle ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_new_process_is_served_from_disk(tmp_path):
    assert not child(tmp_path)["from_disk"]
    assert child(tmp_path)["from_disk"]
    for folder in (tmp_path, tmp_path / "builds", tmp_path / "kernels"):
        assert (folder.stat().st_mode & 0o777) == 0o700, f"{folder} must be private"
    assert (tmp_path / "key").stat().st_mode & 0o077 == 0


def test_a_planted_pickle_is_never_loaded(tmp_path):
    child(tmp_path)
    marker = tmp_path.parent / f"{tmp_path.name}-pickle-ran"
    entries = list((tmp_path / "builds").glob("*.pkl"))
    assert entries
    for k, entry in enumerate(entries):
        payload = pickle.dumps(Payload(marker))
        entry.write_bytes(payload if k % 2 == 0 else b"\0" * 32 + payload)  # bare, or behind a fake MAC
    got = child(tmp_path)
    assert not marker.exists(), "a planted pickle ran"
    assert not got["from_disk"] and any("not written by this user" in w for w in got["warnings"]), got
    assert child(tmp_path)["from_disk"], "the rebuild replaces the planted entry"


def test_a_tampered_kernel_file_never_runs(tmp_path):
    child(tmp_path)
    marker = tmp_path.parent / f"{tmp_path.name}-kernel-ran"
    kernels = list((tmp_path / "kernels").glob("fl_*.py"))
    assert kernels
    originals = {p: p.read_text() for p in kernels}
    for p in kernels:  # code prepended, and the maths edited
        p.write_text(f"open({str(marker)!r}, 'w').close()\n" + originals[p].replace("tl.exp2(", "0.5 * tl.exp2("))
    got = child(tmp_path)
    assert not marker.exists(), "code in a cached kernel file ran"
    assert got["from_disk"], "the authenticated build entry is still used"
    assert any("does not match" in w for w in got["warnings"]), got
    for p in kernels:
        assert p.read_text() == originals[p], "the copy is rewritten from the verified source"


def test_disk_cache_off_reads_and_writes_nothing(tmp_path):
    child(tmp_path)
    marker = tmp_path.parent / f"{tmp_path.name}-ran-with-cache-off"
    for p in (tmp_path / "kernels").glob("fl_*.py"):
        p.write_text(f"open({str(marker)!r}, 'w').close()\n")
    for p in (tmp_path / "builds").glob("*.pkl"):
        p.write_bytes(pickle.dumps(Payload(marker)))
    got = child(tmp_path, env={"FLASHLIGHT_DISK_CACHE": "0"})
    assert not marker.exists() and not got["from_disk"] and not got["warnings"], got
    fresh = tmp_path.parent / f"{tmp_path.name}-never-made"
    child(fresh, env={"FLASHLIGHT_DISK_CACHE": "0"})
    assert not fresh.exists(), "FLASHLIGHT_DISK_CACHE=0 must not create the cache folder"


def _program(q, k, v):
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    return torch.softmax(s + 0.25, dim=-1) @ v


def _inputs(device: str = "cuda" if torch.cuda.is_available() else "cpu"):
    return (torch.randn(1, 2, 9, 16, device=device), torch.randn(1, 2, 21, 16, device=device),
            torch.randn(1, 2, 21, 16, device=device))


def _check(b, what: str) -> None:
    assert b.kernel is not None, what
    q, k, v = _inputs()
    assert_close(torch.ops.flashlight.fused(b.op_key, [q, k, v]), _program(q.double(), k.double(), v.double()),
                 torch.float32, what=what)


def _corrupt(kind: str, root: Path) -> None:
    entry = next((root / "builds").glob("*.pkl"))
    kernel = next((root / "kernels").glob("fl_*.py"))
    if kind == "truncated_entry":
        entry.write_bytes(entry.read_bytes()[: len(entry.read_bytes()) // 2])
    elif kind == "empty_entry":
        entry.write_bytes(b"")
    elif kind == "entry_of_another_shape":  # authenticated, but not what this version writes
        cache.store(entry.stem, {"program": "nothing", "unexpected": 1})
    elif kind == "emptied_kernel":
        kernel.write_text("")
    elif kind == "truncated_kernel":
        kernel.write_text(kernel.read_text()[:200])
    elif kind == "key_removed":
        (root / "key").unlink()
    elif kind == "entry_is_a_folder":
        entry.unlink()
        entry.mkdir()


@pytest.mark.parametrize("kind", ["truncated_entry", "empty_entry", "entry_of_another_shape", "emptied_kernel",
                                  "truncated_kernel", "key_removed", "entry_is_a_folder"])
def test_corrupt_state_is_a_miss_with_one_warning(kind: str, tmp_path, monkeypatch, flashlight_env):
    flashlight_env("FLASHLIGHT_CACHE_DIR", str(tmp_path))
    first = build(_program, _inputs(), {})
    _check(first, "first build")
    _corrupt(kind, tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = build(_program, _inputs(), {})
    _check(again, kind)
    if kind in ("emptied_kernel", "truncated_kernel"):
        assert again.from_disk and any("does not match" in str(w.message) for w in caught)
    elif kind != "key_removed":
        assert not again.from_disk
        assert [w for w in caught if "flashlight" in str(w.message)], f"{kind}: a miss is warned"
    _check(build(_program, _inputs(), {}), f"{kind}, after")


def _unusable(kind: str, tmp_path: Path) -> Path:
    if kind == "path_is_a_file":
        p = tmp_path / "cache"
        p.write_text("not a folder")
        return p
    p = tmp_path / "cache"
    p.mkdir()
    if kind == "world_writable":
        p.chmod(0o777)
    elif kind == "group_writable_builds":
        (p / "builds").mkdir(mode=0o700)
        (p / "builds").chmod(0o770)
    elif kind == "foreign_owner":
        if os.geteuid() != 0:
            pytest.skip("making a folder owned by another user needs root")
        os.chown(p, 65534, 65534)
    return p


@pytest.mark.parametrize("kind", ["path_is_a_file", "world_writable", "group_writable_builds", "foreign_owner"])
def test_untrusted_folders_are_refused_and_the_answer_is_right(kind: str, tmp_path, monkeypatch, flashlight_env):
    p = _unusable(kind, tmp_path)
    flashlight_env("FLASHLIGHT_CACHE_DIR", str(p))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b = build(_program, _inputs(), {})
    _check(b, kind)
    assert any("not using the disk cache" in str(w.message) for w in caught), kind
    if p.is_dir():
        assert not list(p.rglob("*.pkl")), "nothing is written to a refused folder"


def test_a_cache_that_cannot_be_written_is_skipped(tmp_path, monkeypatch, flashlight_env):
    flashlight_env("FLASHLIGHT_CACHE_DIR", str(tmp_path))

    def refuse(*a, **kw):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(cache.tempfile, "mkstemp", refuse)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b = build(_program, _inputs(), {})
    _check(b, "read-only")
    assert any("flashlight" in str(w.message) for w in caught)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes to read-only folders; test_a_cache_that_cannot_be_written_is_skipped "
                           "covers refused writes there")
def test_a_read_only_folder(tmp_path, monkeypatch, flashlight_env):
    ro = tmp_path / "cache"
    for p in (ro, ro / "builds", ro / "kernels"):
        p.mkdir(mode=0o700)
    for p in (ro / "builds", ro / "kernels", ro):
        p.chmod(0o500)
    flashlight_env("FLASHLIGHT_CACHE_DIR", str(ro))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b = build(_program, _inputs(), {})
    _check(b, "read-only folder")
    assert any("flashlight" in str(w.message) for w in caught)


def test_concurrent_writers_never_expose_a_torn_entry(tmp_path, monkeypatch, flashlight_env):
    flashlight_env("FLASHLIGHT_CACHE_DIR", str(tmp_path))
    b = build(_program, _inputs(), {})
    key = next((tmp_path / "builds").glob("*.pkl")).stem
    entry = cache.load(key)
    assert entry is not None
    bad: list[str] = []

    def worker() -> None:
        for _ in range(15):
            cache.store(key, entry)
            got = cache.load(key)
            if got is None or got["source"].source != b.source.source:
                bad.append("torn or missing")

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad
    assert not list((tmp_path / "builds").glob("*.tmp")) and not list((tmp_path / "builds").glob(".*.tmp"))


def test_two_processes_building_at_once(tmp_path):
    e = {**os.environ, "FLASHLIGHT_CACHE_DIR": str(tmp_path), **_INTERPRET}
    procs = [subprocess.Popen([sys.executable, "-m", "tests.cache_child", "shifted"], cwd=REPO, env=e,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        got = json.loads(out.strip().splitlines()[-1])
        assert got["fused"] and got["error"] <= 1e-5, got
        assert not [w for w in got["warnings"] if "cache" in w or "build" in w], got
    assert len(list((tmp_path / "builds").glob("*.pkl"))) == 1
    assert child(tmp_path, "shifted")["from_disk"]
