"""flashlight-hf: attention written in plain PyTorch, compiled to fused Triton kernels.

The compiler lives in :mod:`flashlight_hf.compiler`; the model-zoo evaluation (the main job)
in :mod:`flashlight_hf.eval` (the repository's top-level ``eval/`` folder).
"""

__version__ = "0.1.0"
