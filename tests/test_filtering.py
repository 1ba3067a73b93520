"""Selection semantics against a brute-force sort: counts, ties, order, columns, measures, errors."""

import math
import random

import datasets
import pytest

import ches
from ches import ChesError
from conftest import hh_rows

MEASURE_SIGN = {"ln_ches": 1, "ches": 1, "last_hidden_ip": 1, "edit_distance": -1}


def synthetic(n=57, seed=0, skipped=(3, 10)):
    """Rows with scores drawn from a few values (to force ties) and some skipped rows."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        skip = "prompt fills max_length (9 prompt tokens, max_length=8)" if i in skipped else None
        values = {m: (math.nan if skip else float(rng.choice([-2, -1, 0, 1, 2, 3]))) for m in MEASURE_SIGN}
        rows.append({"id": i, "prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}", **values,
                     "prompt_tokens": 5, "chosen_tokens": rng.randint(1, 9), "rejected_tokens": rng.randint(1, 9),
                     "ches_skip": skip})
    return rows


def brute_force_keep(rows, measure, count):
    """Sort (similarity, position) ascending, take `count`, return ids in original order."""
    scored = [(MEASURE_SIGN[measure] * row[measure], position, row["id"]) for position, row in enumerate(rows)
              if row["ches_skip"] is None]
    return sorted(identity for _, _, identity in sorted(scored)[:count])


@pytest.mark.parametrize("measure", sorted(MEASURE_SIGN))
@pytest.mark.parametrize("quantile", [0.05, 0.3, 0.5, 0.95, 1.0])
def test_quantile_keeps_exactly_round_q_n_lowest(measure, quantile):
    rows = synthetic()
    kept = ches.filter(rows, quantile, measure=measure)
    n_scored = sum(row["ches_skip"] is None for row in rows)
    assert len(kept) == round(quantile * n_scored)
    assert list(kept["id"]) == brute_force_keep(rows, measure, round(quantile * n_scored))


def test_keep_count_and_threshold():
    rows = synthetic(seed=1)
    assert list(ches.filter(rows, keep=11)["id"]) == brute_force_keep(rows, "ln_ches", 11)
    kept = ches.filter(rows, max_score=0.0)
    assert list(kept["id"]) == [row["id"] for row in rows if row["ches_skip"] is None and row["ln_ches"] <= 0]
    # edit_distance thresholds apply to -edit_distance (higher = more similar for every measure)
    kept = ches.filter(rows, max_score=-1.0, measure="edit_distance")
    assert list(kept["id"]) == [row["id"] for row in rows if row["ches_skip"] is None and -row["edit_distance"] <= -1]


def test_window_around_quantiles():
    rows = [{"id": i, "chosen": "a", "rejected": "b", "ln_ches": float(v), "ches_skip": None}
            for i, v in enumerate(random.Random(2).sample(range(100), 100))]
    by_score = sorted(range(100), key=lambda i: rows[i]["ln_ches"])
    for center, expected_start in [(0.0, 0), (0.5, 50 - 5), (1.0, 90)]:
        kept = ches.filter(rows, around=center, window=10)
        assert list(kept["id"]) == sorted(by_score[expected_start:expected_start + 10])


def test_result_keeps_every_column_in_original_order_or_exact_input_schema():
    rows = synthetic()
    kept = ches.filter(rows, 0.5)
    assert kept.column_names == list(rows[0])
    assert list(kept["id"]) == sorted(kept["id"])
    plain = ches.filter(rows, 0.5, keep_scores=False)
    assert plain.column_names == ["id", "prompt", "chosen", "rejected"]


def test_skipped_rows_are_dropped_and_logged(caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="ches"):
        kept = ches.filter(synthetic(), 1.0)
    assert len(kept) == 55 and not set(kept["id"]) & {3, 10}
    assert "2 rows could not be scored and were dropped" in caplog.text


def test_rank_orders_most_similar_first():
    rows = synthetic()
    ranked = ches.rank(rows, "ches")
    scored = [row for row in rows if row["ches_skip"] is None]
    expected = [row["id"] for row in sorted(scored, key=lambda row: -row["ches"])]  # sorted() is stable
    assert list(ranked["id"])[:55] == expected and list(ranked["id"])[55:] == [3, 10]
    assert list(ranked["ches_rank"]) == list(range(55)) + [None, None]
    percentiles = list(ranked["ches_percentile"])
    assert percentiles[0] == 100.0 and percentiles[54] == 0.0 and math.isnan(percentiles[-1])


def test_summary_counts_and_correlations():
    rows = synthetic()
    stats = ches.summary(rows)
    assert (stats["rows"], stats["scored"], stats["skipped"]) == (57, 55, 2)
    assert stats["skip_reasons"] == {"prompt fills max_length": 2}
    values = sorted(row["ches"] for row in rows if row["ches_skip"] is None)
    assert stats["measures"]["ches"]["min"] == values[0] and stats["measures"]["ches"]["max"] == values[-1]
    assert -1 <= stats["correlations"]["ches~length_difference"] <= 1


@pytest.mark.parametrize("bad, message", [
    (dict(quantile=0.0), r"quantile=0.0 must be in \(0, 1\]"),
    (dict(quantile=1.5), r"quantile=1.5 must be in \(0, 1\]"),
    (dict(measure="cosine"), r"unknown measure 'cosine'; use one of \['ches', 'edit_distance', 'last_hidden_ip', 'ln_ches'\]"),
    (dict(keep=3, max_score=1.0), r"give at most one of quantile=, max_score=, keep=, around= \(got max_score, keep\)"),
    (dict(keep=999), r"keep=999 is outside \[0, 55\]"),
])
def test_bad_options(bad, message):
    with pytest.raises(ChesError, match=message):
        ches.filter(synthetic(), **bad)


def test_empty_and_unscored_data():
    with pytest.raises(ChesError, match="has no rows"):
        ches.filter(datasets.Dataset.from_dict({"chosen": [], "rejected": [], "ln_ches": [], "ches_skip": []}))
    with pytest.raises(ChesError, match=r"no 'ln_ches' column; pass model="):
        ches.filter(hh_rows(3))


def test_filter_scores_raw_data_with_a_model(tokenizer, tiny_model):
    rows = hh_rows(20)
    kept = ches.filter(rows, 0.5, model=tiny_model("llama"), tokenizer=tokenizer, keep_scores=False, progress=False)
    scored = ches.score(rows, tiny_model("llama"), tokenizer, progress=False)
    assert kept.column_names == ["chosen", "rejected"]
    assert kept.to_list() == ches.filter(scored, 0.5, keep_scores=False).to_list()
