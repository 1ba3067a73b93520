"""``ches.filter`` (and ``ches.filter_run``), ``ches.rank`` and ``ches.summary``: scored datasets in, chosen rows
or statistics out.

Each scores the data first when it has no scores yet and a model is given (with the options of
:func:`ches.score`), and works split by split on a ``DatasetDict`` (returning one)."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass

import datasets
import numpy as np

from .api import score
from .data.columns import (
    DEFAULT_MEASURE,
    DIGEST_COLUMN,
    LOGPS_COLUMNS,
    RANK_COLUMNS,
    SCORE_COLUMNS,
    check_measure,
    check_output_columns,
    check_score_columns,
)
from .data.inputs import Data, column, load_data
from .data.integrity import drop_flagged
from .errors import ChesError
from .options import (
    FILTER_KEYWORDS,
    FILTER_RULES,
    FilterOptions,
    ScoreOptions,
    filter_options,
    scoring_options,
    signature_with_options,
)
from .scores import select
from .scores.stats import summarize

logger = logging.getLogger("ches")
assert tuple(select.FILTER_RULE_CLASSES) == FILTER_RULES


@dataclass(frozen=True)
class FilterCut:
    """What one ``ches.filter`` cut did to one split: where it fell, and the rows it kept and dropped.

    ``threshold`` (rules ``quantile``, ``keep``, ``max_score``) is the largest kept score, in the units
    ``max_score`` takes (``-edit_distance`` for ``edit_distance``), so ``max_score=threshold`` applies the
    same cut to new data. On the same data it keeps the same rows, plus any row whose score equals the
    threshold that ``quantile``/``keep`` left out (those rules break ties by original position; a
    ``max_score`` keeps every tied row). The ``around`` rule keeps a band, not everything below a value:
    its ``threshold`` is ``None`` and ``window_scores`` holds the lowest and highest kept score (``None``
    for the other rules). Both are ``None`` when no row is kept. ``str(cut)`` is the line ``ches.filter``
    logs (and ``ches filter`` prints), with the split's name when the data has splits.

    >>> cut = FilterCut("edit_distance", "quantile", -0.25, None, kept=45, scored=50, unscored_dropped=2, split="train")
    >>> str(cut)
    'train: kept 45 of 50 scored rows (-edit_distance <= -0.25; 2 unscored rows dropped)'
    >>> cut.as_dict()["threshold"], cut.as_dict()["window_scores"]
    (-0.25, None)
    """

    measure: str
    rule: str
    threshold: float | None
    window_scores: tuple[float, float] | None
    kept: int
    scored: int
    unscored_dropped: int
    split: str | None = None

    @classmethod
    def of(cls, similarity: np.ndarray, picked: np.ndarray, measure: str, rule: select.FilterRule, *,
           unscored_dropped: int, split: str | None) -> FilterCut:
        """The cut ``rule`` made, keeping rows ``picked`` of the scored rows' ``similarity`` (sign-adjusted
        scores of ``measure``)."""
        threshold, window_scores = rule.bounds(similarity[picked])
        return cls(measure, rule.name, threshold=threshold, window_scores=window_scores, kept=len(picked),
                   scored=len(similarity), unscored_dropped=unscored_dropped, split=split)

    def as_dict(self) -> dict:
        """What the ``ches filter`` sidecar records of the cut (``window_scores`` as a list; no split name)."""
        record = dataclasses.asdict(self)
        del record["split"]
        record["window_scores"] = None if self.window_scores is None else list(self.window_scores)
        return record

    def __str__(self) -> str:
        name = select.similarity_name(self.measure)
        if self.threshold is not None:
            where = f"{name} <= {self.threshold!r}"
        elif self.window_scores is not None:
            where = f"{self.window_scores[0]!r} <= {name} <= {self.window_scores[1]!r}"
        else:
            where = "no row kept"
        dropped = f"{self.unscored_dropped} unscored row{'' if self.unscored_dropped == 1 else 's'} dropped"
        prefix = "" if self.split is None else f"{self.split}: "
        return f"{prefix}kept {self.kept} of {self.scored} scored rows ({where}; {dropped})"


def filter(data: Data, quantile: float | None = None, *, model=None, tokenizer=None,  # noqa: A001 - the public name
           options: FilterOptions | None = None, **kwargs) -> datasets.Dataset | datasets.DatasetDict:
    """Keep the pairs least likely to cause likelihood displacement; original order and columns.

    Rules (``max_score``, ``keep`` and ``around`` replace the default ``quantile`` rule; give at most one):

    - ``quantile``: keep exactly ``round(quantile * n)`` rows with the lowest ``measure`` (n = scored
      rows); ``0.95`` (the default) drops the most displacement-prone 5 %, ``0.05`` is the paper's
      Section 6 setting.
    - ``max_score``: keep rows whose ``measure`` is at most this (for ``edit_distance``: whose
      ``-edit_distance`` is at most this, i.e. ``max_score=-0.5`` keeps pairs at distance >= 0.5).
    - ``keep``: keep this many rows with the lowest ``measure``.
    - ``around`` + ``window``: the paper's Section 5 selection, ``window`` (default 512) rows of the
      sorted scores centred on the ``around`` quantile (0 = least similar, 1 = most similar).

    ``drop_flags`` first removes the rows carrying any of these integrity flags (``ches_flags``, see
    :mod:`ches.data.integrity`), logging how many each flag dropped; the rule then applies to the rows left
    (the quantile is a fraction of the scored rows that were not dropped).

    Ties are broken by original position. Rows that could not be scored (``ches_skip``, or a NaN
    score) are dropped and counted in the log. Each split's cut is logged at INFO on the ``"ches"``
    logger, with the score at which it fell (e.g. ``train: kept 45 of 50 scored rows (ln_ches <= 1.25;
    2 unscored rows dropped)``): pass that value as ``max_score`` to cut new data the same way
    (:class:`FilterCut`; :func:`filter_run` returns it). Options that would do nothing (a second rule,
    ``window`` without ``around``, scoring options without ``model``, a misspelled option) are refused.
    With ``model``, ``data`` is scored with it even if it has scores (they are replaced).

    Args:
        data: scored rows (from :func:`ches.score`, or a file it wrote), or raw rows plus ``model``; a
            ``DatasetDict`` is filtered split by split (each split by its own quantile).
        quantile: fraction of scored rows to keep, in (0, 1] (default 0.95 when no other rule is given).
        measure: ``"ln_ches"`` (default, what the paper filters with), ``"ches"``, ``"last_hidden_ip"``,
            or ``"edit_distance"`` (ranked by ``-edit_distance`` so that higher = more similar for all).
        model, tokenizer: used to score ``data`` first when it has no scores, with the options of
            :func:`ches.score` among ``kwargs`` (refused without ``model``).
        keep_scores: ``False`` drops the score columns (``ches_flags`` too), leaving exactly the input schema
            (ready for TRL); rows scored with ``logps=True`` keep their log-probs and ``ches_token_digest``,
            the reference :class:`ches.trl.DPOTrainer` trains with.
        drop_flags: integrity flag names (e.g. ``["identical_after_truncation", "empty_chosen"]``, or one
            comma-separated string); rows with any of them are dropped before the rule.
        options, **kwargs: the rule, ``measure``, ``keep_scores`` and ``drop_flags`` as one
            :class:`~ches.options.FilterOptions` (instead of the keywords above), and/or the keywords: its fields and
            the scoring options (:func:`ches.options.filter_options`).

    Raises:
        ChesError: (a ``ValueError``) bad ``quantile``/``measure``/rule, no scores and no model, or no rows; an
            unknown flag name in ``drop_flags``, or ``drop_flags`` on data scored before ches wrote ``ches_flags``.

    >>> rows = [{"prompt": "p", "chosen": c, "rejected": "r", "ln_ches": s, "ches_skip": None}
    ...         for c, s in [("a", 3.0), ("b", 1.0), ("c", 2.0), ("d", 0.0)]]
    >>> filter(rows, 0.5, keep_scores=False).to_dict()["chosen"]
    ['b', 'd']
    >>> flagged = [{**row, "ches_flags": ["empty_chosen"] if row["chosen"] == "d" else []} for row in rows]
    >>> filter(flagged, 0.5, drop_flags=["empty_chosen"], keep_scores=False).to_dict()["chosen"]
    ['b', 'c']
    """
    return filter_run(data, quantile, model=model, tokenizer=tokenizer, options=options, **kwargs)[0]


def filter_run(data: Data, quantile: float | None = None, *, model=None, tokenizer=None,
               options: FilterOptions | None = None, **kwargs,
               ) -> tuple[datasets.Dataset | datasets.DatasetDict, FilterCut | dict[str, FilterCut]]:
    """:func:`filter`, also returning each cut: a :class:`FilterCut` (for a ``DatasetDict``, a dict of
    them by split name), with the ``threshold`` to pass as ``max_score`` to cut new data the same way.

    ``kwargs`` are :func:`filter`'s keywords (the fields of :class:`~ches.options.FilterOptions`, or
    ``options=``) and the scoring options of :func:`ches.score`.

    >>> rows = [{"chosen": c, "rejected": "r", "ln_ches": s, "ches_skip": None} for c, s in [("a", 3.0), ("b", 1.0)]]
    >>> kept, cut = filter_run(rows, 0.5)
    >>> kept["chosen"][:], cut.threshold, filter_run(rows, max_score=cut.threshold)[0]["chosen"][:]
    (['b'], 1.0, ['b'])
    """
    options, scoring = filter_options(options, model=model, tokenizer=tokenizer,
                                      **({} if quantile is None else {"quantile": quantile}), **kwargs)
    scored = _scored(data, options.measure, model, tokenizer, scoring)
    if not isinstance(scored, datasets.DatasetDict):
        return _filter_split(scored, options, None)
    results = {name: _filter_split(part, options, name) for name, part in scored.items()}
    return (datasets.DatasetDict({name: kept for name, (kept, _) in results.items()}),
            {name: cut for name, (_, cut) in results.items()})


def _filter_split(scored: datasets.Dataset, options: FilterOptions,
                  split: str | None) -> tuple[datasets.Dataset, FilterCut]:
    scored = drop_flagged(scored, options.drop_flags, "the data" if split is None else f"split {split!r}", split)
    rows, values = _scored_rows(scored, options.measure)
    rule = select.filter_rule(options)
    picked = rule.keep(values)
    cut = FilterCut.of(values, picked, options.measure, rule, unscored_dropped=len(scored) - len(rows), split=split)
    logger.info("%s", cut)
    result = scored.select(rows[picked])
    return (result if options.keep_scores else result.remove_columns(_added_columns(result))), cut


def rank(data: Data, measure: str = DEFAULT_MEASURE, *, model=None, tokenizer=None,
         **score_kwargs) -> datasets.Dataset | datasets.DatasetDict:
    """Rows sorted from most to least displacement-prone, with ``ches_rank`` and ``ches_percentile``.

    ``ches_rank`` is 0 for the most similar pair; ``ches_percentile`` is 100 for it and 0 for the least
    similar. Unscored rows (``ches_skip``, or a NaN score) come last, with no rank and a NaN percentile;
    their number is logged. A ``DatasetDict`` is ranked split by split.

    >>> rows = [{"chosen": c, "rejected": "r", "ln_ches": s, "ches_skip": None} for c, s in [("a", 1.0), ("b", 5.0)]]
    >>> ranked = rank(rows)
    >>> ranked.to_dict()["chosen"], ranked.to_dict()["ches_rank"], ranked.to_dict()["ches_percentile"]
    (['b', 'a'], [0, 1], [100.0, 0.0])
    """
    scored = _scored(data, measure, model, tokenizer, scoring_options(model, tokenizer, **score_kwargs))
    return _per_split(scored, lambda scored: _rank_split(scored, measure))


def _rank_split(scored: datasets.Dataset, measure: str) -> datasets.Dataset:
    check_output_columns(scored.column_names, RANK_COLUMNS, [])  # replaced only when an earlier ranking's
    rows, values = _scored_rows(scored, measure)
    order = rows[select.most_similar_first(values)]
    unscored = np.setdiff1d(np.arange(len(scored)), rows)
    logger.info("ches.rank: ranked %d rows by %s; %d rows could not be scored (ches_skip or a NaN score) and come last",
                len(rows), measure, len(unscored))
    ranked = scored.select(np.concatenate([order, unscored]))
    ranked = ranked.remove_columns([name for name in RANK_COLUMNS if name in ranked.column_names])
    n = len(order)
    ranks = list(range(n)) + [None] * len(unscored)
    percentiles = [100.0 * (n - 1 - r) / (n - 1) if n > 1 else 100.0 for r in range(n)] + [float("nan")] * len(unscored)
    ranked = ranked.add_column("ches_rank", ranks, feature=datasets.Value("int64"))
    return ranked.add_column("ches_percentile", percentiles, feature=datasets.Value("float64"))


def _scored(data, measure: str, model, tokenizer, options: ScoreOptions) -> datasets.Dataset | datasets.DatasetDict:
    """``data`` with scores: as given when it has them and no model is passed, else scored with ``model``
    and ``options`` (:func:`ches.options.scoring_options`), replacing any scores it had: the caller asked for that
    model."""
    check_measure(measure)
    dataset = load_data(data, options.split)
    label = str(data) if isinstance(data, (str, os.PathLike)) else "the data"
    for name, part in (dataset.items() if isinstance(dataset, datasets.DatasetDict) else [(None, dataset)]):
        where = f" (split {name!r})" if name is not None else ""
        if len(part) == 0:
            raise ChesError(f"the data{where} has no rows.")
        if model is None and measure not in part.column_names:
            raise ChesError(f"the data{where} has no {measure!r} column; pass model= (--model on the command line) to "
                            "score it first.")
        if model is None:
            check_score_columns(part, f"{label}{where}")
    if model is None:
        return dataset
    return score(dataset, model, tokenizer, options=dataclasses.replace(options, split=None))


def _per_split(scored: datasets.Dataset | datasets.DatasetDict, function):
    """``function`` of a dataset, or of each split of a ``DatasetDict`` (by split name: a ``DatasetDict``
    when ``function`` returns datasets)."""
    if not isinstance(scored, datasets.DatasetDict):
        return function(scored)
    results = {name: function(part) for name, part in scored.items()}
    return datasets.DatasetDict(results) if all(isinstance(v, datasets.Dataset) for v in results.values()) else results


def _scored_rows(dataset: datasets.Dataset, measure: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the scored rows and their sign-adjusted ``measure`` values."""
    values = np.asarray(column(dataset, measure), dtype=np.float64)
    skips = column(dataset, "ches_skip") if "ches_skip" in dataset.column_names else [None] * len(dataset)
    rows = np.flatnonzero([skip is None and np.isfinite(value) for skip, value in zip(skips, values)])
    if len(rows) == 0:
        raise ChesError(f"no row has a finite {measure!r} score to select by.")
    return rows, select.similarity(values[rows], measure)


