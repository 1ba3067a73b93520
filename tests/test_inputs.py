"""Every accepted kind of ``data`` loads to the same rows; unreadable input fails with a clear message."""

import gzip
import json

import datasets
import numpy as np
import pandas
import pytest
from conftest import conversational_rows, hh_rows
from edges import PERSONA, PERSONA_COLUMNS, assert_one_line_error, digest, run_cli, scored_sample, write

import ches
from ches import ChesError
from ches.cli import main
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


FILE_CASES = {
    "missing file": (None, ["score", "absent.jsonl", "-m", "model"], r"data file absent.jsonl does not exist"),
    "empty jsonl": (("empty.jsonl", ""), ["score", "empty.jsonl", "-m", "model"], r"empty.jsonl holds no rows"),
    "blank-only jsonl": (("blank.jsonl", "\n\n  \n"), ["score", "blank.jsonl", "-m", "model"], r"holds no rows"),
    "broken json line": (("broken.jsonl", '{"chosen": "a", "rejected": "b"}\n{"chosen": \n'),
                         ["score", "broken.jsonl", "-m", "model"], r"broken.jsonl, line 2: not valid JSON"),
    "array line": (("array.jsonl", '[1, 2]\n'), ["score", "array.jsonl", "-m", "model"],
                   r"array.jsonl, line 1: expected a JSON object, found list"),
    "latin-1 jsonl": (("latin.jsonl", b'{"chosen": "caf\xe9", "rejected": "b"}\n'), ["score", "latin.jsonl", "-m", "model"],
                      r"latin.jsonl, line 1: not valid UTF-8"),
    "truncated gzip": (("cut.jsonl.gz", gzip.compress(b'{"chosen": "a", "rejected": "b"}\n' * 50)[:40]),
                       ["score", "cut.jsonl.gz", "-m", "model"], r"cut.jsonl.gz: truncated or unreadable"),
    "gzip name, plain text": (("plain.jsonl.gz", '{"chosen": "a", "rejected": "b"}\n'),
                              ["score", "plain.jsonl.gz", "-m", "model"], r"plain.jsonl.gz: truncated or unreadable"),
    "empty json": (("empty.json", ""), ["score", "empty.json", "-m", "model"], r"empty.json: not valid JSON"),
    "json object": (("object.json", '{"chosen": "a"}'), ["score", "object.json", "-m", "model"],
                    r"object.json: expected a JSON list of row objects"),
    "json list of numbers": (("numbers.json", "[1, 2, 3]"), ["score", "numbers.json", "-m", "model"],
                             r"numbers.json: expected a JSON list of row objects"),
    "corrupt parquet": (("bad.parquet", b"PAR1 this is not parquet"), ["score", "bad.parquet", "-m", "model"],
                        r"bad.parquet: not a readable Parquet file"),
    "empty csv": (("empty.csv", ""), ["score", "empty.csv", "-m", "model"], r"empty.csv: not a readable CSV file"),
    "csv without pair columns": (("other.csv", "question,answer\nq,a\n"), ["score", "other.csv", "-m", "model"],
                                 r"missing column\(s\) \['chosen', 'rejected'\]; the data has \['question', 'answer'\]"),
    "unknown extension": (("pairs.txt", "chosen,rejected\n"), ["score", "pairs.txt", "-m", "model"],
                          r"cannot tell the format of pairs.txt"),
    "folder that is not a dataset": (("plain-folder/readme.md", "hi"), ["score", "plain-folder", "-m", "model"],
                                     r"plain-folder is a folder but not one written by save_to_disk"),
    "parquet without rows": (("none.parquet", "EMPTY-PARQUET"), ["score", "none.parquet", "-m", "model"],
                             r"none.parquet holds no rows"),
    "damaged dataset folder": (("broken-ds/state.json", "{not json"), ["score", "broken-ds", "-m", "model"],
                               r"broken-ds: a save_to_disk folder that cannot be read \(JSONDecodeError"),
    "mixed row types": (("mixed.jsonl", '{"chosen": "a", "rejected": "b"}\n{"chosen": ["a"], "rejected": "b"}\n'),
                        ["score", "mixed.jsonl", "-m", "model"], r"mixed.jsonl: rows do not share one schema"),
    "scores file for report is raw data": (None, ["report", "pairs.jsonl", "-o", "r.html"],
                                           r"report needs a file written by 'ches score'"),
}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_files(case, workdir, capsys):
    setup, argv, message = FILE_CASES[case]
    if setup:
        path = workdir / setup[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        if setup[1] == "EMPTY-PARQUET":
            datasets.Dataset.from_dict({"chosen": [], "rejected": []}).to_parquet(str(path))
        else:
            write(path, setup[1])
        if path.parent.name == "broken-ds":
            (path.parent / "dataset_info.json").write_text("{}")
    before = digest(workdir)
    assert_one_line_error(*run_cli(argv, capsys), message)
    assert digest(workdir) == before


ROW_CASES = {
    "missing rejected column": ('{"prompt": "p", "chosen": "a"}\n',
                                r"missing column\(s\) \['rejected'\]; the data has \['prompt', 'chosen'\]"),
    "chosen is null": ('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": null, "rejected": "b"}\n',
                       r"row 1"),
    "chosen is a number": ('{"prompt": "p", "chosen": 3, "rejected": "b"}\n', r"chosen.*row 0|row 0.*chosen"),
    "prompt is a number": ('{"prompt": 3, "chosen": "a", "rejected": "b"}\n',
                           r"column 'prompt' must hold a string in every row .*; row 0: found int \(e.g. 3\)"),
    "unknown chat role": ('{"prompt": [{"role": "human", "content": "Hi"}], "chosen": [{"role": "assistant", '
                          '"content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}\n',
                          r"row 0: message 0 has the unknown role 'human'"),
    "message without content": ('{"prompt": [{"role": "user"}], "chosen": [{"role": "assistant", "content": "a"}], '
                                '"rejected": [{"role": "assistant", "content": "b"}]}\n',
                                r"column 'prompt' must hold a list of .*row 0: message 0 has 'content' = None, expected a string"),
    "standard and conversational mixed": ('{"prompt": "p", "chosen": [{"role": "assistant", "content": "a"}], '
                                          '"rejected": "b"}\n',
                                          r"column 'prompt' must hold a list of \{'role', 'content'\} messages in every "
                                          r"row \(conversational format, decided from row 0 of 'chosen'\); row 0: found str"),
}


@pytest.mark.parametrize("case", sorted(ROW_CASES))
def test_rows(case, workdir, capsys):
    content, message = ROW_CASES[case]
    (workdir / "rows.jsonl").write_text(content)
    before = digest(workdir)
    assert_one_line_error(*run_cli(["score", "rows.jsonl", "-m", "model"], capsys), message)
    assert digest(workdir) == before
    with pytest.raises(ChesError, match=message):  # the same through the Python API
        ches.score(str(workdir / "rows.jsonl"), str(workdir / "model"), progress=False)


def test_an_unreadable_sidecar_next_to_the_input_is_a_warning(workdir, caplog):
    import logging

    (workdir / "scores.parquet.meta.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="ches"):
        assert main(["filter", "scores.parquet", "--keep", "2", "-o", "kept.jsonl"]) == 0
    assert "ignoring the unreadable metadata file scores.parquet.meta.json" in caplog.text
    assert json.loads((workdir / "kept.jsonl.meta.json").read_text())["data_metadata"] is None


def test_columns_map_the_users_names_and_keep_them(workdir):
    rows = [json.loads(line) for line in PERSONA.read_text().splitlines()[:5]]
    scored = ches.score(rows, str(workdir / "model"), columns=PERSONA_COLUMNS, progress=False)
    renamed = ches.score([{role: row[name] for role, name in PERSONA_COLUMNS.items()} for row in rows],
                         str(workdir / "model"), progress=False)  # the same pairs under ches' names
    assert scored.column_names[:5] == list(rows[0]) and "chosen" not in scored.column_names
    assert list(scored["ches"]) == pytest.approx(list(renamed["ches"]), rel=1e-9)


def test_the_persona_file_scores_with_one_command(workdir, capsys):
    columns = ",".join(f"{role}={name}" for role, name in PERSONA_COLUMNS.items())
    assert main(["score", str(PERSONA), "-m", "model", "--columns", columns, "-o", "persona.parquet", "--no-progress"]) == 0
    scored = ches.data.inputs.load_data("persona.parquet")
    assert len(scored) == 1000 and all(reason is None for reason in scored["ches_skip"])
    assert json.loads((workdir / "persona.parquet.meta.json").read_text())["run"]["options"]["columns"] == PERSONA_COLUMNS


@pytest.mark.parametrize("columns, message", [
    ("prompt=question,chosen", r"expected NAME=COLUMN pairs"),
    ("prompt=question,answer=answer_matching_behavior", r"columns= names \['answer'\], but ches reads only"),
    ("prompt=question,chosen=good,rejected=bad", r"columns= maps to \['bad', 'good'\], which the data does not have; "
                                                 r"its columns are \['question'"),
])
def test_bad_column_mappings(columns, message, workdir, capsys):
    before = digest(workdir)
    assert_one_line_error(*run_cli(["score", str(PERSONA), "-m", "model", "--columns", columns], capsys), message)
    assert digest(workdir) == before


def test_score_columns_of_the_wrong_type_name_file_and_column(workdir, capsys):
    rows = scored_sample().to_list()
    datasets.Dataset.from_list([dict(row, ln_ches=str(row["ln_ches"])) for row in rows]).to_parquet("text-scores.parquet")
    datasets.Dataset.from_list([dict(row, ches_skip=0) for row in rows]).to_parquet("int-skips.parquet")
    for argv, message in [(["filter", "text-scores.parquet", "--keep", "2"], r"text-scores.parquet: column 'ln_ches' holds string values, not numbers"),
                          (["report", "text-scores.parquet", "-o", "r.html"], r"text-scores.parquet: column 'ln_ches' holds string"),
                          (["filter", "int-skips.parquet", "--keep", "2"], r"int-skips.parquet: column 'ches_skip' holds int64 values, not text or None")]:
        assert_one_line_error(*run_cli(argv, capsys), message)
    with pytest.raises(ChesError, match=r"column 'ches_skip' holds int64 values"):
        ches.summary("int-skips.parquet")


def test_a_lone_surrogate_is_named_by_row_and_column(workdir, capsys):
    (workdir / "bad.jsonl").write_text('{"chosen": "a", "rejected": "b"}\n{"chosen": "x \\ud800 y", "rejected": "b"}\n')
    assert_one_line_error(*run_cli(["score", "bad.jsonl", "-m", "model"], capsys),
                          r"bad.jsonl, row 1, column 'chosen': the text holds '\\ud800', which is not valid Unicode")
    with pytest.raises(ChesError, match=r"data, row 0, column 'rejected'"):
        ches.score([{"chosen": "a", "rejected": [{"role": "user", "content": "\ud800"}]}], "model")


def test_numpy_numbers_are_numbers(workdir):
    kept = ches.filter(scored_sample(), quantile=np.float32(0.5))
    assert kept.to_list() == ches.filter(scored_sample(), quantile=0.5).to_list()
    assert ches.filter(scored_sample(), keep=np.int64(2)).to_list() == ches.filter(scored_sample(), keep=2).to_list()


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
