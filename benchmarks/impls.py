"""Implementation registry: how each attention backend runs a variant.

An implementation is a factory ``make(variant, q, k, v) -> fn``: it does all set-up outside
the timed region (building masks / block masks, ``torch.compile``) and returns a zero-argument
callable that computes the attention output ``[B, H, S, D]`` for exactly these inputs. The
harness calls ``fn()`` once for the correctness gate (this first call also triggers any
compilation) and then times ``fn``.

A factory raises :class:`NotApplicable` when the backend cannot express the variant (the row
becomes "n/a"); any other exception is recorded as that row's error and the run goes on.
It may set ``fn.note`` (see :func:`with_note`) to qualify the row, e.g. "mask tensor".

Adding an implementation is one decorated function, e.g. the compiler of this project::

    @register("flashlight", "flashlight_hf.compile of the eager program")
    def make_flashlight(variant, q, k, v):
        import flashlight_hf
        fn = flashlight_hf.compile(variant.program)
        args = variant.program_args()
        return lambda: fn(q, k, v, *args)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from benchmarks.variants import NotApplicable, Variant

Fn = Callable[[], torch.Tensor]
Factory = Callable[[Variant, torch.Tensor, torch.Tensor, torch.Tensor], Fn]


@dataclass(frozen=True)
class Impl:
    name: str
    make: Factory
    description: str


IMPLS: dict[str, Impl] = {}
DEFAULT_IMPLS = ("sdpa", "flex", "eager_compiled", "flashlight")
# Options the factories read (set by the harness from the CLI before any make()).
OPTIONS: dict[str, object] = {"compile_mode": None}


def register(name: str, description: str) -> Callable[[Factory], Factory]:
    def deco(make: Factory) -> Factory:
        IMPLS[name] = Impl(name, make, description)
        return make
    return deco


def with_note(fn: Fn, note: str | None) -> Fn:
    if note:
        fn.note = note  # type: ignore[attr-defined]
    return fn


def _compile(fn):
    mode = OPTIONS.get("compile_mode")
    return torch.compile(fn, dynamic=False, **({"mode": mode} if mode else {}))


# --------------------------------------------------------------------------- SDPA
def _make_sdpa(backend_name: str | None):
    def make(variant: Variant, q, k, v) -> Fn:
        if variant.sdpa_form is None:
            raise NotApplicable(f"SDPA cannot express {variant.name}")
        kwargs = variant.sdpa_kwargs(q)  # built here, outside the timed region
        note = "mask tensor" if variant.sdpa_form == "mask tensor" else None
        if backend_name is None:
            def fn():
                return F.scaled_dot_product_attention(q, k, v, **kwargs)
        else:
            from torch.nn.attention import SDPBackend, sdpa_kernel
            backend = getattr(SDPBackend, backend_name)

            def fn():
                with sdpa_kernel([backend]):
                    return F.scaled_dot_product_attention(q, k, v, **kwargs)
        return with_note(fn, note)
    return make


register("sdpa", "F.scaled_dot_product_attention, PyTorch's default backend choice")(_make_sdpa(None))
register("sdpa_flash", "SDPA restricted to SDPBackend.FLASH_ATTENTION")(_make_sdpa("FLASH_ATTENTION"))
register("sdpa_cudnn", "SDPA restricted to SDPBackend.CUDNN_ATTENTION")(_make_sdpa("CUDNN_ATTENTION"))
register("sdpa_efficient", "SDPA restricted to SDPBackend.EFFICIENT_ATTENTION")(_make_sdpa("EFFICIENT_ATTENTION"))
register("sdpa_math", "SDPA restricted to SDPBackend.MATH (unfused reference path)")(_make_sdpa("MATH"))


# --------------------------------------------------------------------------- FlexAttention
def build_block_mask(variant: Variant, q_len: int, kv_len: int, device):
    """create_block_mask for the variant's mask_mod (None when it has none); B/H broadcast
    unless the mask reads them."""
    mask_mod = variant.mask_mod()
    if mask_mod is None:
        return None
    from torch.nn.attention.flex_attention import create_block_mask
    B = variant.batch if variant.mask_uses_batch else None
    H = variant.heads if variant.mask_uses_head else None
    return create_block_mask(mask_mod, B, H, q_len, kv_len, device=device)


@register("flex", "torch.compile(flex_attention) with score_mod and a create_block_mask block mask")
def make_flex(variant: Variant, q, k, v) -> Fn:
    from torch.nn.attention.flex_attention import flex_attention
    score_mod = variant.score_mod()
    block_mask = build_block_mask(variant, q.shape[-2], k.shape[-2], q.device)
    flex = _compile(flex_attention)

    def fn():
        return flex(q, k, v, score_mod=score_mod, block_mask=block_mask)
    return fn


@register("flex_eager", "flex_attention without torch.compile (unfused; a debugging aid, slow)")
def make_flex_eager(variant: Variant, q, k, v) -> Fn:
    import warnings

    from torch.nn.attention.flex_attention import flex_attention
    score_mod = variant.score_mod()
    block_mask = build_block_mask(variant, q.shape[-2], k.shape[-2], q.device)

    def fn():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask)
    return fn


# --------------------------------------------------------------------------- eager program
@register("eager", "the variant's eager PyTorch program, uncompiled (materialises scores)")
def make_eager(variant: Variant, q, k, v) -> Fn:
    args = variant.program_args()
    program = variant.program
    return lambda: program(q, k, v, *args)


@register("eager_compiled", "torch.compile of the variant's eager PyTorch program (Inductor)")
def make_eager_compiled(variant: Variant, q, k, v) -> Fn:
    args = variant.program_args()
    program = _compile(variant.program)
    return lambda: program(q, k, v, *args)


# --------------------------------------------------------------------------- flashlight
@register("flashlight", "flashlight_hf.compile of the variant's eager program (one generated kernel)")
def make_flashlight(variant: Variant, q, k, v) -> Fn:
    import warnings

    import flashlight_hf

    args = variant.program_args()
    compiled = flashlight_hf.compile(variant.program)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="flashlight")  # a fallback is an error row, not a timing
        compiled(q, k, v, *args)  # trace, generate and autotune outside the timed region
    return lambda: compiled(q, k, v, *args)
