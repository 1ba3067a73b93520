"""The validation protocols of ches.evaluate.validation (one class each, looked up from the saved name): the
pairs each needs, the pool it refuses, the quantile it cuts at, its evidence and verdict lines computed by
hand from a result, and a result file written before the protocols were classes, loaded and shown again."""

import json

import numpy as np
import pytest

from ches import ChesError, ValidateOptions
from ches.evaluate.validation import (
    PROTOCOLS,
    Probes,
    Subsets,
    evidence_of,
    format_table,
    load_validation,
    protocol_of,
    verdict,
)
from ches.options import VALIDATE_PROTOCOLS


def test_each_protocol_is_looked_up_by_its_saved_name():
    assert tuple(PROTOCOLS) == VALIDATE_PROTOCOLS
    assert isinstance(protocol_of("subsets"), Subsets) and isinstance(protocol_of("probes"), Probes)
    with pytest.raises(ChesError, match=r"unknown protocol 'trl'; use one of subsets, probes\."):
        protocol_of("trl")


def test_pairs_needed_and_the_pool_each_protocol_refuses():
    assert [protocol_of("subsets").pairs_needed(n) for n in (3, 16)] == [6, 32]  # the n lowest and the n highest
    assert [protocol_of("probes").pairs_needed(n) for n in (3, 16)] == [3, 16]
    with pytest.raises(ChesError) as refused:
        protocol_of("subsets").check(ValidateOptions(n=8, pool=10))
    assert str(refused.value) == ("pool=10 must hold the n=8 lowest and the n highest pairs of each measure (at least "
                                  "16 rows) for protocol='subsets'; raise pool or lower n.")
    protocol_of("subsets").check(ValidateOptions(n=8, pool=16))
    protocol_of("subsets").check(ValidateOptions(n=8))  # no pool: every row, checked against the data later
    protocol_of("probes").check(ValidateOptions(protocol="probes", n=8, pool=8))


def test_the_quantile_each_protocol_cuts_at():
    assert protocol_of("subsets").cut_quantile(16, 100) == 0.84  # drops the top n of the scored pool
    assert protocol_of("subsets").cut_quantile(3, 7) == 0.5714  # 1 - 3/7, to four places
    assert protocol_of("probes").cut_quantile(16, 100) == 0.95  # the filter's default


def test_the_settings_each_protocol_records():
    import torch

    options = ValidateOptions(epochs=2, batch_size=4, steps=7)
    subsets = protocol_of("subsets")
    settings = subsets.settings(options, subsets.training(options), torch.device("cpu"))
    assert {name: settings[name] for name in ("epochs", "batch_size", "learning_rate", "beta", "loss_type", "lora")} == {
        "epochs": 2, "batch_size": 4, "learning_rate": 1e-6, "beta": 0.1, "loss_type": ["sigmoid"], "lora": None}
    assert settings["trainer"]["trainer"] == "ches.trl.DPOTrainer"
    assert settings["trainer"]["dpo_config"]["num_train_epochs"] == 2  # what TRL was given
    assert protocol_of("probes").settings(ValidateOptions(protocol="probes", steps=7), None, torch.device("cpu")) == {
        "steps": 7, "optimizer": "RMSprop", "learning_rate": 1e-6, "beta": 0.1}


def run(name, measure, side, changes, fraction=0.5):
    mean = float(np.mean(changes))
    return {"name": name, "measure": measure, "side": side, "rows": list(range(len(changes))),
            "chosen_change": changes, "audit": {"fraction_displaced": fraction, "mean_chosen_change": mean,
                                                "mean_chosen_change_ci95": [mean - 0.01, mean + 0.01]}}


def subsets_result(pairs=12):
    """A subsets result as ches validate wrote it (ches 0.x, before the protocols were classes)."""
    rng = np.random.default_rng(0)
    spread = lambda centre: [round(centre + 0.01 * value, 6) for value in rng.uniform(-1, 1, size=pairs)]  # noqa: E731
    runs = []
    for measure, (low, high) in {"ln_ches": (-0.1, -0.5), "ches": (-0.3, -0.3), "edit_distance": (-0.6, -0.1),
                                 "length difference": (-0.2, -0.25)}.items():
        runs += [run(f"{measure} lowest", measure, "lowest", spread(low), 0.25),
                 run(f"{measure} highest", measure, "highest", spread(high), 0.75)]
    runs.append(run("random", None, "random", spread(-0.2), 0.5))
    settings = {"protocol": "subsets", "model": "sft", "n": pairs, "learning_rate": 1e-6, "beta": 0.1,
                "max_length": 512, "pool": 5 * pairs, "scored": 5 * pairs, "seed": 0, "resamples": 300,
                "dtype": "torch.float32", "device": "cpu", "epochs": 1, "batch_size": 8, "optimizer": "AdamW",
                "threads": 2, "threads_reason": "2 free cores", "seconds": 12.5}
    return {"settings": settings, "subsets": runs}


