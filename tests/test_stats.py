"""The rank statistics of ches.scores.stats against independent implementations (scipy.stats, pandas).

The functions take finite values (ches.scores.stats.summarize and ches.evaluate.validation drop the unscored rows
before calling them), so the data here are finite, with many ties.
"""


import numpy as np
import pandas
import pytest
from scipy import stats as scipy_stats

from ches.scores.stats import _ranks, partial_spearman, pearson, spearman


def tied_column(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` values with ties: small integers, rounded normals, or a mix with a long run of one value."""
    kind = rng.integers(3)
    if kind == 0:
        return rng.integers(0, rng.integers(2, 12), n).astype(np.float64)
    if kind == 1:
        return rng.normal(size=n).round(1)
    column = rng.normal(size=n)
    column[rng.random(n) < 0.4] = 0.0
    return column


def test_ranks_average_ties_like_scipy_and_pandas():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 10, 97, 1000):
        for _ in range(10):
            values = tied_column(rng, n)
            expected = scipy_stats.rankdata(values, method="average") - 1  # ours are 0-based
            assert _ranks(values).tolist() == expected.tolist()
            assert _ranks(values).tolist() == (pandas.Series(values).rank(method="average") - 1).tolist()
    assert _ranks(np.full(5, 3.0)).tolist() == [2.0] * 5


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(1)
    for n in (3, 10, 50, 500):
        for _ in range(20):
            first = tied_column(rng, n)
            second = tied_column(rng, n) + 0.5 * first * rng.integers(0, 2)  # some of the pairs correlated
            if np.ptp(first) == 0 or np.ptp(second) == 0:
                continue
            assert spearman(first, second) == pytest.approx(scipy_stats.spearmanr(first, second).statistic, abs=1e-11)


def test_spearman_and_pearson_are_nan_for_a_constant_side_or_one_row():
    assert np.isnan(spearman(np.array([1.0, 2.0, 3.0]), np.full(3, 7.0)))
    assert np.isnan(pearson(np.full(4, 1.0), np.arange(4.0)))
    assert np.isnan(spearman(np.array([1.0]), np.array([2.0])))


def test_pearson_matches_scipy():
    rng = np.random.default_rng(2)
    for _ in range(20):
        first = rng.normal(size=200)
        second = first * rng.normal() + rng.normal(size=200)
        assert pearson(first, second) == pytest.approx(scipy_stats.pearsonr(first, second).statistic, abs=1e-11)


def test_partial_spearman_one_control_matches_the_formula():
    # r_xy.z = (r_xy - r_xz r_yz) / sqrt((1 - r_xz^2) (1 - r_yz^2)), each r a Spearman correlation
    rng = np.random.default_rng(3)
    for _ in range(30):
        n = rng.integers(20, 400)
        control = rng.integers(0, 30, n).astype(np.float64)  # like token counts: tied integers
        x = (control + rng.normal(scale=rng.uniform(1, 20), size=n)).round(0)
        y = (np.sqrt(control) * rng.normal() + rng.normal(size=n)).round(1)
        r_xy = scipy_stats.spearmanr(x, y).statistic
        r_xz = scipy_stats.spearmanr(x, control).statistic
        r_yz = scipy_stats.spearmanr(y, control).statistic
        expected = (r_xy - r_xz * r_yz) / np.sqrt((1 - r_xz**2) * (1 - r_yz**2))
        assert partial_spearman(x, y, control) == pytest.approx(expected, abs=1e-10)
        assert partial_spearman(x, y, control[:, None]) == partial_spearman(x, y, control)


def test_partial_spearman_several_controls_matches_the_inverse_correlation_matrix():
    # with controls z_1..z_K: r_xy.z = -P_xy / sqrt(P_xx P_yy), P the inverse of the Spearman
    # correlation matrix of (x, y, z_1, ..., z_K); as ches.evaluate.validation calls it, with two length columns
    rng = np.random.default_rng(4)
    for _ in range(30):
        n = rng.integers(30, 400)
        lengths = rng.integers(1, 60, (n, 2)).astype(np.float64)
        x = (lengths @ rng.normal(size=2) + rng.normal(scale=10, size=n)).round(0)
        y = (lengths[:, 0] - lengths[:, 1] + rng.normal(scale=5, size=n)).round(1)
        matrix = scipy_stats.spearmanr(np.column_stack([x, y, lengths])).statistic
        precision = np.linalg.inv(matrix)
        expected = -precision[0, 1] / np.sqrt(precision[0, 0] * precision[1, 1])
        assert partial_spearman(x, y, lengths) == pytest.approx(expected, abs=1e-10)


def test_partial_spearman_with_a_constant_control_is_spearman():
    # a constant control's ranks are constant too: it explains nothing beyond the intercept
    x = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0])
    y = np.array([2.0, 7.0, 1.0, 8.0, 2.0, 8.0, 1.0, 8.0])
    assert partial_spearman(x, y, np.ones(8)) == pytest.approx(spearman(x, y), abs=1e-12)


def test_spearman_matches_pandas_with_ties():
    import pandas

    from ches.scores.stats import spearman

    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 20, 500).astype(float), rng.normal(size=500).round(1)
    reference = pandas.Series(a).rank(method="average").corr(pandas.Series(b).rank(method="average"))  # Pearson of ranks
    assert spearman(a, b) == pytest.approx(reference, abs=1e-12)
