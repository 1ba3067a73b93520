"""The columns ches writes (:mod:`ches.data.columns`): their types read back from text, the check of a measure's
name wherever one is given, the score columns' check, and the reference record a file's sidecar carries. Each
is compared with values written out here by hand."""

from __future__ import annotations

import json
import math

import datasets
import pytest
from edges import ROWS, assert_one_line_error, digest, no_model_load, run_cli

import ches
from ches import ChesError
from ches.data.columns import (
    LOGPS_COLUMNS,
    MEASURES,
    SCORE_COLUMNS,
    SHARED_LOGPS_COLUMNS,
    check_measure,
    check_output_columns,
    check_score_columns,
    column_feature,
    parse_columns,
    reference_of,
    sidecar_reference,
    typed_cell,
    with_reference,
)
from ches.options import FilterOptions, PairOptions
from ches.scores import select

#: every column ches writes, with the type it has in a dataset (by hand, from docs/api.md's tables)
TYPES = {"ches": "float64", "ln_ches": "float64", "edit_distance": "float64", "last_hidden_ip": "float64",
         "prompt_tokens": "int64", "chosen_tokens": "int64", "rejected_tokens": "int64", "ches_skip": "string",
         "ches_flags": "list", "ches_token_digest": "string", "chosen_logps": "float64", "rejected_logps": "float64",
         "chosen_shared_logps": "float64", "rejected_shared_logps": "float64", "ches_rank": "int64",
         "ches_percentile": "float64", "chosen_logps_after": "float64", "rejected_logps_after": "float64",
         "chosen_change": "float64", "rejected_change": "float64", "displaced": "bool"}


@pytest.mark.parametrize("name", sorted(TYPES))
def test_each_column_has_its_feature(name):
    feature = column_feature(name)
    if TYPES[name] == "list":
        assert feature == datasets.List(datasets.Value("string"))
    else:
        assert feature == datasets.Value(TYPES[name])


def test_cells_read_back_from_a_csv_file_as_written(tmp_path):
    """A table of every column written to CSV by pandas and read back as text, cell by cell, equals what was
    written (NaN for an empty float, None for an empty int, bool or string)."""
    import pandas

    rows = [{"ches": 0.25, "chosen_tokens": 7, "ches_skip": None, "ches_flags": ["empty_chosen", "chosen_truncated"],
             "displaced": True, "ches_rank": 3},
            {"ches": float("nan"), "chosen_tokens": None, "ches_skip": "prompt fills max_length", "ches_flags": [],
             "displaced": False, "ches_rank": None}]
    pandas.DataFrame(rows).astype({"chosen_tokens": "Int64", "ches_rank": "Int64"}).to_csv(tmp_path / "s.csv",
                                                                                           index=False)
    text = pandas.read_csv(tmp_path / "s.csv", dtype=str, keep_default_na=False).to_dict("records")
    for written, read in zip(rows, text):
        for name, value in written.items():
            cell = typed_cell(name, read[name])
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(cell), name
            else:
                assert cell == value and type(cell) is type(value), (name, cell, value)


MESSAGE = "unknown measure 'cosine'; use one of ['ches', 'edit_distance', 'last_hidden_ip', 'ln_ches'] (measure=, --measure)."


def test_every_measure_is_accepted_everywhere():
    for name in ("ln_ches", "ches", "last_hidden_ip", "edit_distance"):
        assert check_measure(name) == name and name in MEASURES
        assert FilterOptions(measure=name).measure == name
        select.similarity([1.0], name)
    assert [select.similarity_name(name) for name in ("ln_ches", "edit_distance")] == ["ln_ches", "-edit_distance"]


def test_an_unknown_measure_is_one_message_everywhere():
    scored = [{"prompt": "p", "chosen": "a", "rejected": "b", "ln_ches": 0.5, "ches": 0.5, "edit_distance": 0.5,
               "last_hidden_ip": 1.0, "ches_skip": None, "chosen_tokens": 1, "rejected_tokens": 1}]
    for where in (lambda: check_measure("cosine"), lambda: select.similarity([1.0], "cosine"),
                  lambda: select.similarity_name("cosine"), lambda: FilterOptions(measure="cosine"),
                  lambda: ches.filter(scored, measure="cosine"), lambda: ches.rank(scored, measure="cosine")):
        with pytest.raises(ChesError) as error:
            where()
        assert str(error.value) == MESSAGE
    with pytest.raises(ChesError) as error:  # ches.pairs selects by fewer measures, and says which
        PairOptions(measure="edit_distance")
    assert str(error.value) == ("unknown measure 'edit_distance' for ches.pairs (it selects by the scores every pair "
                                "of responses gets); use one of ['ches', 'ln_ches'] (measure=, --measure).")


@pytest.mark.parametrize("column, values, message", [
    ("ln_ches", ["0.5"], "column 'ln_ches' holds string values, not numbers"),
    ("ches_skip", [1.5], "column 'ches_skip' holds float64 values, not text or None"),
    ("ches_flags", ["empty_chosen"], "column 'ches_flags' holds string values, not lists"),
])
def test_score_columns_ches_did_not_write_are_refused(column, values, message):
    dataset = datasets.Dataset.from_dict({column: values})
    with pytest.raises(ChesError, match="^s.csv: " + message):
        check_score_columns(dataset, "s.csv")
    check_score_columns(datasets.Dataset.from_dict({"ln_ches": [0.5], "ches_skip": [None], "ches_flags": [[]]}))