def test_subsets_evidence_is_the_gap_between_the_lowest_and_the_highest_run():
    result = subsets_result()
    evidence = evidence_of(result)
    assert list(evidence) == ["ln_ches", "ches", "edit_distance", "length difference"]  # the baseline last
    for name, entry in evidence.items():
        low, high = (next(item["chosen_change"] for item in result["subsets"]
                          if item["measure"] == name and item["side"] == side) for side in ("lowest", "highest"))
        assert entry["statistic"] == pytest.approx(sum(low) / len(low) - sum(high) / len(high), abs=1e-12)
        differences = [a - b for a in low for b in high]
        assert min(differences) <= entry["ci95"][0] <= entry["statistic"] <= entry["ci95"][1] <= max(differences)
        assert entry["pairs"] == 12
        assert (entry["lowest_fraction_displaced"], entry["highest_fraction_displaced"]) == (0.25, 0.75)
    assert [evidence[name]["status"] for name in evidence] == ["predicts", "no evidence", "wrong way", "predicts"]
    assert protocol_of("subsets").displacement_seen(result) == {
        "displaced_at_all": True,
        "displacement_note": "no pair displaced in any of the 9 runs; on random pairs the mean change of "
                             f"log pi(y+|x) was {np.mean(result['subsets'][-1]['chosen_change']):+.3f} nats"}


def probes_result(spearman=0.4, interval=(0.2, 0.6), rows=12):
    entry = {"spearman_total": spearman, "spearman_total_ci95": list(interval), "spearman_per_token": 0.3,
             "spearman_per_token_ci95": [0.1, 0.5], "spearman_total_given_lengths": 0.35}
    return {"settings": {"protocol": "probes", "seed": 0}, "rows": [{"row": i} for i in range(rows)],
            "correlations": {"ln_ches": entry, "ches": dict(entry), "edit_distance": dict(entry)},
            "summary": {"mean_chosen_change": -0.01, "mean_rejected_change": -0.2, "fraction_displaced": 0.0}}


def test_probes_evidence_is_the_spearman_correlation():
    evidence = evidence_of(probes_result(spearman=-0.5, interval=(-0.7, -0.2)))
    assert list(evidence) == ["ln_ches", "ches", "edit_distance"]  # no baseline
    entry = evidence["ln_ches"]
    assert {name: entry[name] for name in ("statistic", "ci95", "status", "pairs", "seeds_agree")} == {
        "statistic": -0.5, "ci95": [-0.7, -0.2], "status": "wrong way", "pairs": 12, "seeds_agree": True}
    assert protocol_of("probes").displacement_seen(probes_result()) == {
        "displaced_at_all": False, "displacement_note": "0% of the probed pairs displaced"}


def test_the_verdict_line_of_each_protocol():
    result = subsets_result()
    result["evidence"] = evidence_of(result)
    low, high = result["evidence"]["ln_ches"]["ci95"]
    gap = result["evidence"]["ln_ches"]["statistic"]
    assert verdict(result) == (f"verdict (subsets protocol): ln_ches predicts displacement on this model: gap "
                               f"{gap:+.3f} nats, 95% CI [{low:+.2f}, {high:+.2f}] (above 0).")
    assert verdict(result, "last_hidden_ip") == "verdict (subsets protocol): no verdict on last_hidden_ip: it was not measured."
    assert verdict(probes_result(spearman=-0.5, interval=(-0.7, -0.2))) == (
        "verdict (probes protocol): ln_ches ranks displacement the wrong way on this model: Spearman -0.500, 95% CI "
        "[-0.70, -0.20] (below 0); do not filter by it here.")
    assert verdict(probes_result(rows=4)) == (
        "verdict (probes protocol): no verdict on ln_ches: 4 probed pairs (Spearman +0.400, 95% CI [+0.20, +0.60]) are "
        "too few for a confidence interval; use at least 10 (--n), and 32 or more to act on it.")
    assert verdict(probes_result(spearman=float("nan"))) == (
        "verdict (probes protocol): no verdict on ln_ches: it was not measured, or constant over the probed pairs.")


