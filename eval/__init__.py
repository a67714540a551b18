"""Model-zoo evaluation: perplexity, logit agreement, throughput and memory per attention impl.

``flashlight-hf eval`` answers "is attention implementation X as exact and as fast as what I use
now, on my model?". One module per job:

- :mod:`.options`: the options, their defaults and checks (shared by the CLI and the API);
- :mod:`.models`: resolve ``--model`` / ``--random-weights`` to a model and tokenizer, switch impls;
- :mod:`.text`: the evaluation text (CPython's pydoc topics, a file, or a dataset) and its tokens;
- :mod:`.quality`: perplexity or embedding cosine, and logit differences against a reference impl;
- :mod:`.speed`: prefill and decode throughput and peak memory;
- :mod:`.runner`: run all of it for a list of impls, one failing impl never stopping the others;
- :mod:`.report`: ``results.json``, ``report.md`` and the PNG plots;
- :mod:`.cli`: the ``eval`` subcommand.
"""


class EvalError(RuntimeError):
    """A problem with the user's request (unknown model, offline dataset, ...).

    The CLI prints its message and exits with status 2 instead of showing a stack trace.
    """


def one_line(e: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line, shortened: what a report row or an error message shows."""
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
