"""Pytest set-up: interpreter mode on CPU, the `gpu` marker, and a Triton smoke kernel.

TRITON_INTERPRET must be set before any kernel module is imported (``triton.jit`` reads it at
decoration time), so it is set here, at conftest import, when no CUDA device exists.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "FLASHLIGHT_CACHE_DIR" not in os.environ:  # hermetic: kernels and builds of this run only
    import tempfile

    os.environ["FLASHLIGHT_CACHE_DIR"] = tempfile.mkdtemp(prefix="flashlight-test-cache-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="session")
def device() -> str:
    """Where kernels run: CUDA when present, else CPU tensors through Triton's interpreter."""
    return _device()


@pytest.fixture(scope="session", autouse=True)
def triton_smoke() -> None:
    """Run one tiny Triton kernel first, so a broken Triton install fails loudly, once."""
    from tests.triton_smoke import run_smoke

    run_smoke(_device())


@pytest.fixture
def flashlight_env(monkeypatch):
    """``flashlight_env(name, value)``: set an environment variable for one test, for this
    process (flashlight reads its switches once: this re-reads them) and for the children it
    starts. Undone, and the switches re-read, when the test ends."""
    from flashlight_hf import settings

    def set_(name: str, value: str) -> None:
        monkeypatch.setenv(name, value)
        settings.reload()

    yield set_
    monkeypatch.undo()
    settings.reload()
