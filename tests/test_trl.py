"""ches.trl.DPOTrainer: TRL 1.16's DPOTrainer on ches' reference log-probs trains with the same per-step losses
as TRL's own precompute, runs no reference model, and refuses log-probs that do not belong to the run."""

from __future__ import annotations

import copy

import datasets
import pytest
import torch
from conftest import conversational_rows, hh_rows, standard_rows

import ches

trl = pytest.importorskip("trl")  # in the test extras, so CI always has it
MAX_LENGTH = 160


def config(tmp_path, **extra):
    from trl import DPOConfig

    settings = dict(output_dir=str(tmp_path), max_length=MAX_LENGTH, report_to="none", bf16=False, use_cpu=True,
                    per_device_train_batch_size=4, max_steps=3, logging_steps=1, learning_rate=1e-3, seed=0,
                    dataset_num_proc=None, save_strategy="no")
    return DPOConfig(**(settings | extra))


def losses(trainer) -> list[float]:
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.parametrize("fmt", ["standard", "conversational"])
def test_losses_equal_trls_own_precompute(fmt, tiny_model, tokenizer, tmp_path):
    rows = {"standard": standard_rows, "conversational": conversational_rows}[fmt](hh_rows(24))
    model = tiny_model("llama")
    theirs = trl.DPOTrainer(model=copy.deepcopy(model), args=config(tmp_path / "trl", precompute_ref_log_probs=True),
                            train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer)
    scored = ches.score(rows, model, tokenizer, logps=True, max_length=MAX_LENGTH, progress=False)
    kept = ches.filter(scored, 1.0)  # the rows ches could score: exactly those TRL keeps
    ours = ches.trl.DPOTrainer(model=copy.deepcopy(model), args=config(tmp_path / "ches"), train_dataset=kept,
                               processing_class=tokenizer)
    assert ours.ref_model is None and len(ours.train_dataset) == len(theirs.train_dataset)
    ran = []
    original = type(ours).compute_ref_log_probs
    type(ours).compute_ref_log_probs = lambda *args, **kwargs: ran.append(1) or original(*args, **kwargs)
    try:
        expected, got = losses(theirs), losses(ours)
    finally:
        type(ours).compute_ref_log_probs = original
    assert not ran  # no reference pass at all
    assert len(got) == len(expected) == 3
    assert got == pytest.approx(expected, abs=1e-5)
    assert len({round(value, 4) for value in expected}) == 3  # the policy moved: the losses say something


def test_it_refuses_log_probs_that_are_not_this_runs_reference(tiny_model, tokenizer, tmp_path):
    rows = standard_rows(hh_rows(12))
    model = tiny_model("llama")
    scored = ches.filter(ches.score(rows, model, tokenizer, logps=True, max_length=MAX_LENGTH, progress=False), 1.0)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model.layers[0].mlp.up_proj.weight[0, 0] += 1.0
    cases = [
        (dict(train_dataset=ches.score(rows, model, tokenizer, max_length=MAX_LENGTH, progress=False)),
         r"has no chosen_logps, rejected_logps column\(s\); score it with ches.score\(..., logps=True\)"),
        (dict(train_dataset=ches.score(rows, model, tokenizer, logps=True, max_length=40, progress=False)),
         r"column 'chosen_logps' is NaN in \d+ row\(s\) .*filter them first"),
        (dict(train_dataset=datasets.Dataset.from_list(scored.to_list())), r"carries no record of the model"),
        (dict(train_dataset=scored, model=other), r"log-probs came from other weights than the model the trainer starts"),
        (dict(train_dataset=scored, args=config(tmp_path, max_length=128)),
         r"in 3 of 7 rows \(rows 0, 7, 8\) the tokens TRL trains on are not those ches computed the reference "
         r"log-probs on .*max_length=128 truncating them otherwise"),
        (dict(train_dataset=scored, ref_model=model), r"ref_model would never run"),
    ]
    for overrides, message in cases:
        arguments = dict(model=copy.deepcopy(model), args=config(tmp_path), processing_class=tokenizer) | overrides
        with pytest.raises(ches.ChesError, match=message):
            ches.trl.DPOTrainer(**arguments)


def test_a_scored_file_keeps_its_reference_through_its_sidecar(tiny_model, tokenizer, tmp_path):
    from ches.cli import main
    from ches.data.inputs import load_data

    model_folder = tmp_path / "model"
    tiny_model("llama").save_pretrained(model_folder)
    tokenizer.save_pretrained(model_folder)
    data = tmp_path / "pairs.jsonl"
    datasets.Dataset.from_list(standard_rows(hh_rows(8))).to_json(str(data))
    assert main(["score", str(data), "-m", str(model_folder), "--logps", "--max-length", str(MAX_LENGTH),
                 "-o", str(tmp_path / "scores.parquet"), "--no-progress"]) == 0
    loaded = load_data(str(tmp_path / "scores.parquet"))
    trainer = ches.trl.DPOTrainer(model=copy.deepcopy(tiny_model("llama")), args=config(tmp_path / "out"),
                                  train_dataset=ches.filter(loaded, 1.0), processing_class=tokenizer)
    assert "ref_chosen_logps" in trainer.train_dataset.column_names
