"""Fuzz: random attention-like programs, each against float64 eager.

Two modes: programs of a small grammar of score ops the generator is meant to fuse, and
*wild* programs outside it (softmax over other axes, scans, sorts, flips, integer and bitwise
index maths, in-place ops, several outputs, data-dependent Python control, reductions over
heads…). Fused or not, the answer must be right (or be eager's error): a program the generator
cannot place must fall back (with its warning) and still match. Every run draws a fresh seed;
it is printed in the failure message, and ``FUZZ_SEED=...`` replays it. ``FUZZ_N=2000`` runs
that many wild programs (by hand: about one program per second and core).
"""

from __future__ import annotations

import os
import random
import warnings

import pytest
import torch

import flashlight_hf
from flashlight_hf.compiler.runtime import add_launch_hook
from flashlight_hf.testing import assert_close, assert_gradients_close, gradients, rel_error

N_PROGRAMS = 14
N_WILD = int(os.environ.get("FUZZ_N", "16"))


def _score_ops(rng: random.Random) -> list[str]:
    """A random subset of the score transformations the program applies, in order."""
    pool = ["bias", "softcap", "alibi", "causal", "window", "finfo_min_causal", "head_scale", "square_bias",
            "unfusable_center"]
    return rng.sample(pool, k=rng.randint(0, 3))


def _program(ops: list[str], norm: str, epilogue: str):
    def program(q, k, v, bias, slopes, gate):
        s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
        i = torch.arange(q.shape[-2], device=q.device)[:, None]
        j = torch.arange(k.shape[-2], device=q.device)[None, :]
        for op in ops:
            if op == "bias":
                s = s + bias
            elif op == "softcap":
                s = 15.0 * torch.tanh(s / 15.0)
            elif op == "alibi":
                s = s + slopes[:, None, None] * (j - i)
            elif op == "causal":
                s = s.masked_fill(j > i, float("-inf"))
            elif op == "window":
                s = s.masked_fill((i - j).abs() > 6, float("-inf"))
            elif op == "finfo_min_causal":
                s = s.masked_fill(j > i, torch.finfo(s.dtype).min)
            elif op == "head_scale":
                s = s * slopes[:, None, None]
            elif op == "square_bias":
                s = s - 0.01 * (j - i) * (j - i)
            elif op == "unfusable_center":  # a key mean used before the softmax: no online form
                s = s - s.mean(dim=-1, keepdim=True)
        if norm == "softmax":
            p = torch.softmax(s, dim=-1)
        elif norm == "softmax_fp32":
            p = torch.softmax(s.float(), dim=-1).type_as(q)
        elif norm == "spelled":
            e = torch.exp(s - s.amax(dim=-1, keepdim=True))
            p = e / e.sum(dim=-1, keepdim=True)
        elif norm == "sigmoid":
            p = torch.sigmoid(s)
        else:  # relu squared
            p = torch.relu(s) ** 2 / k.shape[-2]
        o = p @ v
        if epilogue == "gate":
            o = torch.sigmoid(gate) * o
        elif epilogue == "rmsnorm":
            o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5)
        elif epilogue == "transpose":
            o = o.transpose(1, 2)
        return o

    return program


