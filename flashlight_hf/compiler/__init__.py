"""The attention compiler: capture → ir → rewrite → codegen → runtime (docs/compiler.md).

Each stage is a module or sub-package; data flows one way through them. The driver sits beside
them: :mod:`~flashlight_hf.compiler.driver` (``build``: one program through every stage),
:mod:`~flashlight_hf.compiler.compiled` (``compile``: the builds of one function, chosen per
call; ``explain``), :mod:`~flashlight_hf.compiler.cache` (the on-disk build cache) and
:mod:`~flashlight_hf.compiler.guards` (the outside values a function reads). ``dynamo/`` is
``torch.compile(backend="flashlight")``.

The public names load lazily, so importing one stage does not pull in every other.
"""

from __future__ import annotations

from typing import Any

__all__ = ["compile", "explain", "build", "Build", "CompiledAttention", "Explanation"]

_HOMES = {"compile": "compiled", "explain": "compiled", "CompiledAttention": "compiled",
          "Explanation": "compiled", "build": "driver", "Build": "driver"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'flashlight_hf.compiler' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"flashlight_hf.compiler.{home}"), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
