"""``flashlight-hf eval``: is attention impl X as exact and as fast as what I use now, on my model?

Heavy imports (torch, transformers) happen in :func:`run`, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys

from .options import DTYPES, EvalOptions


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand; its ``run`` default is what the top-level CLI calls."""
    p = subparsers.add_parser(
        "eval",
        help="perplexity, logit agreement, throughput and memory per attention implementation",
        description="Evaluate attention implementations on one model: perplexity (or embedding cosine for "
                    "encoders) and logit differences against the first impl, prefill and decode tokens/s, "
                    "peak memory. Writes results.json, report.md, throughput.png and perplexity.png.",
    )
    d = EvalOptions()
    model = p.add_argument_group("model")
    model.add_argument("--model", default=None,
                       help="zoo checkpoint (smollm2-135m, minilm-l6), local folder or .gguf file, or hub id "
                            "(needs a network); default: smollm2-135m")
    model.add_argument("--random-weights", metavar="CONFIG", default=None,
                       help="build zoo config CONFIG (llama-tiny, llama-1b, bert-tiny) with random weights, "
                            "for speed at real sizes; instead of --model")
    model.add_argument("--dtype", default=d.dtype, choices=DTYPES, help="default: %(default)s")
    model.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--impl", default=",".join(d.impls),
                   help="comma-separated attention implementations, any name Transformers accepts in "
                        "set_attn_implementation; the first is the reference for logit differences; "
                        "default: %(default)s")
    text = p.add_argument_group("text (default: CPython's pydoc_data.topics)").add_mutually_exclusive_group()
    text.add_argument("--text-file", metavar="PATH", default=None, help="a UTF-8 text file")
    text.add_argument("--dataset", metavar="NAME[:CONFIG[:SPLIT]]", default=None,
                      help="a Hugging Face dataset (needs a network or a local cache); split defaults to test")
    measure = p.add_argument_group("measurement")
    measure.add_argument("--max-tokens", type=int, default=d.max_tokens,
                         help="tokens of the text to score; default: %(default)s")
    measure.add_argument("--window", type=int, default=d.window,
                         help="perplexity window, also the prefill length and the decode prompt length; "
                              "default: %(default)s")
    measure.add_argument("--stride", type=int, default=None, help="perplexity stride; default: the window")
    measure.add_argument("--decode-tokens", type=int, default=d.decode_tokens,
                         help="new tokens per decode run, 0 skips decode; default: %(default)s")
    measure.add_argument("--repeats", type=int, default=d.repeats,
                         help="timed runs per measurement, median reported; default: %(default)s")
    measure.add_argument("--seed", type=int, default=d.seed,
                         help="seed for random weights and synthetic token ids; default: %(default)s")
    p.add_argument("--out", default=d.out, help="report folder; default: %(default)s")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the evaluation, write the report, print where it is. Exit status 2 on a user error."""
    from . import EvalError
    from .report import write_report
    from .runner import run_eval

    options = EvalOptions(
        model=args.model, random_weights=args.random_weights, impls=args.impl.split(","),
        text_file=args.text_file, dataset=args.dataset, max_tokens=args.max_tokens, window=args.window,
        stride=args.stride, dtype=args.dtype, device=args.device, decode_tokens=args.decode_tokens,
        repeats=args.repeats, seed=args.seed, out=args.out,
    )
    try:
        results = run_eval(options)
    except EvalError as e:
        print(f"flashlight-hf eval: error: {e}", file=sys.stderr)
        return 2
    paths = write_report(results, args.out)
    print(paths["markdown"].read_text())
    failed = [r["impl"] for r in results["runs"] if r["error"]]
    if failed:
        print(f"failed impls (see the error column): {', '.join(failed)}")
    print(f"report written to {paths['markdown'].parent}/: " + ", ".join(p.name for p in paths.values()))
    return 0
