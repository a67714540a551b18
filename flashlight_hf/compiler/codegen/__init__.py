"""Stage 4 — code generation: a :class:`KernelPlan` becomes Triton source text.

The source is meant to be read (``explain``), laid out like Triton's fused-attention tutorial:
the program's coordinates, loads before the key loop, the key-tile body as one ``@triton.jit``
helper that the boundary and interior key ranges call, the epilogue, the store. One statement
per IR node with a named temporary and a comment naming the node.

Modules: ``kernels`` (the loop nest of each kernel kind), ``keyloop`` (the key-tile helper),
``bounds`` (the key range), ``emitter`` (expressions), ``pointwise`` (the op table),
``scores`` (base-2 softmax scaling), ``lse`` (training mode's log-sum-exps), ``naming``, ``signature``, ``source`` (:class:`KernelSource`);
the generated backward: ``backward`` (the dK/dV and dQ kernels), ``backward_stores`` (their
carried gradients and stores, a GQA group's accumulation), ``backward_info`` (the launch contract).
"""

from __future__ import annotations

from typing import Sequence

from flashlight_hf.compiler.codegen.block_table import table_kernel
from flashlight_hf.compiler.codegen.backward import BackwardInfo, BackwardSource, backward_info
from flashlight_hf.compiler.codegen.kernels import (Options, combine_kernel, single_kernel, split_fused_kernel,
                                                    split_kernel, training_kernel)
from flashlight_hf.compiler.codegen.source import KernelSource
from flashlight_hf.compiler.ir import Unsupported
from flashlight_hf.compiler.rewrite import KernelPlan
from flashlight_hf.compiler.rewrite.backward import derive
from flashlight_hf.compiler.rewrite.dropout import with_attention_dropout

__all__ = ["BackwardInfo", "BackwardSource", "KernelSource", "generate"]


def generate(kp: KernelPlan, *, interpret: bool, allow_tf32: bool = False, warp_specialize: bool = False,
             input_names: Sequence[str | None] | None = None, training: bool = False) -> KernelSource:
    """Emit the forward kernel for ``kp`` and, where the accumulators allow it, its split-KV pair
    (``KernelSource.split``) and one-launch split-KV kernel (``KernelSource.split_fused``).
    ``input_names``: per program input, the program's name for it where the caller knows it
    (pointers and strides are named after it). ``training``: also the training-mode forward
    (``KernelSource.train``, storing each softmax stream's log-sum-exp; ``train_error`` says why
    not where it cannot be generated); off, nothing of it is built. Raises :class:`Unsupported`
    for shapes it cannot tile."""
    opt = Options(interpret, allow_tf32, warp_specialize, input_names)
    main = single_kernel(kp, opt)
    main.table = table_kernel(kp, interpret, input_names) if kp.block_table else None
    try:
        main.split = (split_kernel(kp, opt), combine_kernel(kp, opt))
        main.split_fused = split_fused_kernel(kp, opt)
    except Exception:  # noqa: BLE001 - Unsupported or a rule's error: decode runs the single kernel
        main.split = main.split_fused = None
    if training:
        try:
            main.train = training_kernel(kp, opt)
            main.train.table = main.table
        except Exception as exc:  # noqa: BLE001 - the ordinary forward stands; say why there is no training kernel
            main.train_error = f"{type(exc).__name__}: {exc}"
            main.backward_error = f"no training-mode forward: {main.train_error}"
        else:
            main.backward, main.backward_error = _backward(kp, opt, main.train)
            main.train_dropout = _with_dropout(kp, opt)
    return main


def _with_dropout(kp: KernelPlan, opt: Options) -> KernelSource | None:
    """The training forward and backward with attention dropout in the value contractions, or
    None (no value contraction, or no generated backward for it: dropout then runs eagerly)."""
    try:
        kp_d = with_attention_dropout(kp)
        drop = training_kernel(kp_d, opt)
        drop.table = table_kernel(kp_d, opt.interpret, opt.input_names) if kp_d.block_table else None
    except Exception:  # noqa: BLE001 - dropout then runs the program as written
        return None
    drop.backward, drop.backward_error = _backward(kp_d, opt, drop)
    return drop if drop.backward is not None else None


def _backward(kp: KernelPlan, opt: Options, train: KernelSource) -> tuple:
    """(BackwardInfo, None), or (None, why): the generated backward of ``kp``."""
    try:
        bp = derive(kp)
        missing = [k for k in bp.streams if k not in train.lse_accs]
        if missing:
            raise Unsupported("backward", f"the scores read running max acc{missing[0]}, which stores no statistics")
        info = backward_info(bp, opt, identity=not train.train_accs)
        info.table = train.table
        return info, None
    except Unsupported as exc:
        return None, f"node {exc.node!r}: {exc.reason}"
    except Exception as exc:  # noqa: BLE001 - the recompute backward stands; say why
        return None, f"internal error: {type(exc).__name__}: {exc}"
