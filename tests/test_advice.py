"""From scores to a decision: the recommendation's rules, its
threshold against what ches.filter keeps, and ``ches validate`` (subsets protocol) end to end, whose printed
``ches filter`` command is then run."""

import json
import shlex

import numpy as np
import pytest
from conftest import MODEL_DIR, ROOT

import ches
from ches.cli import main
from ches.evaluate.advice import MIN_PAIRS_FOR_VERDICT, cut, filter_command, format_recommendation, recommend, status

HH_SAMPLE = str(ROOT / "examples" / "data" / "hh-sample.jsonl")


def evidence(**statuses):
    intervals = {"predicts": [0.1, 0.9], "wrong way": [-0.9, -0.1], "no evidence": [-0.2, 0.4]}
    return {name: {"statistic": sum(intervals[state]) / 2, "ci95": intervals[state], "status": state, "pairs": 64}
            for name, state in statuses.items()}


POOLS = {name: np.arange(20.0) for name in ("ln_ches", "ches", "edit_distance")}


def test_the_recommendation_follows_the_evidence():
    both = evidence(ln_ches="predicts", ches="predicts", edit_distance="no evidence")
    both["ches"]["ci95"] = [0.3, 0.9]  # the larger lower bound wins
    advice = recommend(both, protocol="subsets", statistic="gap", cut_quantile=0.9, pool_scores=POOLS, displaced_at_all=True,
                       displacement_note="")
    assert (advice["action"], advice["measure"], advice["quantile"]) == ("filter", "ches", 0.9)
    assert "ches gap" in advice["reason"] and "ln_ches gap" in advice["reason"]

    baseline = evidence(ln_ches="no evidence", ches="no evidence", edit_distance="no evidence")
    baseline["length difference"] = evidence(x="predicts")["x"]  # a baseline is never recommended
    advice = recommend(baseline, protocol="subsets", statistic="gap", cut_quantile=0.9, pool_scores=POOLS, displaced_at_all=True,
                       displacement_note="")
    assert advice["action"] == "not enough evidence" and advice["measure"] is None
    assert "length difference gap" in advice["reason"]
    baseline["ches"] = evidence(x="predicts")["x"]  # a measure as strong as the length baseline: said plainly
    advice = recommend(baseline, protocol="subsets", statistic="gap", cut_quantile=0.9, pool_scores=POOLS, displaced_at_all=True,
                       displacement_note="")
    assert advice["measure"] == "ches" and "Caveat: length difference alone separates" in advice["reason"]

    wrong = recommend(evidence(ln_ches="wrong way", ches="no evidence", edit_distance="no evidence"), protocol="probes", statistic="Spearman",
                      cut_quantile=0.95, pool_scores=POOLS, displaced_at_all=True, displacement_note="")
    assert wrong["action"] == "do not filter" and "ln_ches ranks it the wrong way" in wrong["reason"]
    assert "Spearman" in wrong["reason"]

    calm = recommend(evidence(ln_ches="predicts", ches="no evidence", edit_distance="no evidence"), protocol="subsets", statistic="gap",
                     cut_quantile=0.9, pool_scores=POOLS, displaced_at_all=False, displacement_note="none moved")
    assert calm["action"] == "filter"  # a measure that predicts wins even then: its gap is displacement seen
    calm = recommend(evidence(ln_ches="no evidence", ches="no evidence", edit_distance="no evidence"),
                     protocol="subsets", statistic="gap", cut_quantile=0.9, pool_scores=POOLS, displaced_at_all=False,
                     displacement_note="none moved")
    assert calm["action"] == "do not filter" and "none moved" in calm["reason"]
    assert filter_command("d.jsonl", "m", calm) is None


def test_status_needs_enough_pairs():
    assert status(0.1, 0.2, MIN_PAIRS_FOR_VERDICT) == "predicts"
    assert status(0.1, 0.2, MIN_PAIRS_FOR_VERDICT - 1) == "no evidence"
    assert status(float("nan"), 0.2, 64) == status(0.2, 0.2, 64) == "no evidence"


@pytest.mark.parametrize("measure", ["ln_ches", "edit_distance"])
def test_the_threshold_is_where_ches_filter_cuts(measure):
    rng = np.random.default_rng(1)
    rows = [{"prompt": "p", "chosen": str(i), "rejected": "r", "ln_ches": float(rng.normal()),
             "edit_distance": float(rng.integers(0, 5)) / 4, "ches": 0.0, "last_hidden_ip": 0.0, "ches_skip": None}
            for i in range(40)]
    kept = ches.filter(rows, 0.7, measure=measure)
    values = np.array([row[measure] for row in rows]) * (-1 if measure == "edit_distance" else 1)
    threshold = cut(values, 0.7)
    kept_values = np.array(kept[measure]) * (-1 if measure == "edit_distance" else 1)
    assert kept.num_rows == 28 and kept_values.max() == threshold
    kept_rows = {int(chosen) for chosen in kept["chosen"]}
    assert all(row in kept_rows for row in np.flatnonzero(values < threshold))
    assert not any(row in kept_rows for row in np.flatnonzero(values > threshold))


