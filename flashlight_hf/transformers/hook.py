"""Run a function once a module has finished importing: how ``import flashlight_hf`` registers
"flashlight" with Transformers without importing Transformers (or torch) itself.

:func:`when_imported` runs ``callback(module)`` at once when the module is already fully imported,
else right after its import completes (a finder at the front of ``sys.meta_path`` follows that
module's loader). Waiting for the *module that defines* what a callback touches, rather than
for ``transformers`` itself, keeps Transformers' own import time unchanged (``import
transformers`` loads neither torch nor ``modeling_utils``) and never touches a module whose
import is still half-way: a modeling file that imports ``modeling_utils`` triggers that hook
before its own attention tables exist, so its own callback waits for it. Such a module was
found before anyone waited for it; :func:`watch` (``"transformers."``, set by ``import
flashlight_hf``) has the finder follow every Transformers module so that it can still be waited for.

Standard library only: :mod:`flashlight_hf`'s ``__init__`` imports this module. The one
private detail it reads is ``module.__spec__._initializing`` (importlib's mark of a module whose
code is still running); ``tests/test_transformers_interface.py`` fails loudly if Python drops it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any, Callable, Sequence

_pending: dict[str, list[Callable[[ModuleType], None]]] = {}
_watched: set[str] = set()  # name prefixes whose modules' imports are followed (see watch)


def watch(prefix: str) -> None:
    """Follow every import of a module whose name starts with ``prefix``, so that a callback
    registered while such a module is still half-way through its import (it is in the chain
    that imported the module a first callback waited for) still runs when it completes."""
    _watched.add(prefix)
    _install()


def _install() -> None:
    if not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())


def _loaded(name: str) -> ModuleType | None:
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    if module is None or getattr(spec, "_initializing", False):
        return None  # absent, or its import is still running
    return module


def when_imported(name: str, callback: Callable[[ModuleType], None]) -> None:
    """``callback(module)`` now if ``name`` is fully imported, else right after it is (for a
    module half-way through its import: only if it was found while :func:`watch` covered it)."""
    module = _loaded(name)
    if module is not None:
        callback(module)
        return
    _pending.setdefault(name, []).append(callback)
    _install()


def cancel(callback: Callable[[ModuleType], None]) -> None:
    """Forget ``callback`` wherever it still waits (``flashlight_hf.disable()``)."""
    for name in list(_pending):
        _pending[name] = [c for c in _pending[name] if c is not callback]
        if not _pending[name]:
            del _pending[name]


def pending() -> dict[str, int]:
    """Module name -> how many callbacks still wait for it (for tests and messages)."""
    return {name: len(callbacks) for name, callbacks in _pending.items()}


def _run(module: ModuleType) -> None:
    callbacks = _pending.pop(module.__name__, [])
    if not callbacks:
        return
    # the import system clears __spec__._initializing only after exec_module returns
    spec = module.__spec__
    initializing = getattr(spec, "_initializing", False)
    spec._initializing = False
    try:
        for callback in callbacks:
            callback(module)
    finally:
        spec._initializing = initializing


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a module it follows, it asks the finders behind it and returns
    their spec with a loader that runs the module's callbacks after the module's code (a
    subclass of the usual source loader, so the module looks as it always does)."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None, target: Any = None) -> Any:
        if fullname not in _pending and not any(fullname.startswith(p) for p in _watched):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if type(spec.loader) is importlib.machinery.SourceFileLoader:
                    spec.loader = _SourceThenCallbacks(spec.loader.name, spec.loader.path)
                elif spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _ThenCallbacks(spec.loader)  # .pyc-only installs, zip imports, ...
                return spec
        return None


class _SourceThenCallbacks(importlib.machinery.SourceFileLoader):
    def exec_module(self, module: ModuleType) -> None:
        super().exec_module(module)
        _run(module)


class _ThenCallbacks(importlib.abc.Loader):
    """Any other loader (sourceless ``.pyc``, zip archives): delegates everything to it and runs
    the module's callbacks after its code."""

    def __init__(self, inner: Any):
        self._inner = inner

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        _run(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_code, is_package, ...
        return getattr(self._inner, name)
