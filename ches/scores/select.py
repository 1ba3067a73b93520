"""Selection: which rows to keep or rank, as pure functions of a score vector (numpy only, no I/O).

Every function takes ``similarity``: one float per scored row where **higher = more similar = more
displacement-prone** (see :func:`similarity`), and returns row indices. Ties are broken by original
position (a stable sort), and kept rows come back in their original order.

The rules of ``ches.filter`` are one small class each (:class:`FilterRule`: :class:`Quantile`,
:class:`MaxScore`, :class:`Keep`, :class:`Around`), with the same methods: the rows it keeps
(:meth:`FilterRule.keep`) and where the cut fell (:meth:`FilterRule.bounds`); :func:`filter_rule` chooses
one from the options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

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


@dataclass(frozen=True)
class FilterRule:
    """One way ``ches.filter`` chooses the rows it keeps (its :data:`ches.options.FILTER_RULES` name: ``name``)."""

    name: ClassVar[str]

    @classmethod
    def of(cls, options) -> FilterRule:
        """The rule with its values from ``options`` (a :class:`ches.options.FilterOptions`)."""
        raise NotImplementedError

    def keep(self, similarity: np.ndarray) -> np.ndarray:
        """The kept rows of ``similarity`` (``[N]``, sign-adjusted), in original order."""
        raise NotImplementedError

    def bounds(self, kept: np.ndarray) -> tuple[float | None, tuple[float, float] | None]:
        """Where the cut fell, from the kept rows' similarities: ``(threshold, window_scores)`` of
        :class:`ches.filtering.FilterCut`. A rule that keeps everything below a value has a ``threshold``,
        the largest kept score (``max_score=threshold`` cuts new data the same way); both are None when no
        row is kept.

        >>> Quantile(0.5).bounds(np.array([1.0, 3.0])), Around(0.5, 2).bounds(np.array([1.0, 3.0]))
        ((3.0, None), (None, (1.0, 3.0)))
        """
        return (float(kept.max()), None) if len(kept) else (None, None)


@dataclass(frozen=True)
class Quantile(FilterRule):
    """The ``round(quantile * n)`` least similar rows (:func:`keep_quantile`); the default rule."""

    name: ClassVar[str] = "quantile"
    quantile: float

    @classmethod
    def of(cls, options):
        return cls(options.quantile_kept)

    def keep(self, similarity):
        return keep_quantile(similarity, self.quantile)


@dataclass(frozen=True)
class MaxScore(FilterRule):
    """The rows whose similarity is at most ``max_score`` (:func:`keep_at_most`)."""

    name: ClassVar[str] = "max_score"
    max_score: float

    @classmethod
    def of(cls, options):
        return cls(options.max_score)

    def keep(self, similarity):
        return keep_at_most(similarity, self.max_score)


@dataclass(frozen=True)
class Keep(FilterRule):
    """The ``count`` least similar rows (:func:`keep_count`)."""

    name: ClassVar[str] = "keep"
    count: int

    @classmethod
    def of(cls, options):
        return cls(options.keep)

    def keep(self, similarity):
        return keep_count(similarity, self.count)


@dataclass(frozen=True)
class Around(FilterRule):
    """``size`` rows of the sorted scores centred on the ``center`` quantile (:func:`keep_window`): a band, so
    no threshold; its bounds are the lowest and highest kept score."""

    name: ClassVar[str] = "around"
    center: float
    size: int

    @classmethod
    def of(cls, options):
        return cls(options.around, options.window_kept)

    def keep(self, similarity):
        return keep_window(similarity, self.center, self.size)

    def bounds(self, kept):
        return (None, (float(kept.min()), float(kept.max()))) if len(kept) else (None, None)


#: the rules of ``ches.filter`` by name, in the order of :data:`ches.options.FILTER_RULES`
FILTER_RULE_CLASSES: dict[str, type[FilterRule]] = {cls.name: cls for cls in (Quantile, MaxScore, Keep, Around)}


def filter_rule(options) -> FilterRule:
    """The rule ``options`` (a :class:`ches.options.FilterOptions`) give, with its values.

    >>> from ches.options import FilterOptions
    >>> filter_rule(FilterOptions(around=0.25)), filter_rule(FilterOptions())
    (Around(center=0.25, size=512), Quantile(quantile=0.95))
    """
    return FILTER_RULE_CLASSES[options.rule].of(options)