def test_output_columns_of_an_earlier_run_are_told_from_the_users_own():
    read = ["prompt", "chosen", "rejected"]
    assert check_output_columns(read, SCORE_COLUMNS, read) is False
    assert check_output_columns(read + list(SCORE_COLUMNS), SCORE_COLUMNS, read) is True
    older = [name for name in SCORE_COLUMNS if name not in ("ches_flags", "ches_token_digest")]
    assert check_output_columns(read + older, SCORE_COLUMNS, read) is True  # scored by an older ches
    with_logps = SCORE_COLUMNS + LOGPS_COLUMNS + SHARED_LOGPS_COLUMNS
    assert check_output_columns(read + list(SCORE_COLUMNS), with_logps, read) is True  # scored before without logps
    with pytest.raises(ChesError, match=r"has column\(s\) \['ches'\], which ches writes its output to"):
        check_output_columns(read + ["ches"], SCORE_COLUMNS, read)


RUN = {"model": "sft", "model_fingerprint": "m1", "tokenizer": "tok", "tokenizer_fingerprint": "t1", "dtype": "float32",
       "options": {"max_length": 512, "columns": {"prompt": "q"}}}
REFERENCE = {"model": "sft", "model_fingerprint": "m1", "tokenizer": "tok", "tokenizer_fingerprint": "t1",
             "dtype": "float32", "max_length": 512, "columns": {"prompt": "q"}, "format": "trl"}


@pytest.mark.parametrize("meta, expected", [
    ({"reference": {"model": "sft"}, "run": RUN}, {"model": "sft"}),  # recorded as such: taken as it is
    ({"command": ["ches", "score", "x.jsonl"], "run": RUN}, REFERENCE),  # an older sidecar: the scoring run's
    ({"command": ["ches", "pairs", "x.jsonl"], "run": RUN}, REFERENCE),
    ({"command": ["ches", "score", "x.jsonl"], "run": {**RUN, "format": "axolotl.chatml.intel"}},
     {**REFERENCE, "format": "axolotl.chatml.intel"}),  # the layout its rows were read in
    ({"command": ["ches", "audit", "x.jsonl"], "run": RUN}, None),  # the trained model's run, not a reference
    ({"command": ["ches", "score"], "run": {**RUN, "model_fingerprint": None}}, None),
    ({"rows_written": 3}, None),
    (None, None),  # no sidecar, or one that could not be read
])
def test_the_reference_a_sidecar_records(meta, expected):
    assert sidecar_reference(meta) == expected


def test_a_reference_travels_on_the_dataset_and_two_are_refused():
    rows = datasets.Dataset.from_dict({"x": [1, 2]})
    assert reference_of(rows) is None
    marked = with_reference(datasets.Dataset.from_dict({"x": [1, 2]}), RUN)
    assert reference_of(marked) == REFERENCE
    assert with_reference(datasets.Dataset.from_dict({"x": [1]}), REFERENCE).info.description == \
        marked.info.description  # a reference record is taken as it is
    assert reference_of(datasets.DatasetDict({"a": rows, "b": marked})) == REFERENCE
    other = with_reference(datasets.Dataset.from_dict({"x": [3]}), {**RUN, "model": "other"})
    with pytest.raises(ChesError, match=r"the rows come from 2 scoring runs .*'sft', 'other'"):
        reference_of(datasets.concatenate_datasets([marked, other]))


def test_columns_flag_text():
    assert parse_columns("prompt=q, chosen=good ,rejected=bad") == {"prompt": "q", "chosen": "good", "rejected": "bad"}
    with pytest.raises(ChesError, match=r"--columns 'prompt': expected NAME=COLUMN pairs"):
        parse_columns("prompt")


@pytest.mark.parametrize("columns, message", [
    ("prompt=ches,chosen=chosen,rejected=rejected", r"column 'ches' is read as a pair's text, but ches writes its output"),
    ("chosen=chosen_tokens,rejected=rejected", r"column 'chosen_tokens' is read as a pair's text"),
    ("prompt=ches_skip", r"column 'ches_skip' is read as a pair's text"),
])
def test_a_read_column_named_like_an_output_is_refused_before_the_model(columns, message, workdir, capsys, monkeypatch):
    rows = [{**row, "ches": row["chosen"][:20], "chosen_tokens": row["chosen"], "ches_skip": "x"} for row in ROWS]
    (workdir / "named.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    no_model_load(monkeypatch)
    before = digest(workdir)
    assert_one_line_error(*run_cli(["score", "named.jsonl", "-m", "model", "--columns", columns, "-o", "s.parquet"], capsys),
                          message)
    assert digest(workdir) == before


@pytest.mark.parametrize("name", ["ches", "ln_ches", "edit_distance", "last_hidden_ip", "prompt_tokens", "chosen_tokens",
                                  "rejected_tokens", "ches_skip", "ches_flags"])
def test_every_output_column_is_protected(name, workdir, monkeypatch):
    no_model_load(monkeypatch)
    rows = [dict(row, **{name: "mine"}) for row in ROWS]
    with pytest.raises(ChesError, match=rf"has column\(s\) \['{name}'\], which ches writes its output to"):
        ches.score(rows, "model", progress=False)
    with pytest.raises(ChesError, match=rf"'{name}'"):  # through filter with a model too
        ches.filter(rows, 0.5, model="model")
