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
