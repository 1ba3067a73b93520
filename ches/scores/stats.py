"""Summary statistics of a scored dataset: counts, quantiles, and how the measures relate to length."""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..data.columns import MEASURES
from ..data.integrity import FLAGS_COLUMN, count_flags, flagged_rows
from ..errors import ChesError

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def counted(count: int, noun: str) -> str:
    """``count`` and ``noun``, plural unless the count is one.

    >>> counted(1, "prompt"), counted(0, "response"), counted(3, "finished chunk")
    ('1 prompt', '0 responses', '3 finished chunks')
    """
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def spearman(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties).

    >>> spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 15.0]))
    0.5
    """
    return pearson(_ranks(first), _ranks(second))


def pearson(first: np.ndarray, second: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant.

    >>> pearson(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.0]))
    1.0
    """
    if len(first) < 2 or np.std(first) == 0 or np.std(second) == 0:
        return float("nan")
    return round(float(np.corrcoef(first, second)[0, 1]), 12)


def _ranks(values: np.ndarray) -> np.ndarray:
    """0-based ranks with ties given their average rank, in O(N log N).

    >>> _ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist()
    [2.5, 0.0, 2.5, 1.0]
    """
    _, inverse, counts = np.unique(np.asarray(values), return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # rank of the first of each group of equal values
    return (first + (counts - 1) / 2.0)[inverse.reshape(-1)]


def skip_reasons(skips) -> Counter:
    """How many rows were skipped for each reason (the reason without its parenthesized details).

    >>> skip_reasons([None, "prompt fills max_length (9 prompt tokens, max_length=8)", None])
    Counter({'prompt fills max_length': 1})
    """
    return Counter(reason.split(" (")[0] for reason in skips if reason)


def summarize(columns: dict[str, list]) -> dict:
    """Counts, per-measure statistics and correlations of a scored table.

    Args:
        columns: the score columns of a scored dataset (``ches``, ``ln_ches``, ..., ``ches_skip``,
            ``chosen_tokens``, ``rejected_tokens``), e.g. ``dataset.to_dict()``.

    Returns:
        ``{"rows", "scored", "skipped", "skip_reasons", "measures": {name: {min, q05, ..., max, mean}},
        "correlations": {...}}``; correlations are Spearman (rank) unless named ``pearson_...``. With a
        ``ches_flags`` column, also ``"flagged"`` (rows with any integrity flag) and ``"flags"`` (rows per
        flag, :func:`ches.data.integrity.count_flags`).
    """
    if "ches" not in columns or "ches_skip" not in columns:
        raise ChesError("summary needs scored rows (columns 'ches' and 'ches_skip'); run ches.score first.")
    skips = [None if _missing(reason) else reason for reason in columns["ches_skip"]]
    finite = np.ones(len(skips), dtype=bool)
    for name in ("ches", "ln_ches"):
        if name in columns:
            finite &= np.isfinite(np.asarray(_numbers(columns[name]), dtype=np.float64))
    unskipped = np.array([reason is None for reason in skips], dtype=bool)
    scored = unskipped & finite
    reasons = skip_reasons(skips)
    if (unskipped & ~finite).any():  # NaN or infinite scores count as not scored, whatever ches_skip says
        reasons["score is NaN or infinite"] = int((unskipped & ~finite).sum())
    result = {
        "rows": len(skips),
        "scored": int(scored.sum()),
        "skipped": int((~scored).sum()),
        "skip_reasons": dict(reasons),
        "measures": {},
        "correlations": {},
    }
    if FLAGS_COLUMN in columns:
        result["flagged"], result["flags"] = flagged_rows(columns[FLAGS_COLUMN]), count_flags(columns[FLAGS_COLUMN])
    if not scored.any():
        return result
    values = {name: np.asarray(_numbers(columns[name]), dtype=np.float64)[scored]
              for name in MEASURES if name in columns}
    for name, column in values.items():
        stats = {"min": float(column.min())}
        stats |= {f"q{round(q * 100):02d}": float(np.quantile(column, q)) for q in QUANTILES}
        stats |= {"max": float(column.max()), "mean": float(column.mean())}
        result["measures"][name] = stats
    length_difference = (np.asarray(_numbers(columns["chosen_tokens"]), dtype=np.float64)
                         - np.asarray(_numbers(columns["rejected_tokens"]), dtype=np.float64))[scored]
    correlations = result["correlations"]
    correlations["ches~ln_ches"] = spearman(values["ches"], values["ln_ches"])
    correlations["pearson_ches~ln_ches"] = pearson(values["ches"], values["ln_ches"])
    for name in ("ches", "ln_ches"):
        correlations[f"{name}~length_difference"] = spearman(values[name], length_difference)
        correlations[f"pearson_{name}~length_difference"] = pearson(values[name], length_difference)
    return result


def _missing(value) -> bool:
    """A ``ches_skip`` cell that means "no reason": None, or what CSV and pandas make of it (empty, NaN)."""
    return value is None or value == "" or (isinstance(value, float) and np.isnan(value))


def _numbers(values) -> list:
    """Numbers of a column, with the empty cells a CSV round trip leaves as NaN.

    >>> _numbers([1.5, None, ""])
    [1.5, nan, nan]
    """
    return [float("nan") if value is None or value == "" else value for value in values]


def partial_spearman(first: np.ndarray, second: np.ndarray, controls: np.ndarray) -> float:
    """Spearman correlation of ``first`` and ``second`` after removing what ``controls`` explain.

    Ranks are taken, each side's ranks are regressed (least squares, with an intercept) on the
    controls' ranks, and the residuals are correlated. ``controls``: ``[N]`` or ``[N, K]``.

    >>> rng = np.random.default_rng(0)
    >>> common = rng.normal(size=200)  # a and b are related only through `common`
    >>> a, b = common + 0.3 * rng.normal(size=200), common + 0.3 * rng.normal(size=200)
    >>> spearman(a, b) > 0.8, abs(partial_spearman(a, b, common)) < 0.2
    (True, True)
    """
    controls = np.asarray(controls, dtype=np.float64).reshape(len(first), -1)
    design = np.column_stack([np.ones(len(first))] + [_ranks(column) for column in controls.T])

    def residual(values):
        ranks = _ranks(np.asarray(values, dtype=np.float64))
        coefficients, *_ = np.linalg.lstsq(design, ranks, rcond=None)
        return ranks - design @ coefficients

    return pearson(residual(first), residual(second))


def bootstrap_interval(statistic, *columns: np.ndarray, resamples: int = 1000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*columns)``, resampling rows with replacement.

    >>> low, high = bootstrap_interval(pearson, np.arange(50.0), np.arange(50.0) ** 2, resamples=200)
    >>> 0.9 < low <= high <= 1.0
    True
    """
    generator = np.random.default_rng(seed)
    n = len(columns[0])
    values = []
    for _ in range(resamples):
        rows = generator.integers(0, n, n)
        value = statistic(*(np.asarray(column)[rows] for column in columns))
        if np.isfinite(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def difference_interval(first: np.ndarray, second: np.ndarray, resamples: int = 1000, level: float = 0.95,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(first) - mean(second)``, two independent samples each resampled
    with replacement (e.g. the change of ``log pi(y+|x)`` in two training runs on different pairs).

    >>> low, high = difference_interval(np.arange(50.0) + 20, np.arange(50.0), resamples=200)
    >>> 12 < low < 20 < high < 28
    True
    """
    generator = np.random.default_rng(seed)
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    differences = [first[generator.integers(0, len(first), len(first))].mean()
                   - second[generator.integers(0, len(second), len(second))].mean() for _ in range(resamples)]
    tail = (1 - level) / 2 * 100
    return float(np.percentile(differences, tail)), float(np.percentile(differences, 100 - tail))
