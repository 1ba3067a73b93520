"""Hand-offs checked by content (issue 28): every number travels with the digest of the tokens it was computed on,
so the trainer and the audit refuse exactly the rows whose tokens changed, and accept setups that change no number.

Each case reproduces a hand-off that went wrong before: TRL's own trainer (its tokenization, its precompute) is the
reference the losses are compared with."""

from __future__ import annotations

import copy
import json
import logging

import datasets
import pytest
from conftest import conversational_rows, hh_rows, standard_rows

import ches
from ches.cli import main
from ches.data.inputs import load_data
from ches.data.tokens import token_digest

trl = pytest.importorskip("trl")  # in the test extras, so CI always has it


def config(tmp_path, **extra):
    from trl import DPOConfig

    settings = dict(output_dir=str(tmp_path), report_to="none", bf16=False, use_cpu=True, per_device_train_batch_size=4,
                    max_steps=2, logging_steps=1, learning_rate=1e-3, seed=0, dataset_num_proc=None, save_strategy="no")
    return DPOConfig(**(settings | extra))


def losses(trainer) -> list[float]:
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def trls_own(model, rows, tokenizer, args):
    """Losses of TRL's own trainer with its own reference precompute (bf16=False)."""
    theirs = trl.DPOTrainer(model=copy.deepcopy(model), args=args, train_dataset=datasets.Dataset.from_list(rows),
                            processing_class=tokenizer)
    return losses(theirs)


def scored_files(tmp_path, model, tokenizer, rows):
    """A model folder (``sft``) and what ``ches score --logps`` wrote for ``rows`` with it (``scores.parquet``)."""
    folder, data, scores = tmp_path / "sft", tmp_path / "pairs.jsonl", tmp_path / "scores.parquet"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    datasets.Dataset.from_list(rows).to_json(str(data))
    assert main(["score", str(data), "-m", str(folder), "--logps", "-o", str(scores), "--no-progress"]) == 0
    return folder, scores


def test_the_digest_is_that_of_trls_own_tokens(tiny_model, tokenizer, tmp_path):
    """ches_token_digest of each row equals the digest of the ids TRL's own preparation makes of it."""
    rows = conversational_rows(hh_rows(6))
    model = tiny_model("llama")
    scored = ches.score(rows, model, tokenizer, progress=False, max_length=200)
    theirs = trl.DPOTrainer(model=copy.deepcopy(model), args=config(tmp_path, max_length=200, precompute_ref_log_probs=True),
                            train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer)
    prepared = theirs.train_dataset
    expected = [token_digest(p, c, r, 200) for p, c, r in zip(prepared["prompt_ids"], prepared["chosen_ids"],
                                                               prepared["rejected_ids"])]
    kept = [digest for digest, skip in zip(scored["ches_token_digest"], scored["ches_skip"]) if skip is None]
    assert kept == expected and len(set(expected)) == len(expected)


def test_text_edited_after_scoring_is_refused_row_by_row(tiny_model, tokenizer, tmp_path):
    rows = standard_rows(hh_rows(8))
    model = tiny_model("llama")
    scored = ches.score(rows, model, tokenizer, logps=True, progress=False)
    edited = scored.map(lambda row, index: {"chosen": row["chosen"] + " (edited)" if index in (2, 5) else row["chosen"]},
                        with_indices=True)
    with pytest.raises(ches.ChesError, match=r"train_dataset: in 2 of 8 rows \(rows 2, 5\) the tokens TRL trains on"):
        ches.trl.DPOTrainer(model=copy.deepcopy(model), args=config(tmp_path), train_dataset=edited,
                            processing_class=tokenizer)
    with pytest.raises(ches.ChesError, match=r"in 2 of 8 rows \(rows 2, 5\) the tokens are not those the reference"):
        ches.audit(edited, model, tokenizer, progress=False)


def test_a_parquet_edited_in_pandas_beside_its_sidecar_is_refused(tiny_model, tokenizer, tmp_path):
    pandas = pytest.importorskip("pandas")
    rows = standard_rows(hh_rows(6))
    model = tiny_model("llama")
    folder, scores = scored_files(tmp_path, model, tokenizer, rows)
    frame = pandas.read_parquet(scores)
    frame.loc[3, "rejected"] = frame.loc[3, "rejected"] + " Sorry."
    frame.to_parquet(scores)
    with pytest.raises(ches.ChesError, match=r"in 1 of 6 rows \(rows 3\)"):
        ches.trl.DPOTrainer(model=copy.deepcopy(model), args=config(tmp_path / "out"), train_dataset=load_data(str(scores)),
                            processing_class=tokenizer)


