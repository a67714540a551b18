"""flashlight-hf: attention written in plain PyTorch, compiled to fused Triton kernels.

``flashlight_hf.enable()`` registers ``attn_implementation="flashlight"`` with Transformers
(as does ``import flashlight_hf.hf``); ``flashlight_hf.disable()`` removes it.
The compiler lives in :mod:`flashlight_hf.compiler`; the model-zoo evaluation (the main job)
in :mod:`flashlight_hf.eval` (the repository's top-level ``eval/`` folder).
"""

from flashlight_hf.version import __version__


def __getattr__(name: str):
    # The compiler pulls in torch.export and Triton; load it only when asked for, so the CLI and
    # the evaluation start fast.
    if name in ("compile", "explain", "Explanation"):
        from flashlight_hf.compiler import compiled

        return getattr(compiled, name)
    if name in ("enable", "disable"):
        # Importing the front door registers "flashlight" (it imports Transformers); enable() is
        # idempotent, disable() removes the registration and the registry's layer overrides.
        from flashlight_hf import hf

        return getattr(hf, name)
    raise AttributeError(f"module 'flashlight_hf' has no attribute {name!r}")


def _run_from_a_checkout() -> None:
    """``eval/``, ``model_zoo/`` and ``patches/`` install as ``flashlight_hf.*`` subpackages
    (pyproject's package-dir). Run from a plain checkout (the GPU box: no install), find them in
    the top-level folders instead — a last-resort finder, consulted only when nothing else is."""
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
