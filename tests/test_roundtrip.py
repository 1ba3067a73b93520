"""Files ches writes read back as written: every text byte-equal, every row one row, every column ches writes
typed as it was written (CSV included); a file whose row count disagrees with its sidecar is refused."""

import json

import datasets
import pytest

from ches.cli import main
from ches.export import sidecar_path, write_dataset
from ches.inputs import load_data
from conftest import MODEL_DIR, hh_rows, standard_rows

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
    """Three rows holding every column ches writes (:func:`ches.columns.all_types`), typed as ches types them,
    next to texts with line breaks."""
    from ches.columns import all_types, column_feature

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
    from ches import columns

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