def test_processing_class_none_is_checked_against_the_tokenizer_trl_loads(tiny_model, tokenizer, tmp_path):
    """TRL loads the model folder's tokenizer when processing_class is None; its chat template differs from
    the one the rows were scored with, so the conversational rows' tokens differ and are refused."""
    rows = conversational_rows(hh_rows(6))
    model = tiny_model("llama")
    scored = ches.score(rows, model, tokenizer, logps=True, progress=False)
    folder = tmp_path / "sft"
    other = copy.deepcopy(tokenizer)
    other.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }} says: {{ m['content'] }}<|im_end|>"
                           "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant says:{% endif %}")
    other.save_pretrained(folder)
    policy = copy.deepcopy(model)
    policy.save_pretrained(folder)
    policy = type(model).from_pretrained(folder)
    with pytest.raises(ches.ChesError, match=r"in 6 of 6 rows .* another tokenizer or chat template"):
        ches.trl.DPOTrainer(model=policy, args=config(tmp_path / "out"), train_dataset=scored)
    tokenizer.save_pretrained(folder)  # the folder now holds the tokenizer the rows were scored with
    trainer = ches.trl.DPOTrainer(model=type(model).from_pretrained(folder), args=config(tmp_path / "out"),
                                  train_dataset=scored)
    assert len(trainer.train_dataset) == 6


def test_a_reference_free_loss_is_said_to_be(tiny_model, tokenizer, tmp_path, caplog):
    rows = standard_rows(hh_rows(4))
    model = tiny_model("llama")
    scored = ches.score(rows, model, tokenizer, logps=True, progress=False)
    with caplog.at_level(logging.INFO, logger="ches"):
        ches.trl.DPOTrainer(model=copy.deepcopy(model), args=config(tmp_path, loss_type=["sft"]), train_dataset=scored,
                            processing_class=tokenizer)
    assert "uses no reference log-probs" in caplog.text


@pytest.mark.parametrize("fmt", ["standard", "conversational"])
def test_ld_alpha_trains_on_trls_own_ld_dpo_reference(fmt, tiny_model, tokenizer, tmp_path):
    """DPOConfig(ld_alpha=0.5): TRL's reference is the shared part plus ld_alpha times the tail (tokens past the
    shorter completion's length); from ches' shared-part log-probs the losses are TRL's own precompute's, with
    truncation at max_length cutting some completions."""
    rows = {"standard": standard_rows, "conversational": conversational_rows}[fmt](hh_rows(12))
    model = tiny_model("llama")
    scored = ches.filter(ches.score(rows, model, tokenizer, logps=True, max_length=160, progress=False), 1.0)
    assert any(flags for flags in scored["ches_flags"])  # some completions are cut by max_length
    ours = ches.trl.DPOTrainer(model=copy.deepcopy(model), args=config(tmp_path / "ches", max_length=160, ld_alpha=0.5),
                               train_dataset=scored, processing_class=tokenizer)
    got = losses(ours)
    expected = trls_own(model, rows, tokenizer, config(tmp_path / "trl", max_length=160, ld_alpha=0.5,
                                                         precompute_ref_log_probs=True))
    assert got == pytest.approx(expected, abs=1e-5)
    plain = trls_own(model, rows, tokenizer, config(tmp_path / "plain", max_length=160, precompute_ref_log_probs=True))
    assert abs(plain[0] - expected[0]) > 1e-4 or abs(plain[1] - expected[1]) > 1e-4  # ld_alpha changes the loss


