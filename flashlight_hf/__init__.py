"""flashlight-hf: attention written in plain PyTorch, compiled to fused Triton kernels.

``import flashlight_hf`` registers ``attn_implementation="flashlight"`` with Transformers (both
its attention and its mask interface): at once if Transformers' ``modeling_utils`` is already
imported, else right after it is (:mod:`flashlight_hf.transformers.hook`), so importing this
package imports neither torch nor Transformers and the CLI starts fast.
``flashlight_hf.enable()`` registers again (idempotent); ``flashlight_hf.disable()`` removes it.
The compiler lives in :mod:`flashlight_hf.compiler`, the front door in
:mod:`flashlight_hf.transformers`, the model-zoo evaluation (the main job) in
:mod:`flashlight_hf.eval` (the repository's top-level ``eval/`` folder).
"""

from flashlight_hf.version import __version__

__all__ = ["compile", "explain", "enable", "disable", "__version__"]


def __getattr__(name: str):
    # The compiler pulls in torch.export and Triton; load it only when asked for, so the CLI and
    # the evaluation start fast.
    if name in ("compile", "explain", "Explanation"):
        from flashlight_hf.compiler import compiled

        return getattr(compiled, name)
    if name in ("enable", "disable"):
        from flashlight_hf.transformers import interface

        return getattr(interface, name)
    raise AttributeError(f"module 'flashlight_hf' has no attribute {name!r}")


def _register_with_transformers(modeling_utils: object) -> None:
    """Called once ``transformers.modeling_utils`` (which defines ``AttentionInterface``) has
    loaded. A failure warns rather than breaking the user's import of Transformers."""
    try:
        from flashlight_hf.transformers import interface

        interface.enable()
    except Exception as exc:  # noqa: BLE001 - an import hook must not break Transformers' import
        import warnings

        warnings.warn(f"flashlight: could not register attn_implementation='flashlight' with this Transformers "
                      f"({type(exc).__name__}: {exc}); call flashlight_hf.enable() to see the full error",
                      stacklevel=2)


def _run_from_a_checkout() -> None:
    """Mount the top-level ``eval/``, ``model_zoo/`` and ``patches/`` as ``flashlight_hf.eval``,
    ``flashlight_hf.model_zoo`` and ``flashlight_hf.patches`` when the package runs from a plain
    checkout (the GPU box: ``PYTHONPATH=<checkout>``, nothing installed).

    An install maps them through pyproject's ``package-dir``; a plain checkout has no such map,
    so this appends a last-resort finder to ``sys.meta_path``: consulted only when no other
    finder knows the name, it resolves exactly those three names to the folders next to this
    package, and only where the folder has an ``__init__.py``. Idempotent (one finder per
    process). ``tests/test_transformers_interface.py`` runs a checkout copy without the install
    to exercise it; docs/transformers.md ("Running from a checkout") describes it."""
    import importlib.abc
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    folders = {f"flashlight_hf.{n}": root / n for n in ("eval", "model_zoo", "patches")}

    class _CheckoutFinder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001
            folder = folders.get(fullname)
            if folder is None or not (folder / "__init__.py").exists():
                return None
            return importlib.util.spec_from_file_location(fullname, folder / "__init__.py",
                                                          submodule_search_locations=[str(folder)])

    if not any(type(f).__name__ == "_CheckoutFinder" for f in sys.meta_path):
        sys.meta_path.append(_CheckoutFinder())


_run_from_a_checkout()

from flashlight_hf.transformers import hook as _hook  # noqa: E402 - standard library only

_hook.watch("transformers.")  # a modeling file half-way through its import gets its hooks when done
_hook.when_imported("transformers.modeling_utils", _register_with_transformers)
