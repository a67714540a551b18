"""Numerical checking shared by the tests, the benchmarks and the evaluation.

One place decides what "close enough" means per dtype, so a kernel test, a GPU benchmark's
correctness gate and an eval comparison never disagree about tolerances.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

# Relative Frobenius error allowed against a float64 reference, per compute dtype.
# fp32 on the GPU may run dots in tf32 (~3e-4); on CPU/interpreter fp32 lands near 1e-6.
_REL_TOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 5e-3,
    torch.bfloat16: 2e-2,
}
_REL_TOL_TF32 = 2e-3


def tolerance(dtype: torch.dtype, *, tf32: bool = False) -> float:
    """Relative Frobenius error allowed for results computed in ``dtype``."""
    if dtype not in _REL_TOL:
        raise ValueError(f"no tolerance defined for {dtype}; use one of {sorted(map(str, _REL_TOL))}")
    if dtype == torch.float32 and tf32:
        return _REL_TOL_TF32
    return _REL_TOL[dtype]


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖_F / ‖ref‖_F in float64; NaN anywhere in ``out`` where ``ref`` is finite gives inf.

    Positions where the reference itself is NaN must be NaN in ``out`` too (e.g. fully masked
    rows with ``-inf`` masking); those positions are excluded from the norm.
    """
    out64 = out.detach().to(torch.float64).cpu()
    ref64 = ref.detach().to(torch.float64).cpu()
    if out64.shape != ref64.shape:
        raise ValueError(f"shape mismatch: got {tuple(out64.shape)}, reference {tuple(ref64.shape)}")
    ref_nan = torch.isnan(ref64)
    out_nan = torch.isnan(out64)
    if bool((out_nan != ref_nan).any()):
        return float("inf")
    keep = ~ref_nan
    diff = (out64 - ref64)[keep]
    denom = ref64[keep].norm()
    if denom == 0:
        return float(diff.norm())
    return float(diff.norm() / denom)


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype | None = None, *,
                 tf32: bool = False, what: str = "output") -> float:
    """Assert ``out`` matches the float64 ``ref`` within the tolerance of ``dtype`` (default: out's)."""
    dtype = dtype or out.dtype
    err = rel_error(out, ref)
    tol = tolerance(dtype, tf32=tf32)
    assert err <= tol, f"{what}: relative error {err:.3e} exceeds {tol:.1e} for {dtype}"
    return err


def gradient_scale(grads: Iterable[torch.Tensor | None]) -> float:
    """The largest finite gradient element of a set: what "nearly zero" is measured against."""
    return max((float(g.detach().double().nan_to_num(0.0, 0.0, 0.0).abs().max()) for g in grads
                if g is not None and g.numel()), default=0.0)


def gradient_error(got: torch.Tensor, want: torch.Tensor, scale: float) -> float:
    """How far a gradient is from its float64 reference: :func:`rel_error`, except where the
    reference is nearly zero against ``scale`` (the largest gradient of the set, see
    :func:`gradient_scale`) — a gradient that is zero in exact arithmetic (a per-row shift under
    a softmax) is rounding noise either side of 0, and is measured as its largest absolute error
    over ``scale``. NaN where the reference is NaN (a per-head scale after a −inf mask, as eager
    computes it) is required, not measured."""
    want64, got64 = want.detach().double().cpu(), got.detach().double().cpu()
    if want64.numel() == 0:
        return 0.0 if got64.shape == want64.shape else float("inf")
    if float(want64.nan_to_num(0.0, 0.0, 0.0).abs().max()) > 1e-4 * scale:
        return rel_error(got64, want64)
    nan = want64.isnan()
    if bool((got64.isnan() != nan).any()):
        return float("inf")
    if got64.shape != want64.shape:
        raise ValueError(f"shape mismatch: got {tuple(got64.shape)}, reference {tuple(want64.shape)}")
    diff = (got64 - want64)[~nan]
    return float(diff.abs().max()) / max(scale, 1e-30) if diff.numel() else 0.0