@pytest.mark.parametrize("layout", ["padded", "packed", "prefix_shared", "shared_prompt"])
def test_shared_logps_equal_a_one_sequence_float32_forward(layout, tiny_model, tokenizer):
    """chosen_shared_logps / rejected_shared_logps: the log-probability of each completion's first
    min(|y+|, |y-|) tokens after truncation, in every layout, against the model's own logits one sequence at a time."""
    import torch

    from ches.data.formats import to_pairs
    from ches.data.tokens import to_sequences, tokenize_pairs

    rows = standard_rows(hh_rows(6))
    model = tiny_model("llama")
    scored = ches.score(rows, model, tokenizer, logps=True, max_length=120, layout=layout, progress=False)
    pairs = to_pairs({name: [row[name] for row in rows] for name in ("prompt", "chosen", "rejected")})
    for row, tokenized in enumerate(tokenize_pairs(pairs, tokenizer)):
        plan = to_sequences(tokenized, 120)
        if not hasattr(plan, "chosen"):
            continue
        shared = min(plan.chosen.end - plan.chosen.start, plan.rejected.end - plan.rejected.start)
        for side, sequence in (("chosen", plan.chosen), ("rejected", plan.rejected)):
            with torch.no_grad():
                logits = model(torch.tensor([sequence.input_ids])).logits[0].double()
            picked = torch.log_softmax(logits, -1)[range(sequence.start, sequence.end),
                                                   sequence.input_ids[sequence.start + 1 : sequence.end + 1]]
            assert scored[row][f"{side}_shared_logps"] == pytest.approx(float(picked[:shared].sum()), abs=2e-4)
            assert scored[row][f"{side}_logps"] == pytest.approx(float(picked.sum()), abs=2e-4)


def test_default_max_length_that_truncates_nothing_is_accepted_with_trls_losses(tiny_model, tokenizer, tmp_path):
    """Scored with max_length=None, trained with TRL's default DPOConfig(max_length=1024): no row is that long,
    so the tokens are the same, and the losses are TRL's own precompute's."""
    rows = standard_rows(hh_rows(12))
    model = tiny_model("llama")
    scored = ches.score(rows, model, tokenizer, logps=True, progress=False)  # max_length=None
    args = config(tmp_path / "ches")
    assert args.max_length == 1024
    ours = ches.trl.DPOTrainer(model=copy.deepcopy(model), args=args, train_dataset=scored, processing_class=tokenizer)
    got = losses(ours)
    assert got == pytest.approx(trls_own(model, rows, tokenizer, config(tmp_path / "trl", precompute_ref_log_probs=True)),
                                abs=1e-5)


def test_a_tokenizer_object_that_gives_the_same_ids_is_accepted(tiny_model, tokenizer, tmp_path):
    rows = standard_rows(hh_rows(6))
    model = tiny_model("llama")
    scored = ches.score(rows, model, tokenizer, logps=True, progress=False)
    same_ids = copy.deepcopy(tokenizer)
    same_ids.chat_template = "{{ messages }}"  # standard rows never render a template: the ids do not change
    trainer = ches.trl.DPOTrainer(model=copy.deepcopy(model), args=config(tmp_path), train_dataset=scored,
                                  processing_class=same_ids)
    assert len(trainer.train_dataset) == 6


def test_data_scored_with_columns_trains_under_trls_names(tiny_model, tokenizer, tmp_path):
    rows = [{"question": row["prompt"], "good": row["chosen"], "bad": row["rejected"]} for row in standard_rows(hh_rows(8))]
    model = tiny_model("llama")
    scored = ches.score(rows, model, tokenizer, logps=True, progress=False,
                        columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    ours = ches.trl.DPOTrainer(model=copy.deepcopy(model), args=config(tmp_path / "ches"), train_dataset=scored,
                               processing_class=tokenizer)
    plain = [{"prompt": row["question"], "chosen": row["good"], "rejected": row["bad"]} for row in rows]
    assert losses(ours) == pytest.approx(
        trls_own(model, plain, tokenizer, config(tmp_path / "trl", precompute_ref_log_probs=True)), abs=1e-5)


def test_a_datasetdict_and_evaluate_on_scored_rows(tiny_model, tokenizer, tmp_path):
    rows = standard_rows(hh_rows(8))
    model = tiny_model("llama")
    scored = ches.score(datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}), model, tokenizer,
                        logps=True, progress=False)
    with pytest.raises(ches.ChesError, match=r"train_dataset is a DatasetDict with splits \['train'\]; pass one split, "
                                             r"e.g. train_dataset=scored\['train'\]"):
        ches.trl.DPOTrainer(model=copy.deepcopy(model), args=config(tmp_path), train_dataset=scored,
                            processing_class=tokenizer)
    with pytest.raises(ches.ChesError, match=r"train_dataset is of type IterableDataset; ches.trl.DPOTrainer reads the "
                                             r"log-probs row by row from a map-style datasets.Dataset"):
        ches.trl.DPOTrainer(model=copy.deepcopy(model), args=config(tmp_path), processing_class=tokenizer,
                            train_dataset=scored["train"].to_iterable_dataset())
    trainer = ches.trl.DPOTrainer(model=copy.deepcopy(model), args=config(tmp_path), train_dataset=scored["train"],
                                  processing_class=tokenizer)
    ours = trainer.evaluate(eval_dataset=scored["train"])
    theirs = trl.DPOTrainer(model=copy.deepcopy(model), args=config(tmp_path / "trl", precompute_ref_log_probs=True),
                            train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer)
    assert ours["eval_loss"] == pytest.approx(theirs.evaluate(eval_dataset=datasets.Dataset.from_list(rows))["eval_loss"],
                                              abs=1e-5)


