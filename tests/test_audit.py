"""ches.audit / ches audit: the trained model's log-probs on the same sequences (against an independent
reference), the changes and the displaced flags, the summary against scipy, the refusals, the report, and the
whole loop a user runs (score with logps -> TRL DPO on ches' reference -> audit)."""

from __future__ import annotations

import copy
import json
import math

import datasets
import numpy as np
import pytest
import torch
from conftest import hh_rows, standard_rows
from test_logps import reference_logps

import ches
from ches.cli import main
from ches.data.inputs import load_data

scipy_stats = pytest.importorskip("scipy.stats")


def trained_copy(model):
    """The model after "training": every weight of one layer moved a little, seeded."""
    changed = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in changed.model.layers[-1].parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return changed


def test_the_audit_measures_the_trained_model_on_the_same_sequences(tiny_model, tokenizer):
    model = tiny_model("llama")
    rows = standard_rows(hh_rows(30))
    scored = ches.score(rows, model, tokenizer, logps=True, max_length=120, progress=False)
    trained = trained_copy(model)
    result = ches.audit(scored, trained, tokenizer, progress=False, resamples=100)
    audited = result.dataset
    assert audited.column_names == scored.column_names + ["chosen_logps_after", "rejected_logps_after", "chosen_change",
                                                          "rejected_change", "displaced"]
    expected = reference_logps(rows, trained, tokenizer, 120)  # the trained model, one sequence at a time
    for row, (chosen, rejected) in enumerate(expected):
        if math.isnan(chosen):
            assert scored["ches_skip"][row] is not None and audited["displaced"][row] is None
            continue
        assert audited["chosen_logps_after"][row] == pytest.approx(chosen, abs=2e-4)
        assert audited["rejected_logps_after"][row] == pytest.approx(rejected, abs=2e-4)
        change = audited["chosen_logps_after"][row] - scored["chosen_logps"][row]
        assert audited["chosen_change"][row] == pytest.approx(change, abs=1e-9)
        tolerance = 16 * 2.0**-23 * max(abs(scored["chosen_logps"][row]), scored["chosen_tokens"][row])  # float32
        assert audited["displaced"][row] == (change < -tolerance)
    summary = result.summary
    keep = [row for row, flag in enumerate(audited["displaced"]) if flag is not None]
    change = np.array([audited["chosen_change"][row] for row in keep])
    assert summary["rows_audited"] == len(keep) and summary["rows_left_out"] == len(rows) - len(keep)
    assert summary["fraction_displaced"] == pytest.approx(float(np.mean([audited["displaced"][row] for row in keep])))
    assert summary["mean_chosen_change"] == pytest.approx(float(change.mean()))
    for name, sign in (("ln_ches", 1), ("ches", 1), ("edit_distance", -1)):
        values = sign * np.array([audited[name][row] for row in keep])
        assert summary["measures"][name]["spearman"] == pytest.approx(scipy_stats.spearmanr(values, change)[0], abs=1e-9)
    lengths = np.array([audited["chosen_tokens"][row] - audited["rejected_tokens"][row] for row in keep])
    assert summary["measures"]["length difference"]["spearman"] == pytest.approx(
        scipy_stats.spearmanr(lengths, change)[0], abs=1e-9)
    deciles = summary["measures"]["ln_ches"]["displaced_by_decile"]
    assert len(deciles) == 10 and np.mean(deciles) == pytest.approx(summary["fraction_displaced"], abs=0.05)


