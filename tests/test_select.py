"""The filter rules of ches.scores.select, each against a sort-and-slice by hand: the rows kept (ties broken by
original position, kept rows in original order), where the cut fell, the rule chosen from the options, and
rows without a score never kept and ranked last."""

import math
import random

import numpy as np
import pytest

import ches
from ches.options import FILTER_RULES, FilterOptions
from ches.scores.select import FILTER_RULE_CLASSES, Around, Keep, MaxScore, Quantile, filter_rule, most_similar_first


def least_first(values):
    """Positions from least to most similar, ties by position: a sort of Python tuples."""
    return [position for _, position in sorted((value, position) for position, value in enumerate(values))]


def tied_scores(count, seed):
    """Scores from a few values, so that ties are the rule."""
    rng = random.Random(seed)
    return [float(rng.choice([-1.5, 0.0, 0.5, 2.0, 3.0])) for _ in range(count)]


@pytest.mark.parametrize("seed", range(5))
def test_quantile_and_keep_take_the_lowest_by_hand(seed):
    values = tied_scores(41, seed)
    for count in (0, 1, 7, 20, 41):
        assert Keep(count).keep(np.array(values)).tolist() == sorted(least_first(values)[:count])
    for quantile in (0.05, 0.25, 0.5, 0.9, 1.0):
        expected = sorted(least_first(values)[: round(quantile * 41)])
        assert Quantile(quantile).keep(np.array(values)).tolist() == expected


@pytest.mark.parametrize("seed", range(5))
def test_max_score_keeps_every_row_at_or_below_it_ties_included(seed):
    values = tied_scores(30, seed)
    for limit in (-2.0, -1.5, 0.5, 2.9, 3.0):
        assert MaxScore(limit).keep(np.array(values)).tolist() == [i for i, v in enumerate(values) if v <= limit]


def test_around_keeps_a_window_of_the_sorted_scores_shifted_inwards_at_the_ends():
    values = [50.0, 10.0, 40.0, 0.0, 30.0, 20.0, 60.0, 70.0, 80.0, 90.0]  # ranks: 3 1 5 4 2 0 6 7 8 9 by position
    order = least_first(values)  # [3, 1, 5, 4, 2, 0, 6, 7, 8, 9]
    # centre rank round(q * 9); the window starts size // 2 before it, inside [0, n - size]
    assert Around(0.5, 4).keep(np.array(values)).tolist() == sorted(order[2:6])  # round(4.5) = 4: ranks 2..5
    assert Around(0.0, 3).keep(np.array(values)).tolist() == sorted(order[0:3])
    assert Around(1.0, 3).keep(np.array(values)).tolist() == sorted(order[7:10])
    assert Around(0.25, 10).keep(np.array(values)).tolist() == list(range(10))


def test_ties_are_broken_by_original_position():
    values = np.array([1.0, 0.0, 1.0, 0.0, 1.0])
    assert Keep(3).keep(values).tolist() == [0, 1, 3]  # both zeros, then the first of the ones
    assert most_similar_first(values).tolist() == [0, 2, 4, 1, 3]


def test_each_rule_states_where_the_cut_fell():
    kept = np.array([0.5, -1.0, 2.0])
    for rule in (Quantile(0.5), MaxScore(9.0), Keep(3)):
        assert rule.bounds(kept) == (2.0, None)  # the largest kept score: max_score=2.0 cuts the same way
        assert rule.bounds(np.array([])) == (None, None)
    assert Around(0.5, 3).bounds(kept) == (None, (-1.0, 2.0))
    assert Around(0.5, 3).bounds(np.array([])) == (None, None)


def test_the_rule_is_chosen_from_the_options_with_its_values():
    assert tuple(FILTER_RULE_CLASSES) == FILTER_RULES
    assert filter_rule(FilterOptions()) == Quantile(0.95)
    assert filter_rule(FilterOptions(quantile=0.3)) == Quantile(0.3)
    assert filter_rule(FilterOptions(max_score=-0.5)) == MaxScore(-0.5)
    assert filter_rule(FilterOptions(keep=4)) == Keep(4)
    assert filter_rule(FilterOptions(around=0.75)) == Around(0.75, 512)
    assert filter_rule(FilterOptions(around=0.75, window=8)) == Around(0.75, 8)
    assert [filter_rule(FilterOptions(**{name: value})).name
            for name, value in zip(FILTER_RULES, (0.5, 1.0, 2, 0.5))] == list(FILTER_RULES)


def rows_with_gaps():
    """Scored rows, one with a NaN score and one skipped: neither may be kept, and both rank last."""
    values = [2.0, math.nan, 0.5, 3.0, 0.5, -1.0, 9.0]
    return [{"id": i, "chosen": "a", "rejected": "b", "ln_ches": v, "ches_skip": "too long" if i == 6 else None}
            for i, v in enumerate(values)]


@pytest.mark.parametrize("keywords, expected", [({"quantile": 0.6}, [2, 4, 5]), ({"keep": 2}, [2, 5]),
                                                ({"max_score": 2.0}, [0, 2, 4, 5]), ({"around": 1.0, "window": 2},
                                                                                     [0, 3])])
def test_filter_never_keeps_an_unscored_row_and_records_the_cut(keywords, expected):
    kept, cut = ches.filter_run(rows_with_gaps(), **keywords)
    assert kept["id"] == expected
    assert (cut.kept, cut.scored, cut.unscored_dropped) == (len(expected), 5, 2)  # rows 1 (NaN) and 6 (skipped)
    kept_scores = [rows_with_gaps()[i]["ln_ches"] for i in expected]
    if "around" in keywords:
        assert (cut.rule, cut.threshold, cut.window_scores) == ("around", None, (min(kept_scores), max(kept_scores)))
    else:
        assert (cut.rule, cut.threshold, cut.window_scores) == (next(iter(keywords)), max(kept_scores), None)


def test_rank_puts_the_rows_without_a_score_last():
    ranked = ches.rank(rows_with_gaps())
    by_hand = [i for _, i in sorted(((-v, i) for i, v in enumerate([2.0, math.nan, 0.5, 3.0, 0.5, -1.0, 9.0])
                                     if i not in (1, 6)))]
    assert ranked["id"] == [*by_hand, 1, 6]
    assert ranked["ches_rank"] == [0, 1, 2, 3, 4, None, None]