def test_a_rescore_without_logps_drops_the_earlier_models_log_probs(tiny_model, tokenizer, caplog):
    rows = standard_rows(hh_rows(4))
    first = ches.score(rows, tiny_model("llama"), tokenizer, logps=True, progress=False)
    ranked = ches.rank(first)
    with caplog.at_level(logging.INFO, logger="ches"):
        again = ches.score(ranked, tiny_model("qwen2"), tokenizer, progress=False)
    assert not {"chosen_logps", "rejected_logps", "ches_rank", "ches_percentile"} & set(again.column_names)
    assert ches.data.columns.reference_of(again) is None
    assert ("dropping its chosen_logps, rejected_logps, chosen_shared_logps, rejected_shared_logps, ches_rank, "
            "ches_percentile") in caplog.text
    assert "every other column is kept as it was" in caplog.text
    with pytest.raises(ches.ChesError, match="has no chosen_logps, rejected_logps column"):
        ches.trl.DPOTrainer(model=tiny_model("qwen2"), args=config("unused"), train_dataset=again,
                            processing_class=tokenizer)


def test_the_audit_output_keeps_the_reference_and_offers_the_next_round(tiny_model, tokenizer, tmp_path):
    """The audited file's chosen_logps are the reference's and say so; --next-round gives the trained model's rows,
    recorded as its own reference, which the trainer accepts for a second round from the trained model."""
    rows = standard_rows(hh_rows(8))
    sft, trained = tiny_model("llama"), copy.deepcopy(tiny_model("llama"))
    import torch

    with torch.no_grad():
        trained.model.layers[0].mlp.up_proj.weight.mul_(1.5)
    folders = {}
    for name, model in (("sft", sft), ("dpo", trained)):
        folders[name] = tmp_path / name
        model.save_pretrained(folders[name])
        tokenizer.save_pretrained(folders[name])
    data = tmp_path / "pairs.jsonl"
    datasets.Dataset.from_list(rows).to_json(str(data))
    scores, audited, second = tmp_path / "scores.parquet", tmp_path / "audited.jsonl", tmp_path / "round2.parquet"
    assert main(["score", str(data), "-m", str(folders["sft"]), "--logps", "-o", str(scores), "--no-progress"]) == 0
    assert main(["audit", str(scores), "-m", str(folders["dpo"]), "-o", str(audited), "--no-progress"]) == 0
    meta = json.loads((tmp_path / "audited.jsonl.meta.json").read_text())
    sft_fingerprint = json.loads((tmp_path / "scores.parquet.meta.json").read_text())["reference"]["model_fingerprint"]
    assert meta["reference"]["model_fingerprint"] == sft_fingerprint != meta["run"]["model_fingerprint"]
    with pytest.raises(ches.ChesError, match="log-probs came from other weights than the model the trainer starts from"):
        ches.trl.DPOTrainer(model=copy.deepcopy(trained), args=config(tmp_path / "out"),
                            train_dataset=load_data(str(audited)), processing_class=tokenizer)
    assert main(["audit", str(scores), "-m", str(folders["dpo"]), "--next-round", "-o", str(second), "--no-progress"]) == 0
    round2 = load_data(str(second))
    assert not {"chosen_logps_after", "displaced"} & set(round2.column_names)
    assert round2["chosen_logps"][:] == pytest.approx(load_data(str(audited))["chosen_logps_after"][:], rel=1e-14)
    assert round2["ches_token_digest"] == load_data(str(scores))["ches_token_digest"]
    trainer = ches.trl.DPOTrainer(model=copy.deepcopy(trained), args=config(tmp_path / "out2"), train_dataset=round2,
                                  processing_class=tokenizer)
    assert len(trainer.train_dataset) == 8


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv", ""])
@pytest.mark.parametrize("no_scores", [False, True])
def test_a_strangers_pipeline_from_files_alone(suffix, no_scores, tiny_model, tokenizer, tmp_path):
    """ches score --logps -> ches filter (each format, with and without --no-scores) -> load_data ->
    ches.trl.DPOTrainer with TRL's default DPOConfig -> ches audit; the losses equal TRL's own precompute."""
    rows = standard_rows(hh_rows(10))
    model = tiny_model("llama")
    folder, scores = scored_files(tmp_path, model, tokenizer, rows)
    clean = tmp_path / f"clean{suffix or '-folder'}"
    assert main(["filter", str(scores), "--quantile", "1.0", *(["--no-scores"] if no_scores else []),
                 "-o", str(clean)]) == 0
    kept = load_data(str(clean))
    assert len(kept) == 10
    ours = ches.trl.DPOTrainer(model=copy.deepcopy(model), args=config(tmp_path / "ches"), train_dataset=kept,
                               processing_class=tokenizer)
    got = losses(ours)
    assert got == pytest.approx(trls_own(model, rows, tokenizer, config(tmp_path / "trl", precompute_ref_log_probs=True)),
                                abs=1e-5)
    audited = tmp_path / f"audited{suffix or '-folder'}"
    assert main(["audit", str(clean), "-m", str(folder), "--no-progress", "-o", str(audited)]) == 0  # the SFT model itself
    result = load_data(str(audited))
    assert result["displaced"][:] == [False] * 10  # no change beyond the dtype's rounding
    assert main(["score", str(clean), "-m", str(folder), "--no-progress", "-o", str(tmp_path / f"again{suffix}")]) == 0


