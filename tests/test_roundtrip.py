"""Files ches writes read back as written: every text byte-equal, every row one row, every column ches writes
typed as it was written (CSV included); a file whose row count disagrees with its sidecar is refused."""

import json

import datasets
import pytest
from conftest import MODEL_DIR, hh_rows, standard_rows

from ches.cli import main
from ches.data.export import sidecar_path, write_dataset
from ches.data.inputs import load_data

#: every character ``str.splitlines`` breaks a line at, and ``\r\n``; with the CSV specials for good measure
BREAKS = ["\r", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", '"', ",", '","\r']
FORMATS = ["csv", "csv.gz", "jsonl", "jsonl.gz", "json", "parquet"]


def broken_rows() -> list[dict]:
    """A row per line-break character, in the completions, the prompt and at the ends of a text."""
    return [{"prompt": f"Q{index}{char}?", "chosen": f"yes{char}indeed", "rejected": f"{char}no{char}", "id": index}
            for index, char in enumerate(BREAKS)]


@pytest.mark.parametrize("kind", FORMATS)
def test_texts_with_line_breaks_read_back_as_written(kind, tmp_path):
    rows = broken_rows()
    path = write_dataset(datasets.Dataset.from_list(rows), tmp_path / f"x.{kind}")
    back = load_data(str(path))
    assert back.num_rows == len(rows)
    for written, read in zip(rows, back.to_list()):
        for name in ("prompt", "chosen", "rejected"):
            assert read[name].encode("utf-8") == written[name].encode("utf-8"), (name, written[name])


def test_every_text_field_of_a_csv_is_quoted(tmp_path):
    path = write_dataset(datasets.Dataset.from_list(broken_rows()[:1]), tmp_path / "x.csv")
    assert path.read_bytes() == b'"prompt","chosen","rejected","id"\n"Q0\r?","yes\rindeed","\rno\r",0\n'


def test_a_scored_csv_with_a_lone_carriage_return_filters_every_row(tmp_path, capsys):
    rows = standard_rows(hh_rows(4))
    rows[1]["chosen"] = rows[1]["chosen"] + "\rand more"
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    scores, kept = tmp_path / "s.csv", tmp_path / "kept.csv"
    assert main(["score", str(data), "-m", str(MODEL_DIR), "-o", str(scores), "--no-progress"]) == 0
    assert main(["filter", str(scores), "--quantile", "1", "-o", str(kept)]) == 0
    assert json.loads(sidecar_path(kept).read_text())["rows_written"] == 4
    assert load_data(str(kept))["chosen"] == [row["chosen"] for row in rows]


#: a value of each type ches writes, for three rows: edge values, and an empty cell where the type has one
SAMPLES = {
    "float64": [0.1 + 0.2, float("nan"), -float("inf")],
    "int64": [7, 0, None],
    "bool": [True, None, False],
    "string": ["prompt_too_long", None, "a1b2c3"],
    "list<string>": [["empty_chosen"], [], ["identical_after_truncation", "chosen_truncated", "rejected_truncated",
                                            "empty_chosen", "empty_rejected"]],
}


def every_column() -> datasets.Dataset:
    """Three rows holding every column ches writes (:func:`ches.data.columns.all_types`), typed as ches types them,
    next to texts with line breaks."""
    from ches.data.columns import all_types, column_feature

    texts = broken_rows()[:3]
    columns = {"prompt": [row["prompt"] for row in texts], "chosen": [row["chosen"] for row in texts],
               **{name: SAMPLES[kind] for name, kind in all_types().items()}}
    features = {name: column_feature(name) if name in all_types() else datasets.Value("string") for name in columns}
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def same(first: list[dict], second: list[dict]) -> bool:
    """Row lists equal, NaN equal to NaN."""
    return json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


@pytest.mark.parametrize("kind", ["csv", "csv.gz"])
def test_every_column_ches_writes_reads_back_from_csv_as_from_parquet(kind, tmp_path):
    dataset = every_column()
    parquet = load_data(str(write_dataset(dataset, tmp_path / "x.parquet")))
    back = load_data(str(write_dataset(dataset, tmp_path / f"x.{kind}")))
    assert back.features == parquet.features == dataset.features
    assert same(back.to_list(), parquet.to_list()) and same(back.to_list(), dataset.to_list())


def test_a_string_column_added_to_the_table_reads_back_typed(tmp_path, monkeypatch):
    from ches.data import columns

    monkeypatch.setitem(columns.SCORE_TYPES, "ches_token_digest", "string")
    assert columns.typed_cell("ches_token_digest", "") is None
    dataset = every_column()
    assert dataset["ches_token_digest"] == ["prompt_too_long", None, "a1b2c3"]
    back = load_data(str(write_dataset(dataset, tmp_path / "x.csv")))
    assert back.features == dataset.features and same(back.to_list(), dataset.to_list())


def test_a_cell_that_is_not_of_its_columns_type_is_named(tmp_path):
    from ches import ChesError

    path = tmp_path / "x.csv"
    path.write_text("chosen,rejected,displaced\na,b,True\nc,d,maybe\n", encoding="utf-8")
    with pytest.raises(ChesError, match=r"x\.csv, row 1, column 'displaced': 'maybe' is not a bool value"):
        load_data(str(path))


def scored_csv(tmp_path, rows: list[dict] | None = None):
    """A scores file ``s.csv`` written by ``ches score`` (with its sidecar), from four hh rows."""
    data = tmp_path / "d.jsonl"
    rows = rows or standard_rows(hh_rows(4))
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    scores = tmp_path / "s.csv"
    assert main(["score", str(data), "-m", str(MODEL_DIR), "-o", str(scores), "--no-progress"]) == 0
    return scores


def test_the_sidecar_records_the_output_digest(tmp_path):
    from ches.data.export import file_sha256

    scores = scored_csv(tmp_path)
    meta = json.loads(sidecar_path(scores).read_text())
    assert meta["rows_written"] == 4 and meta["output_sha256"] == file_sha256(scores)
    assert load_data(str(scores)).num_rows == 4


def test_a_file_as_ches_wrote_it_but_misread_is_refused(tmp_path, capsys):
    """What an older ches wrote: a lone \\r left unquoted; the digest says the file is unchanged."""
    from ches import ChesError
    from ches.data.export import file_sha256

    path = tmp_path / "old.csv"
    path.write_bytes(b"prompt,chosen,rejected\np,a\rb,r\np,c,d\n")
    sidecar_path(path).write_text(json.dumps({"rows_written": 2, "output_sha256": file_sha256(path)}))
    with pytest.raises(ChesError, match=r"old\.csv: 3 rows read, but its sidecar .*old\.csv\.meta\.json records 2 rows "
                                         r"written by ches; the file is as ches wrote it, so the reader split its rows"):
        load_data(str(path))
    assert main(["filter", str(path), "--keep", "1", "-o", str(tmp_path / "kept.csv")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "3 rows read" in error and "2 rows written" in error
    assert not (tmp_path / "kept.csv").exists()


@pytest.mark.parametrize("kind", ["csv", "parquet", "jsonl"])
def test_a_file_edited_after_ches_wrote_it_is_refused_until_its_sidecar_is_moved(kind, tmp_path):
    from ches import ChesError

    path = write_dataset(datasets.Dataset.from_list(broken_rows()), tmp_path / f"x.{kind}")
    sidecar_path(path).write_text(json.dumps({"rows_written": len(BREAKS), "output_sha256": "0" * 64}))
    assert load_data(str(path)).num_rows == len(BREAKS)  # edited, same rows: read
    fewer = write_dataset(datasets.Dataset.from_list(broken_rows()[:3]), path, overwrite=True)  # rows dropped
    with pytest.raises(ChesError, match=rf"x\.{kind}: 3 rows read, but .* records {len(BREAKS)} rows written by ches; "
                                         "the file was changed after ches wrote it.* move or delete"):
        load_data(str(fewer))
    sidecar_path(path).rename(tmp_path / "aside.json")
    assert load_data(str(fewer)).num_rows == 3


@pytest.mark.parametrize("content", [{"rows_written": 5, "rows_written_per_split": {"a": 5}}, {"measure": "ches"},
                                     {"rows_written": "5"}, ["not", "a", "record"]])
def test_only_a_dataset_files_sidecar_is_compared(content, tmp_path):
    path = write_dataset(datasets.Dataset.from_list(broken_rows()[:2]), tmp_path / "x.csv")
    sidecar_path(path).write_text(json.dumps(content))
    assert load_data(str(path)).num_rows == 2


MODEL_FLAGS = {"score": ["-m", str(MODEL_DIR)], "filter": [], "validate": ["-m", str(MODEL_DIR)], "report": [],
               "pairs": ["-m", str(MODEL_DIR)], "audit": ["-m", str(MODEL_DIR)]}


def snapshot(folder) -> dict:
    """Every file under ``folder`` with its bytes."""
    return {str(path): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
@pytest.mark.parametrize("command", list(MODEL_FLAGS))
def test_no_output_onto_the_inputs_sidecar(command, overwrite, tmp_path, capsys):
    data = tmp_path / "s.jsonl"
    data.write_text(json.dumps({"chosen": "a", "rejected": "b"}) + "\n", encoding="utf-8")
    sidecar_path(data).write_text(json.dumps({"rows_written": 1}), encoding="utf-8")
    before = snapshot(tmp_path)
    argv = [command, str(data), *MODEL_FLAGS[command], "-o", str(sidecar_path(data)), *overwrite]
    if command == "report":  # a report ends in .html, so its sidecar is the input's only when it is the input
        folder = tmp_path / "r.html"
        datasets.Dataset.from_list([{"chosen": "a", "rejected": "b"}]).save_to_disk(str(folder))
        sidecar_path(folder).write_text(json.dumps({"rows_written": 1}), encoding="utf-8")
        before = snapshot(tmp_path)
        argv = [command, str(folder), "-o", str(folder), *overwrite]
        capsys.readouterr()
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("ches: error: ")
    assert "the sidecar of the input" in error or "would replace the input" in error, error
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", ["score", "filter", "validate", "pairs", "audit"])
def test_no_output_whose_sidecar_is_the_input_or_its_sidecar(command, tmp_path, capsys):
    data = tmp_path / "x.csv.meta.json"  # a JSON data file, named as x.csv's sidecar would be
    data.write_text(json.dumps([{"chosen": "a", "rejected": "b"}]), encoding="utf-8")
    sidecar_path(data).write_text(json.dumps({"rows_written": 1}), encoding="utf-8")
    before = snapshot(tmp_path)
    outputs = [tmp_path / "x.csv", data] if command != "validate" else [tmp_path / "x.csv.meta.json"]
    for output in outputs:
        assert main([command, str(data), *MODEL_FLAGS[command], "-o", str(output), "--overwrite"]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and "would replace" in error, error
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", ["x.jsonl", "x.json", "x.jsonl.gz", "x.csv", "x.parquet"])
def test_every_float_reads_back_as_the_same_float(tmp_path, name):
    """JSON written through pandas kept 10 (at most 15) decimals: a log-prob of -644.4286050796509 came back as
    -644.4286050797, 0.1 + 0.2 as 0.3, 1e-20-sized scores rounded; every float now reads back bit for bit."""
    import random

    from ches.data.export import write_dataset
    from ches.data.inputs import load_data

    generator = random.Random(0)
    values = [0.1 + 0.2, -644.4286050796509, 1.2345678901234567e-20, 22409.757284709332, -1e300, 5e-324]
    values += [generator.uniform(-1000, 1000) * 10 ** generator.randint(-30, 30) for _ in range(200)]
    dataset = datasets.Dataset.from_dict({"chosen": ["a"] * len(values), "rejected": ["b"] * len(values),
                                          "chosen_logps": values})
    written = write_dataset(dataset, tmp_path / name)
    assert load_data(str(written))["chosen_logps"][:] == values
