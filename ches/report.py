"""``ches report``: one self-contained HTML page about a scored dataset (pictures inlined as PNG); a
``DatasetDict`` gets one section per split on the same page.

Draws its figures with matplotlib (a dependency of ches).
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
from .data.columns import DEFAULT_MEASURE, MEASURES, check_measure, check_score_columns
from .data.formats import split_prompt
from .data.inputs import column
from .data.integrity import FLAGS, FLAGS_COLUMN
from .errors import ChesError
from .scores.select import most_similar_first, similarity
from .scores.stats import summarize

SHOWN_CHARS = 600


def write_report(dataset: datasets.Dataset | datasets.DatasetDict, output: str | os.PathLike, *,
                 measure: str | None = None, top: int = 20, title: str = "CHES report",
                 overwrite: bool = False, validation: dict | None = None) -> Path:
    """Write the HTML report of a scored ``dataset`` to ``output`` and return its path.

    The page holds histograms of ``ches`` and ``ln_ches``, a ``ches`` vs length-difference scatter,
    the summary table, and the ``top`` highest- and lowest-scoring pairs by ``measure`` with their
    prompt and both completions (escaped, truncated to 600 characters for display). ``measure=None`` ranks
    them by the measure ``validation`` recommends filtering by, else by ``ln_ches``; a line above the tables
    says what ranks them and what the validation recommended (:func:`ranked_by`). A ``DatasetDict``
    gets all of that once per split, in one section per split headed by its name (in the dict's
    order, each split checked before anything is written). With ``validation`` (what :func:`ches.validate`
    returned, or its JSON file loaded), a section with its evidence and recommendation first; without, a
    section saying that no validation was run and how to run one. An existing ``output`` is replaced only
    with ``overwrite=True``.

    >>> import tempfile, ches
    >>> scored = ches.score("examples/data/hh-sample.jsonl", "examples/tiny-hh-model", progress=False)
    >>> parts = datasets.DatasetDict({"train": scored.select(range(40)), "test": scored.select(range(40, 64))})
    >>> page = write_report(parts, tempfile.mkdtemp() + "/r.html", top=3).read_text()
    >>> "<h2 id='split-train'>Split train</h2>" in page, page.count("3 highest ln_ches")
    (True, 2)
    """
    from .data.export import check_output, write_text

    check_output(output, overwrite=overwrite, suffixes=(".html", ".htm"))
    if validation is not None:
        from .evaluate.results import check_validation

        check_validation(validation, "validation=")  # a loaded file was checked already; a dict of the caller's here
    measure, ranking = ranked_by(measure, validation)
    if not isinstance(top, int) or top < 1:
        raise ChesError(f"top={top!r} must be a positive integer: the pairs shown at each end.")
    if isinstance(dataset, datasets.DatasetDict):
        checked = {name: _scored_columns(part, measure, f"split {name!r}") for name, part in dataset.items()}
        sections = {name: _sections(part, *checked[name], measure, top, "h3", ranking) for name, part in dataset.items()}
        contents = ", ".join(f"<a href='#split-{html.escape(name, quote=True)}'>{html.escape(name)}</a> "
                             f"({len(dataset[name])} rows)" for name in dataset)
        body = [f"<p>Splits: {contents}.</p>", *(f"<h2 id='split-{html.escape(name, quote=True)}'>Split "
                                                 f"{html.escape(name)}</h2>{''.join(part)}"
                                                 for name, part in sections.items())]
    else:
        body = _sections(dataset, *_scored_columns(dataset, measure, "the data"), measure, top, "h2", ranking)
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>" \
           f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{_validation_section(validation)}" \
           f"{''.join(body)}" \
           f"<footer>ches {__version__}</footer></body></html>"
    return write_text(output, page)


def ranked_by(measure: str | None, validation: dict | None) -> tuple[str, str]:
    """The measure the pair tables are ranked by, and the line above them that says why (``""``: none needed):
    ``measure`` when given (checked), else the one ``validation`` (a checked :func:`ches.validate` result)
    recommends filtering by, else ``ln_ches``. A recommendation of another measure than the one asked for,
    or not to filter, is said, never dropped.

    >>> advice = {"action": "filter", "measure": "ches", "reason": "ches gap +0.4 [+0.2, +0.6]."}
    >>> ranked_by(None, {"recommendation": advice})
    ('ches', 'The pair tables are ranked by ches, the measure ches validate recommended filtering by on this model.')
    >>> print(ranked_by("ln_ches", {"recommendation": advice})[1])
    The pair tables are ranked by ln_ches, as asked (measure=, --measure); ches validate recommended filtering by ches on this model instead.
    >>> advice = {"action": "not enough evidence", "measure": None, "reason": "every interval includes 0: ..."}
    >>> print(ranked_by(None, {"recommendation": advice})[1])
    ches validate found not enough evidence to recommend a filter on this model: every interval includes 0; the tables below are ranked by ln_ches for inspection only.
    >>> ranked_by(None, None)
    ('ln_ches', '')
    """
    from .evaluate.auditing import reason_gist

    advice = None if validation is None else validation["recommendation"]
    if advice is None:
        return check_measure(DEFAULT_MEASURE if measure is None else measure), ""
    if advice["action"] == "filter":
        recommended = advice["measure"]
        if recommended not in MEASURES:  # a hand-edited file: said, and the tables ranked as without one
            shown = check_measure(DEFAULT_MEASURE if measure is None else measure)
            return shown, (f"ches validate recommended filtering by {recommended!r}, which is not a score ches writes "
                           f"(one of {sorted(MEASURES)}); the pair tables are ranked by {shown}.")
        if measure is None or measure == recommended:
            return recommended, (f"The pair tables are ranked by {recommended}, the measure ches validate recommended "
                                 "filtering by on this model.")
        return check_measure(measure), (f"The pair tables are ranked by {measure}, as asked (measure=, --measure); "
                                        f"ches validate recommended filtering by {recommended} on this model instead.")
    measure = check_measure(DEFAULT_MEASURE if measure is None else measure)
    said = ("recommends not filtering on this model" if advice["action"] == "do not filter" else
            "found not enough evidence to recommend a filter on this model")
    return measure, f"ches validate {said}: {reason_gist(advice['reason'])}; the tables below are ranked by {measure} " \
        "for inspection only."


def _scored_columns(dataset: datasets.Dataset, measure: str, label: str) -> tuple[dict, np.ndarray]:
    """The columns the report reads, and the positions of the scored rows; checked (``label`` names the data)."""
    check_score_columns(dataset, label)
    columns = {name: column(dataset, name) for name in dataset.column_names
               if name in (*MEASURES, "chosen_tokens", "rejected_tokens", "ches_skip", FLAGS_COLUMN)}
    missing = [name for name in ("ches", "ches_skip", "chosen_tokens", "rejected_tokens", measure) if name not in columns]
    if missing:
        raise ChesError(f"{label} has no {', '.join(map(repr, missing))} column(s); report needs a file written by "
                        f"'ches score' (its columns are: {', '.join(dataset.column_names)}).")
    values = np.asarray(columns[measure], dtype=np.float64)
    scored = np.flatnonzero([reason is None for reason in columns["ches_skip"]] & np.isfinite(values)
                            & np.isfinite(np.asarray(columns["ches"], dtype=np.float64)))
    if len(scored) == 0:
        raise ChesError(f"no row of {label} was scored; nothing to report.")
    return columns, scored


def _sections(dataset: datasets.Dataset, columns: dict, scored: np.ndarray, measure: str, top: int,
              h: str, ranking: str = "") -> list[str]:
    """The report of one dataset, under headings ``h`` (``"h2"``, or ``"h3"`` inside a split's section);
    ``ranking``: the line above the pair tables that says what ranks them (:func:`ranked_by`)."""
    summary = summarize(columns)
    values = np.asarray(columns[measure], dtype=np.float64)
    order = scored[most_similar_first(similarity(values[scored], measure))]
    shown = min(top, len(order))
    return [
        f"<p>{summary['scored']} of {summary['rows']} rows scored, {summary['skipped']} skipped"
        f"{_reasons(summary['skip_reasons'])}. Higher score = more similar preferred and dispreferred embeddings = "
        "more likely to cause likelihood displacement under DPO.</p>",
        f"<{h}>Distributions</{h}>",
        _figures(columns, scored),
        f"<{h}>Summary</{h}>",
        _summary_table(summary),
        flags_section(summary, h),
        _audit_section(dataset, measure, h),
        f"<p class='ranking'>{html.escape(ranking)}</p>" if ranking else "",
        f"<{h}>{shown} highest {html.escape(measure)} (most displacement-prone)</{h}>",
        PAIRS_NOTE,
        length_note(dataset, order[:shown], scored),
        _pairs_table(dataset, order[:shown], measure),
        f"<{h}>{shown} lowest {html.escape(measure)} (least displacement-prone)</{h}>",
        length_note(dataset, order[::-1][:shown], scored),
        _pairs_table(dataset, order[::-1][:shown], measure),
    ]


PAIRS_NOTE = ("<p class='note'>Rows are numbered from 0, as in the data file. <span class='cut'>⟨cut⟩</span> marks a "
              "completion that begins inside a word: the two completions share their first letters, so the prompt "
              "(their common beginning, as TRL finds it) ends mid-word and each completion shows from there.</p>")

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0;width:100%}td,th{border:1px solid #ccc;padding:4px 8px;
vertical-align:top;text-align:left}th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:12px;max-height:16em;overflow:auto}
.figs{display:flex;flex-wrap:wrap;gap:8px}.figs img{width:32%;min-width:300px;border:1px solid #eee}
footer{color:#888;margin-top:2em;font-size:12px}.note{color:#666;font-size:13px}
.label{color:#666;display:inline-block;min-width:7.5em}.scores div{white-space:nowrap;font-variant-numeric:tabular-nums}
.cut{color:#a83b3b;font-weight:bold;margin-right:2px}
.flag{color:#a83b3b;font-size:12px}
.ranking{background:#f6f3e6;padding:4px 8px}
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
    images, titles = [], []
    for name in ("ches", "ln_ches"):
        low, high = robust_range(values[name])
        inside = values[name][(values[name] >= low) & (values[name] <= high)]
        figure, axis = plt.subplots(figsize=(5, 3.4), dpi=110)
        axis.hist(inside, bins=min(60, max(10, len(inside) // 10)), range=(low, high), color="#3b6ea8")
        titles.append(f"{name}: {len(inside)} of {len(scored)} pairs{_outside(len(scored) - len(inside))}")
        axis.set(title=titles[-1], xlabel=name, ylabel="pairs")
        _plain_ticks(axis)
        images.append(_png(figure, plt))
    low, high = robust_range(values["ches"])
    inside = (values["ches"] >= low) & (values["ches"] <= high)
    figure, axis = plt.subplots(figsize=(5, 3.4), dpi=110)
    axis.scatter(length_difference[inside], values["ches"][inside], s=6, alpha=0.5, color="#a83b3b")
    titles.append(f"ches vs length difference{_outside(int((~inside).sum()))}")
    axis.set(title=titles[-1], xlabel="|y+| - |y-| (tokens)", ylabel="ches")
    _plain_ticks(axis)
    images.append(_png(figure, plt))
    return "<div class='figs'>" + "".join(f"<img alt='{html.escape(alt)}' title='{html.escape(alt)}' "
                                          f"src='data:image/png;base64,{data}'>" for alt, data in zip(titles, images)) + \
        "</div><p class='note'>Each picture leaves out the far outliers (scores more than 1.5 times the " \
        "5th-95th percentile span beyond those percentiles) and counts them in its title, so a few extreme pairs " \
        "do not squeeze the rest into one bar.</p>"


def robust_range(values: np.ndarray) -> tuple[float, float]:
    """The range of ``values`` without its far outliers: at most 1.5 times the 5th-95th percentile span
    beyond those percentiles (normal data loses nothing; one huge value among ordinary ones is left out),
    widened a little when every value is the same.

    >>> robust_range(np.array([0.0, 1.0, 2.0, 3.0, 4.0] * 20 + [1e9]))  # 1e9 is left out
    (0.0, 10.0)
    >>> robust_range(np.array([5.0, 5.0]))
    (5.0, 7.5)
    """
    low, high = (float(value) for value in np.percentile(values, [5, 95]))
    spread = high - low
    low, high = max(float(values.min()), low - 1.5 * spread), min(float(values.max()), high + 1.5 * spread)
    if high <= low:
        high = low + max(abs(low), 1.0) * 0.5
    return low, high


def _outside(count: int) -> str:
    return f" ({count} not shown)" if count else ""


def _plain_ticks(axis) -> None:
    """Tick labels as plain numbers, without a detached ``1e7`` offset."""
    from matplotlib.ticker import EngFormatter

    for which in (axis.xaxis, axis.yaxis):
        which.set_major_formatter(EngFormatter(sep=""))


def _png(figure, plt) -> str:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _validation_section(validation: dict | None) -> str:
    """What ``ches validate`` found and recommends, or how to run it."""
    from .evaluate.advice import DISPLAYED, format_recommendation

    if validation is None:
        return ("<h2>Recommendation</h2><p>No validation was run for this report, so it cannot say which measure "
                "predicts displacement on your model. Run <code>ches validate DATA --model SFT_MODEL --output "
                "validation.json</code> (DPO runs on subsets of your pairs; minutes on a GPU) and pass "
                "<code>--validation validation.json</code> to <code>ches report</code>.</p>")
    from .evaluate.validation import protocol_of

    settings = validation["settings"]
    statistic = protocol_of(settings["protocol"]).heading
    rows = "".join(f"<tr><td>{_text(DISPLAYED.get(name, name))}</td><td class='num'>{_text(format(entry['statistic'], '+.3f'))}</td>"
                   f"<td class='num'>[{_text(format(entry['ci95'][0], '+.3f'))}, {_text(format(entry['ci95'][1], '+.3f'))}]</td>"
                   f"<td>{_text(entry['status'])}</td><td>{_text(_each_seed(entry))}</td></tr>"
                   for name, entry in validation["evidence"].items())
    how = (f"{_text(settings['protocol'])} protocol on {_text(settings['model'])}: n={_text(settings['n'])}, learning "
           f"rate {_text(format(settings['learning_rate'], 'g'))}, beta {_text(format(settings['beta'], 'g'))}, "
           f"max_length {_text(settings['max_length'])}, {_text(settings['scored'])} scored rows{_text(_trained(settings))}")
    return (f"<h2>Recommendation</h2><p>From <code>ches validate</code> ({how}).</p>"
            f"<table><tr><th>measure</th><th>{statistic}</th><th>95% CI</th><th>status</th><th>each seed</th></tr>"
            f"{rows}</table>"
            f"<pre>{_text(format_recommendation(validation['recommendation']))}</pre>")


def _each_seed(entry: dict) -> str:
    """A measure's verdict in each seed of a validation (nothing for a result without seeds)."""
    seeds = entry.get("seeds")
    if not isinstance(seeds, list) or not all(isinstance(item, dict) for item in seeds):
        return ""
    return ", ".join(f"{item.get('seed')}: {item.get('status')}" for item in seeds)


def _trained(settings: dict) -> str:
    """How a validation's runs trained, where its settings say (seeds, TRL's loss, LoRA), as the report adds it."""
    said = []
    if isinstance(settings.get("seeds"), int):
        said.append(f"{settings['seeds']} seeds")
    if isinstance(settings.get("trainer"), dict):
        losses = settings.get("loss_type")
        said.append(f"TRL's DPOTrainer, loss {'+'.join(map(str, losses)) if isinstance(losses, list) else losses}")
    if isinstance(settings.get("lora"), dict):
        said.append(f"LoRA r={settings['lora'].get('r')}")
    return "".join(f", {part}" for part in said)


def _text(value) -> str:
    """Any value of a validation result, as HTML text: escaped, quotes too."""
    return html.escape(str(value), quote=True)


def _audit_section(dataset: datasets.Dataset, measure: str, heading: str = "h2") -> str:
    """For rows ``ches audit`` wrote: what DPO did to the preferred responses, and what the measures saw."""
    if not {"chosen_change", "displaced"} <= set(dataset.column_names):
        return ""
    from .evaluate.auditing import audit_summary, displaced_by_decile

    summary = audit_summary(dataset, resamples=200)
    low, high = summary["mean_chosen_change_ci95"]
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td class='num'>{_correlation(entry['spearman'])}</td>"
        f"<td class='num'>[{entry['spearman_ci95'][0]:+.2f}, {entry['spearman_ci95'][1]:+.2f}]</td>"
        f"<td class='num'>{_correlation(entry.get('spearman_given_lengths', float('nan')))}</td></tr>"
        for name, entry in summary["measures"].items())
    change = np.asarray(column(dataset, "chosen_change"), dtype=np.float64)
    values = similarity(np.asarray(column(dataset, measure), dtype=np.float64), measure)
    finite = np.isfinite(change) & np.isfinite(values)
    return (f"<{heading}>Audit: what DPO did to the preferred responses</{heading}>"
            f"<p>{summary['rows_audited']} pairs audited: the "
            f"preferred response lost probability (was displaced) in {summary['fraction_displaced']:.0%} of them; the "
            f"mean change of log pi(y+|x) is {summary['mean_chosen_change']:+.3f} nats (95% CI [{low:+.3f}, {high:+.3f}])"
            f", of log pi(y-|x) {summary['mean_rejected_change']:+.3f}.</p>"
            f"{_audit_figures(values[finite], change[finite], displaced_by_decile, measure)}"
            "<table><tr><th>measure (higher = more similar)</th><th>Spearman with the change of log pi(y+|x)</th>"
            "<th>95% CI</th><th>holding |y+| and |y-| fixed</th></tr>" + rows + "</table><p class='note'>Negative = "
            "the measure predicts displacement (the paper's claim). The length difference |y+| - |y-| is a "
            "baseline that uses no hidden states.</p>")


