"""The DPO probe machinery on a tiny model: log-probabilities against an independent computation,
a DPO step raising the margin, weights restored, and ches.validate end to end."""

import json

import numpy as np
import pytest
import torch
from conftest import MODEL_DIR, ROOT, hh_rows

import ches
from ches.cli import main
from ches.data.formats import to_pairs
from ches.data.tokens import Skip, to_sequences, tokenize_pairs
from ches.evaluate.probes import DPOProbe, dpo_loss, sequence_logps
from ches.evaluate.validation import correlation_table


def pairs_for(rows, tokenizer, max_length=200):
    tokenized = tokenize_pairs(to_pairs({k: [row[k] for row in rows] for k in rows[0]}), tokenizer)
    return [p for p in (to_sequences(t, max_length) for t in tokenized) if not isinstance(p, Skip)]


def test_sequence_logps_match_a_per_sequence_computation(tokenizer, tiny_model):
    model = tiny_model("llama")
    sequences = [s for pair in pairs_for(hh_rows(4), tokenizer) for s in pair]
    with torch.no_grad():
        batched = sequence_logps(model, sequences)
        for value, sequence in zip(batched, sequences):
            logits = model(input_ids=torch.tensor([sequence.input_ids])).logits[0].double()
            logprobs = torch.log_softmax(logits, -1)
            expected = sum(logprobs[t, sequence.input_ids[t + 1]] for t in range(sequence.start, sequence.end))
            assert value.item() == pytest.approx(expected.item(), rel=1e-4)


def test_dpo_loss_by_hand():
    # margin = (1 - 0) - (-1 - 0) = 2 ; beta 0.5 -> -log sigmoid(1)
    loss = dpo_loss(torch.tensor([1.0]), torch.tensor([-1.0]), torch.tensor([0.0]), torch.tensor([0.0]), 0.5)
    assert loss.item() == pytest.approx(-np.log(1 / (1 + np.exp(-1.0))), rel=1e-6)


def test_dpo_steps_raise_the_margin_and_restore_the_weights(tokenizer, tiny_model):
    model = tiny_model("qwen2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe = DPOProbe(model, steps=3, learning_rate=1e-4)
    pairs = pairs_for(hh_rows(3), tokenizer)
    assert pairs
    for pair in pairs:
        result = probe.run([pair])
        assert (result.chosen_change - result.rejected_change).item() > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    pair = pairs_for(hh_rows(3), tokenizer)[0]
    assert probe.run([pair]).chosen_change.item() == probe.run([pair]).chosen_change.item()  # same start each time


def test_correlation_table_on_known_relations():
    rng = np.random.default_rng(0)
    displacement = rng.normal(size=80)
    lengths = rng.integers(5, 50, size=80).astype(float)
    table = correlation_table({"aligned": displacement + 0.1 * rng.normal(size=80), "noise": rng.normal(size=80)},
                              displacement, lengths, lengths, resamples=200)
    assert table["aligned"]["spearman_total"] > 0.9 and table["aligned"]["spearman_total_ci95"][0] > 0.8
    low, high = table["noise"]["spearman_total_ci95"]
    assert low < 0 < high


def test_validate_end_to_end(tmp_path, capsys):
    output = tmp_path / "v.json"
    assert main(["validate", str(ROOT / "examples" / "data" / "hh-sample.jsonl"), "--model", str(MODEL_DIR),
                 "--protocol", "probes", "--n", "12", "--steps", "2", "--max-length", "200", "--output", str(output), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Spearman (95% CI)" in printed and "ln_ches" in printed and "edit similarity (-edit_distance)" in printed
    result = json.loads(output.read_text())
    assert result["verdict"] in printed and result["verdict"].startswith("verdict (probes protocol): ")
    advice = result["recommendation"]
    assert any(line.startswith(f"recommendation: {advice['action'] if advice['action'] != 'filter' else 'filter by'}")
               for line in printed.splitlines())
    # the recommendation the correlations call for, read by hand: a measure predicts when its interval lies above 0,
    # in each seed's probes and over all of them
    from scipy.stats import spearmanr

    def state(interval):
        low, high = interval
        return ("no evidence" if not (np.isfinite(low) and np.isfinite(high)) or low == high
                else "predicts" if low > 0 else "wrong way" if high < 0 else "no evidence")

    assert [item["seed"] for item in result["seeds"]] == [0, 1]
    states = {}
    for name in ("ln_ches", "ches", "edit_distance"):
        entry = result["correlations"][name]
        assert result["evidence"][name]["statistic"] == entry["spearman_total"] or not np.isfinite(entry["spearman_total"])
        each = []
        for item in result["seeds"]:
            rows = [row for row in result["rows"] if row["seed"] == item["seed"]]
            expected_rho = spearmanr([row[name] for row in rows], [row["displacement"] for row in rows]).statistic
            assert item["correlations"][name]["spearman_total"] == pytest.approx(expected_rho, nan_ok=True)
            each.append(state(item["correlations"][name]["spearman_total_ci95"]))
        combined = state(entry["spearman_total_ci95"])
        states[name] = combined if all(found == combined for found in each) else "no evidence"
        assert result["evidence"][name]["status"] == states[name]
    predicting = [name for name, found in states.items() if found == "predicts"]
    if predicting:
        expected = "not enough evidence"  # n=12: fewer than the 32 pairs a recommendation to filter needs
    elif result["summary"]["fraction_displaced"] == 0 or "wrong way" in states.values():
        expected = "do not filter"
    else:
        expected = "not enough evidence"
    assert advice["action"] == expected
    assert advice["measure"] is None and advice["command"] is None
    assert len(result["rows"]) == 24 and set(result["correlations"]) == {"ches", "ln_ches", "last_hidden_ip", "edit_distance"}
    for seed in (0, 1):
        ches_values = [row["ches"] for row in result["rows"] if row["seed"] == seed]
        assert len(ches_values) == 12 and min(ches_values) < np.median(ches_values) < max(ches_values)  # the range
    assert (tmp_path / "v.json.meta.json").is_file()


def test_validate_rejects_bad_n():
    with pytest.raises(ches.ChesError, match=r"n=2 must be an integer >= 3"):
        ches.validate(str(ROOT / "examples" / "data" / "hh-sample.jsonl"), str(MODEL_DIR), n=2)
