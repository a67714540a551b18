"""The options of one evaluation, their defaults and their checks, in one place.

The CLI builds its flags' defaults from :class:`EvalOptions`, so the defaults live only here.
This module imports no torch at import time, so ``flashlight-hf eval --help`` is instant.

The defaults fit ``make eval`` (SmolLM2-135M, three impls) on a 2-core CPU in about 2 minutes,
load and flex_attention's compilation included (measured 1m42 to 2m19; 3m52 on a busy host),
well inside its 10-minute budget: 4096 tokens = 8 windows of 512 per impl (~1 s each on CPU),
32 decode tokens (~20 tokens/s on CPU), 3 timed repeats (median).
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field

from . import EvalError

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_IMPLS = ("eager", "sdpa", "flex_attention")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class EvalOptions:
    """Everything one evaluation depends on; the CLI's flags map one to one onto these fields."""

    model: str | None = None  # None: DEFAULT_MODEL, unless random_weights is given
    random_weights: str | None = None
    impls: list[str] = field(default_factory=lambda: list(DEFAULT_IMPLS))
    text_file: str | None = None
    dataset: str | None = None
    max_tokens: int = 4096
    window: int = 512
    stride: int | None = None  # None: the window (no overlap)
    dtype: str = "float32"
    device: str | None = None  # None: cuda if available, else cpu
    decode_tokens: int = 32
    repeats: int = 3
    seed: int = 0
    out: str = "reports/eval"

    def resolved(self) -> "EvalOptions":
        """A copy with every None default filled in and every value checked."""
        import torch

        opts = EvalOptions(**asdict(self))
        if opts.model is None and opts.random_weights is None:
            opts.model = DEFAULT_MODEL
        opts.stride = opts.window if opts.stride is None else opts.stride
        opts.device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
        opts.impls = list(dict.fromkeys(i.strip() for i in opts.impls if i.strip()))
        problems = [
            (not opts.impls, "--impl needs at least one implementation"),
            (opts.max_tokens < 2, "--max-tokens must be at least 2"),
            (opts.window < 2, "--window must be at least 2"),
            (not 0 < opts.stride <= opts.window, "--stride must be in 1..window (a larger stride skips tokens)"),
            (opts.decode_tokens == 1 or opts.decode_tokens < 0, "--decode-tokens must be 0 (skip) or at least 2"),
            (opts.repeats < 1, "--repeats must be at least 1"),
            (opts.dtype not in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}"),
            (opts.device.startswith("cuda") and not torch.cuda.is_available(), "--device cuda but no CUDA device"),
        ]
        for bad, message in problems:
            if bad:
                raise EvalError(message)
        return opts

    def command(self) -> str:
        """The full command line that reproduces this run, defaults spelled out."""
        flags = {"--model": self.model, "--random-weights": self.random_weights, "--impl": ",".join(self.impls),
                 "--text-file": self.text_file, "--dataset": self.dataset, "--max-tokens": self.max_tokens,
                 "--window": self.window, "--stride": self.stride, "--dtype": self.dtype, "--device": self.device,
                 "--decode-tokens": self.decode_tokens, "--repeats": self.repeats, "--seed": self.seed,
                 "--out": self.out}
        args = [str(part) for flag, value in flags.items() if value is not None for part in (flag, value)]
        return shlex.join(["flashlight-hf", "eval", *args])
