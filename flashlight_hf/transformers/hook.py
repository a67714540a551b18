"""Run a function once a module has finished importing: how ``import flashlight_hf`` registers
"flashlight" with Transformers without importing Transformers (or torch) itself.

:func:`when_imported` runs ``callback(module)`` at once when the module is already fully imported,
else right after its import completes (a finder at the front of ``sys.meta_path`` wraps that
one module's loader). Waiting for the *module that defines* what a callback touches, rather than
for ``transformers`` itself, keeps Transformers' own import time unchanged (``import
transformers`` loads neither torch nor ``modeling_utils``) and never touches a module whose
import is still half-way (a modeling file that imports ``modeling_utils`` triggers that hook
before its own attention tables exist: its own hook waits for it).

Standard library only: :mod:`flashlight_hf`'s ``__init__`` imports this module.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any, Callable, Sequence

_pending: dict[str, list[Callable[[ModuleType], None]]] = {}


def _loaded(name: str) -> ModuleType | None:
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    if module is None or getattr(spec, "_initializing", False):
        return None  # absent, or its import is still running
    return module


def when_imported(name: str, callback: Callable[[ModuleType], None]) -> None:
    """``callback(module)`` now if ``name`` is fully imported, else right after it is."""
    module = _loaded(name)
    if module is not None:
        callback(module)
        return
    _pending.setdefault(name, []).append(callback)
    if not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())


def cancel(callback: Callable[[ModuleType], None]) -> None:
    """Forget ``callback`` wherever it still waits (``flashlight_hf.disable()``)."""
    for name in list(_pending):
        _pending[name] = [c for c in _pending[name] if c is not callback]
        if not _pending[name]:
            del _pending[name]


def pending() -> dict[str, int]:
    """Module name -> how many callbacks still wait for it (for tests and messages)."""
    return {name: len(callbacks) for name, callbacks in _pending.items()}


def _run(name: str, module: ModuleType) -> None:
    for callback in _pending.pop(name, []):
        callback(module)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a module someone waits for, it asks the finders behind it and
    wraps the loader they return so that the callbacks run after the module's code."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None, target: Any = None) -> Any:
        if fullname not in _pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RunAfter(spec.loader, fullname)
                return spec
        return None


class _RunAfter(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader, name: str):
        self._loader, self._name = loader, name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        # the import system clears __spec__._initializing only after exec_module returns
        spec = module.__spec__
        initializing = getattr(spec, "_initializing", False)
        if spec is not None:
            spec._initializing = False
        try:
            _run(self._name, module)
        finally:
            if spec is not None:
                spec._initializing = initializing

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, is_package, ...
        return getattr(self._loader, name)
