"""``ches.audit``: after DPO, did the trained model lower the preferred responses' likelihood, and did CHES
see it coming, beyond what the completions' lengths say?

For each pair scored with ``logps=True`` (its ``chosen_logps``/``rejected_logps``: the reference model's
log-probabilities), one pass of the trained model over the same token sequences gives
``chosen_logps_after``/``rejected_logps_after``, and

- ``chosen_change = log pi_after(y+ | x) - log pi_ref(y+ | x)`` (``rejected_change`` alike),
- ``displaced = chosen_change < -tol``: the preferred response lost probability (likelihood displacement)
  by more than the two runs' rounding can account for, with
  ``tol = k * eps * max(|log pi_ref(y+ | x)|, |y+|)`` (:func:`displacement_tolerance`): ``eps`` is that of
  the coarser of the reference's and the trained model's dtypes, ``k`` is :data:`ROUNDING_MULTIPLE` of it.
  A re-run of the reference model itself (in another layout, another batch size) is never displaced.

Over the data (:func:`audit_summary`): the fraction displaced and the mean ``chosen_change`` (the paper's
Table 16 measure, with a bootstrap 95 % interval); for ``ln_ches``, ``ches`` and ``edit_distance``
(sign-adjusted: higher = more similar pair, :func:`ches.scores.select.similarity`) the Spearman correlation with
``chosen_change`` (negative = the measure predicts displacement, as the paper claims), its bootstrap
interval, the same correlation with both completion lengths held fixed, and the displaced fraction per
decile of the measure; and a length-only baseline, the length difference ``|y+| - |y-|`` in its place.

With ``validation=`` (a :func:`ches.validate` result or its JSON file), the summary also says whether the
measure validate recommended filtering by predicted displacement on this run (:func:`validation_check`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import datasets
import numpy as np

from ..data.columns import (
    AUDIT_COLUMNS,
    AUDIT_TYPES,  # noqa: F401  (ches.evaluate.auditing.AUDIT_TYPES, as before)
    DEFAULT_MEASURE,
    DIGEST_COLUMN,
    LOGPS_COLUMNS,
    check_output_columns,
    column_feature,
    reference_of,
)
from ..data.inputs import TRL_FORMAT, Data, Reading, column, load_data
from ..errors import ChesError
from ..options import AUDIT_KEYWORDS, AuditOptions, audit_options, signature_with_options
from ..scores.select import similarity
from ..scores.stats import bootstrap_interval, partial_spearman, spearman
from .results import read_validation

# the columns ``ches.audit`` adds (AUDIT_TYPES, AUDIT_COLUMNS) are defined in ches.data.columns, with every other column
# ches writes (so that a CSV file reads them back typed), and imported from there

#: the measures whose correlation with the change is reported (and the length-only baseline)
AUDIT_MEASURES = ("ln_ches", "ches", "edit_distance")
LENGTH_BASELINE = "length difference"
#: machine epsilon of each dtype a run may compute in (``torch.finfo(dtype).eps``)
EPS = {"float64": 2.0**-52, "float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}
#: ``k`` of :func:`displacement_tolerance` per dtype. Measured (CPU; 80 hh rows standard and 40
#: conversational; tiny llama, qwen2, gpt2 and the bundled model): auditing the scored rows with the same
#: model in the layouts padded, packed and prefix_shared and at 512 and 8,192 batch tokens moved the preferred
#: log-prob by at most 3.7 eps x max(|log pi_ref|, |y+|) in float32 and 0.51 in bfloat16 (log-softmax is float32
#: whatever the dtype, so 16-bit runs round the hidden states only); k is four times that or more.
ROUNDING_MULTIPLE = {"float64": 16, "float32": 16, "float16": 2, "bfloat16": 2}


@dataclass
class AuditResult:
    """What :func:`audit` returns.

    Attributes:
        dataset: the scored rows with :data:`AUDIT_COLUMNS` added; they keep the record of the reference their
            ``chosen_logps``/``rejected_logps`` came from (the model DPO started from).
        summary: :func:`audit_summary` of them.
        info: the trained model's scoring pass (:class:`~ches.run.runs.RunInfo`).
        next_round: the same rows as the trained model scores them: its CHES scores, its log-probs as
            ``chosen_logps``/``rejected_logps`` and its record as their reference, the token digests unchanged
            (the same tokens) -- what ``ches.score(..., logps=True)`` with the trained model returns, ready for a
            second DPO round from it (``ches audit --next-round`` writes it).
    """

    dataset: datasets.Dataset
    summary: dict
    info: Any = field(default=None, repr=False)
    next_round: datasets.Dataset | None = field(default=None, repr=False)


def audit(scored: Data, model, tokenizer=None, *, options: AuditOptions | None = None, **kwargs: Any) -> AuditResult:
    """Measure, on the pairs a model was trained on with DPO, how the trained model's log-probabilities of
    both completions moved from the reference's (see the module docstring).

    Args:
        scored: rows from ``ches.score(..., logps=True)`` (or a file ``ches score --logps`` or ``ches filter``
            wrote from it), their ``chosen_logps``/``rejected_logps`` computed with the model DPO started from.
        model, tokenizer: the trained model (folder, Hub id or loaded); its tokenizer must give the rows the
            tokens they were scored on (checked row by row against ``ches_token_digest``, before the model runs).
        options, **kwargs: an :class:`~ches.options.AuditOptions` and/or its fields as keywords: ``split`` (the
            split of a ``DatasetDict`` to audit), ``resamples`` and ``seed`` (the bootstrap of the intervals),
            ``validation`` (a :func:`ches.validate` result or the path of its JSON file, checked before the data
            is read: the summary's ``"validation"`` entry, :func:`validation_check`, says whether the measure it
            recommended predicted displacement on this run); and
            how the trained model runs (``dtype``, ``device``, ``batch_tokens``, ``layout``, ``num_threads``,
            ``cache_dir``, ``progress``, ``model_kwargs``...: :data:`~ches.options.AUDIT_SCORE_OPTIONS`), as for
            :func:`ches.score`; ``max_length`` and ``columns`` are the scoring run's, from its record.

    Raises:
        ChesError: rows without log-probs or without the record of their scoring run, rows whose tokens are not
            those they were scored on (edited text, another tokenizer, a record of another run), audit columns
            of the user's own; all before the trained model runs.
    """
    from ..api import score_run
    from ..model.models import load_tokenizer

    reported, scoring = audit_options(options, **kwargs)  # checked, before the data is read
    validation = read_validation(reported.validation)
    dataset = load_data(scored, reported.split)
    if isinstance(dataset, datasets.DatasetDict):
        raise ChesError(f"the data has splits {sorted(dataset)}; pass split= (--split): an audit is of one training set.")
    missing = [name for name in LOGPS_COLUMNS if name not in dataset.column_names]
    reference = reference_of(dataset)
    if missing or reference is None:
        raise ChesError("an audit compares the trained model with the reference log-probs of the scoring run, and "
                        f"these rows have {'no ' + ', '.join(missing) if missing else 'no record of that run'}: score "
                        "them with ches.score(..., logps=True) (ches score --logps), or build them with "
                        "ches.pairs(..., logps=True) (ches pairs --logps), and the model DPO started from, before "
                        "training; load a file ches wrote with ches.data.inputs.load_data (its sidecar is the record).")
    if check_output_columns(dataset.column_names, AUDIT_COLUMNS, [], "the data"):
        dataset = dataset.remove_columns(list(AUDIT_COLUMNS))  # an earlier audit's, replaced
    trained_tokenizer = load_tokenizer(tokenizer, model if isinstance(model, str) else getattr(model, "name_or_path", ""))
    check_same_tokens(dataset, trained_tokenizer, reference)
    after, info = score_run(dataset, model, trained_tokenizer, options=replace(
        scoring, logps=True, max_length=reference.get("max_length"), columns=reference.get("columns"),
        format=reference.get("format") or TRL_FORMAT))
    before = {name: np.asarray(column(dataset, name), dtype=np.float64) for name in LOGPS_COLUMNS}
    moved = {name: np.asarray(column(after, name), dtype=np.float64) for name in LOGPS_COLUMNS}
    chosen_change = moved["chosen_logps"] - before["chosen_logps"]
    values = {"chosen_logps_after": moved["chosen_logps"], "rejected_logps_after": moved["rejected_logps"],
              "chosen_change": chosen_change, "rejected_change": moved["rejected_logps"] - before["rejected_logps"]}
    for name, array in values.items():
        dataset = dataset.add_column(name, array.tolist(), feature=column_feature(name))
    tolerance = displacement_tolerance(before["chosen_logps"], np.asarray(column(after, "chosen_tokens"), dtype=np.float64),
                                       [reference.get("dtype"), info.dtype])
    displaced = [None if math.isnan(change) else bool(change < -limit) for change, limit in zip(chosen_change, tolerance)]
    dataset = dataset.add_column("displaced", displaced, feature=column_feature("displaced"))
    counted = dataset  # rows filtered with --no-scores keep no token counts: the trained run's are the same tokens'
    for name in [name for name in ("chosen_tokens", "rejected_tokens") if name not in dataset.column_names]:
        counted = counted.add_column(name, column(after, name))
    summary = audit_summary(counted, resamples=reported.resamples, seed=reported.seed)
    if validation is not None:
        summary["validation"] = validation_check(summary, validation, reference.get("model"))
    return AuditResult(dataset, summary, info, next_round=after)



audit.__signature__ = signature_with_options(audit, AUDIT_KEYWORDS)

def reason_gist(reason: str, limit: int = 200) -> str:
    """The gist of a recommendation's reason, for one line: its text up to the first ``": "`` or sentence end
    outside parentheses, cut to ``limit`` characters.

    >>> reason_gist("every interval includes 0 (subsets protocol): ln_ches gap +0.01 [-0.1, +0.1]; measure more.")
    'every interval includes 0 (subsets protocol)'
    >>> reason_gist("DPO did not lower the likelihood here (0 of 64 displaced). There is nothing to prevent.")
    'DPO did not lower the likelihood here (0 of 64 displaced)'
    """
    depth = 0
    for position, letter in enumerate(reason):
        depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(letter, 0)
        if depth == 0 and letter in ":.;" and reason[position + 1:position + 2] in (" ", ""):
            reason = reason[:position]
            break
    reason = reason.strip()
    return reason if len(reason) <= limit else reason[:limit - 1].rstrip() + "…"


def validation_check(summary: dict, validation: dict, model: str | None = None) -> dict:
    """Whether the measure ``validation`` (a checked :func:`ches.validate` result) recommended predicted
    displacement in this audit (``summary``: :func:`audit_summary`): its Spearman correlation with
    ``chosen_change`` negative with the 95 % interval below 0. For a recommendation not to filter (or not
    enough evidence), how the default measure (``ln_ches``) did, for information. ``model``: the model the
    audited rows' reference log-probs were scored with (their record), compared with the validation's.

    Returns ``{"action", "measure", "recommended", "predicted", "spearman", "ci95", "statement",
    "validation_model", "audited_model", "model_note"}``: ``measure`` is the measure checked (``recommended``:
    whether validate recommended it), ``predicted`` True (interval below 0), False (it includes 0, or lies above:
    the wrong way) or None (no such column, or no correlation); ``statement`` says it in one line,
    ``model_note`` (or None) that the validation was of another model than the one the rows were scored with.

    >>> summary = {"measures": {"ches": {"spearman": -0.3, "spearman_ci95": [-0.38, -0.22]}}}
    >>> advice = {"action": "filter", "measure": "ches", "reason": "..."}
    >>> check = validation_check(summary, {"settings": {"model": "sft"}, "recommendation": advice}, "sft")
    >>> check["predicted"], check["statement"]
    (True, 'validate recommended filtering by ches; on this run ches predicted displacement: Spearman -0.30 [-0.38, -0.22].')
    """
    advice = validation["recommendation"]
    action = advice["action"]
    measure = advice["measure"] if action == "filter" else DEFAULT_MEASURE
    entry = summary["measures"].get(measure)
    spearman_value = None if entry is None else float(entry["spearman"])
    interval = None if entry is None else [float(value) for value in entry["spearman_ci95"]]
    if entry is None:
        predicted, how = None, f"these rows have no {measure} column, so the audit cannot say whether it predicted displacement"
    elif not math.isfinite(spearman_value) or not all(map(math.isfinite, interval)):
        spearman_value = interval = None
        predicted, how = None, f"{measure} has no correlation with the change here (one side is constant)"
    else:
        shown = f"Spearman {spearman_value:+.2f} [{interval[0]:+.2f}, {interval[1]:+.2f}]"
        if interval[1] < 0:
            predicted, how = True, f"on this run {measure} predicted displacement: {shown}"
        elif interval[0] > 0:
            predicted, how = False, (f"on this run {measure} ranked displacement the wrong way: {shown} (the pairs it "
                                     "scores higher lost less)")
        else:
            predicted, how = False, f"on this run {measure} did not predict displacement: {shown} includes 0"
    if action == "filter":
        statement = f"validate recommended filtering by {measure}; {how}."
    else:
        said = "not filtering" if action == "do not filter" else "nothing (not enough evidence)"
        statement = f"validate recommended {said}: {reason_gist(advice['reason'])}; for information, {how}."
    validated = validation.get("settings", {}).get("model")
    differ = validated is not None and model is not None and str(validated) != str(model)
    return {"action": action, "measure": measure, "recommended": action == "filter", "predicted": predicted,
            "spearman": spearman_value, "ci95": interval, "statement": statement, "validation_model": validated,
            "audited_model": model,
            "model_note": f"validation was of model {validated}, these rows were scored with {model}." if differ else None}


def check_same_tokens(dataset: datasets.Dataset, tokenizer, reference: dict) -> None:
    """Refuse, before any model runs, rows whose tokens under ``tokenizer`` (with the scoring run's
    ``max_length`` and ``columns``, from its ``reference`` record) are not those their log-probs were computed
    on (their ``ches_token_digest``): text edited after scoring, another tokenizer or chat template, or a record
    that belongs to another run. Data scored by an older ches (no digests) is checked by the tokenizer's
    fingerprint instead."""
    from ..data.rows import read_rows
    from ..model.models import tokenizer_fingerprint
    from ..run.chunks import row_digests

    if DIGEST_COLUMN not in dataset.column_names:
        if tokenizer_fingerprint(tokenizer) != reference.get("tokenizer_fingerprint"):
            raise ChesError(f"the trained model's tokenizer is not the one the rows were scored with "
                            f"({reference.get('tokenizer')!r}); pass that one as tokenizer= (--tokenizer), so that the "
                            "audit runs the same token sequences.")
        return
    stored = column(dataset, DIGEST_COLUMN)
    reading = Reading(reference.get("columns"), reference.get("format") or TRL_FORMAT)  # the rows, read as scored
    now = row_digests(read_rows(dataset, None, reading), tokenizer, reference.get("max_length"))
    differ = [row for row, (then, found) in enumerate(zip(stored, now)) if then is not None and then != found]
    if differ:
        shown = ", ".join(map(str, differ[:8])) + (", ..." if len(differ) > 8 else "")
        raise ChesError(f"in {len(differ)} of {len(stored)} rows (rows {shown}) the tokens are not those the reference "
                        "log-probs were computed on (text edited after scoring, another tokenizer than the scoring "
                        f"run's {reference.get('tokenizer')!r}, or a .meta.json sidecar of another run, max_length="
                        f"{reference.get('max_length')}); audit the rows exactly as scored, with that tokenizer.")


def coarser_dtype(dtypes) -> str:
    """Of the dtypes two runs computed in (names as a run records them), the one with the largest
    rounding; a dtype ches does not know counts as the coarsest it knows (bfloat16).

    >>> coarser_dtype(["float32", "bfloat16"]), coarser_dtype(["float32", None])
    ('bfloat16', 'bfloat16')
    """
    names = [str(dtype).removeprefix("torch.") if dtype is not None else None for dtype in dtypes]
    return max((name if name in EPS else "bfloat16" for name in names), key=EPS.__getitem__)


def displacement_tolerance(reference_logps: np.ndarray, chosen_tokens: np.ndarray, dtypes) -> np.ndarray:
    """``[N]`` how far ``chosen_change`` may fall below 0 by rounding alone: ``k * eps * max(|log pi_ref(y+|x)|,
    |y+|)`` with ``eps`` and ``k`` (:data:`EPS`, :data:`ROUNDING_MULTIPLE`) of :func:`coarser_dtype` of
    ``dtypes`` (the reference run's and the trained model's). A log-prob is a sum of ``|y+|`` per-token terms,
    each rounded relative to its size, hence the scale. A change below ``-tol`` is displacement.

    >>> displacement_tolerance(np.array([-100.0, -2.0]), np.array([40, 10]), ["float32", "float32"])
    array([1.90734863e-04, 1.90734863e-05])
    >>> displacement_tolerance(np.array([-100.0]), np.array([40]), ["float32", "bfloat16"])
    array([1.5625])
    """
    dtype = coarser_dtype(dtypes)
    scale = np.maximum(np.abs(np.asarray(reference_logps, dtype=np.float64)), np.asarray(chosen_tokens, dtype=np.float64))
    return ROUNDING_MULTIPLE[dtype] * EPS[dtype] * scale


def audit_summary(dataset: datasets.Dataset, *, resamples: int = 1000, seed: int = 0, tolerance=0.0) -> dict:
    """The data-level audit of rows with :data:`AUDIT_COLUMNS` (module docstring); rows whose change is not
    finite (skipped when scored) are left out and counted. A row is displaced as its ``displaced`` column
    says (what :func:`audit` decided, with :func:`displacement_tolerance`); rows without that column (the
    changes of :mod:`ches.evaluate.validation`'s runs) when ``chosen_change < -tolerance`` (a number, or ``[N]``).

    >>> rows = [{"ln_ches": float(i), "ches": float(i), "edit_distance": 0.5, "chosen_tokens": 3, "rejected_tokens": 2,
    ...          "chosen_change": -float(i), "rejected_change": -1.0} for i in range(20)]
    >>> summary = audit_summary(datasets.Dataset.from_list(rows), resamples=50)
    >>> summary["rows_audited"], summary["fraction_displaced"], summary["measures"]["ln_ches"]["spearman"]
    (20, 0.95, -1.0)
    """
    change = np.asarray(column(dataset, "chosen_change"), dtype=np.float64)
    rows = np.flatnonzero(np.isfinite(change))
    if len(rows) < 3:
        raise ChesError(f"only {len(rows)} rows have a finite change of the preferred log-probability; an audit needs "
                        "at least 3.")
    if "displaced" in dataset.column_names:
        displaced = np.array([bool(flag) for flag in column(dataset, "displaced")], dtype=bool)[rows]
    else:
        displaced = (change < -np.broadcast_to(np.asarray(tolerance, dtype=np.float64), change.shape))[rows]
    change = change[rows]
    chosen_tokens = np.asarray(column(dataset, "chosen_tokens"), dtype=np.float64)[rows]
    rejected_tokens = np.asarray(column(dataset, "rejected_tokens"), dtype=np.float64)[rows]
    rejected_change = np.asarray(column(dataset, "rejected_change"), dtype=np.float64)[rows]
    predictors = {name: similarity(np.asarray(column(dataset, name), dtype=np.float64)[rows], name)
                  for name in AUDIT_MEASURES if name in dataset.column_names}
    predictors[LENGTH_BASELINE] = chosen_tokens - rejected_tokens
    lengths = np.column_stack([chosen_tokens, rejected_tokens])
    measures = {}
    for name, values in predictors.items():
        finite = np.isfinite(values)
        entry = {"spearman": spearman(values[finite], change[finite]),
                 "spearman_ci95": bootstrap_interval(spearman, values[finite], change[finite], resamples=resamples,
                                                     seed=seed),
                 "displaced_by_decile": displaced_by_decile(values[finite], displaced[finite])}
        if name != LENGTH_BASELINE:
            entry["spearman_given_lengths"] = partial_spearman(values[finite], change[finite], lengths[finite])
        measures[name] = entry
    return {
        "rows": len(dataset), "rows_audited": len(rows), "rows_left_out": len(dataset) - len(rows),
        "fraction_displaced": float(displaced.mean()),
        "mean_chosen_change": float(change.mean()),
        "mean_chosen_change_ci95": bootstrap_interval(np.mean, change, resamples=resamples, seed=seed),
        "mean_rejected_change": float(rejected_change.mean()),
        "measures": measures,
    }


def displaced_by_decile(values: np.ndarray, displaced: np.ndarray, bins: int = 10) -> list[float]:
    """The displaced fraction in each tenth of the rows, from the least similar (lowest value) to the most
    (ties kept in their order); fewer bins when there are fewer rows.

    >>> displaced_by_decile(np.arange(10.0), np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1], bool), bins=2)
    [0.0, 1.0]
    """
    order = np.argsort(values, kind="stable")
    parts = np.array_split(order, min(bins, len(order)))
    return [float(displaced[part].mean()) for part in parts]


def format_audit(summary: dict) -> str:
    """The audit as aligned text, with what it means: what ``ches audit`` prints.

    >>> rows = [{"ln_ches": float(i), "ches": 0.0, "edit_distance": 0.5, "chosen_tokens": 3, "rejected_tokens": 2,
    ...          "chosen_change": -float(i), "rejected_change": -1.0} for i in range(20)]
    >>> print(format_audit(audit_summary(datasets.Dataset.from_list(rows), resamples=50)).splitlines()[0])
    20 pairs audited: the preferred response lost probability in 95% of them; mean change of log pi(y+|x) -9.5000 nats ...
    """
    low, high = summary["mean_chosen_change_ci95"]
    lines = [f"{summary['rows_audited']} pairs audited: the preferred response lost probability in "
             f"{summary['fraction_displaced']:.0%} of them; mean change of log pi(y+|x) {summary['mean_chosen_change']:+.4f} "
             f"nats (95% CI [{low:+.4f}, {high:+.4f}]), of log pi(y-|x) {summary['mean_rejected_change']:+.4f}.",
             "Spearman correlation of each measure (sign-adjusted: higher = more similar pair) with the change of "
             "log pi(y+|x); negative = the measure predicts displacement; 'given lengths' holds |y+| and |y-| fixed; "
             "the last row is a length-only baseline (|y+| - |y-|).", "",
             f"{'measure':22s} {'Spearman (95% CI)':>24s} {'given lengths':>14s}   displaced by decile (least -> most similar)"]
    for name, entry in summary["measures"].items():
        value, (lo, hi) = entry["spearman"], entry["spearman_ci95"]
        shown = "n/a" if not np.isfinite(value) else f"{value:+.3f} [{lo:+.2f}, {hi:+.2f}]"
        given = entry.get("spearman_given_lengths")
        given = "" if given is None else ("n/a" if not np.isfinite(given) else f"{given:+.3f}")
        deciles = " ".join(f"{fraction:.0%}" for fraction in entry["displaced_by_decile"])
        lines.append(f"{name:22s} {shown:>24s} {given:>14s}   {deciles}")
    if summary["rows_left_out"]:
        lines.append(f"{summary['rows_left_out']} rows were left out: they had no log-probabilities (skipped when scored).")
    check = summary.get("validation")
    if check is not None:
        lines += ["", check["statement"]] + ([f"Note: {check['model_note']}"] if check["model_note"] else [])
    return "\n".join(lines)