@pytest.mark.parametrize("n", range(N_PROGRAMS))
def test_random_program_matches_float64(n: int, device: str):
    seed = int(os.environ["FUZZ_SEED"]) + n if "FUZZ_SEED" in os.environ else random.randrange(2**31)
    rng = random.Random(seed)
    ops = _score_ops(rng)
    norm = rng.choice(["softmax", "softmax_fp32", "spelled", "sigmoid", "relu2"])
    if norm in ("sigmoid", "relu2"):
        # -inf scores have no meaning without a softmax; use finite masking only
        ops = [o if o not in ("causal", "window") else "finfo_min_causal" for o in ops]
        ops = [o for o in ops if o != "finfo_min_causal"]
    epilogue = rng.choice(["none", "gate", "rmsnorm", "transpose"])
    fn = _program(ops, norm, epilogue)
    b, h = rng.randint(1, 2), rng.randint(1, 3)
    sq, sk = rng.randint(1, 40), rng.randint(8, 60)
    if any(o in ops for o in ("causal", "window")):
        sq = sk = max(sq, 8)  # every row keeps at least its diagonal key
    d = rng.choice([16, 32, 48])
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device)

    bias_shape = rng.choice([(1, h, 1, 1), (b, 1, 1, sk), (1, 1, sq, sk), (b, h, sq, sk)])
    args = (rand(b, h, sq, d), rand(b, h, sk, d), rand(b, h, sk, d), rand(*bias_shape),
            rand(h).abs() + 0.1, rand(b, h, sq, d))
    what = f"seed={seed} ops={ops} norm={norm} epilogue={epilogue} shapes b{b} h{h} sq{sq} sk{sk} d{d}"
    launches: list[str] = []
    remove = add_launch_hook(launches.append)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = flashlight_hf.compile(fn)(*args)
    finally:
        remove()
    fell_back = any("unfused" in str(w.message) for w in caught)
    assert bool(launches) != fell_back, f"{what}: a program must either run a kernel or warn and fall back"
    if "unfusable_center" in ops:
        assert fell_back, f"{what}: a key mean used before the softmax cannot be fused"
    ref = fn(*[a.double() for a in args])
    assert_close(out, ref, torch.float32, what=what)
    # gradients of every floating input (the bias, the per-head scale, the gate included)
    seed_grad = torch.randn(tuple(out.shape), generator=g).to(device)
    got = gradients(flashlight_hf.compile(fn), args, seed_grad)
    want = gradients(fn, args, seed_grad, dtype=torch.float64)
    # NaN where eager's own gradient is NaN (a per-head scale after a -inf mask: 0 * -inf)
    eager32 = gradients(fn, args, seed_grad)  # eager's own fp32 error bounds the long sums (a head scale's)
    assert_gradients_close(got, want, torch.float32, what=what, factor=10, eager=eager32)


def test_grammar_mostly_fuses():
    """The fuzz is not vacuous: programs without the unfusable op fuse."""
    for norm in ("softmax", "softmax_fp32", "spelled", "sigmoid", "relu2"):
        for ops in ([], ["bias", "softcap"], ["alibi", "causal"], ["finfo_min_causal", "head_scale"]):
            if norm in ("sigmoid", "relu2") and any("causal" in o for o in ops):
                continue
            fn = _program(ops, norm, "rmsnorm")
            args = (torch.randn(1, 2, 12, 16), torch.randn(1, 2, 12, 16), torch.randn(1, 2, 12, 16),
                    torch.randn(1, 2, 1, 1), torch.rand(2) + 0.1, torch.randn(1, 2, 12, 16))
            e = flashlight_hf.explain(fn, *args)
            assert e.num_kernels == 1, f"{ops} {norm}: {e.fallbacks}"


# -- programs outside the grammar ---------------------------------------------------------------

