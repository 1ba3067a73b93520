"""Every accepted kind of ``data`` loads to the same rows; unreadable input fails with a clear message."""

import gzip
import json

import datasets
import pandas
import pytest
from conftest import conversational_rows, hh_rows

from ches import ChesError
from ches.data.inputs import load_data

ROWS = hh_rows(6)


def write_jsonl(path, rows, opener=open):
    with opener(path, "wt", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(params=["dataset", "list", "dataframe", "jsonl", "jsonl.gz", "json", "json.gz", "parquet", "csv",
                        "csv.gz", "save_to_disk"])
def source(request, tmp_path):
    kind = request.param
    if kind == "dataset":
        return datasets.Dataset.from_list(ROWS)
    if kind == "list":
        return ROWS
    if kind == "dataframe":
        return pandas.DataFrame(ROWS)
    if kind.startswith("jsonl"):
        return write_jsonl(tmp_path / f"d.{kind}", ROWS, gzip.open if kind.endswith(".gz") else open)
    if kind.startswith("json"):
        opener = gzip.open if kind.endswith(".gz") else open
        with opener(tmp_path / f"d.{kind}", "wt", encoding="utf-8") as handle:
            json.dump(ROWS, handle)
        return tmp_path / f"d.{kind}"
    if kind == "parquet":
        datasets.Dataset.from_list(ROWS).to_parquet(tmp_path / "d.parquet")
        return str(tmp_path / "d.parquet")
    if kind.startswith("csv"):
        pandas.DataFrame(ROWS).to_csv(tmp_path / f"d.{kind}", index=False)
        return str(tmp_path / f"d.{kind}")
    datasets.Dataset.from_list(ROWS).save_to_disk(tmp_path / "saved")
    return str(tmp_path / "saved")


def test_every_source_gives_the_same_rows(source):
    loaded = load_data(source)
    assert loaded.column_names == ["chosen", "rejected"]
    assert loaded.to_list() == ROWS


def test_conversational_rows_survive_jsonl(tmp_path):
    rows = conversational_rows(hh_rows(3))
    assert load_data(write_jsonl(tmp_path / "c.jsonl", rows)).to_list() == rows


def test_dataset_dict_and_split(tmp_path):
    both = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[:2])})
    assert isinstance(load_data(both), datasets.DatasetDict)
    assert len(load_data(both, split="test")) == 2
    both.save_to_disk(tmp_path / "dd")
    assert len(load_data(str(tmp_path / "dd"), split="train")) == 6
    with pytest.raises(ChesError, match=r"split 'validation' is not in the DatasetDict; it has \['test', 'train'\]"):
        load_data(both, split="validation")


def test_broken_jsonl_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + '{"chosen": "a", "rejected": \n', encoding="utf-8")
    with pytest.raises(ChesError, match=r"bad.jsonl, line 2: not valid JSON"):
        load_data(path)


def test_non_utf8_jsonl_is_named(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(json.dumps(ROWS[0]).encode() + b"\n" + b'{"chosen": "caf\xe9", "rejected": "x"}\n')
    with pytest.raises(ChesError, match=r"latin.jsonl, line 2: not valid UTF-8"):
        load_data(path)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(ChesError, match=r"data file .*nope.jsonl does not exist"):
        load_data(str(tmp_path / "nope.jsonl"))
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ChesError, match=r"cannot tell the format of .*d.txt"):
        load_data(tmp_path / "d.txt")


def test_hub_id_that_cannot_load_is_explained():
    # tests run offline (HF_HUB_OFFLINE=1), so any Hub id fails fast with our message
    with pytest.raises(ChesError, match=r"'someone/no-such-dataset' is not an existing local path, and as a Hub dataset id it cannot be loaded"):
        load_data("someone/no-such-dataset")


def test_unsupported_type():
    with pytest.raises(ChesError, match=r"data of type int is not supported"):
        load_data(3)


def test_truncated_gzip_is_explained(tmp_path):
    whole = write_jsonl(tmp_path / "whole.jsonl.gz", ROWS * 50, gzip.open).read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ChesError, match=r"cut.jsonl.gz: truncated or unreadable after line \d+"):
        load_data(cut)
