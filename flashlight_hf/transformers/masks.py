"""Masks as structure: what the "flashlight" mask function hands the attention function.

Transformers' mask interface gives every backend the pieces of a mask — ``q_length``/``kv_length``,
the query and key offsets (a KV cache), an index-based ``mask_function(b, h, q_idx, kv_idx)``
(causal, sliding window, chunked, packed sequences, …) and the 2-D padding mask — and asks it to
build whatever it wants. SDPA builds a ``[B, 1, Q, K]`` boolean tensor; we keep the pieces
(:class:`MaskSpec`) and let the generated kernel evaluate them as index predicates:

* offsets travel as a small int tensor (a run-time value of the kernel), so one kernel serves
  every decode step; the key-bound analysis turns ``kv_idx <= q_idx`` with those offsets into a
  loop range (tiles above the diagonal or outside a window are never visited);
* padding becomes a per-sequence key range ``[start, end)`` when every row's kept keys are one
  run (left or right padding) — again loop bounds — and one flag read per key otherwise (and
  always in decode steps, where classifying it would cost a host sync per step);
* tensors the mask function closes over (packed-sequence ids, position ids, block ids) become
  kernel inputs: the function is re-assembled around the traced tensors inside the program.

What cannot be expressed this way (a mask function that needs ``vmap``, a closure over an
object we do not know) is built as a boolean tensor by Transformers' SDPA mask builder and
loaded per tile — correct, just not structural.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

# Query lengths up to this are decode steps: padding is read per key, never analysed on the host
# (the bound the runtime uses to pick decode tile configurations and split-KV).
from flashlight_hf.compiler.abi import DECODE_MAX_ROWS


class NotStructural(Exception):
    """The mask function holds something we cannot re-assemble inside a traced program."""


@dataclass
class MaskSpec:
    """The pieces of one attention mask, as the mask interface received them."""

    batch_size: int
    q_length: int
    kv_length: int
    q_offset: int | torch.Tensor  # a static cache hands a 0-d device tensor: kept there (no sync)
    kv_offset: int
    mask_function: Callable
    padding: torch.Tensor | None  # bool [B, >= kv_offset + kv_length]: True = a real token
    device: torch.device
    _cache: dict = field(default_factory=dict, repr=False)

    def structure(self) -> tuple[tuple, list[torch.Tensor]]:
        """``(signature, tensors)``: the signature keys the compiled program (what changes the
        code), the tensors are its run-time inputs (offsets, padding, closed-over ids)."""
        if "structure" not in self._cache:
            fn_sig, fn_tensors = closure_signature(self.mask_function)
            offsets = _device_ints([self.q_offset, self.kv_offset], self.device)
            pad_kind, pad_tensors = self._padding()
            sig = _intern(("mask", fn_sig, pad_kind, len(fn_tensors)))
            self._cache["structure"] = (sig, [offsets, *pad_tensors, *fn_tensors])
        return self._cache["structure"]

    def _padding(self) -> tuple[str, list[torch.Tensor]]:
        """No padding, per-row key ranges, or this call's ``[B, K]`` padding flags (read per key)."""
        pad = self.padding
        if pad is None:
            return "none", []
        pad = pad[:, : self.kv_offset + self.kv_length].to(device=self.device, dtype=torch.bool)
        window = pad[:, self.kv_offset: self.kv_offset + self.kv_length]  # this call's keys: [B, K]
        if self.q_length <= DECODE_MAX_ROWS:
            # a decode step: reading one flag per key costs less than the host sync that
            # classifying the padding needs (it would stall every step's launch queue)
            return "keys", [window]
        kept = pad.sum(-1)
        start = pad.to(torch.int8).argmax(-1)
        start = torch.where(kept > 0, start, torch.zeros_like(start))
        pos = torch.arange(pad.shape[-1], device=pad.device)
        run = (pos[None, :] >= start[:, None]) & (pos[None, :] < (start + kept)[:, None])
        flags = torch.stack([pad.all(), (run == pad).all()]).tolist()  # one host sync for both answers
        if flags[0]:
            return "none", []  # every key is a real token: nothing to mask
        if flags[1]:
            ranges = torch.stack([start, start + kept], dim=-1).to(torch.int64)
            return "ranges", [ranges]
        return "keys", [window]


