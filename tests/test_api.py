"""ches.score end to end: columns, order, skips, DatasetDicts, and errors raised before model work."""

import copy
import logging
import math

import datasets
import pytest
from conftest import MODEL_DIR, conversational_rows, hh_rows, standard_rows
from edges import ROWS, digest, prepare, scored_sample

import ches
from ches import ChesError
from ches.data.tokens import Skip, TokenizedPair, to_sequences

SCORE_COLUMNS = ["ches", "ln_ches", "edit_distance", "last_hidden_ip", "prompt_tokens", "chosen_tokens",
                 "rejected_tokens", "ches_skip", "ches_flags", "ches_token_digest"]


def test_keeps_every_column_and_row_order(tokenizer, tiny_model):
    rows = [dict(row, id=f"row-{i}", source="hh") for i, row in enumerate(hh_rows(12))]
    scored = ches.score(rows, tiny_model("llama"), tokenizer, progress=False)
    assert scored.column_names == ["chosen", "rejected", "id", "source"] + SCORE_COLUMNS
    assert scored["id"] == [row["id"] for row in rows]
    assert scored["chosen"] == [row["chosen"] for row in rows]
    assert scored.features["ches"].dtype == "float64" and scored.features["chosen_tokens"].dtype == "int64"


def test_prompt_filling_max_length_is_kept_with_a_reason(tokenizer, tiny_model):
    rows = standard_rows(hh_rows(10))
    scored = ches.score(rows, tiny_model("llama"), tokenizer, max_length=64, progress=False)
    assert len(scored) == len(rows)
    skipped = [i for i, reason in enumerate(scored["ches_skip"]) if reason]
    kept = [i for i, reason in enumerate(scored["ches_skip"]) if not reason]
    assert skipped and kept
    for i in skipped:
        assert scored["ches_skip"][i].startswith("prompt fills max_length")
        assert math.isnan(scored["ches"][i]) and scored["chosen_tokens"][i] == 0
        assert scored["prompt_tokens"][i] >= 64
    for i in kept:
        assert scored["prompt_tokens"][i] + max(scored["chosen_tokens"][i], scored["rejected_tokens"][i]) <= 64
        assert math.isfinite(scored["ln_ches"][i])


def test_skip_reasons_are_logged(tokenizer, tiny_model, caplog):
    with caplog.at_level(logging.INFO, logger="ches"):
        ches.score(standard_rows(hh_rows(10)), tiny_model("llama"), tokenizer, max_length=64, progress=False)
    assert "skipped" in caplog.text and "prompt fills max_length" in caplog.text


def test_dataset_dict_scores_every_split(tokenizer, tiny_model):
    data = datasets.DatasetDict({"train": datasets.Dataset.from_list(hh_rows(4)),
                                 "test": datasets.Dataset.from_list(hh_rows(3, start=10))})
    scored = ches.score(data, tiny_model("llama"), tokenizer, progress=False)
    assert isinstance(scored, datasets.DatasetDict) and {k: len(v) for k, v in scored.items()} == {"train": 4, "test": 3}
    only = ches.score(data, tiny_model("llama"), tokenizer, split="test", progress=False)
    assert isinstance(only, datasets.Dataset) and only["ches"] == scored["test"]["ches"]


def test_bad_rows_fail_before_the_model_is_loaded():
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": None, "rejected": "b"}]
    with pytest.raises(ChesError, match=r"column 'chosen' must hold a string in every row.*row 1: found None"):
        ches.score(rows, "/no/such/model", progress=False)


def test_missing_model_is_explained():
    with pytest.raises(ChesError, match=r"model folder /no/such/model does not exist"):
        ches.score(hh_rows(2), "/no/such/model", progress=False)
    with pytest.raises(ChesError, match=r"could not load model 'someone/no-such-model'"):  # offline Hub id
        ches.score(hh_rows(2), "someone/no-such-model", progress=False)


def test_conversational_data_needs_a_chat_template(tokenizer, tiny_model):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    with pytest.raises(ChesError, match=r"conversational but the tokenizer has no chat template"):
        ches.score(conversational_rows(hh_rows(2)), tiny_model("llama"), plain, progress=False)


def test_standard_data_needs_an_eos_token(tokenizer, tiny_model):
    no_eos = copy.deepcopy(tokenizer)
    no_eos.eos_token = None
    with pytest.raises(ChesError, match=r"tokenizer has no EOS token"):
        ches.score(hh_rows(2), tiny_model("llama"), no_eos, progress=False)


def test_empty_prompt_and_empty_completion_are_skip_reasons():
    assert to_sequences(TokenizedPair([], [5, 2], [6, 2])).reason.startswith("empty prompt")
    assert to_sequences(TokenizedPair([1], [], [6, 2])) == Skip("chosen completion has no tokens")