# score-stage ops: (name, function of (s, q, k, v, i, j) -> s). Some fuse, most must fall back.
_WILD_SCORE_OPS = {
    "scale_by_keys": lambda s, q, k, v, i, j: s / k.shape[-2],
    "clamp": lambda s, q, k, v, i, j: s.clamp(-2.0, 2.0),
    "clamp_min": lambda s, q, k, v, i, j: torch.clamp_min(s, -1.0),
    "abs_pow": lambda s, q, k, v, i, j: s.abs() ** 1.5 * s.sign(),
    "cube": lambda s, q, k, v, i, j: s * s * s * 0.1,
    "erf": lambda s, q, k, v, i, j: torch.erf(s),
    # discontinuous ops act on index values: on scores, float32 and float64 would round apart
    "floor": lambda s, q, k, v, i, j: s + torch.floor((j - i) / 3.0) * 0.1,
    "remainder": lambda s, q, k, v, i, j: s + torch.remainder(j - i, 5) * 0.1,
    "fmod_trunc": lambda s, q, k, v, i, j: s + torch.fmod(torch.trunc((j - i) / 2.0), 3.0) * 0.1,
    "where_scalar": lambda s, q, k, v, i, j: torch.where(j > i, s, 0.5),
    "parity_mask": lambda s, q, k, v, i, j: s.masked_fill((i + j) % 3 == 1, float("-inf")),
    "bitwise_mask": lambda s, q, k, v, i, j: s.masked_fill((i & 1) != (j & 1), -1e4),
    "shift_mask": lambda s, q, k, v, i, j: s.masked_fill((j >> 2) > (i >> 2), float("-inf")),
    "int_roundtrip": lambda s, q, k, v, i, j: s + (j - i).float().long().float() * 0.01,
    "double_roundtrip": lambda s, q, k, v, i, j: s.double().float(),
    "inplace_add": lambda s, q, k, v, i, j: s.clone().add_(0.5),
    "inplace_mask": lambda s, q, k, v, i, j: s.clone().masked_fill_(j > i + 3, float("-inf")),
    "key_cumsum": lambda s, q, k, v, i, j: s.cumsum(-1) * 0.1,
    "key_sort": lambda s, q, k, v, i, j: s.sort(dim=-1).values,
    "key_flip": lambda s, q, k, v, i, j: s.flip(-1),
    "key_roll": lambda s, q, k, v, i, j: s.roll(1, dims=-1),
    "key_std": lambda s, q, k, v, i, j: s / (s.std(-1, keepdim=True) + 1.0),
    "row_max": lambda s, q, k, v, i, j: s - s.amax(-2, keepdim=True),
    "head_mean": lambda s, q, k, v, i, j: s + s.mean(1, keepdim=True),
    "batch_sum": lambda s, q, k, v, i, j: s + s.sum(0, keepdim=True) * 0.1,
    "key_norm_bias": lambda s, q, k, v, i, j: s + k.norm(dim=-1)[:, :, None, :],
    "query_norm_bias": lambda s, q, k, v, i, j: s - q.pow(2).sum(-1, keepdim=True) * 0.01,
    "transpose_scores": lambda s, q, k, v, i, j: s.transpose(-2, -1).transpose(-2, -1),
    "data_dependent_if": lambda s, q, k, v, i, j: s * 2 if bool(s.sum() > 0) else s * 0.5,
    "item_scale": lambda s, q, k, v, i, j: s * float(q.abs().max()),
}

_WILD_NORMS = {
    "softmax_keys": lambda s: torch.softmax(s, -1),
    "softmax_rows": lambda s: torch.softmax(s, -2),
    "softmax_heads": lambda s: torch.softmax(s, 1),
    "softmax_batch": lambda s: torch.softmax(s, 0),
    "log_softmax_exp": lambda s: torch.log_softmax(s, -1).exp(),
    "double_softmax": lambda s: torch.softmax(torch.softmax(s, -1) * 4, -1),
    "softmax_then_mask": lambda s: torch.softmax(s, -1) * (torch.arange(s.shape[-1], device=s.device) % 2 == 0).to(s.dtype),
    "sigmoid": lambda s: torch.sigmoid(s),
    "tanh": lambda s: torch.tanh(s) / s.shape[-1],
}

_WILD_EPILOGUES = {
    "none": lambda o, p, v: o,
    "tuple_with_weights": lambda o, p, v: (o, p),
    "weights_only": lambda o, p, v: p,
    "head_sum": lambda o, p, v: o.sum(1),
    "second_matmul": lambda o, p, v: o @ v.transpose(-2, -1),
    "reshape_heads": lambda o, p, v: o.transpose(1, 2).reshape(o.shape[0], o.shape[2], -1),
    "cumsum_rows": lambda o, p, v: o.cumsum(-2),
    "max_over_dim": lambda o, p, v: o.amax(-1),
    "norm_epilogue": lambda o, p, v: o / (o.norm(dim=-1, keepdim=True) + 1e-3),
}

