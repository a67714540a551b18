"""Fuzz: random attention-like programs from a small grammar, each against float64 eager.

Fused or not, the answer must be right: a program the generator cannot place must fall back
(with its warning) and still match. Every run draws a fresh seed; it is printed in the failure
message so a failing program can be rebuilt.
"""

from __future__ import annotations

import random
import warnings

import pytest
import torch

import flashlight_hf
from flashlight_hf.compiler.runtime import add_launch_hook
from flashlight_hf.testing import assert_close

N_PROGRAMS = 14


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
    seed = random.randrange(2**31)
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
