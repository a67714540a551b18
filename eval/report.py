"""Write the evaluation's results: ``results.json`` for machines, ``report.md`` to paste into an
issue, and two PNG plots (``throughput.png``, ``perplexity.png``) to look at."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

COLUMNS = (  # (key, header, format); None values print as "—"
    ("impl", "impl", "{}"),
    ("perplexity", "perplexity", "{:.7g}"),
    ("embedding_cosine", "embedding cosine (min)", "{:.8f}"),
    ("max_abs_logit_diff", "max abs logit diff", "{:.3e}"),
    ("mean_abs_logit_diff", "mean abs logit diff", "{:.3e}"),
    ("prefill_tokens_per_s", "prefill tok/s", "{:,.1f}"),
    ("decode_tokens_per_s", "decode tok/s", "{:,.2f}"),
    ("peak_memory_bytes", "peak memory (MiB)", "{:,.1f}"),
    ("error", "error", "{}"),
)


def write_report(results: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write every report file into ``out_dir`` (created if needed); returns their paths by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "report.md",
             "throughput": out / "throughput.png", "perplexity": out / "perplexity.png"}
    paths["json"].write_text(json.dumps(results, indent=2) + "\n")
    paths["markdown"].write_text(markdown(results))
    plot_throughput(results, paths["throughput"])
    plot_quality(results, paths["perplexity"])
    return paths


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row[key]
    if value is None:
        return "—"
    if key == "peak_memory_bytes":
        value = value / 2**20
    return fmt.format(value).replace("|", "\\|")


def markdown(results: dict[str, Any]) -> str:
    """The report as Markdown: one table row per impl, then what was measured on what."""
    runs = results["runs"]
    # Show only the columns that apply: perplexity for decoders, cosine for encoders, errors if any.
    columns = [c for c in COLUMNS if c[0] == "impl" or any(r[c[0]] is not None for r in runs)]
    model, device, versions = results["model"], results["device"], results["versions"]
    lines = [
        f"# flashlight-hf eval: {model['name']}",
        "",
        "| " + " | ".join(header for _, header, _ in columns) + " |",
        "|" + "|".join("---" if key in ("impl", "error") else "---:" for key, _, _ in columns) + "|",
        *("| " + " | ".join(_cell(r, key, fmt) for key, _, fmt in columns) + " |" for r in runs),
        "",
        f"- model: {model['name']} ({model['model_type']}, {model['kind']}, {model['parameters']:,} parameters, "
        f"{model['dtype']}) from {model['source']}",
        f"- text: {results['text']['used']}",
        f"- device: {device['type']}: {device['name']}"
        + (f", {device['threads']} threads" if "threads" in device else ""),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- logit diffs are against `{results['reference_impl']}` on the same inputs"
        + (" (for an encoder: last hidden states at non-padding tokens)" if model["kind"] == "encoder" else ""),
        f"- peak memory: {results['memory_metric']}",
        f"- command: `{results['command']}`",
        "",
    ]
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def _bars(ax, labels: list[str], values: list[float | None], fmt: str, title: str, *, log: bool = False) -> None:
    """One bar per impl, its value written on top; a missing value (failed impl, or a metric that
    does not apply) or a zero on a log axis is written at the bottom instead of drawn."""
    usable = [v is not None and math.isfinite(v) and (v > 0 or not log) for v in values]
    bars = ax.bar(labels, [v if ok else 0.0 for v, ok in zip(values, usable)], color="tab:blue")
    if log and any(usable):  # bars start a decade below the smallest, so their heights compare
        positive = [v for v, ok in zip(values, usable) if ok]
        ax.set_yscale("log")
        ax.set_ylim(min(positive) / 10, max(positive) * 5)
    for bar, value, ok in zip(bars, values, usable):
        x = bar.get_x() + bar.get_width() / 2
        text = fmt.format(value) if value is not None and math.isfinite(value) else "n/a"
        if ok:
            ax.annotate(text, (x, bar.get_height()), ha="center", va="bottom", fontsize=8,
                        xytext=(0, 2), textcoords="offset points")
        else:  # x in data coordinates, y as a fraction of the axes: just above the bottom
            ax.text(x, 0.02, text, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)
    ax.set_title(title)
    if not log:
        ax.margins(y=0.15)


def _impl_labels(runs: list[dict[str, Any]]) -> list[str]:
    return [r["impl"] + ("\n(failed)" if r["error"] else "") for r in runs]


def plot_throughput(results: dict[str, Any], path: Path) -> None:
    """Prefill and decode tokens/s per impl, side by side (they differ by orders of magnitude)."""
    plt = _pyplot()
    runs = results["runs"]
    labels = _impl_labels(runs)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    _bars(left, labels, [r["prefill_tokens_per_s"] for r in runs], "{:,.0f}", "prefill tokens/s")
    _bars(right, labels, [r["decode_tokens_per_s"] for r in runs], "{:,.1f}", "decode tokens/s")
    fig.suptitle(f"{results['model']['name']} on {results['device']['name']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_quality(results: dict[str, Any], path: Path) -> None:
    """Perplexity (decoders) or minimum embedding cosine (encoders) per impl, and the max abs
    logit difference against the reference impl on a log scale."""
    plt = _pyplot()
    runs = results["runs"]
    labels = _impl_labels(runs)
    encoder = results["model"]["kind"] == "encoder"
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if encoder:
        _bars(left, labels, [r["embedding_cosine"] for r in runs], "{:.8f}", "embedding cosine vs reference (min)")
    else:
        _bars(left, labels, [r["perplexity"] for r in runs], "{:.7g}", "perplexity")
    what = "last-hidden-state" if encoder else "logit"
    _bars(right, labels, [r["max_abs_logit_diff"] for r in runs], "{:.2e}",
          f"max abs {what} diff vs {results['reference_impl']}", log=True)
    fig.suptitle(f"{results['model']['name']}: {results['text']['used']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
