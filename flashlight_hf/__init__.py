"""flashlight-hf: attention written in plain PyTorch, compiled to fused Triton kernels.

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
    raise AttributeError(f"module 'flashlight_hf' has no attribute {name!r}")
