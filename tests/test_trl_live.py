"""ches.trl.DPOTrainer watches displacement live: ches/displaced and ches/chosen_change at TRL's logging steps, equal
to an independent fp32 forward of the model each step trained, and warn_displaced warns once."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
from conftest import MODEL_DIR, hh_rows, standard_rows

import ches
from ches.evaluate.auditing import displacement_tolerance

trl = pytest.importorskip("trl")
MAX_LENGTH = 128
ROWS = 8
BATCH = 4
DISPLACED, CHANGE = "ches/displaced", "ches/chosen_change"


def config(tmp_path, **extra):
    from trl import DPOConfig

    # the whole data is each step's batch: each step trains on exactly the rows it was given
    settings = dict(output_dir=str(tmp_path), max_length=MAX_LENGTH, report_to="none", bf16=False, use_cpu=True,
                    per_device_train_batch_size=ROWS, per_device_eval_batch_size=ROWS, max_steps=3, logging_steps=1,
                    learning_rate=5e-4, seed=0, dataset_num_proc=None, save_strategy="no")
    return DPOConfig(**(settings | extra))


def scored(model, tokenizer, start: int = 0, rows: int = ROWS):
    pairs = standard_rows(hh_rows(4 * rows, start))  # rows too long for MAX_LENGTH are skipped
    data = ches.filter(ches.score(pairs, model, tokenizer, logps=True, max_length=MAX_LENGTH, progress=False), 1.0)
    return data.select(range(rows))


def logged(trainer, key: str) -> list[float]:
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def independent(model, dataset) -> tuple[float, float]:
    """The displaced fraction and mean change of ``dataset``'s preferred responses under ``model``: a plain fp32
    forward, log_softmax, summed over the chosen tokens TRL trains on (prompt_ids + chosen_ids cut at MAX_LENGTH)."""
    changes, tolerances = [], []
    with torch.no_grad():
        for row in dataset:
            ids = (row["prompt_ids"] + row["chosen_ids"])[:MAX_LENGTH]
            start = len(row["prompt_ids"])
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
            per_token = torch.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
            logp = per_token[start - 1 :].double().sum().item()
            changes.append(logp - row["ref_chosen_logps"])
            tolerances.append(displacement_tolerance(np.array([row["ref_chosen_logps"]]), np.array([len(ids) - start]),
                                                     ["float32", "float32"])[0])
    changes = np.array(changes)
    return float(np.mean(changes < -np.array(tolerances))), float(np.mean(changes))


@pytest.mark.parametrize("ld_alpha", [None, 0.5])  # with LD-DPO, policy and reference weighed alike
def test_no_learning_nothing_displaced_and_no_warning(ld_alpha, tiny_model, tokenizer, tmp_path, caplog):
    model = tiny_model("llama")
    data = scored(model, tokenizer)
    trainer = ches.trl.DPOTrainer(model=copy.deepcopy(model), args=config(tmp_path, learning_rate=0.0, ld_alpha=ld_alpha),
                                  train_dataset=data, eval_dataset=scored(model, tokenizer, start=4 * ROWS),
                                  processing_class=tokenizer, warn_displaced=1.0)
    with caplog.at_level(logging.WARNING, logger="ches"):
        trainer.train()
        metrics = trainer.evaluate()
    assert logged(trainer, DISPLACED) == [0.0, 0.0, 0.0]
    changes = logged(trainer, CHANGE)
    assert len(changes) == 3 and all(abs(value) < 1e-3 for value in changes)
    assert all("rewards/chosen" in entry for entry in trainer.state.log_history if DISPLACED in entry)  # beside TRL's
    assert metrics["eval_ches/displaced"] == 0.0 and abs(metrics["eval_ches/chosen_change"]) < 1e-3
    assert "eval_rewards/chosen" in metrics
    assert not [record for record in caplog.records if "warn_displaced" in record.getMessage()]


def test_logged_displacement_is_the_steps_own(tokenizer, tmp_path, caplog):
    from transformers import AutoModelForCausalLM, TrainerCallback

    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR)
    data = scored(model, tokenizer, rows=16)
    expected = []

    class Independent(TrainerCallback):  # the rows of the step about to run, under the weights it runs with
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            begin = state.global_step * BATCH % len(trainer.train_dataset)
            expected.append(independent(model, trainer.train_dataset.select(range(begin, begin + BATCH))))

    # batches of 4 in order (sequential sampling): each step's rows known; rows trained on later batches' gradients
    args = config(tmp_path, per_device_train_batch_size=BATCH, train_sampling_strategy="sequential", max_steps=4)
    trainer = ches.trl.DPOTrainer(model=copy.deepcopy(model), args=args, train_dataset=data, processing_class=tokenizer,
                                  callbacks=[Independent()], warn_displaced=0.1)
    with caplog.at_level(logging.WARNING, logger="ches"):
        trainer.train()
    fractions, changes = logged(trainer, DISPLACED), logged(trainer, CHANGE)
    assert len(expected) == len(fractions) == len(changes) == 4
    assert fractions == [fraction for fraction, _ in expected]
    assert changes == pytest.approx([change for _, change in expected], rel=1e-4, abs=1e-5)
    assert fractions[0] == 0.0 and max(fractions) > 0.1  # the policy started at the reference, then displaced
    assert sum(fraction > 0.1 for fraction in fractions) >= 2  # passed the threshold more than once...
    warned = [record.getMessage() for record in caplog.records if "warn_displaced" in record.getMessage()]
    assert len(warned) == 1  # ...and warned once
    step = 1 + next(i for i, fraction in enumerate(fractions) if fraction > 0.1)
    assert f"at step {step} (training)" in warned[0] and "warn_displaced=0.1" in warned[0]


def test_ld_dpo_weighs_the_policy_as_trl_does():
    from ches.trl import displacement

    # rows: chosen (3 completion tokens), rejected (1): shared length 1, so the chosen's last 2 tokens weigh 0.5
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 0, 0]])
    per_token = torch.tensor([[-1.0, -2.0, -4.0], [-3.0, 0.0, 0.0]])
    displaced, change = displacement(per_token, mask, torch.tensor([-3.0]), 0.5, ["float32"])
    assert change.tolist() == [-1.0 + 0.5 * (-2.0 - 4.0) + 3.0] and displaced.tolist() == [True]
    displaced, change = displacement(per_token, mask, torch.tensor([-7.0]), None, ["float32"])
    assert change.tolist() == [0.0] and displaced.tolist() == [False]


@pytest.mark.parametrize("value", [0, 1.5, "x", -0.2, True])
def test_a_bad_threshold_is_refused_before_trl_runs(value):
    with pytest.raises(ches.ChesError, match=r"warn_displaced=.*give a fraction in \(0, 1\]"):
        ches.trl.DPOTrainer(model="not loaded yet", warn_displaced=value)  # refused before the model is looked at
