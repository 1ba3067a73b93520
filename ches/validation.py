"""``ches.validate``: does CHES predict likelihood displacement for *your* model and data?

Samples ``n`` pairs spread over the CHES range, runs a single-pair DPO probe on each (see
:mod:`ches.probes`), and correlates each measure with the displacement it caused, with bootstrap
confidence intervals.
"""

from __future__ import annotations

import time

import numpy as np

from .api import score_run
from .columns import DEFAULT_MEASURE, MEASURES
from .errors import ChesError
from .formats import to_pairs
from .inputs import Data, column, load_data, pair_columns
from .models import load_model
from .options import ValidateOptions, signature_with_options
from .probes import DPOProbe
from .select import similarity
from .stats import bootstrap_interval, partial_spearman, pearson, spearman
from .threads import set_threads, torch_threads
from .tokens import SequencePair, Skip, to_sequences, tokenize_pairs



def correlation_table(measures: dict[str, np.ndarray], displacement: np.ndarray, chosen_tokens: np.ndarray,
                      rejected_tokens: np.ndarray, resamples: int = 1000, seed: int = 0) -> dict:
    """Spearman/Pearson of each measure (sign: higher = more similar) with displacement, with 95 % bootstrap
    intervals, for total and per-token displacement, and the Spearman correlation controlling for both
    completion lengths.

    Args:
        measures: name -> ``[N]`` sign-adjusted values.
        displacement: ``[N]`` drop of ``log pi(y+|x)`` (positive = the preferred response lost probability).
        chosen_tokens, rejected_tokens: ``[N]`` completion lengths.
    """
    per_token = displacement / chosen_tokens
    lengths = np.column_stack([chosen_tokens, rejected_tokens])
    table = {}
    for name, values in measures.items():
        entry = {}
        for label, target in (("total", displacement), ("per_token", per_token)):
            for stat_name, statistic in (("spearman", spearman), ("pearson", pearson)):
                entry[f"{stat_name}_{label}"] = statistic(values, target)
                entry[f"{stat_name}_{label}_ci95"] = bootstrap_interval(statistic, values, target,
                                                                        resamples=resamples, seed=seed)
        entry["spearman_total_given_lengths"] = partial_spearman(values, displacement, lengths)
        table[name] = entry
    return table


def validate(data: Data, model, tokenizer=None, *, options: ValidateOptions | None = None, **kwargs) -> dict:
    """Single-pair DPO probes on ``n`` pairs across the CHES range; correlations with displacement.

    Args:
        data, model, tokenizer: as for :func:`ches.score`.
        options, **kwargs: a :class:`~ches.options.ValidateOptions` and/or its fields as keywords, all checked
            before any work: ``n`` pairs probed, taken at evenly spaced CHES ranks among the scored pool;
            ``steps``, ``learning_rate``, ``beta`` (DPO probe settings: RMSprop, reference = the model as
            given); ``pool`` rows scored to choose from (default: all rows, or a random ``20 * n`` of larger
            data); ``seed`` (which pool rows are drawn; also seeds the bootstrap); ``resamples`` (bootstrap
            resamples for the 95 % intervals); ``split``, ``max_length`` (default 512), ``device``, ``dtype``
            (default float32: DPO steps in half precision are noisy), ``num_threads`` and ``progress`` as for
            :func:`ches.score`.

    Returns:
        ``{"settings", "rows": [per-pair results], "correlations": {measure: {...}}, "summary", "verdict"}``;
        ``displacement`` is the drop of ``log pi(y+|x)`` (positive: the preferred response lost
        probability), ``measure`` values are sign-adjusted so that higher = more similar.
    """
    options = ValidateOptions.from_kwargs(options, **kwargs)
    with torch_threads(options.num_threads):
        return _validate(data, model, tokenizer, options)