def assert_gradients_close(got: Sequence[torch.Tensor | None], want: Sequence[torch.Tensor | None],
                           dtype: torch.dtype, *, what: str = "", factor: float = 1.0,
                           eager: Sequence[torch.Tensor | None] | None = None) -> int:
    """Every gradient of ``got`` matches its float64 reference in ``want`` within ``factor`` ×
    the tolerance of ``dtype`` (:func:`gradient_error`); None in ``want`` (no gradient) asks for
    None or zeros. Returns how many gradients were compared.

    ``eager``: the same gradients computed by eager PyTorch in ``dtype``. A gradient that is one
    long sum (a per-head scale's, a scalar temperature's, summed over every score) can be less
    accurate than the tolerance in any fp32 order of summation; it may then be off by up to
    4 × eager's own error, never more."""
    scale = gradient_scale(want)
    tol = factor * tolerance(dtype)
    checked = 0
    for k, (g, r) in enumerate(zip(got, want)):
        if r is None:
            assert g is None or not g.abs().any(), f"{what}: input {k} has a gradient where eager has none"
            continue
        assert g is not None, f"{what}: no gradient for input {k}"
        err = gradient_error(g, r, scale)
        allowed = tol
        if err > tol and eager is not None and eager[k] is not None:
            allowed = max(tol, 4 * gradient_error(eager[k], r, scale))
        assert err <= allowed, f"{what}: gradient of input {k} off by {err:.2e} (allowed {allowed:.1e})"
        checked += 1
    return checked


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill ``t`` with NaN (or the integer max) so that elements a kernel never writes fail a check."""
    if t.is_floating_point():
        return t.fill_(float("nan"))
    return t.fill_(torch.iinfo(t.dtype).max)


def poisoned_empty(*shape: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """A new tensor filled with poison; a kernel's output buffer under test."""
    return poison_(torch.empty(*shape, dtype=dtype, device=device))


def random_tensors(shapes: Iterable[tuple[int, ...]], dtype: torch.dtype, device: torch.device | str = "cpu",
                   *, scale: float = 1.0, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Fresh normal random tensors (never zeros), drawn in float32 then cast to ``dtype``."""
    return [(torch.randn(*s, generator=generator, device="cpu") * scale).to(dtype=dtype, device=device)
            for s in shapes]


def to_float64(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """CPU float64 copies, for the reference computation."""
    return [t.detach().to("cpu", torch.float64) for t in tensors]


def key_tile_body(source: str, *, boundary: bool) -> str:
    """The statements the generated key-tile helper runs for one value of its boundary flag, as
    source text: what an interior (``boundary=False``) or a boundary tile evaluates. For tests
    that check what a tile range loads or masks."""
    import ast

    from flashlight_hf.compiler.codegen.keyloop import FLAG, INNER

    tree = ast.parse(source)
    helper = next((f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == INNER), None)
    if helper is None:
        raise ValueError(f"no {INNER} helper in this source")

    def flag_value(test: ast.expr) -> bool | None:
        """What ``if <test>:`` selects on: True for ``if FLAG``, False for ``if not FLAG``."""
        if isinstance(test, ast.Name) and test.id == FLAG:
            return True
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and flag_value(test.operand) is True:
            return False
        return None

    def chosen(stmts: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for s in stmts:
            on = flag_value(s.test) if isinstance(s, ast.If) else None
            if on is None:
                out.append(s)
            else:
                out += chosen(s.body if boundary == on else s.orelse)
        return out

    return "\n".join(ast.unparse(s) for s in chosen(helper.body))


def gradients(fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], seed: torch.Tensor, *,
              dtype: torch.dtype | None = None) -> list[torch.Tensor | None]:
    """The gradient of ``(fn(*inputs) * seed).sum()`` with respect to every floating input (None
    for the others, and for an input the output does not depend on). ``dtype`` (e.g.
    float64): inputs and seed are converted first — the reference a fused backward is checked
    against. Fresh leaves each call: the caller's tensors are not touched."""
    leaves = [t.detach().to(dtype if dtype is not None and t.is_floating_point() else t.dtype)
              .requires_grad_(t.is_floating_point()) for t in inputs]
    out = fn(*leaves)
    wanted = [t for t in leaves if t.requires_grad]
    grads = iter(torch.autograd.grad((out * seed.to(out.dtype)).sum(), wanted, allow_unused=True))
    return [next(grads) if t.requires_grad else None for t in leaves]
