"""ches validate trains through TRL: a subset run is TRL's own training (its DPOTrainer with its precompute, on a
copy of the model) measured one sequence at a time; the user's DPOConfig, file or LoRA is what trains and what
the result records; the model given is never changed; bad configs are refused before any work; without TRL
only the probes protocol runs."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import sys

import datasets
import pytest
import torch
from conftest import MODEL_DIR, ROOT, hh_rows, standard_rows

import ches
from ches.cli import main
from ches.evaluate.training import train_and_audit, training_of, twin

trl = pytest.importorskip("trl")  # in the test extras, so CI always has it
HH_SAMPLE = str(ROOT / "examples" / "data" / "hh-sample.jsonl")
MAX_LENGTH = 128


def completion_logp(model, prompt_ids, completion_ids, max_length=MAX_LENGTH) -> float:
    """log pi(completion | prompt): one sequence cut at ``max_length`` (keep_start, as TRL's collator cuts it),
    one forward of its own, float64 log-softmax."""
    ids = (list(prompt_ids) + list(completion_ids))[:max_length]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logprobs = torch.log_softmax(logits, -1)
    return float(sum(logprobs[t - 1, ids[t]] for t in range(len(prompt_ids), len(ids))))


def scored_rows(model, tokenizer, count=12):
    return ches.filter(ches.score(standard_rows(hh_rows(count)), model, tokenizer, logps=True, max_length=MAX_LENGTH,
                                  progress=False), 1.0)


@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_a_subset_run_is_trls_own_training_measured_pair_by_pair(loss, tiny_model, tokenizer, tmp_path):
    model = tiny_model("llama")
    rows = scored_rows(model, tokenizer)
    fields = {"loss_type": loss, "learning_rate": 2e-3, "per_device_train_batch_size": 4, "num_train_epochs": 2,
              "max_length": MAX_LENGTH, "lr_scheduler_type": "constant", "dataset_num_proc": None}
    training = training_of(fields)
    ours = train_and_audit(model, rows, tokenizer, training, seed=3, output_dir=str(tmp_path / "ours"),
                           device=torch.device("cpu"), resamples=20)

    # the same training by TRL itself: its DPOTrainer, its own reference pass, a copy of the model
    theirs = trl.DPOTrainer(model=copy.deepcopy(model), processing_class=tokenizer,
                            train_dataset=datasets.Dataset.from_dict({name: rows[name] for name in
                                                                      ("prompt", "chosen", "rejected")}),
                            args=trl.DPOConfig(output_dir=str(tmp_path / "theirs"), use_cpu=True, bf16=False,
                                               report_to="none", save_strategy="no", seed=3, data_seed=3,
                                               precompute_ref_log_probs=True, **fields))
    theirs.train()
    trained = theirs.model.eval()
    prepared = theirs.train_dataset
    assert ours["steps"] == theirs.state.global_step == 2 * -(-len(rows) // 4) >= 4  # 2 epochs of batches of 4
    expected = [completion_logp(trained, prompt, chosen) - completion_logp(model, prompt, chosen)
                for prompt, chosen in zip(prepared["prompt_ids"], prepared["chosen_ids"])]
    assert max(abs(value) for value in expected) > 0.05  # the training moved the preferred responses
    assert ours["chosen_change"] == pytest.approx(expected, abs=2e-4)
    losses = [entry["loss"] for entry in ours["log"] if "loss" in entry]
    assert losses == pytest.approx([entry["loss"] for entry in theirs.state.log_history if "loss" in entry], abs=1e-5)


def state_of(model) -> dict:
    """Everything of a loaded model that a run could change: its weights, buffers, config, module tree, flags."""
    return {"weights": {name: value.clone() for name, value in model.state_dict().items()},
            "config": model.config.to_dict(), "modules": [name for name, _ in model.named_modules()],
            "grad": [parameter.requires_grad for parameter in model.parameters()],
            "hooks": sum(len(module._forward_hooks) + len(module._forward_pre_hooks) for module in model.modules()),
            "forward": model.forward, "dropout": [getattr(module, "p", None) for module in model.modules()]}


def assert_same(before: dict, model) -> None:
    after = state_of(model)
    assert after["weights"].keys() == before["weights"].keys()
    assert all(torch.equal(before["weights"][name], value) for name, value in after["weights"].items())
    assert {key: value for key, value in after.items() if key != "weights"} == \
        {key: value for key, value in before.items() if key != "weights"}


@pytest.mark.parametrize("lora", [False, True])
def test_runs_start_from_the_same_weights_and_leave_the_model_given_as_it_was(lora, tiny_model, tokenizer, tmp_path):
    model = tiny_model("llama")
    before = state_of(model)
    rows = scored_rows(model, tokenizer, 8)
    training = training_of({"learning_rate": 5e-3, "per_device_train_batch_size": 4, "max_length": MAX_LENGTH,
                            "dataset_num_proc": None}, lora_r=4 if lora else None)
    first, second = (train_and_audit(model, rows, tokenizer, training, seed=0, output_dir=str(tmp_path),
                                     device=torch.device("cpu"), resamples=20) for _ in range(2))
    assert first["chosen_change"] == pytest.approx(second["chosen_change"], abs=1e-6)  # the same start, the same run
    assert max(abs(value) for value in first["chosen_change"]) > 1e-3
    assert_same(before, model)
    shared = twin(model, share=True)
    assert all(a is not b and a.data_ptr() == b.data_ptr() for a, b in zip(shared.parameters(), model.parameters()))


def folder_digest(folder) -> dict:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())
            if path.is_file()}


@pytest.mark.slow
def test_validate_with_lora_and_a_dpo_config_file_on_the_command_line(tmp_path, capsys):
    """The issue's command on the bundled model: TRL's trainer with the file's loss, LoRA adapters, the trainer's
    configuration in the JSON, ches/displaced in every run's log, the model folder byte for byte as it was."""
    config = tmp_path / "cfg.yaml"
    config.write_text("loss_type: ipo\nbeta: 0.2\nlearning_rate: 5.0e-3\nmax_length: 200\nlogging_steps: 1\n"
                      "bf16: false\nmodel_name_or_path: where/the/sft/model/is\n")
    folder = folder_digest(MODEL_DIR)
    output = tmp_path / "v.json"
    assert main(["validate", HH_SAMPLE, "--model", str(MODEL_DIR), "--n", "4", "--lora-r", "8", "--dpo-config",
                 str(config), "--output", str(output), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert folder_digest(MODEL_DIR) == folder
    result = json.loads(output.read_text())
    trainer = result["settings"]["trainer"]
    assert trainer["trainer"] == "ches.trl.DPOTrainer" and trainer["source"] == str(config)
    assert {name: trainer["dpo_config"][name] for name in ("loss_type", "beta", "learning_rate", "max_length")} == {
        "loss_type": ["ipo"], "beta": 0.2, "learning_rate": 5e-3, "max_length": 200}
    assert trainer["dpo_config"]["num_train_epochs"] == 3.0  # the file does not set it: TRL's default
    assert trainer["peft_config"]["r"] == 8 and trainer["peft_config"]["peft_type"] == "LORA"
    assert result["settings"]["max_length"] == 200  # the scoring pass truncates where the runs do
    assert "loss ipo" in printed and "LoRA r=8" in printed
    runs = [run for item in result["subsets"] for run in item["runs"]]
    assert len(runs) == 2 * 9 and {run["seed"] for run in runs} == {0, 1}
    assert all(any("ches/displaced" in entry for entry in run["log"]) for run in runs)
    assert all(run["steps"] == 3 for run in runs)  # 4 pairs, batch 8: one step per epoch, 3 epochs


def test_validate_leaves_a_loaded_model_as_it_was_and_refuses_to_cast_it(tiny_model, tokenizer):
    model = tiny_model("llama")
    before = state_of(model)
    result = ches.validate(standard_rows(hh_rows(24)), model, tokenizer, n=3, seeds=1, learning_rate=5e-3,
                           max_length=MAX_LENGTH, progress=False, resamples=20)
    assert result["settings"]["trainer"]["dpo_config"]["learning_rate"] == 5e-3
    assert_same(before, model)
    with pytest.raises(ches.ChesError, match=r"the model is in float32 and validate was asked for dtype=bfloat16; "
                                             r"validate never changes the model it is given"):
        ches.validate(standard_rows(hh_rows(24)), model, tokenizer, n=3, dtype="bfloat16")
    assert_same(before, model)


@pytest.mark.parametrize("text, suffix, message", [
    ("loss_type: ipo\nlerning_rate: 1e-4\n", ".yaml", r"not DPOConfig fields: lerning_rate \(did you mean learning_rate\?\)"),
    ("loss_type: [ipo\n", ".yaml", r"is not valid YAML"),
    ("{\"beta\": 0.1,}", ".json", r"is not valid JSON"),
    ("- beta\n- 0.1\n", ".yml", r"must hold one mapping of DPOConfig fields \(name: value\); found list"),
    ("beta: 0.1\n", ".txt", r"write the DPOConfig fields as .json or .yaml \(found .txt\)"),
    ("loss_type: [sigmoid, nonsense]\n", ".yaml", r"loss_type 'nonsense' is not one of TRL's: sigmoid, hinge, ipo"),
    ("per_device_train_batch_size: 0\n", ".yaml", r"per_device_train_batch_size=0 must be at least 1"),
    ("num_train_epochs: 0\n", ".yaml", r"num_train_epochs=0 \(and no max_steps\) trains nothing"),
    ("truncation_mode: keep_end\n", ".yaml", r"truncation_mode='keep_end'.*keep_start"),
])
def test_a_bad_dpo_config_file_is_one_line_before_the_data_or_the_model(text, suffix, message, tmp_path, capsys,
                                                                          monkeypatch):
    from ches.evaluate import validation

    def never(*args, **kwargs):
        raise AssertionError("read before the config was checked")

    monkeypatch.setattr(validation, "load_data", never)
    monkeypatch.setattr(validation, "load_model", never)
    config = tmp_path / f"cfg{suffix}"
    config.write_text(text)
    assert main(["validate", HH_SAMPLE, "--model", str(MODEL_DIR), "--dpo-config", str(config)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and re.search(message, error), error


def test_trls_script_fields_are_left_out_with_a_line_and_its_lora_fields_used(tmp_path, caplog):
    config = tmp_path / "recipe.yaml"
    config.write_text("model_name_or_path: sft\ndataset_name: hh\nuse_peft: true\nlora_r: 4\nlora_alpha: 8\n"
                      "output_dir: runs/dpo\nreport_to: wandb\nbeta: 0.05\n")
    with caplog.at_level(logging.INFO, logger="ches"):
        training = training_of(str(config))
    said = caplog.text
    assert "dataset_name, model_name_or_path left out" in said and "output_dir='runs/dpo' not used" in said
    assert "report_to='wandb' not used" in said
    assert training.fields == {"beta": 0.05, "report_to": "wandb"}  # report_to is replaced in every run
    assert (training.peft.r, training.peft.lora_alpha) == (4, 8)
    with tempfile_folder() as folder:
        used = training.config(folder, seed=5, device=torch.device("cpu"))
    assert (used.beta, used.seed, used.report_to, used.save_strategy) == (0.05, 5, [], "no")


class tempfile_folder:
    def __enter__(self):
        import tempfile

        self.folder = tempfile.TemporaryDirectory()
        return self.folder.name

    def __exit__(self, *exc):
        self.folder.cleanup()


def test_shorthands_replace_the_configs_fields_and_a_dpoconfig_is_taken_as_it_is(tmp_path):
    given = trl.DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, loss_type=["sigmoid", "sft"], beta=0.3,
                          learning_rate=1e-5, loss_weights=[1.0, 0.5], label_smoothing=0.1)
    training = training_of(given, beta=0.2, epochs=2)
    used = training.config(str(tmp_path / "run"), seed=1, device=torch.device("cpu"))
    assert (used.loss_type, used.loss_weights, used.beta, used.learning_rate, used.label_smoothing,
            used.num_train_epochs) == (["sigmoid", "sft"], [1.0, 0.5], 0.2, 1e-5, 0.1, 2)  # RPO, as TRL 1.16 writes it
    assert given.beta == 0.3 and given.num_train_epochs == 3  # the user's object is not changed
    record = training.record(torch.device("cpu"))["dpo_config"]
    assert record["loss_type"] == ["sigmoid", "sft"] and record["loss_weights"] == [1.0, 0.5] and record["beta"] == 0.2


@pytest.mark.parametrize("keywords, message", [
    ({"protocol": "probes", "lora_r": 8}, r"lora_r set how the subsets protocol trains"),
    ({"protocol": "probes", "dpo_config": "cfg.yaml"}, r"dpo_config set how the subsets protocol trains"),
    ({"lora_r": 8, "peft_config": object()}, r"peft_config and lora_r both say how to apply LoRA; give one"),
    ({"lora_r": 0}, r"lora_r=0 must be a positive integer"),
    ({"seeds": 0}, r"seeds=0 must be a positive integer"),
    ({"peft_config": "lora"}, r"peft_config= must be a peft config"),
    ({"dpo_config": 3}, r"dpo_config= must be a trl.DPOConfig, a dict of its fields or the path"),
])
def test_training_options_that_cannot_act_are_refused_before_the_data(keywords, message):
    with pytest.raises(ches.ChesError, match=message):
        ches.validate("no/such/data.jsonl", "no/such/model", **keywords)


def test_without_trl_the_subsets_protocol_says_how_to_install_it_and_probes_run(monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)  # import trl raises ImportError
    with pytest.raises(ches.ChesError, match=r"^ches validate's subsets protocol trains with TRL's DPOTrainer: pip "
                                             r"install 'ches\[trl\]'"):
        ches.validate(HH_SAMPLE, str(MODEL_DIR), n=3)
    result = ches.validate(HH_SAMPLE, str(MODEL_DIR), protocol="probes", n=3, seeds=1, steps=1, max_length=96,
                           progress=False, resamples=10)
    assert len(result["rows"]) == 3


@pytest.mark.parametrize("command", ["validate", "audit"])
def test_an_output_never_lands_on_the_config_or_validation_file_it_reads(command, tmp_path, capsys):
    read = tmp_path / "read.json"
    read.write_text('{"beta": 0.1}')
    flag = "--dpo-config" if command == "validate" else "--validation"
    assert main([command, HH_SAMPLE, "--model", str(MODEL_DIR), flag, str(read), "--output", str(read),
                 "--overwrite"]) == 2
    assert capsys.readouterr().err.strip() == f"ches: error: {read} would replace the input {read}; choose another output path."
    assert read.read_text() == '{"beta": 0.1}'


@pytest.mark.parametrize("share", [True, False])
def test_a_twin_keeps_tied_weights_tied_and_computes_what_the_model_does(share, tiny_model):
    model = tiny_model("gpt2")  # GPT-2 ties its LM head to its input embeddings
    copied = twin(model, share=share).eval()
    assert copied.lm_head.weight is copied.transformer.wte.weight
    assert (copied.lm_head.weight.data_ptr() == model.lm_head.weight.data_ptr()) is share
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        assert torch.equal(copied(input_ids=ids).logits, model(input_ids=ids).logits)


def test_a_peft_config_is_taken_as_it_is():
    from peft import LoraConfig

    given = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], task_type="CAUSAL_LM")
    training = training_of(None, peft_config=given)
    assert training.peft is given
    assert training.record(torch.device("cpu"))["peft_config"]["target_modules"] == ["q_proj"]