def _audit_figures(values: np.ndarray, change: np.ndarray, by_decile, measure: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = []
    figure, axis = plt.subplots(figsize=(5, 3.4), dpi=110)
    fractions = by_decile(values, change < 0)
    axis.bar(range(1, len(fractions) + 1), [100 * fraction for fraction in fractions], color="#3b6ea8")
    axis.set(title=f"displaced pairs by {measure} decile", xlabel=f"{measure} decile (1 = least similar)",
             ylabel="displaced (%)", ylim=(0, 100))
    images.append((f"displaced pairs by {measure} decile", _png(figure, plt)))
    low, high = robust_range(values)
    inside = (values >= low) & (values <= high)
    figure, axis = plt.subplots(figsize=(5, 3.4), dpi=110)
    axis.scatter(values[inside], change[inside], s=6, alpha=0.5, color="#a83b3b")
    axis.axhline(0.0, color="#888", linewidth=0.8)
    axis.set(title=f"change of log pi(y+|x) vs {measure}{_outside(int((~inside).sum()))}", xlabel=measure,
             ylabel="change (nats)")
    _plain_ticks(axis)
    images.append((f"change vs {measure}", _png(figure, plt)))
    return "<div class='figs'>" + "".join(f"<img alt='{html.escape(alt)}' title='{html.escape(alt)}' "
                                          f"src='data:image/png;base64,{data}'>" for alt, data in images) + "</div>"


def _summary_table(summary: dict) -> str:
    measures = summary["measures"]
    stats = list(next(iter(measures.values())))
    head = "<tr><th>measure</th>" + "".join(f"<th>{name}</th>" for name in stats) + "</tr>"
    rows = "".join(f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td class='num'>{values[s]:.4g}</td>" for s in stats)
                   + "</tr>" for name, values in measures.items())
    correlations = "".join(f"<tr><td>{html.escape(name)}</td><td class='num'>{_correlation(value)}</td></tr>"
                           for name, value in summary["correlations"].items())
    return (f"<table>{head}{rows}</table><table><tr><th>correlation (Spearman unless marked pearson)</th>"
            f"<th>value</th></tr>{correlations}</table>")


def flags_section(summary: dict, h: str = "h2") -> str:
    """The "Integrity flags" heading and its table: rows per flag (:mod:`ches.data.integrity`), every flag listed with
    its meaning; a note instead when the data has no ``ches_flags`` column.

    >>> "empty_chosen</td><td class='num'>2" in flags_section({"rows": 9, "flagged": 2, "flags": {"empty_chosen": 2}})
    True
    """
    if "flags" not in summary:
        return (f"<{h}>Integrity flags</{h}><p class='note'>The data has no ches_flags column: it was scored by an older "
                "ches. Score it again to see which rows TRL would truncate, drop, or train on with identical "
                "completions.</p>")
    rows = "".join(f"<tr><td>{html.escape(name)}</td><td class='num'>{summary['flags'].get(name, 0)}</td>"
                   f"<td>{html.escape(meaning)}</td></tr>" for name, meaning in FLAGS.items())
    return (f"<{h}>Integrity flags</{h}><p>{summary['flagged']} of {summary['rows']} rows flagged (ches_flags; drop them "
            "with ches filter --drop-flags).</p><table><tr><th>flag</th><th>rows</th><th>meaning</th></tr>"
            f"{rows}</table>")


def _correlation(value: float) -> str:
    if np.isfinite(value):
        return f"{value:.3f}"
    return "<span class='note'>none: one side is constant (every pair has the same value), so it has no correlation</span>"


def _pairs_table(dataset: datasets.Dataset, rows: np.ndarray, measure: str) -> str:
    out = ["<table><tr><th>row (0-based)</th><th>scores</th><th>prompt (end)</th><th>chosen</th><th>rejected</th></tr>"]
    for row in rows.tolist():
        example = dataset[row]
        prompt, chosen, rejected = pair_parts(example)
        scores = "".join(f"<div><span class='label'>{name}</span> {example[name]:.4g}</div>"
                         for name in ("ln_ches", "ches", "edit_distance", "chosen_tokens", "rejected_tokens")
                         if name in example and example[name] is not None)
        scores += "".join(f"<div class='flag'>{html.escape(name)}</div>" for name in example.get(FLAGS_COLUMN) or ())
        split = mid_word(prompt, chosen) or mid_word(prompt, rejected)
        out.append(f"<tr><td class='num'>{row}</td><td class='scores'>{scores}</td><td>{_pre(prompt, from_end=True)}</td>"
                   f"<td>{_pre(chosen, cut=split)}</td><td>{_pre(rejected, cut=split)}</td></tr>")
    return "".join(out) + "</table>"


def mid_word(prompt: str, completion: str) -> bool:
    """Whether the prompt ends inside a word that the completion finishes (a prompt cut at a token boundary).

    >>> mid_word("Human: tell me ab", "out it"), mid_word("Assistant: I", "'m sorry"), mid_word("Assistant:", " Sure")
    (True, True, False)
    """
    if not prompt or not completion:
        return False
    last, first = prompt[-1], completion[0]
    return (last.isalnum() and not first.isspace()) or (not last.isspace() and first.isalnum())


def length_note(dataset: datasets.Dataset, rows: np.ndarray, scored: np.ndarray) -> str:
    """A warning when the pairs shown are mostly much shorter than the scored pairs overall (a length effect)."""
    lengths = np.asarray(column(dataset, "chosen_tokens"), dtype=np.float64) + \
        np.asarray(column(dataset, "rejected_tokens"), dtype=np.float64)
    shown, overall = float(np.median(lengths[rows])), float(np.median(lengths[scored]))
    if len(rows) >= 5 and shown < 0.5 * overall:
        return (f"<p class='note'>Length effect: these pairs are mostly short (median {shown:.0f} completion tokens "
                f"per pair, against {overall:.0f} over all scored pairs). Short completions give few hidden states to "
                "average, so their scores sit at the extremes; read them with that in mind.</p>")
    return ""


def pair_parts(example: dict) -> tuple[str, str, str]:
    """A row's prompt, chosen and rejected completion as text, as the report shows them: an implicit-prompt
    row is split at its shared prefix (TRL's ``extract_prompt``), messages are written one per line; a row of
    another framework's layout (detected from its columns, docs/formats.md) as the TRL row it means.

    >>> pair_parts({"chosen": "Human: Hi? Assistant: Hello.", "rejected": "Human: Hi? Assistant: Go away."})
    ('Human: Hi? Assistant:', ' Hello.', ' Go away.')
    >>> pair_parts({"system": "", "question": "Hi?", "chosen": "Hello.", "rejected": "Go away."})[0]
    '[user] Hi?'
    """
    from .data.inputs import resolve_reading

    layout = resolve_reading(list(example), None).layout
    example = layout.to_trl(example) if layout is not None else example
    if "prompt" in example:
        parts = (example["prompt"], example["chosen"], example["rejected"])
    else:
        parts = split_prompt(example["chosen"], example["rejected"])
    return tuple(_as_text(part) for part in parts)


def _as_text(value) -> str:
    if isinstance(value, list):
        return "\n".join(f"[{message.get('role')}] {message.get('content')}" for message in value)
    return str(value)


def _pre(text: str, from_end: bool = False, cut: bool = False) -> str:
    if not text:
        return "<span class='note'>(empty)</span>"
    if len(text) > SHOWN_CHARS:
        text = "…" + text[-SHOWN_CHARS:] if from_end else text[:SHOWN_CHARS] + "…"
    marker = "<span class='cut' title='the prompt ends inside this word'>⟨cut⟩</span>" if cut else ""
    return f"<pre>{marker}{html.escape(text)}</pre>"