def test_rows_of_two_scoring_runs_concatenated_are_not_one_reference(tiny_model, tokenizer, tmp_path):
    rows = standard_rows(hh_rows(8))
    first = ches.score(rows[:4], tiny_model("llama"), tokenizer, logps=True, progress=False)
    second = ches.score(rows[4:], tiny_model("qwen2"), tokenizer, logps=True, progress=False)
    same = ches.score(rows[4:], tiny_model("llama"), tokenizer, logps=True, progress=False)
    with pytest.raises(ches.ChesError, match=r"the rows come from 2 scoring runs \(datasets concatenated after scoring"):
        ches.trl.DPOTrainer(model=copy.deepcopy(tiny_model("llama")), args=config(tmp_path),
                            train_dataset=datasets.concatenate_datasets([first, second]), processing_class=tokenizer)
    joined = datasets.concatenate_datasets([first, same]).shuffle(seed=0)  # one model's runs: one reference
    trainer = ches.trl.DPOTrainer(model=copy.deepcopy(tiny_model("llama")), args=config(tmp_path),
                                  train_dataset=joined, processing_class=tokenizer)
    assert len(trainer.train_dataset) == 8


def test_pairs_built_by_ches_train_with_trls_losses(tiny_model, tokenizer, tmp_path):
    """ches.pairs(..., logps=True) output goes straight into the trainer; its digests are those of TRL's tokens."""
    rows = standard_rows(hh_rows(12))
    generic = [{"prompt": rows[i]["prompt"], "responses": [rows[i]["chosen"], rows[i]["rejected"], rows[i + 1]["chosen"]],
                "ratings": [3, 1, 2]} for i in range(8)]
    model = tiny_model("llama")
    pairs = ches.pairs(generic, model, tokenizer, logps=True, progress=False, max_length=128)
    ours = ches.trl.DPOTrainer(model=copy.deepcopy(model), args=config(tmp_path / "ches", max_length=128),
                               train_dataset=pairs, processing_class=tokenizer)
    plain = [{name: row[name] for name in ("prompt", "chosen", "rejected")} for row in pairs]
    assert losses(ours) == pytest.approx(
        trls_own(model, plain, tokenizer, config(tmp_path / "trl", max_length=128, precompute_ref_log_probs=True)),
        abs=1e-5)