def test_a_result_file_written_before_the_protocols_were_classes_loads_and_shows_the_same(tmp_path):
    result = subsets_result()
    result["evidence"] = evidence_of(result)
    result["verdict"] = verdict(result)
    result["recommendation"] = {"action": "filter", "measure": "ln_ches", "quantile": 0.8, "threshold": 1.25,
                                "kept": 48, "reason": "ln_ches predicts.",
                                "command": "ches filter DATA --measure ln_ches --max-score 1.25",
                                "threshold_from": "the 60 scored rows of the pool"}
    path = tmp_path / "validation.json"
    path.write_text(json.dumps(result))
    loaded = load_validation(str(path))
    assert loaded["settings"]["protocol"] == "subsets"  # the name stays a string in the file
    assert evidence_of(loaded) == result["evidence"]
    lines = format_table(loaded).splitlines()
    assert lines[0].startswith("DPO runs (1 epoch, batch 8, AdamW lr 1e-06, beta 0.1), each on 12 pairs of the 60 "
                               "scored: the lowest and the highest of each measure, and random ones; 1 seed each.")
    assert lines[3].split() == ["ln_ches", "lowest", "25%", f"{result['subsets'][0]['audit']['mean_chosen_change']:+.4f}",
                                *f"[{result['subsets'][0]['audit']['mean_chosen_change_ci95'][0]:+.4f}, "
                                 f"{result['subsets'][0]['audit']['mean_chosen_change_ci95'][1]:+.4f}]".split()]
    assert any(line.split()[:4] == ["length", "difference", "(baseline)", "gap"] for line in lines)
    assert result["verdict"] in lines
    assert any(line.startswith("recommendation: filter by ln_ches") for line in lines[lines.index(result["verdict"]):])


def test_the_report_names_each_protocols_statistic():
    from ches.report import _validation_section

    entry = {"statistic": 0.5, "ci95": [0.1, 0.9], "status": "predicts", "pairs": 64}
    for protocol, heading in (("subsets", "gap (nats)"), ("probes", "Spearman")):
        page = _validation_section({
            "settings": {"protocol": protocol, "model": "sft", "n": 16, "learning_rate": 5e-4, "beta": 0.1,
                         "max_length": 512, "scored": 64},
            "evidence": {"ln_ches": entry}, "recommendation": {"action": "do not filter", "reason": "r.", "command": None}})
        assert f"<th>measure</th><th>{heading}</th><th>95% CI</th>" in page
        assert f"{protocol} protocol on sft" in page


def test_a_verdict_needs_enough_pairs_for_an_interval():
    from ches.evaluate.validation import MIN_PAIRS_FOR_VERDICT, verdict

    entry = {"spearman_total": -1.0, "spearman_total_ci95": (-1.0, -1.0)}
    few = {"correlations": {"ln_ches": entry}, "summary": {"fraction_displaced": 0.0}, "rows": [{}] * 4}
    assert verdict(few).startswith("verdict (probes protocol): no verdict on ln_ches: 4 probed pairs (Spearman -1.000, 95% CI [-1.00, -1.00]) "
                                   "are too few for a confidence interval")
    wide = dict(few, rows=[{}] * MIN_PAIRS_FOR_VERDICT, correlations={"ln_ches": {**entry, "spearman_total_ci95": (-1.0, -0.5)}})
    assert "ranks displacement the wrong way" in verdict(wide)


def seeded_result(second_high=-0.5, pairs=40):
    """A subsets result with two seeds per subset: in seed 0 the highest ln_ches pairs lose 0.5 nats more than the
    lowest; in seed 1 the highest change by ``second_high``."""
    result = subsets_result(pairs)
    rng = np.random.default_rng(1)
    for item in result["subsets"]:
        first = np.asarray(item["chosen_change"])
        second = first + rng.normal(0, 0.01, size=pairs)
        if item["measure"] == "ln_ches" and item["side"] == "highest":
            second = second_high + rng.normal(0, 0.01, size=pairs)
        item["runs"] = [{"seed": 0, "chosen_change": first.tolist(), "audit": item["audit"]},
                        {"seed": 1, "chosen_change": second.tolist(), "audit": item["audit"]}]
        item["chosen_change"] = ((first + second) / 2).tolist()
    result["settings"]["seeds"] = 2
    return result


def test_a_status_needs_every_seeds_verdict_to_agree():
    agreeing = evidence_of(seeded_result(second_high=-0.5))["ln_ches"]
    assert agreeing["status"] == "predicts" and agreeing["seeds_agree"]
    assert [item["status"] for item in agreeing["seeds"]] == ["predicts", "predicts"]
    result = seeded_result(second_high=-0.1)  # seed 1: the highest pairs lose no more than the lowest
    result["evidence"] = evidence_of(result)
    entry = result["evidence"]["ln_ches"]
    low = np.asarray(next(item["chosen_change"] for item in result["subsets"] if item["name"] == "ln_ches lowest"))
    high = np.asarray(next(item["chosen_change"] for item in result["subsets"] if item["name"] == "ln_ches highest"))
    assert entry["statistic"] == pytest.approx(low.mean() - high.mean())  # over the seeds: each pair's mean change
    assert entry["ci95"][0] > 0  # the pooled interval alone would say "predicts"
    assert [item["status"] for item in entry["seeds"]] == ["predicts", "no evidence"]
    assert entry["status"] == "no evidence" and entry["seeds_agree"] is False
    assert "the seeds disagree (seed 0: predicts, seed 1: no evidence)" in verdict(result)