@pytest.mark.slow
def test_validate_subsets_end_to_end_and_its_command(tmp_path, capsys, monkeypatch):
    output = tmp_path / "v.json"
    assert main(["validate", HH_SAMPLE, "--model", str(MODEL_DIR), "--n", "12", "--lr", "5e-4", "--max-length", "256",
                 "--output", str(output), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(output.read_text())
    settings = result["settings"]
    assert settings["protocol"] == "subsets" and settings["seeds"] == 2
    assert settings["trainer"]["trainer"] == "ches.trl.DPOTrainer" and settings["optimizer"] == "adamw_torch_fused"
    assert settings["trainer"]["dpo_config"]["learning_rate"] == 5e-4 and settings["trainer"]["dpo_config"]["max_length"] == 256
    assert result["verdict"].startswith("verdict (subsets protocol): ") and result["verdict"] in printed

    # each measure's subsets are its lowest and highest 12 pairs, by an independent scoring of the same rows
    scored = ches.score(HH_SAMPLE, str(MODEL_DIR), max_length=256, progress=False)
    usable = np.flatnonzero([reason is None for reason in scored["ches_skip"]])
    assert result["settings"]["scored"] == len(usable) < 64  # some prompts fill 256 tokens
    for measure in ("ln_ches", "ches", "edit_distance"):
        values = np.array(scored[measure])[usable] * (-1 if measure == "edit_distance" else 1)
        order = usable[np.argsort(values, kind="stable")]
        runs = {item["side"]: item for item in result["subsets"] if item["measure"] == measure}
        assert sorted(runs["lowest"]["rows"]) == sorted(order[:12].tolist())
        assert sorted(runs["highest"]["rows"]) == sorted(order[-12:].tolist())
        seeded = runs["lowest"]["runs"]
        assert [run["seed"] for run in seeded] == [0, 1] and all(run["audit"]["rows_audited"] == 12 for run in seeded)
        for run in seeded:
            assert run["audit"]["fraction_displaced"] == np.mean(np.array(run["chosen_change"]) < 0)
        assert runs["lowest"]["audit"]["fraction_displaced"] == pytest.approx(
            np.mean([run["audit"]["fraction_displaced"] for run in seeded]))
        assert runs["lowest"]["chosen_change"] == pytest.approx(np.mean([run["chosen_change"] for run in seeded], axis=0))
        gap = np.mean(runs["lowest"]["chosen_change"]) - np.mean(runs["highest"]["chosen_change"])
        assert result["evidence"][measure]["statistic"] == pytest.approx(gap)
        low, high = result["evidence"][measure]["ci95"]
        assert low <= gap <= high
    assert len(result["subsets"]) == 9 and result["subsets"][-1]["side"] == "random"

    advice = result["recommendation"]
    assert set(advice) >= {"action", "measure", "quantile", "threshold", "reason", "command"}
    assert printed.rstrip().splitlines()[-1 if advice["action"] != "filter" else -3].startswith("recommendation: ")
    if advice["action"] == "filter":  # run the printed command, and check its cut
        assert advice["quantile"] == advice["kept"] / len(usable) and advice["command"] in printed
        assert f"--max-score {advice['threshold']!r}" in advice["command"]
        monkeypatch.chdir(tmp_path)
        assert main([*shlex.split(advice["command"])[1:], "--no-progress"]) == 0
        kept = ches.data.inputs.load_data(str(tmp_path / "kept.jsonl"))
        values = np.array(kept[advice["measure"]]) * (-1 if advice["measure"] == "edit_distance" else 1)
        assert kept.num_rows == advice["kept"] and values.max() == pytest.approx(advice["threshold"])
    else:
        assert advice["command"] is None and advice["measure"] is None


def test_validate_refuses_a_pool_too_small_for_two_subsets():
    with pytest.raises(ches.ChesError, match=r"pool=10 must hold the n=8 lowest and the n highest .* \(at least 16 rows\)"):
        ches.validate(HH_SAMPLE, str(MODEL_DIR), n=8, pool=10)
    with pytest.raises(ches.ChesError, match=r"unknown protocol 'trl'; use one of subsets, probes"):
        ches.validate(HH_SAMPLE, str(MODEL_DIR), protocol="trl")


def test_report_shows_a_validation_or_says_there_is_none(tmp_path):
    from ches.evaluate.validation import load_validation
    from ches.report import write_report

    scored = ches.score(HH_SAMPLE, str(MODEL_DIR), progress=False)
    advice = recommend(evidence(ln_ches="wrong way", ches="predicts", edit_distance="no evidence"), protocol="subsets", statistic="gap",
                       cut_quantile=0.8, pool_scores=POOLS, displaced_at_all=True, displacement_note="")
    validation = {"settings": {"protocol": "subsets", "model": "sft", "n": 16, "learning_rate": 5e-4, "beta": 0.1,
                               "max_length": 512, "scored": 64},
                  "evidence": evidence(ln_ches="wrong way", ches="predicts", edit_distance="no evidence"),
                  "recommendation": dict(advice, command="ches filter d.jsonl --measure ches --quantile 0.8 --output k.jsonl")}
    (tmp_path / "v.json").write_text(json.dumps(validation))
    page = write_report(scored, tmp_path / "with.html", validation=load_validation(str(tmp_path / "v.json"))).read_text()
    assert "recommendation: filter by ches, keeping the 80% least similar pairs" in page
    assert "ches filter d.jsonl --measure ches --quantile 0.8" in page and "wrong way" in page
    page = write_report(scored, tmp_path / "without.html").read_text()
    assert "No validation was run for this report" in page and "--validation validation.json" in page
    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ches.ChesError, match=r"other.json is not a ches validate result"):
        load_validation(str(tmp_path / "other.json"))


def test_the_resolvable_gap_is_resolved_four_times_in_five():
    """Simulated pairs (normal changes, a true gap of resolvable_gap(n, sd)): the 95 % interval of the gap excludes 0
    in about 80 % of 2,000 draws -- the power the arithmetic claims, by simulation instead of the formula."""
    from ches.evaluate.advice import pairs_for_gap, resolvable_gap

    generator = np.random.default_rng(0)
    for n in (16, 64):
        gap = resolvable_gap(n, 3.0)
        low = generator.normal(gap, 3.0, size=(2000, n))
        high = generator.normal(0.0, 3.0, size=(2000, n))
        difference = low.mean(1) - high.mean(1)
        error = np.sqrt(low.var(1, ddof=1) / n + high.var(1, ddof=1) / n)
        resolved = np.mean(difference - 1.96 * error > 0)
        assert 0.75 < resolved < 0.85, (n, resolved)
    assert pairs_for_gap(resolvable_gap(64, 3.0), 3.0) == 64
    assert pairs_for_gap(resolvable_gap(8, 3.0), 3.0) == 32  # never fewer than the minimum to act on


@pytest.mark.parametrize("pairs, seeds, needed", [(16, 2, "--n 32 --seeds 2"), (64, 1, "--n 64 --seeds 2")])
def test_a_measure_that_predicts_from_too_little_is_not_acted_on(pairs, seeds, needed):
    found = evidence(ln_ches="wrong way", ches="predicts", edit_distance="no evidence")
    for entry in found.values():
        entry["pairs"] = pairs
    advice = recommend(found, protocol="subsets", statistic="gap", cut_quantile=0.9, pool_scores=POOLS, seeds=seeds,
                       displaced_at_all=True, displacement_note="")
    assert advice["action"] == "not enough evidence" and advice["measure"] is None and advice["threshold"] is None
    assert f"rerun with {needed} before filtering on it" in advice["reason"]
    enough = recommend(found | {name: {**entry, "pairs": 64} for name, entry in found.items()}, protocol="subsets",
                       statistic="gap", cut_quantile=0.9, pool_scores=POOLS, seeds=2, displaced_at_all=True,
                       displacement_note="", benefit=lambda measure, threshold: {
                           "dropped_kind": f"the top of {measure}", "displaced_dropped": 0.8, "displaced_random": 0.3,
                           "mean_change_dropped": -5.0, "mean_change_random": 1.0})
    assert enough["action"] == "filter" and enough["measure"] == "ches"
    assert enough["cost"] == {"rows_dropped": 2, "fraction_dropped": 0.1}  # 20 pool rows, 90 % kept
    assert enough["benefit"]["displaced_dropped"] == 0.8
    assert "about 1 fewer displaced pairs per 2 dropped" in format_recommendation(enough)


def test_not_enough_evidence_says_how_many_pairs_would_resolve_the_largest_effect():
    found = evidence(ln_ches="no evidence", ches="no evidence", edit_distance="no evidence")
    found["ches"].update(statistic=0.3, pairs_needed=400)
    advice = recommend(found, protocol="subsets", statistic="gap", cut_quantile=0.9, pool_scores=POOLS, largest_n=150,
                       displaced_at_all=True, displacement_note="")
    assert advice["action"] == "not enough evidence" and advice["pairs_needed"] == 400
    assert "would take about n=400 pairs to resolve (80 % power; this pool allows n up to 150)" in advice["reason"]