@pytest.mark.parametrize("layout", ["padded", "packed", "prefix_shared"])
def test_auditing_with_the_reference_model_itself_displaces_no_pair_in_any_layout(tiny_model, tokenizer, layout):
    """Float32 rounding moves a re-run's log-probs by ~1e-6 (another layout, another batch size); that is
    not displacement. A trained model's clearly negative changes still are."""
    model = tiny_model("llama")
    rows = standard_rows(hh_rows(40))
    scored = ches.score(rows, model, tokenizer, logps=True, max_length=160, progress=False, layout="padded")
    for batch_tokens in (512, 8192):
        result = ches.audit(scored, model, tokenizer, progress=False, resamples=20, layout=layout,
                            batch_tokens=batch_tokens)
        changes = [change for change in result.dataset["chosen_change"] if not math.isnan(change)]
        assert max(abs(change) for change in changes) < 1e-4  # the same model: rounding only
        assert not any(result.dataset["displaced"]) and result.summary["fraction_displaced"] == 0.0
    trained = ches.audit(scored, trained_copy(model), tokenizer, progress=False, resamples=20, layout=layout).dataset
    clearly = [flag for change, flag in zip(trained["chosen_change"], trained["displaced"]) if change < -1e-3]
    assert clearly and all(clearly)


def test_the_audit_refuses_what_cannot_be_compared(tiny_model, tokenizer):
    model = tiny_model("llama")
    rows = standard_rows(hh_rows(6))
    plain = ches.score(rows, model, tokenizer, max_length=120, progress=False)
    with pytest.raises(ches.ChesError, match=r"these rows have no chosen_logps, rejected_logps: score them with "
                                             r"ches.score\(..., logps=True\)"):
        ches.audit(plain, model, tokenizer)
    scored = ches.score(rows, model, tokenizer, logps=True, max_length=120, progress=False)
    with pytest.raises(ches.ChesError, match=r"these rows have no record of that run"):
        ches.audit(datasets.Dataset.from_list(scored.to_list()), model, tokenizer)
    with pytest.raises(ches.ChesError, match=r"max_length come from the scoring run's record"):
        ches.audit(scored, model, tokenizer, max_length=64)
    other = copy.deepcopy(tokenizer)
    other.eos_token = "<|im_end|>"  # another EOS appended to each completion: other tokens where it is not cut off
    with pytest.raises(ches.ChesError, match=r"in 1 of 6 rows \(rows \d\) the tokens are not those the reference"):
        ches.audit(scored, model, other)


@pytest.mark.slow
def test_score_train_with_trl_on_ches_reference_then_audit(tiny_model, tokenizer, tmp_path, capsys):
    """The loop a user runs: ches score --logps, ches.trl.DPOTrainer, ches audit, ches report."""
    from trl import DPOConfig

    model = tiny_model("llama")
    folder = tmp_path / "sft"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in standard_rows(hh_rows(32))))
    scores = tmp_path / "scores.parquet"
    assert main(["score", str(data), "-m", str(folder), "--logps", "--max-length", "160", "-o", str(scores),
                 "--no-progress"]) == 0
    args = DPOConfig(output_dir=str(tmp_path / "run"), max_length=160, report_to="none", bf16=False, use_cpu=True,
                     per_device_train_batch_size=8, num_train_epochs=2, learning_rate=5e-3, seed=0, save_strategy="no",
                     dataset_num_proc=None)
    trainer = ches.trl.DPOTrainer(model=copy.deepcopy(model), args=args, processing_class=tokenizer,
                                  train_dataset=ches.filter(load_data(str(scores)), 1.0))
    trainer.train()
    trainer.model.save_pretrained(tmp_path / "dpo")
    tokenizer.save_pretrained(tmp_path / "dpo")
    capsys.readouterr()
    audited = tmp_path / "audited.parquet"
    assert main(["audit", str(scores), "-m", str(tmp_path / "dpo"), "-o", str(audited), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    scored_rows = sum(reason is None for reason in load_data(str(scores))["ches_skip"])  # max_length skips a few
    assert printed.startswith(f"{scored_rows} pairs audited: the preferred response lost probability in ")
    meta = json.loads((tmp_path / "audited.parquet.meta.json").read_text())
    rows = load_data(str(audited))
    assert meta["audit"]["rows_audited"] == scored_rows < 32
    assert all(abs(change) > 1e-3 for change in rows["chosen_change"] if not math.isnan(change))  # it trained
    assert main(["report", str(audited), "-o", str(tmp_path / "report.html")]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "Audit: what DPO did to the preferred responses" in page and "displaced pairs by ln_ches decile" in page