def test_implicit_prompt_rows_train_with_trls_losses(tiny_model, tokenizer, tmp_path):
    rows = hh_rows(8)  # chosen/rejected only: TRL extracts the prompt
    assert "prompt" not in rows[0]
    model = tiny_model("llama")
    scored = ches.score(rows, model, tokenizer, logps=True, progress=False)
    ours = ches.trl.DPOTrainer(model=copy.deepcopy(model), args=config(tmp_path / "ches"), train_dataset=scored,
                               processing_class=tokenizer)
    assert losses(ours) == pytest.approx(
        trls_own(model, rows, tokenizer, config(tmp_path / "trl", precompute_ref_log_probs=True)), abs=1e-5)


def test_a_file_beside_another_runs_sidecar_is_refused_by_its_tokens(tiny_model, tokenizer, tmp_path):
    """scores.parquet scored whole, its sidecar replaced by that of a run at max_length=48: the record now says the
    log-probs are of truncated tokens, which they are not; the audit and the trainer refuse the rows it would cut."""
    import shutil

    rows = standard_rows(hh_rows(6))
    model = tiny_model("llama")
    folder, scores = scored_files(tmp_path, model, tokenizer, rows)
    short = tmp_path / "short.parquet"
    assert main(["score", str(tmp_path / "pairs.jsonl"), "-m", str(folder), "--logps", "--max-length", "48",
                 "-o", str(short), "--no-progress"]) == 0
    shutil.copyfile(tmp_path / "short.parquet.meta.json", tmp_path / "scores.parquet.meta.json")
    with pytest.raises(ches.ChesError, match=r"in \d of 6 rows .* max_length=48"):
        ches.audit(str(scores), str(folder), progress=False)
    with pytest.raises(ches.ChesError, match=r"the tokens TRL trains on are not those ches computed"):
        ches.trl.DPOTrainer(model=copy.deepcopy(model), args=config(tmp_path / "out", max_length=48),
                            train_dataset=ches.filter(load_data(str(scores)), 1.0), processing_class=tokenizer)


def test_a_data_collator_that_cuts_elsewhere_is_checked_where_it_cuts(tiny_model, tokenizer, tmp_path):
    """A data_collator with its own max_length cuts the batches there, whatever DPOConfig says: the rows it would
    cut otherwise than they were scored are refused; a collator ches cannot read is refused."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    rows = standard_rows(hh_rows(6))
    model = tiny_model("llama")
    scored = ches.score(rows, model, tokenizer, logps=True, progress=False)
    collator = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id, max_length=64)
    with pytest.raises(ches.ChesError, match=r"rows .* the tokens TRL trains on are not those .*max_length=64"):
        ches.trl.DPOTrainer(model=copy.deepcopy(model), args=config(tmp_path), train_dataset=scored,
                            processing_class=tokenizer, data_collator=collator)
    with pytest.raises(ches.ChesError, match=r"data_collator=function\(...\) builds the batches in a way ches cannot"):
        ches.trl.DPOTrainer(model=copy.deepcopy(model), args=config(tmp_path), train_dataset=scored,
                            processing_class=tokenizer, data_collator=lambda examples: examples)


def test_rows_rebuilt_in_pandas_take_their_record_back_and_a_nameless_model_needs_a_tokenizer(tiny_model, tokenizer,
                                                                                            tmp_path):
    rows = standard_rows(hh_rows(6))
    model = tiny_model("llama")
    scored = ches.score(rows, model, tokenizer, logps=True, progress=False)
    rebuilt = datasets.Dataset.from_pandas(scored.to_pandas())
    with pytest.raises(ches.ChesError, match=r"takes their record back with ches.with_reference"):
        ches.trl.DPOTrainer(model=copy.deepcopy(model), args=config(tmp_path), train_dataset=rebuilt,
                            processing_class=tokenizer)
    restored = ches.with_reference(rebuilt, ches.reference_of(scored))
    trainer = ches.trl.DPOTrainer(model=copy.deepcopy(model), args=config(tmp_path), train_dataset=restored,
                                  processing_class=tokenizer)
    assert len(trainer.train_dataset) == 6
    with pytest.raises(ches.ChesError, match=r"processing_class=None, and the model was not loaded from a folder"):
        ches.trl.DPOTrainer(model=copy.deepcopy(model), args=config(tmp_path), train_dataset=scored)
