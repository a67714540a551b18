"""Generated source loaded as a Triton kernel from memory, never from a file."""

from __future__ import annotations

import hashlib
import linecache
import sys
import threading
import types
from typing import Any

from flashlight_hf.compiler.codegen import KernelSource

_lock = threading.Lock()
_loaded: dict[tuple[str, str], Any] = {}


def load_kernel(src: KernelSource, filename: str | None = None) -> Any:
    """Execute the generated source from memory and return its jit function.

    ``triton.jit`` reads the source of the function it wraps (``inspect.getsource``), which
    reads it through :mod:`linecache`; the source is registered there under ``filename`` (a
    readable copy the driver keeps, or a name of its own), so nothing is ever executed from a
    file another process could have changed. A kernel is loaded once per process."""
    digest = hashlib.sha256(src.source.encode()).hexdigest()[:24]
    key = (digest, src.name)
    with _lock:
        fn = _loaded.get(key)
        if fn is not None:
            return fn
        filename = filename or f"<flashlight kernel fl_{digest}>"
        lines = src.source.splitlines(keepends=True)
        linecache.cache[filename] = (len(src.source), None, lines, filename)  # mtime None: never re-read
        module = types.ModuleType(f"flashlight_hf_kernels.fl_{digest}")
        module.__file__ = filename
        sys.modules[module.__name__] = module  # Triton resolves the kernel's globals through its module
        exec(compile(src.source, filename, "exec"), module.__dict__)
        fn = _loaded[key] = getattr(module, src.name)
        return fn
