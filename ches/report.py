"""``ches report``: one self-contained HTML page about a scored dataset (pictures inlined as PNG).

Needs matplotlib (``pip install 'ches[report]'``).
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import datasets
import numpy as np

from . import __version__
from .errors import ChesError
from .formats import extract_prompt
from .inputs import column
from .select import most_similar_first, similarity
from .stats import summarize

SHOWN_CHARS = 600


def write_report(dataset: datasets.Dataset, output: str | os.PathLike, *, measure: str = "ln_ches", top: int = 20,
                 title: str = "CHES report", overwrite: bool = False) -> Path:
    """Write the HTML report of a scored ``dataset`` to ``output`` and return its path.

    The page holds histograms of ``ches`` and ``ln_ches``, a ``ches`` vs length-difference scatter,
    the summary table, and the ``top`` highest- and lowest-scoring pairs by ``measure`` with their
    prompt and both completions (escaped, truncated to 600 characters for display). An existing
    ``output`` is replaced only with ``overwrite=True``.
    """
    from .export import check_output, write_text

    check_output(output, overwrite=overwrite, suffixes=(".html", ".htm"))
    if not isinstance(top, int) or top < 1:
        raise ChesError(f"top={top!r} must be a positive integer: the pairs shown at each end.")

    columns = {name: column(dataset, name) for name in dataset.column_names
               if name in ("ches", "ln_ches", "last_hidden_ip", "edit_distance", "chosen_tokens", "rejected_tokens", "ches_skip")}
    missing = [name for name in ("ches", "ches_skip", "chosen_tokens", "rejected_tokens", measure) if name not in columns]
    if missing:
        raise ChesError(f"the data has no {', '.join(map(repr, missing))} column(s); report needs a file written by "
                        f"'ches score' (its columns are: {', '.join(dataset.column_names)}).")
    summary = summarize(columns)
    values = np.asarray(columns[measure], dtype=np.float64)
    scored = np.flatnonzero([reason is None for reason in columns["ches_skip"]] & np.isfinite(values)
                            & np.isfinite(np.asarray(columns["ches"], dtype=np.float64)))
    if len(scored) == 0:
        raise ChesError("no row of the data was scored; nothing to report.")
    order = scored[most_similar_first(similarity(values[scored], measure))]
    shown = min(top, len(order))
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{summary['scored']} of {summary['rows']} rows scored, {summary['skipped']} skipped"
        f"{_reasons(summary['skip_reasons'])}. Higher score = more similar preferred and dispreferred embeddings = "
        "more likely to cause likelihood displacement under DPO.</p>",
        "<h2>Distributions</h2>",
        _figures(columns, scored),
        "<h2>Summary</h2>",
        _summary_table(summary),
        f"<h2>{shown} highest {html.escape(measure)} (most displacement-prone)</h2>",
        _pairs_table(dataset, order[:shown], measure),
        f"<h2>{shown} lowest {html.escape(measure)} (least displacement-prone)</h2>",
        _pairs_table(dataset, order[::-1][:shown], measure),
        f"<footer>ches {__version__}</footer>",
    ]
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>" \
           f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>"
    return write_text(output, page)


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0;width:100%}td,th{border:1px solid #ccc;padding:4px 8px;
vertical-align:top;text-align:left}th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:12px;max-height:16em;overflow:auto}
.figs{display:flex;flex-wrap:wrap;gap:8px}.figs img{width:32%;min-width:300px;border:1px solid #eee}
footer{color:#888;margin-top:2em;font-size:12px}
"""


def _reasons(reasons: dict) -> str:
    return "" if not reasons else " (" + ", ".join(f"{html.escape(k)}: {v}" for k, v in reasons.items()) + ")"


def _figures(columns: dict, scored: np.ndarray) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ChesError("the report's pictures need matplotlib (a dependency of ches): pip install matplotlib.") from None
    values = {name: np.asarray(columns[name], dtype=np.float64)[scored] for name in ("ches", "ln_ches")}
    length_difference = (np.asarray(columns["chosen_tokens"]) - np.asarray(columns["rejected_tokens"]))[scored]
    images = []
    for name in ("ches", "ln_ches"):
        figure, axis = plt.subplots(figsize=(5, 3.4), dpi=110)
        axis.hist(values[name], bins=min(60, max(10, len(scored) // 10)), color="#3b6ea8")
        axis.set(title=f"{name} (n = {len(scored)})", xlabel=name, ylabel="pairs")
        images.append(_png(figure, plt))
    figure, axis = plt.subplots(figsize=(5, 3.4), dpi=110)
    axis.scatter(length_difference, values["ches"], s=6, alpha=0.5, color="#a83b3b")
    axis.set(title="ches vs length difference", xlabel="|y+| - |y-| (tokens)", ylabel="ches")
    images.append(_png(figure, plt))
    return "<div class='figs'>" + "".join(f"<img alt='{alt}' src='data:image/png;base64,{data}'>" for alt, data in
                                          zip(("ches histogram", "ln_ches histogram", "ches vs length difference"), images)) + "</div>"


def _png(figure, plt) -> str:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _summary_table(summary: dict) -> str:
    measures = summary["measures"]
    stats = list(next(iter(measures.values())))
    head = "<tr><th>measure</th>" + "".join(f"<th>{name}</th>" for name in stats) + "</tr>"
    rows = "".join(f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td class='num'>{values[s]:.4g}</td>" for s in stats)
                   + "</tr>" for name, values in measures.items())
    correlations = "".join(f"<tr><td>{html.escape(name)}</td><td class='num'>{value:.3f}</td></tr>"
                           for name, value in summary["correlations"].items())
    return (f"<table>{head}{rows}</table><table><tr><th>correlation (Spearman unless marked pearson)</th>"
            f"<th>value</th></tr>{correlations}</table>")


def _pairs_table(dataset: datasets.Dataset, rows: np.ndarray, measure: str) -> str:
    out = ["<table><tr><th>row</th><th>scores</th><th>prompt (end)</th><th>chosen</th><th>rejected</th></tr>"]
    for row in rows.tolist():
        example = dataset[row]
        prompt, chosen, rejected = _parts(example)
        scores = "<br>".join(f"{name} {example[name]:.4g}" for name in ("ln_ches", "ches", "edit_distance") if name in example)
        out.append(f"<tr><td class='num'>{row}</td><td>{scores}</td><td>{_pre(prompt, from_end=True)}</td>"
                   f"<td>{_pre(chosen)}</td><td>{_pre(rejected)}</td></tr>")
    return "".join(out) + "</table>"


def _parts(example: dict) -> tuple[str, str, str]:
    if "prompt" in example:
        parts = (example["prompt"], example["chosen"], example["rejected"])
    else:
        parts = extract_prompt(example["chosen"], example["rejected"])
    return tuple(_as_text(part) for part in parts)


def _as_text(value) -> str:
    if isinstance(value, list):
        return "\n".join(f"[{message.get('role')}] {message.get('content')}" for message in value)
    return str(value)


def _pre(text: str, from_end: bool = False) -> str:
    if len(text) > SHOWN_CHARS:
        text = "…" + text[-SHOWN_CHARS:] if from_end else text[:SHOWN_CHARS] + "…"
    return f"<pre>{html.escape(text)}</pre>"