def _validate(data: Data, model, tokenizer, options: ValidateOptions) -> dict:
    started = time.time()
    n = options.n
    dataset = load_data(data, options.split)
    if hasattr(dataset, "keys"):
        raise ChesError(f"data has splits {sorted(dataset)}; pass split=.")
    if n < 3 or n > len(dataset):
        raise ChesError(f"n={n} must be between 3 and the number of rows ({len(dataset)}).")
    if options.pool is not None and options.pool > len(dataset):
        raise ChesError(f"pool={options.pool} is more than the {len(dataset)} rows of the data; drop pool= to score "
                        "them all.")
    size = options.pool_rows(len(dataset))
    generator = np.random.default_rng(options.seed)
    pool_rows = np.sort(generator.choice(len(dataset), size=size, replace=False))
    candidates = dataset.select(pool_rows)
    loaded = load_model(model, tokenizer, dtype=options.dtype, device=options.device)
    threads = set_threads(loaded.model, explicit=options.num_threads, device=loaded.device)
    scored, _ = score_run(candidates, loaded.model, loaded.tokenizer, max_length=options.max_length,
                          progress=options.progress, num_threads=threads.count)
    usable = np.flatnonzero([reason is None for reason in column(scored, "ches_skip")])
    if len(usable) < n:
        raise ChesError(f"only {len(usable)} of the {size} pooled rows could be scored; lower n or raise max_length.")
    ches_values = np.asarray(column(scored, "ches"))[usable]
    picked = np.sort(usable[np.argsort(ches_values, kind="stable")[np.linspace(0, len(usable) - 1, n).round().astype(int)]])
    sequences = probe_sequences(candidates.select(picked), loaded.tokenizer, options.max_length)
    probe = DPOProbe(loaded.model, steps=options.steps, learning_rate=options.learning_rate, beta=options.beta,
                     pad_id=loaded.tokenizer.pad_token_id or 0)
    changes = run_probes(probe, sequences, options.progress)
    displacement = -changes[:, 0]
    picked_scores = scored.select(picked)
    measures = {name: similarity(column(picked_scores, name), name) for name in MEASURES}
    chosen_tokens = np.asarray(column(picked_scores, "chosen_tokens"), dtype=np.float64)
    rejected_tokens = np.asarray(column(picked_scores, "rejected_tokens"), dtype=np.float64)
    result = {
        "settings": {"model": loaded.name, "n": n, "steps": options.steps, "learning_rate": options.learning_rate,
                     "beta": options.beta, "max_length": options.max_length, "pool": size, "seed": options.seed,
                     "dtype": str(loaded.dtype),
                     "device": str(loaded.device), "optimizer": "RMSprop", "threads": threads.count,
                     "threads_reason": threads.reason, "seconds": time.time() - started},
        "rows": [{"row": int(pool_rows[row]), "displacement": float(d), "chosen_change": float(c[0]),
                  "rejected_change": float(c[1]), **{name: float(measures[name][i]) for name in MEASURES},
                  "chosen_tokens": int(chosen_tokens[i]), "rejected_tokens": int(rejected_tokens[i])}
                 for i, (row, d, c) in enumerate(zip(picked, displacement, changes))],
        "correlations": correlation_table(measures, displacement, chosen_tokens, rejected_tokens, options.resamples,
                                          options.seed),
        "summary": {"mean_chosen_change": float(changes[:, 0].mean()), "mean_rejected_change": float(changes[:, 1].mean()),
                    "fraction_displaced": float((displacement > 0).mean())},
    }
    result["verdict"] = verdict(result)
    return result


def probe_sequences(dataset, tokenizer, max_length: int | None) -> list[SequencePair]:
    """The token sequences of a dataset's pairs (``prompt``/``chosen``/``rejected`` columns) as ``ches.score``
    runs them, for :func:`run_probes`; a row that cannot be scored raises :class:`ChesError`."""
    plans = [to_sequences(pair, max_length) for pair in tokenize_pairs(to_pairs(pair_columns(dataset)), tokenizer)]
    skipped = [(row, plan.reason) for row, plan in enumerate(plans) if isinstance(plan, Skip)]
    if skipped:
        raise ChesError(f"row {skipped[0][0]} cannot be probed: {skipped[0][1]}")
    return plans


def run_probes(probe: DPOProbe, sequences: list[SequencePair], progress: bool = False) -> np.ndarray:
    """``[N, 2]`` changes of log pi(y+|x) and log pi(y-|x), one single-pair DPO probe per pair."""
    iterator = sequences
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(sequences, desc="DPO probes", unit="pair")
    changes = []
    for pair in iterator:
        result = probe.run([pair])
        changes.append([result.chosen_change.item(), result.rejected_change.item()])
    return np.asarray(changes)


DISPLAYED = {"edit_distance": "edit similarity (-edit_distance)"}  # the sign-adjusted measures, as shown


