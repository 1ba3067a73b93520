"""Selection semantics against a brute-force sort: counts, ties, order, columns, measures, errors."""

import json
import math
import random

import datasets
import pytest
from conftest import hh_rows
from edges import PERSONA, PERSONA_COLUMNS, prepare, scored_sample

import ches
from ches import ChesError
from ches.cli import main

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
    assert "kept 55 of 55 scored rows (ln_ches <= 3.0; 2 unscored rows dropped)" in caplog.messages


def similarities(rows, measure):
    """{id: the score in max_score's units} of the scored rows, computed here from the raw columns."""
    return {row["id"]: MEASURE_SIGN[measure] * row[measure] for row in rows if row["ches_skip"] is None}


@pytest.mark.parametrize("measure", ["ln_ches", "edit_distance"])
@pytest.mark.parametrize("rule", [dict(quantile=0.3), dict(keep=11), dict(max_score=0.5)])
def test_threshold_is_the_largest_kept_score_and_reapplied_keeps_the_same_rows(measure, rule, caplog):
    """synthetic() has many ties: max_score=threshold keeps the rows kept plus every row tied at the threshold."""
    import logging

    rows = synthetic(seed=4)
    with caplog.at_level(logging.INFO, logger="ches"):
        kept, cut = ches.filter_run(rows, measure=measure, **rule)
    score = similarities(rows, measure)
    assert cut.threshold == max(score[i] for i in kept["id"])
    assert (cut.measure, cut.rule, cut.window_scores) == (measure, next(iter(rule)), None)
    assert (cut.kept, cut.scored, cut.unscored_dropped) == (len(kept), 55, 2)
    name = "-edit_distance" if measure == "edit_distance" else measure
    assert caplog.messages == [f"kept {len(kept)} of 55 scored rows ({name} <= {cut.threshold}; 2 unscored rows dropped)"]
    again = ches.filter(rows, max_score=cut.threshold, measure=measure)
    tied = {i for i, value in score.items() if value == cut.threshold}
    assert set(again["id"]) == set(kept["id"]) | tied
    assert list(again["id"]) == sorted(i for i, value in score.items() if value <= cut.threshold)


@pytest.mark.parametrize("measure", ["ln_ches", "edit_distance"])
def test_threshold_without_ties_reapplies_exactly(measure):
    rng = random.Random(5)
    rows = [dict(row, ln_ches=rng.gauss(0, 3), edit_distance=rng.random()) if row["ches_skip"] is None else row
            for row in synthetic(seed=5)]
    for rule in (dict(quantile=0.4), dict(keep=20), dict(quantile=1.0)):
        kept, cut = ches.filter_run(rows, measure=measure, **rule)
        assert ches.filter(rows, max_score=cut.threshold, measure=measure).to_list() == kept.to_list()


def test_window_records_its_lowest_and_highest_kept_score():
    rows = synthetic(seed=6)
    kept, cut = ches.filter_run(rows, around=0.5, window=9, measure="edit_distance")
    values = [similarities(rows, "edit_distance")[i] for i in kept["id"]]
    assert (cut.threshold, cut.window_scores, cut.kept) == (None, (min(values), max(values)), 9)
    assert str(cut) == f"kept 9 of 55 scored rows ({min(values)} <= -edit_distance <= {max(values)}; 2 unscored rows dropped)"
    assert cut.as_dict()["window_scores"] == [min(values), max(values)]


def test_nothing_kept_has_no_threshold():
    kept, cut = ches.filter_run(synthetic(), keep=0)
    assert len(kept) == 0 and cut.threshold is None and "(no row kept; 2 unscored rows dropped)" in str(cut)


def test_each_split_logs_its_own_line_and_threshold(caplog):
    import logging

    train, test = synthetic(40, seed=7, skipped=(1,)), synthetic(30, seed=8, skipped=())
    data = datasets.DatasetDict({"train": datasets.Dataset.from_list(train), "test": datasets.Dataset.from_list(test)})
    with caplog.at_level(logging.INFO, logger="ches"):
        kept, cuts = ches.filter_run(data, 0.5)
    assert list(cuts) == ["train", "test"] and [cut.split for cut in cuts.values()] == ["train", "test"]
    assert caplog.messages == [str(cuts["train"]), str(cuts["test"])]
    assert caplog.messages[0].startswith("train: kept 20 of 39 scored rows (ln_ches <= ")
    assert caplog.messages[1].startswith("test: kept 15 of 30 scored rows (ln_ches <= ")
    assert caplog.messages[1].endswith("; 0 unscored rows dropped)")
    for name, rows in (("train", train), ("test", test)):
        score = similarities(rows, "ln_ches")
        assert cuts[name].threshold == max(score[i] for i in kept[name]["id"])
        again = ches.filter(rows, max_score=cuts[name].threshold)
        assert set(again["id"]) == set(kept[name]["id"]) | {i for i, v in score.items() if v == cuts[name].threshold}