class StructuredMask(torch.Tensor):
    """A ``[B, 1, Q, K]`` boolean "tensor" that holds a :class:`MaskSpec` instead of memory.

    Transformers code between the mask function and the attention function treats masks as
    tensors (``ndim`` checks, ``.contiguous()``, "already 4-D: use as is" when generation
    prepares masks for a static cache). This wrapper answers metadata questions from the spec,
    passes ``contiguous``/``to`` (same device and dtype) through as itself, and for anything else
    builds the real boolean mask (Transformers' own SDPA builder, once) and runs the op on it — so
    a model that computes on its mask stays correct, just not structural."""

    spec: MaskSpec

    @staticmethod
    def __new__(cls, spec: MaskSpec, build: Callable[[], torch.Tensor]) -> "StructuredMask":
        shape = (spec.batch_size, 1, spec.q_length, spec.kv_length)
        t = torch.Tensor._make_wrapper_subclass(cls, shape, dtype=torch.bool, device=spec.device)
        t.spec, t._build, t._dense = spec, build, None
        return t

    def dense(self) -> torch.Tensor:
        """The mask as a real boolean tensor (built once)."""
        if self._dense is None:
            self._dense = self._build()
        return self._dense

    def __repr__(self, *, tensor_contents: Any = None) -> str:  # noqa: D105
        s = self.spec
        return (f"StructuredMask(batch={s.batch_size}, q={s.q_length}@{s.q_offset}, "
                f"kv={s.kv_length}@{s.kv_offset}, padding={'yes' if s.padding is not None else 'no'})")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") == "__get__" or func in _METADATA:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        self = args[0] if args else None
        if isinstance(self, StructuredMask) and func in _IDENTITY and _same_place(self, args[1:], kwargs):
            return self
        unwrap = lambda x: x.dense() if isinstance(x, StructuredMask) else x  # noqa: E731
        with torch._C.DisableTorchFunctionSubclass():
            return func(*torch.utils._pytree.tree_map(unwrap, args), **torch.utils._pytree.tree_map(unwrap, kwargs))

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001
        unwrap = lambda x: x.dense() if isinstance(x, StructuredMask) else x  # noqa: E731
        return func(*torch.utils._pytree.tree_map(unwrap, args), **torch.utils._pytree.tree_map(unwrap, kwargs or {}))


def as_dense(x: Any) -> Any:
    """``x`` with a :class:`StructuredMask` replaced by its dense boolean mask (anything else as is):
    for code that needs the mask as a real tensor."""
    return x.dense() if isinstance(x, StructuredMask) else x


_last_additive: list = [None, None, None, None]  # (bool mask, its version, dtype, additive mask)


def as_additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Boolean keep-mask (or a structured one) -> the additive float mask (0 / ``finfo.min``)
    the families' eager code expects; a float mask or None is returned as is.

    Every layer of a forward pass receives the same mask object; it is converted once (the
    attention function and DiffLlama's layer override share this one-entry cache)."""
    mask = as_dense(mask)
    if mask is None or mask.dtype != torch.bool:
        return mask
    version = mask._version  # bumped by in-place writes: a mask edited in place is converted again
    if _last_additive[0] is mask and _last_additive[1] == version and _last_additive[2] == dtype:
        return _last_additive[3]
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    _last_additive[:] = [mask, version, dtype, out]
    return out


_METADATA = {torch.Tensor.dim, torch.Tensor.size, torch.Tensor.numel, torch.Tensor.is_contiguous,
             torch.Tensor.get_device, torch.Tensor.element_size, torch.Tensor.__len__}
_IDENTITY = {torch.Tensor.contiguous, torch.Tensor.to, torch.Tensor.bool, torch.Tensor.detach}


def _same_place(t: torch.Tensor, args: tuple, kwargs: dict) -> bool:
    """``.to(...)``-style arguments that leave the mask where and what it is."""
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.dtype) and a != torch.bool:
            return False
        if isinstance(a, (torch.device, str)) and torch.device(a) != t.device:
            return False
        if isinstance(a, torch.Tensor) and (a.dtype != torch.bool or a.device != t.device):
            return False
    return True


class Signature(tuple):
    """A mask signature that hashes once. Every attention layer of a forward looks its program
    up by this key; interned (:func:`_intern`), the lookups of later forwards find the very
    same object, so they compare by identity instead of walking the nested tuple."""

    def __hash__(self) -> int:
        h = self.__dict__.get("hash")
        if h is None:
            h = self.__dict__["hash"] = tuple.__hash__(self)
        return h


_SIGNATURES: dict[tuple, Signature] = {}


def _intern(sig: tuple) -> Signature:
    found = _SIGNATURES.get(sig)
    if found is None:
        if len(_SIGNATURES) > 4096:  # closures over ever-new values: do not grow without bound
            _SIGNATURES.clear()
        found = _SIGNATURES[sig] = Signature(sig)
    return found


def _device_ints(values: list, device: torch.device) -> torch.Tensor:
    """``values`` (ints or 0-d tensors) as an int64 tensor on ``device`` without a host sync.

    ``torch.tensor([...], device="cuda")`` copies from pageable memory, which waits for the
    stream to drain: once per forward, that would stall every decode step's launch queue."""
    if not any(isinstance(v, torch.Tensor) for v in values):
        host = torch.tensor([int(v) for v in values], dtype=torch.int64)
        if device.type != "cuda":
            return host.to(device)
        if not torch.cuda.is_current_stream_capturing():
            # from page-locked memory the copy is truly asynchronous: one transfer, no wait
            # (not while a CUDA graph is captured: a replay would read the freed host buffer)
            return host.pin_memory().to(device, non_blocking=True)
    parts = [v.to(device=device, dtype=torch.int64).reshape(()) if isinstance(v, torch.Tensor)
             else torch.full((), int(v), dtype=torch.int64, device=device) for v in values]
    return torch.stack(parts)


