"""flashlight-hf: attention written in plain PyTorch, compiled to fused Triton kernels.

``flashlight_hf.enable()`` registers ``attn_implementation="flashlight"`` with Transformers
(as does ``import flashlight_hf.hf``); ``flashlight_hf.disable()`` removes it.
The compiler lives in :mod:`flashlight_hf.compiler`; the model-zoo evaluation (the main job)
in :mod:`flashlight_hf.eval` (the repository's top-level ``eval/`` folder).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # The compiler pulls in torch.export and Triton; load it only when asked for, so the CLI and
    # the evaluation start fast.
    if name in ("compile", "explain", "Explanation"):
        from flashlight_hf import api

        return getattr(api, name)
    if name in ("enable", "disable"):
        # Importing the front door registers "flashlight" (it imports Transformers); enable() is
        # idempotent, disable() removes the registration and the registry's layer overrides.
        from flashlight_hf import hf

        return getattr(hf, name)
    raise AttributeError(f"module 'flashlight_hf' has no attribute {name!r}")
