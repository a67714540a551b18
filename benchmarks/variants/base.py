"""What a benchmark variant is: one attention program in four forms plus its density.

A :class:`Variant` subclass lives in its own small file (attention-gym style). An *instance* is
bound to one problem size (batch, heads, seqlen, device) and owns the auxiliary tensors the
program needs (ALiBi slopes, document ids), so every implementation sees exactly the same
problem. The forms:

* ``program``    – the eager PyTorch program, written the way a user writes it
                   (``q @ k.transpose(-2, -1) * scale``, masking, ``softmax``, ``@ v``);
                   a plain module-level function ``program(q, k, v, *program_args())``.
* ``reference``  – the same program run in float64 (the correctness gate's ground truth).
* ``score_mod`` / ``mask_mod`` – FlexAttention's form (``None`` where not needed).
* ``sdpa_kwargs`` – extra keyword arguments for ``F.scaled_dot_product_attention``;
                   ``sdpa_form`` says whether that is SDPA's native path (``"native"``), an
                   explicit ``attn_mask`` tensor (``"mask tensor"``, not the fast path), or
                   impossible (``None``: the sdpa row is recorded as n/a).
* ``density``    – fraction of the Sq×Sk score elements that are computed (kept by the mask),
                   counted exactly over the index grid, for FLOP counting.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, ClassVar

import torch

ScoreMod = Callable[..., torch.Tensor]  # (score, b, h, q_idx, kv_idx) -> score
MaskMod = Callable[..., torch.Tensor]   # (b, h, q_idx, kv_idx) -> bool


class NotApplicable(Exception):
    """An implementation cannot express this variant (recorded as "n/a", not as an error)."""


class Variant:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # "native", "mask tensor", or None (SDPA cannot express the program).
    sdpa_form: ClassVar[str | None] = None
    # Whether mask_mod reads its batch / head index (decides create_block_mask's B and H).
    mask_uses_batch: ClassVar[bool] = False
    mask_uses_head: ClassVar[bool] = False
    # Attribute names of auxiliary tensors whose leading dim is batch / head; sliced by sliced().
    batch_aux: ClassVar[tuple[str, ...]] = ()
    head_aux: ClassVar[tuple[str, ...]] = ()

    def __init__(self, batch: int, heads: int, seqlen: int, device: torch.device | str = "cpu",
                 *, seed: int = 0, **options: Any) -> None:
        self.batch = batch
        self.heads = heads
        self.seqlen = seqlen
        self.device = torch.device(device)
        self.seed = seed
        self.setup(**options)

    # ------------------------------------------------------------------ to override
    def setup(self, **options: Any) -> None:
        """Build auxiliary tensors / read variant options (window, cap, ...); unknown ones ignored."""

    @staticmethod
    def program(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any) -> torch.Tensor:
        raise NotImplementedError

    def program_args(self) -> tuple:
        """Extra positional arguments of ``program`` after q, k, v (aux tensors, ints)."""
        return ()

    def score_mod(self) -> ScoreMod | None:
        return None

    def mask_mod(self) -> MaskMod | None:
        return None

    def sdpa_kwargs(self, q: torch.Tensor) -> dict[str, Any]:
        """Keyword arguments for SDPA (``is_causal`` or ``attn_mask``); built outside timing."""
        if self.sdpa_form is None:
            raise NotApplicable(f"SDPA cannot express {self.name}")
        return {}

    # ------------------------------------------------------------------ shared
    def eager(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return type(self).program(q, k, v, *self.program_args())

    def reference(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The eager program in float64 (floating aux tensors promoted too)."""
        args = tuple(a.to(torch.float64) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                     for a in self.program_args())
        return type(self).program(q.to(torch.float64), k.to(torch.float64), v.to(torch.float64), *args)

    def sliced(self, batch: int, heads: int) -> "Variant":
        """The same problem restricted to the first ``batch`` elements and ``heads`` heads.

        Aux tensors are sliced, not rebuilt, so e.g. ALiBi slopes keep the values they have
        for the full head count.
        """
        new = copy.copy(self)
        new.batch, new.heads = min(batch, self.batch), min(heads, self.heads)
        for name in self.batch_aux:
            setattr(new, name, getattr(self, name)[:new.batch])
        for name in self.head_aux:
            setattr(new, name, getattr(self, name)[:new.heads])
        return new

    def density(self, q_chunk: int = 512) -> float:
        """Exact fraction of (q, kv) pairs the mask keeps, averaged over batch (and heads)."""
        mask_mod = self.mask_mod()
        if mask_mod is None:
            return 1.0
        S = self.seqlen
        nb = self.batch if self.mask_uses_batch else 1
        nh = self.heads if self.mask_uses_head else 1
        dev = self.device
        b = torch.arange(nb, device=dev).view(nb, 1, 1, 1)
        h = torch.arange(nh, device=dev).view(1, nh, 1, 1)
        kv = torch.arange(S, device=dev).view(1, 1, 1, S)
        kept = 0
        for start in range(0, S, q_chunk):
            qi = torch.arange(start, min(start + q_chunk, S), device=dev).view(1, 1, -1, 1)
            m = torch.as_tensor(mask_mod(b, h, qi, kv), device=dev)
            m = m.expand(nb, nh, qi.shape[2], S)
            kept += int(m.sum())
        return kept / (nb * nh * S * S)

    def flops(self, head_dim: int, density: float | None = None) -> float:
        """Forward FLOPs: two matmuls (QKᵀ and PV), 2·Sq·Sk·D each, times the density."""
        d = self.density() if density is None else density
        return 4.0 * self.batch * self.heads * self.seqlen * self.seqlen * head_dim * d

    def __repr__(self) -> str:
        return f"{type(self).__name__}(B={self.batch}, H={self.heads}, S={self.seqlen}, device={self.device})"


def flex_emulate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 score_mod: ScoreMod | None = None, mask_mod: MaskMod | None = None,
                 scale: float | None = None) -> torch.Tensor:
    """FlexAttention's semantics in plain PyTorch, by applying the mods over a broadcast index grid.

    ``score = q·kᵀ·scale``; ``score = score_mod(score, b, h, q_idx, kv_idx)``; positions where
    ``mask_mod`` is False become −inf; softmax over kv; ``@ v``. Used by the tests to check
    that a variant's score_mod/mask_mod mean the same as its eager program, without running
    flex_attention itself.
    """
    B, H, Sq, D = q.shape
    Sk = k.shape[-2]
    scale = D ** -0.5 if scale is None else scale
    dev = q.device
    b = torch.arange(B, device=dev).view(B, 1, 1, 1)
    h = torch.arange(H, device=dev).view(1, H, 1, 1)
    qi = torch.arange(Sq, device=dev).view(1, 1, Sq, 1)
    kv = torch.arange(Sk, device=dev).view(1, 1, 1, Sk)
    scores = (q @ k.transpose(-2, -1)) * scale
    if score_mod is not None:
        scores = score_mod(scores, b, h, qi, kv).to(scores.dtype).expand(B, H, Sq, Sk)
    if mask_mod is not None:
        keep = torch.as_tensor(mask_mod(b, h, qi, kv), device=dev).expand(B, H, Sq, Sk)
        scores = scores.masked_fill(~keep, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v