_WILD_SCORES = {
    "matmul": lambda q, k: q @ k.transpose(-2, -1),
    "einsum": lambda q, k: torch.einsum("bhqd,bhkd->bhqk", q, k),
    "mT": lambda q, k: (q * q.shape[-1] ** -0.5) @ k.mT,
    "flipped_k": lambda q, k: q @ k.flip(-2).transpose(-2, -1),
    "bmm_reshape": lambda q, k: torch.bmm(q.reshape(-1, *q.shape[2:]), k.reshape(-1, *k.shape[2:]).mT
                                          ).reshape(*q.shape[:3], k.shape[2]),
}


def _wild_program(rng: random.Random):
    score = rng.choice(sorted(_WILD_SCORES))
    ops = rng.sample(sorted(_WILD_SCORE_OPS), k=rng.randint(0, 3))
    norm = rng.choice(sorted(_WILD_NORMS))
    epilogue = rng.choice(sorted(_WILD_EPILOGUES))

    def program(q, k, v):
        s = _WILD_SCORES[score](q, k)
        i = torch.arange(q.shape[-2], device=q.device)[:, None]
        j = torch.arange(k.shape[-2], device=q.device)[None, :]
        for op in ops:
            s = _WILD_SCORE_OPS[op](s, q, k, v, i, j)
        p = _WILD_NORMS[norm](s)
        return _WILD_EPILOGUES[epilogue](p @ v, p, v)

    return program, f"score={score} ops={ops} norm={norm} epilogue={epilogue}"


def _same_outcome(out, ref, what, eager=None):
    """``out`` against the float64 ``ref``, allowing what float32 eager itself is off by (a
    cumulative sum over the keys is ill-conditioned in float32 whoever computes it)."""
    if isinstance(ref, tuple):
        assert isinstance(out, tuple) and len(out) == len(ref), f"{what}: eager returns {len(ref)} values"
        for o, r, e in zip(out, ref, eager if isinstance(eager, tuple) else [None] * len(ref)):
            _same_outcome(o, r, what, e)
        return
    assert out.shape == ref.shape and out.dtype == (torch.float32 if ref.dtype in (torch.float64, torch.float32)
                                                    else ref.dtype), \
        f"{what}: {tuple(out.shape)} {out.dtype} against eager's {tuple(ref.shape)} {ref.dtype}"
    if out.is_floating_point():
        own = rel_error(eager, ref) if eager is not None and eager.is_floating_point() else 0.0
        err = rel_error(out, ref)
        assert err <= max(1e-5, 10 * own), f"{what}: relative error {err:.3e} (float32 eager: {own:.3e})"
    else:
        assert torch.equal(out, ref.to(out.dtype)), what


@pytest.mark.parametrize("n", range(N_WILD))
def test_wild_program_matches_float64_or_raises_as_eager(n: int, device: str):
    seed = int(os.environ["FUZZ_SEED"]) + n if "FUZZ_SEED" in os.environ else random.randrange(2**31)
    rng = random.Random(seed)
    fn, desc = _wild_program(rng)
    b, h = rng.randint(1, 2), rng.randint(1, 3)
    sq, sk, d = rng.randint(1, 24), rng.randint(1, 40), rng.choice([4, 16, 24])
    g = torch.Generator().manual_seed(seed)
    args = [torch.randn(*shape, generator=g).to(device) for shape in ((b, h, sq, d), (b, h, sk, d), (b, h, sk, d))]
    what = f"seed={seed} {desc} b{b} h{h} sq{sq} sk{sk} d{d}"
    try:
        eager = fn(*args)
    except Exception as exc:  # noqa: BLE001 - eager rejects the program: so must the compiled one
        with pytest.raises(type(exc)), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flashlight_hf.compile(fn)(*args)
        return
    try:
        ref = fn(*[a.double() for a in args])
    except RuntimeError:  # a program that is not dtype-generic (it casts to float32 itself)
        ref = eager
    compiled = flashlight_hf.compile(fn)
    for call in range(2):  # the second call takes the memoised path
        launches: list[str] = []
        remove = add_launch_hook(launches.append)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = compiled(*args)
        finally:
            remove()
        if call == 0:
            fell_back = any("unfused" in str(w.message) for w in caught)
            assert bool(launches) != fell_back, f"{what}: a program must either run a kernel or warn and fall back"
        _same_outcome(out, ref, what, eager)