def test_filter_run_refuses_a_rule_given_twice():
    from ches.options import FilterOptions

    with pytest.raises(ChesError, match=r"pass the rule either as options= or as keywords \(keep\), not both"):
        ches.filter_run(synthetic(), options=FilterOptions(quantile=0.5), keep=3)


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


def test_filter_rank_and_summary_work_split_by_split_on_a_dataset_dict(workdir):
    prepare(workdir)
    scored = scored_sample()
    halves = datasets.DatasetDict({"a": scored.select(range(4)), "b": scored.select(range(4, len(scored)))})
    kept = ches.filter(halves, 0.5)
    assert isinstance(kept, datasets.DatasetDict) and sorted(kept) == ["a", "b"]
    for name, part in halves.items():  # each split by its own quantile, as if filtered alone
        assert kept[name].to_list() == ches.filter(part, 0.5).to_list()
    ranked = ches.rank(halves)
    assert [len(ranked[name]) for name in ("a", "b")] == [4, len(scored) - 4]
    assert ranked["a"].to_list() == ches.rank(halves["a"]).to_list()
    assert ches.summary(halves)["b"] == ches.summary(halves["b"])


def test_nan_scores_are_not_scored_everywhere(workdir):
    rows = scored_sample().to_list()
    rows[1]["ln_ches"] = float("nan")  # ches_skip still says None
    rows[2]["ches"] = float("inf")
    data = datasets.Dataset.from_list(rows)
    stats = ches.summary(data)
    assert stats["scored"] == 4 and stats["skip_reasons"] == {"score is NaN or infinite": 2}
    assert all(math.isfinite(value) for value in stats["measures"]["ln_ches"].values())
    kept = ches.filter(data, quantile=1.0)
    assert len(kept) == 5 and rows[1]["chosen"] not in list(kept["chosen"])  # ln_ches NaN: dropped
    ranked = ches.rank(data, measure="ln_ches")
    assert ranked[len(ranked) - 1]["chosen"] == rows[1]["chosen"] and math.isnan(ranked[len(ranked) - 1]["ches_percentile"])
    ches.report.write_report(data, "nan.html")
    assert "4 of 6 rows scored" in (workdir / "nan.html").read_text()


def test_filter_with_a_model_rescores_scored_data(workdir):
    stale = scored_sample().map(lambda row: {"ln_ches": -row["ln_ches"]})  # scores from "another model"
    fresh = ches.filter(stale, keep=3, model=str(workdir / "model"))
    assert list(fresh["chosen"]) == list(ches.filter(scored_sample(), keep=3)["chosen"])


def test_rank_columns_of_the_user_are_protected_and_a_ranking_is_redone(workdir):
    scored = scored_sample()
    mine = scored.add_column("ches_rank", ["my own"] * len(scored))
    with pytest.raises(ChesError, match=r"has column\(s\) \['ches_rank'\]"):
        ches.rank(mine)
    ranked = ches.rank(scored)
    assert ches.rank(ranked).to_list() == ranked.to_list()  # an earlier ranking is replaced by the same one


def test_no_scores_after_filtering_keeps_the_prompt(workdir, capsys):
    """The reported loss: after `--columns prompt=ches` and `filter --no-scores` the rows had no prompt. Now the
    mapping is refused, and a legitimate mapping keeps every input column through --no-scores."""
    persona = [json.loads(line) for line in PERSONA.read_text().splitlines()[:6]]
    (workdir / "persona.jsonl").write_text("".join(json.dumps(row) + "\n" for row in persona))
    columns = ",".join(f"{role}={name}" for role, name in PERSONA_COLUMNS.items())
    assert main(["score", "persona.jsonl", "-m", "model", "--columns", columns, "-o", "p.parquet", "--no-progress"]) == 0
    assert main(["filter", "p.parquet", "--keep", "3", "--no-scores", "-o", "clean.jsonl"]) == 0
    kept = [json.loads(line) for line in (workdir / "clean.jsonl").read_text().splitlines()]
    assert list(kept[0]) == list(persona[0]) and {row["question"] for row in kept} <= {row["question"] for row in persona}


def test_filter_counts_rows_per_split(workdir, capsys):
    parts = datasets.DatasetDict({"a": scored_sample().select(range(4)), "b": scored_sample().select(range(4, 6))})
    parts.save_to_disk(str(workdir / "splits"))
    assert main(["filter", "splits", "--quantile", "0.5"]) == 0
    assert "kept 3 rows (a: 2, b: 1)" in capsys.readouterr().out
    assert main(["filter", "splits", "--quantile", "0.5", "-o", "kept"]) == 0
    meta = json.loads((workdir / "kept.meta.json").read_text())
    assert meta["rows_written"] == 3 and meta["rows_written_per_split"] == {"a": 2, "b": 1}