def _added_columns(dataset: datasets.Dataset) -> list[str]:
    """The columns ``keep_scores=False`` drops: the scores and ranks; the token digest too, unless the rows carry
    log-probs (a trainer or an audit checks them against it)."""
    logps = any(name in dataset.column_names for name in LOGPS_COLUMNS)
    return [name for name in SCORE_COLUMNS + RANK_COLUMNS if name in dataset.column_names
            and not (logps and name == DIGEST_COLUMN)]


def summary(data: Data, *, model=None, tokenizer=None, **score_kwargs) -> dict:
    """(Per split of a ``DatasetDict``: a dict of these.) Count, skipped rows by reason, min/quantiles/max/mean of every measure, and correlations between
    ``ches`` and ``ln_ches`` and of each with the length difference ``|y+| - |y-|`` (Spearman and Pearson).

    >>> rows = [{"chosen": "a", "rejected": "b", "ches": float(i), "ln_ches": i / 2, "chosen_tokens": i,
    ...          "rejected_tokens": 1, "ches_skip": None} for i in range(1, 5)]
    >>> stats = summary(rows)
    >>> stats["scored"], stats["measures"]["ches"]["max"], stats["correlations"]["ches~ln_ches"]
    (4, 4.0, 1.0)
    """
    scored = _scored(data, DEFAULT_MEASURE, model, tokenizer, scoring_options(model, tokenizer, **score_kwargs))
    return _per_split(scored, lambda part: summarize({name: column(part, name) for name in part.column_names
                                                      if name in SCORE_COLUMNS}))


filter.__signature__ = signature_with_options(filter, FILTER_KEYWORDS)
filter_run.__signature__ = signature_with_options(filter_run, FILTER_KEYWORDS)
