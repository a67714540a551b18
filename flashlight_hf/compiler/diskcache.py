"""The on-disk build cache: a new process skips tracing with dynamic sizes, IR, rewrites and
codegen for a program it has compiled before.

Key: the program's static ATen graph (its code and every node's shape/dtype), the non-tensor
arguments, the inputs' dtypes, the device kind, whether kernels run interpreted, the matmul
precision setting, and the torch / triton / flashlight-hf versions and the compiler's own source — anything that can change
the generated kernel. Entries are written atomically (temp file + ``os.replace``); an entry that
cannot be read (another version's pickle, a truncated file) is ignored and rebuilt.
``FLASHLIGHT_DISK_CACHE=0`` turns the cache off; ``FLASHLIGHT_CACHE_DIR`` moves it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
import triton

from flashlight_hf import __version__
from flashlight_hf.compiler.capture import Captured
from flashlight_hf.compiler.runtime import cache_dir


@functools.lru_cache(maxsize=1)
def _compiler_fingerprint() -> str:
    """Hash of the compiler's own source: a changed generator never reuses an old build."""
    h = hashlib.sha256()
    # the stages, and api.py, which chooses the dynamic axes a build is traced with
    for f in [*sorted(Path(__file__).parent.glob("*.py")), Path(__file__).parent.parent / "api.py"]:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def enabled() -> bool:
    return os.environ.get("FLASHLIGHT_DISK_CACHE", "1") != "0"


def build_key(static: Captured, tensors: Sequence[torch.Tensor], constants: Sequence[Any], *,
              interpret: bool, allow_tf32: bool, warp_specialize: bool = False) -> str:
    h = hashlib.sha256()
    gm = static.graph_module
    h.update(gm.code.encode())
    for n in gm.graph.nodes:
        val = n.meta.get("val")
        if isinstance(val, torch.Tensor):
            h.update(f"{n.name}:{tuple(val.shape)}:{val.dtype}".encode())
    for t in tensors:
        h.update(f"{t.dtype}:{t.dim()}:{t.device.type}".encode())
    h.update(repr([c for c in constants if c is not None]).encode())
    h.update(f"{interpret}:{allow_tf32}:{warp_specialize}:{torch.__version__}:{triton.__version__}:{__version__}:"
             f"{_compiler_fingerprint()}".encode())
    return h.hexdigest()[:32]


def _path(key: str) -> Path:
    path = cache_dir().parent / "builds"
    path.mkdir(parents=True, exist_ok=True)
    return path / f"{key}.pkl"


def load(key: str) -> dict | None:
    path = _path(key)
    if not path.exists():
        return None
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except Exception:  # unreadable: another version's pickle or a torn file; rebuild it
        return None


def store(key: str, entry: dict) -> None:
    path = _path(key)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(entry, f)
        os.replace(tmp, path)
    except Exception:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