def closure_signature(fn: Callable) -> tuple[tuple, list[torch.Tensor]]:
    """A hashable description of a mask function's closure tree, and the tensors it holds (in a
    fixed order). Functions are named by their code object; plain values are part of the key."""
    tensors: list[torch.Tensor] = []

    def sig(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            tensors.append(obj)
            return ("tensor", obj.dtype, obj.dim())
        if isinstance(obj, (bool, int, float, str, type(None))):
            return ("value", type(obj).__name__, obj)
        if isinstance(obj, (tuple, list)):
            return (type(obj).__name__, tuple(sig(x) for x in obj))
        if isinstance(obj, types.FunctionType):
            cells = tuple(sig(c.cell_contents) for c in (obj.__closure__ or ()))
            return ("fn", obj.__module__, obj.__qualname__, id(obj.__code__), cells)
        raise NotStructural(f"the mask function closes over a {type(obj).__name__}")

    return sig(fn), tensors


def rebuild_closure(fn: Callable, tensors: Iterator[torch.Tensor]) -> Callable:
    """``fn`` with every tensor in its closure tree replaced by the next of ``tensors`` (the
    traced program's inputs), in the order :func:`closure_signature` listed them."""

    def swap(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return next(tensors)
        if isinstance(obj, (tuple, list)):
            return type(obj)(swap(x) for x in obj)
        if isinstance(obj, types.FunctionType) and obj.__closure__:
            cells = tuple(types.CellType(swap(c.cell_contents)) for c in obj.__closure__)
            new = types.FunctionType(obj.__code__, obj.__globals__, obj.__name__, obj.__defaults__, cells)
            new.__kwdefaults__ = obj.__kwdefaults__
            return new
        return obj

    return swap(fn)


def keep_from_structure(spec_sig: tuple, mask_function: Callable, q: torch.Tensor, k: torch.Tensor,
                        tensors: list[torch.Tensor], q_rows: int | None = None) -> torch.Tensor:
    """Inside the traced program: the boolean keep-mask ``[B, 1, Q, K]`` from the pieces.

    ``q``/``k`` give the sizes (``[B, H, Q, D]`` / ``[B, Hk, K, D]``), so lengths stay symbolic;
    the offsets are read from a tensor, so they stay run-time values. ``q_rows`` overrides the
    query length (a decode step whose rows are a GQA group's heads, not positions)."""
    _, _, pad_kind, _ = spec_sig
    it = iter(tensors)
    offsets = next(it)
    b, q_len, kv_len = q.shape[0], (q.shape[-2] if q_rows is None else q_rows), k.shape[-2]
    dev = q.device
    batch_idx = torch.arange(b, device=dev)[:, None, None, None]
    head_idx = torch.arange(1, device=dev)[None, :, None, None]
    q_idx = (torch.arange(q_len, device=dev) + offsets[0])[None, None, :, None]
    kv_idx = (torch.arange(kv_len, device=dev) + offsets[1])[None, None, None, :]
    pad_tensors = [next(it)] if pad_kind != "none" else []
    fn = rebuild_closure(mask_function, it)
    keep = fn(batch_idx, head_idx, q_idx, kv_idx)
    if pad_kind == "ranges":
        ranges = pad_tensors[0]
        start = ranges[:, 0][:, None, None, None]
        end = ranges[:, 1][:, None, None, None]
        keep = keep & (kv_idx >= start) & (kv_idx < end)
    elif pad_kind == "keys":  # the [B, K] flags of this call's keys, read along the key axis
        keep = keep & pad_tensors[0][:, None, None, :]
    return keep


class SafeSoftmax(torch.overrides.TorchFunctionMode):
    """Softmax whose rows with no visible key are 0 (not NaN), for the traced front-door program.

    With masks as −inf selects, a query row that sees no key (a left-padding position) has a
    softmax of 0/0. SDPA's and FlashAttention's kernels output 0 there, and so do we — but the
    custom op's backward recomputes the *program* under autograd, and softmax's backward through
    a NaN row poisons every key's gradient. Inside this mode the family's softmax is spelled out
    as ``exp(x − max(m, finfo.min)) / (Σ or 1)``: the same values everywhere else, 0 on empty rows,
    finite gradients, and a form the generator's online-softmax rewrite reads directly."""

    _SOFTMAX = {torch.softmax, torch.nn.functional.softmax, torch.Tensor.softmax, torch.special.softmax}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in self._SOFTMAX:
            return _safe_softmax(*args, **kwargs)
        return func(*args, **kwargs)


def _safe_softmax(x: torch.Tensor, dim: int | None = None, _stacklevel: int = 3,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    if dim is None:
        raise ValueError("flashlight: softmax without dim inside an attention program; pass dim=-1")
    if dtype is not None:
        x = x.to(dtype)
    m = x.amax(dim, keepdim=True).clamp_min(torch.finfo(x.dtype).min)
    e = torch.exp(x - m)
    total = e.sum(dim, keepdim=True)
    return e / total.masked_fill(total == 0, 1.0)
