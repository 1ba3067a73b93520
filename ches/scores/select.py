"""Selection: which rows to keep or rank, as pure functions of a score vector (numpy only, no I/O).

Every function takes ``similarity``: one float per scored row where **higher = more similar = more
displacement-prone** (see :func:`similarity`), and returns row indices. Ties are broken by original
position (a stable sort), and kept rows come back in their original order.
"""

from __future__ import annotations

import numpy as np

from ..data.columns import MEASURES, check_measure
from ..errors import ChesError


def similarity(values, measure: str) -> np.ndarray:
    """A measure's values with the sign that makes higher = more similar.

    ``ches``, ``ln_ches`` and ``last_hidden_ip`` are similarities already; ``edit_distance`` is a
    distance, so it is negated (``-edit_distance``: 0 for identical completions, -1 for disjoint ones).

    >>> similarity([0.25, 1.0], "edit_distance").tolist()
    [-0.25, -1.0]
    """
    return MEASURES[check_measure(measure)] * np.asarray(values, dtype=np.float64)


def similarity_name(measure: str) -> str:
    """How a measure's similarity (what ``max_score`` and a filter's ``threshold`` are in) is written.

    >>> similarity_name("ln_ches"), similarity_name("edit_distance")
    ('ln_ches', '-edit_distance')
    """
    return measure if MEASURES[check_measure(measure)] > 0 else f"-{measure}"


def most_similar_first(similarity: np.ndarray) -> np.ndarray:
    """Indices from most to least similar; equal values keep their original order.

    >>> most_similar_first(np.array([0.1, 0.9, 0.1, 0.5])).tolist()
    [1, 3, 0, 2]
    """
    return np.argsort(-similarity, kind="stable")


def keep_count(similarity: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` least similar rows, in original order.

    >>> keep_count(np.array([5.0, 1.0, 3.0, 1.0]), 2).tolist()
    [1, 3]
    """
    if not 0 <= count <= len(similarity):
        raise ChesError(f"keep={count} is outside [0, {len(similarity)}] (the number of scored rows).")
    least_first = np.argsort(similarity, kind="stable")
    return np.sort(least_first[:count])


def keep_quantile(similarity: np.ndarray, quantile: float) -> np.ndarray:
    """The ``round(quantile * n)`` least similar rows, in original order.

    ``quantile=0.95`` drops the most displacement-prone 5 %; ``0.05`` keeps the 5 % least similar
    (the paper's Section 6 setting).

    >>> keep_quantile(np.array([4.0, 3.0, 2.0, 1.0]), 0.5).tolist()
    [2, 3]
    """
    if not isinstance(quantile, (int, float)) or not 0 < quantile <= 1:
        raise ChesError(f"quantile={quantile!r} must be in (0, 1]: the fraction of scored rows to keep.")
    return keep_count(similarity, round(quantile * len(similarity)))


def keep_at_most(similarity: np.ndarray, max_score: float) -> np.ndarray:
    """Rows whose similarity is at most ``max_score``, in original order.

    >>> keep_at_most(np.array([4.0, 3.0, 2.0]), 3.0).tolist()
    [1, 2]
    """
    return np.flatnonzero(similarity <= max_score)


def keep_window(similarity: np.ndarray, center: float, size: int) -> np.ndarray:
    """``size`` consecutive rows of the sorted scores centred on the ``center`` quantile (0 = least similar).

    The paper's Section 5 trains on 512 samples around the 0th/25th/50th/75th/100th CHES percentiles;
    at the ends the window is shifted inwards so it always holds ``size`` rows.

    >>> keep_window(np.array([0.0, 10.0, 20.0, 30.0, 40.0]), 0.5, 3).tolist()
    [1, 2, 3]
    >>> keep_window(np.array([0.0, 10.0, 20.0, 30.0, 40.0]), 1.0, 2).tolist()
    [3, 4]
    """
    n = len(similarity)
    if not 0 <= center <= 1:
        raise ChesError(f"window centre {center!r} must be a quantile in [0, 1].")
    if not 0 < size <= n:
        raise ChesError(f"window size {size} must be in [1, {n}] (the number of scored rows).")
    least_first = np.argsort(similarity, kind="stable")
    start = min(max(round(center * (n - 1)) - size // 2, 0), n - size)
    return np.sort(least_first[start : start + size])