def format_table(result: dict, measure: str = DEFAULT_MEASURE) -> str:
    """The correlation table as aligned text, with what it means and a one-line verdict on ``measure``
    (the filter's default): what ``ches validate`` prints.

    >>> table = {"ln_ches": {"spearman_total": 0.4, "spearman_total_ci95": (0.2, 0.6), "spearman_per_token": 0.3,
    ...          "spearman_per_token_ci95": (0.1, 0.5), "spearman_total_given_lengths": 0.35}}
    >>> text = format_table({"correlations": table, "summary": {"mean_chosen_change": -0.01,
    ...                      "mean_rejected_change": -0.2, "fraction_displaced": 0.6}})
    >>> text.splitlines()[-1]
    'verdict: ln_ches predicts displacement on this model: Spearman +0.400, 95% CI [+0.20, +0.60] (above 0).'
    """
    lines = ["Spearman correlation of each measure (sign-adjusted: higher = more similar pair) with the displacement",
             "it caused (drop of log pi(y+|x) after the probe's DPO steps; positive = the preferred response lost",
             "probability). Positive = the measure predicts displacement, which is what CHES claims; per-token divides",
             "the displacement by |y+|; 'given lengths' controls for both completion lengths.", "",
             f"{'measure':32s} {'Spearman (95% CI)':>24s} {'per-token (95% CI)':>24s} {'given lengths':>14s}"]
    constant = []
    for name, entry in result["correlations"].items():
        shown = DISPLAYED.get(name, name)
        if not np.isfinite(entry["spearman_total"]):
            constant.append(shown)
        lines.append(f"{shown:32s} {_interval(entry, 'spearman_total'):>24s} {_interval(entry, 'spearman_per_token'):>24s} "
                     f"{_number(entry['spearman_total_given_lengths'], '+14.3f'):>14s}")
    if constant:
        lines.append(f"n/a: {', '.join(constant)} had the same value on every probed pair, so it cannot be correlated.")
    summary = result["summary"]
    lines.append(f"mean change of log pi(y+|x): {summary['mean_chosen_change']:+.4f} nats; of log pi(y-|x): "
                 f"{summary['mean_rejected_change']:+.4f}; pairs displaced (y+ lost probability): "
                 f"{summary['fraction_displaced']:.0%}")
    lines.append(verdict(result, measure))
    return "\n".join(lines)


MIN_PAIRS_FOR_VERDICT = 10  # fewer probed pairs give no usable interval for a rank correlation


def verdict(result: dict, measure: str = DEFAULT_MEASURE) -> str:
    """One line: whether ``measure`` predicts displacement on this model, with its interval; no verdict
    from fewer than :data:`MIN_PAIRS_FOR_VERDICT` probed pairs or from an interval of zero width."""
    entry = result["correlations"].get(measure)
    if entry is None or not np.isfinite(entry["spearman_total"]):
        return f"verdict: no verdict on {measure}: it was not measured, or constant over the probed pairs."
    value, (low, high) = entry["spearman_total"], entry["spearman_total_ci95"]
    stated = f"Spearman {value:+.3f}, 95% CI [{low:+.2f}, {high:+.2f}]"
    probed = len(result["rows"]) if "rows" in result else None
    if (probed is not None and probed < MIN_PAIRS_FOR_VERDICT) or not (np.isfinite(low) and np.isfinite(high)) \
            or low == high:
        count = f"{probed} probed pairs" if probed is not None else "the probed pairs"
        return (f"verdict: no verdict on {measure}: {count} ({stated}) are too few for a confidence interval; probe "
                f"at least {MIN_PAIRS_FOR_VERDICT} (--n), better 64 or more.")
    if low > 0:
        return f"verdict: {measure} predicts displacement on this model: {stated} (above 0)."
    if high < 0:
        return (f"verdict: {measure} ranks displacement the wrong way on this model: {stated} (below 0); do not "
                "filter by it here.")
    none_displaced = " No probed pair was displaced." if result["summary"]["fraction_displaced"] == 0 else ""
    return (f"verdict: no evidence that {measure} predicts displacement on this model: {stated} includes 0."
            f"{none_displaced} Filtering by it is a guess here; try more pairs (--n) or steps.")


def _interval(entry: dict, key: str) -> str:
    value, (low, high) = entry[key], entry[f"{key}_ci95"]
    if not np.isfinite(value):
        return "n/a"
    return f"{value:+.3f} [{low:+.2f}, {high:+.2f}]"


def _number(value: float, form: str) -> str:
    return format(value, form) if np.isfinite(value) else "n/a"


validate.__signature__ = signature_with_options(validate, options=ValidateOptions)
