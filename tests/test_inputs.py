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


# ---------------------------------------------------------------- the sidecar beside a data file
SCORED = [{"prompt": "p", "chosen": f"c{k}", "rejected": "r", "ln_ches": float(k), "ches": 1.0, "edit_distance": 0.5,
           "last_hidden_ip": 1.0, "ches_skip": None, "chosen_tokens": 1, "rejected_tokens": 1, "prompt_tokens": 1}
          for k in range(3)]
BROKEN_SIDECARS = {  # content of a broken <file>.meta.json -> what the warning must say is wrong with it
    "not json": (b"{not json", "JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2"),
    "a list": (b"[1, 2]", "it holds a JSON list, not the object ches writes"),
    "not utf-8": (b"{\"a\": \"\xff\"}", "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff in position 7"),
}


@pytest.mark.parametrize("broken", list(BROKEN_SIDECARS))
def test_a_broken_sidecar_is_one_warning_through_every_reader(broken, tmp_path, caplog, monkeypatch):
    """ches.load_data and the command line (which reads the data, then records its input's sidecar) read the
    sidecar the same way: the rows load, the record is ignored, and one warning names the sidecar and what is
    wrong with it, word for word the same."""
    import logging

    from ches.cli import main
    from ches.cli.flags import input_metadata

    data = write_jsonl(tmp_path / "scores.jsonl", SCORED)
    content, problem = BROKEN_SIDECARS[broken]
    (tmp_path / "scores.jsonl.meta.json").write_bytes(content)
    expected = f"ignoring the unreadable metadata file {tmp_path / 'scores.jsonl.meta.json'} ({problem}"
    with caplog.at_level(logging.WARNING, logger="ches"):
        loaded = load_data(str(data))
    assert loaded.to_list() == SCORED and "ches_reference" not in (loaded.info.description or "")
    said = [record.getMessage() for record in caplog.records]
    assert len(said) == 1 and said[0].startswith(expected), said
    caplog.clear()
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="ches"):
        assert main(["filter", "scores.jsonl", "--keep", "1", "-o", "kept.jsonl"]) == 0
    assert [record.getMessage() for record in caplog.records] == [said[0].replace(f"{tmp_path}/", "")]
    assert json.loads((tmp_path / "kept.jsonl.meta.json").read_text())["data_metadata"] is None
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ches"):  # read again for the record: not said twice
        assert input_metadata(str(data), None)["data_metadata"] is None
    assert not caplog.records


def test_a_sidecar_that_reads_is_no_warning(tmp_path, caplog):
    import logging

    from ches.cli.flags import input_metadata

    data = write_jsonl(tmp_path / "scores.jsonl", ROWS)
    (tmp_path / "scores.jsonl.meta.json").write_text(json.dumps({"rows_written": len(ROWS), "note": "x"}))
    with caplog.at_level(logging.WARNING, logger="ches"):
        assert load_data(str(data)).num_rows == len(ROWS)
        assert input_metadata(str(data), None)["data_metadata"] == {"rows_written": len(ROWS), "note": "x"}
    assert not caplog.records
