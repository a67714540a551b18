"""Stage 5 — runtime: load generated source as a Triton kernel and launch it with real tensors.

| module | holds |
|---|---|
| :mod:`.kernel` | :class:`CompiledKernel`: a generated kernel bound to its program, called per set of shapes |
| :mod:`.plan` | :class:`ShapePlan`: what a set of input shapes implies, made once; launch-argument helpers |
| :mod:`.shapes` | :func:`shape_mismatch`, :class:`ShapeError`: inputs the traced program does not hold for |
| :mod:`.sizes` | :class:`SizeFunction`: run-time sizes from sympy expressions, as compiled Python |
| :mod:`.loader` | :func:`load_kernel`: generated source executed from memory (``linecache``) |
| :mod:`.tune` | :class:`LaunchConfig`, candidate tiles, the autotuner and its GPU timers |
| :mod:`.split_kv` | split-KV decoding: share counts, partials, the pair and one-launch runners |
| :mod:`.training` | :class:`TrainingForward`: the training-mode forward (output + log-sum-exps) |
| :mod:`.switches` | :class:`LaunchSwitches`: the settings a launch depends on (part of every plan's key) |
| :mod:`.hooks` | :func:`add_launch_hook`: be told every generated kernel launched |
| :mod:`.launch` | the one module touching Triton's private launch API (kept kernels, direct launches) |
| :mod:`.custom_op` | ``flashlight::fused`` / ``fused_train`` / ``fused_bwd`` (``torch.library`` custom ops), :class:`EagerTrain` |
| :mod:`.autocast` | the ``torch.autocast`` state builds are keyed on; replaying it for the eager program |
| :mod:`.graphs` | :class:`GraphCaptureError`: what a call refuses while a CUDA graph is being captured |
"""

from flashlight_hf.compiler.runtime.custom_op import EagerTrain, fused, register_kernel
from flashlight_hf.compiler.runtime.graphs import GraphCaptureError
from flashlight_hf.compiler.runtime.hooks import add_launch_hook
from flashlight_hf.compiler.runtime.kernel import CompiledKernel
from flashlight_hf.compiler.runtime.launch import DirectLaunch, Launcher, current_stream, specialization_key
from flashlight_hf.compiler.runtime.loader import load_kernel
from flashlight_hf.compiler.runtime.plan import ShapePlan, constexprs, row_tiles, tensor_args
from flashlight_hf.compiler.runtime.shapes import ShapeError, shape_mismatch
from flashlight_hf.compiler.runtime.sizes import SizeFunction, sum_extent
from flashlight_hf.compiler.runtime.split_kv import MAX_SPLITS, PartialsLayout, SplitKV, num_splits
from flashlight_hf.compiler.runtime.switches import LaunchSwitches, launch_switches
from flashlight_hf.compiler.runtime.training import TrainingForward
from flashlight_hf.compiler.runtime.tune import (CONFIGS, DECODE_CONFIG, DECODE_CONFIGS, LaunchConfig, Tuner,
                                                 candidate_configs, gpu_ms, hold_gpu)

__all__ = [
    "CONFIGS", "DECODE_CONFIG", "DECODE_CONFIGS", "MAX_SPLITS", "CompiledKernel", "EagerTrain", "DirectLaunch", "GraphCaptureError", "LaunchConfig",
    "LaunchSwitches", "Launcher", "PartialsLayout", "ShapeError", "ShapePlan", "SizeFunction", "SplitKV", "TrainingForward", "Tuner",
    "add_launch_hook", "candidate_configs", "constexprs", "current_stream", "fused", "gpu_ms", "hold_gpu",
    "launch_switches", "load_kernel", "num_splits", "register_kernel", "row_tiles", "shape_mismatch",
    "specialization_key", "sum_extent", "tensor_args",
]