def test_sequence_longer_than_the_model_context_is_skipped(tokenizer, tiny_model):
    row = hh_rows(1)[0]
    long_row = {"chosen": row["chosen"] + " more" * 1200, "rejected": row["rejected"]}
    scored = ches.score([long_row, row], tiny_model("gpt2"), tokenizer, progress=False)  # gpt2: 1024 positions
    assert "exceeds the model's context (1024)" in scored["ches_skip"][0]
    assert scored["ches_skip"][1] is None and math.isfinite(scored["ches"][1])


def test_an_earlier_runs_scores_are_replaced_but_a_users_column_is_never_overwritten(tokenizer, tiny_model):
    first = ches.score(hh_rows(3), tiny_model("llama"), tokenizer, progress=False)
    stale = first.map(lambda row: {"ches": 0.0})  # an earlier run's output: every score column is there
    scored = ches.score(stale, tiny_model("llama"), tokenizer, progress=False)
    assert scored.column_names == first.column_names and scored["ches"] == first["ches"]
    rows = [dict(row, ches=0.0) for row in hh_rows(3)]  # the user's own column that has a score's name
    with pytest.raises(ches.ChesError, match=r"has column\(s\) \['ches'\], which ches writes its output to"):
        ches.score(rows, tiny_model("llama"), tokenizer, progress=False)


def test_bundled_model_scores_real_data_by_path():
    scored = ches.score(str(MODEL_DIR.parent / "data" / "hh-sample.jsonl"), str(MODEL_DIR), progress=True)
    assert len(scored) == 64 and all(reason is None for reason in scored["ches_skip"])
    assert all(math.isfinite(value) for value in scored["ln_ches"])


API_CASES = {
    "empty list": (lambda m: ches.score([], m, progress=False), r"data is an empty list"),
    "list of numbers": (lambda m: ches.score([1, 2], m, progress=False), r"data of type list is not supported"),
    "rows mixed with strings": (lambda m: ches.score([ROWS[0], "x"], m, progress=False), r"not supported"),
    "rows of mixed column types": (lambda m: ches.score([ROWS[0], {**ROWS[1], "chosen": ["a"]}], m, progress=False),
                                   r"data: rows do not share one schema"),
    "dataframe of mixed types": (lambda m: ches.score(__import__("pandas").DataFrame(
        {"chosen": ["a", 1], "rejected": ["b", "c"]}), m, progress=False), r"the DataFrame's columns do not each hold one type"),
    "max memory without device map": (lambda m: ches.score(ROWS, m, max_memory={"cpu": "1GiB"}, progress=False),
                                      r"max_memory only apply with device_map="),
    "unknown layout": (lambda m: ches.score(ROWS, m, layout="ragged", progress=False), r"layout='ragged' is not one of"),
    "unknown dtype": (lambda m: ches.score(ROWS, m, dtype="int8", progress=False), r"dtype='int8' is not supported"),
    "cuda without cuda": (lambda m: ches.score(ROWS, m, device="cuda", progress=False), r"no usable CUDA device"),
    "batch tokens negative": (lambda m: ches.score(ROWS, m, batch_tokens=-1, progress=False), r"batch_tokens=-1"),
    "max length float": (lambda m: ches.score(ROWS, m, max_length=1.5, progress=False), r"max_length=1.5"),
    "two filter rules": (lambda m: ches.filter(scored_sample(), 0.5, keep=3), r"give at most one of quantile="),
    "misspelled filter option": (lambda m: ches.filter(scored_sample(), windw=3), r"unknown option 'windw'"),
    "scoring option without model": (lambda m: ches.filter(scored_sample(), max_length=64),
                                     r"max_length= \(--max-length\) only applies when scoring; pass "
                                     r"model= \(--model\) too, or drop it\."),
    "window without around": (lambda m: ches.filter(scored_sample(), window=4), r"window= sets the size"),
    "rank unknown measure": (lambda m: ches.rank(scored_sample(), measure="cosine"), r"unknown measure 'cosine'"),
    "summary of raw rows": (lambda m: ches.summary(ROWS), r"has no 'ln_ches' column"),
    "report over an existing file": (lambda m: ches.report.write_report(scored_sample(), "old.html"),
                                     r"old.html exists; pass --overwrite \(overwrite=True\)"),
    "embeddings over an existing file": (lambda m: ches.score(ROWS, m, save_embeddings="notes.safetensors", progress=False),
                                         r"notes.safetensors exists"),
}


@pytest.mark.parametrize("case", sorted(API_CASES))
def test_python_api(case, workdir):
    prepare(workdir)
    call, message = API_CASES[case]
    before = digest(workdir)
    with pytest.raises(ChesError, match=message):
        call(str(workdir / "model"))
    assert digest(workdir) == before


def test_options_as_a_dict_are_read_as_keywords(workdir):
    scored, info = ches.api.score_run(ROWS, "model", options={"max_length": 64, "layout": "padded"}, progress=False)
    assert info.options["max_length"] == 64 and max(scored["chosen_tokens"]) <= 64
