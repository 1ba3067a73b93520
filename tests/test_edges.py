"""Trustworthy edges: every failure a user can cause is one clear line naming the file, row, column or
option (exit 2, no traceback), raised before model work where it can be, and nothing in the working
folder changes except the output that was asked for. Grouped by layer: files, rows, models, options,
outputs, cache; the kill tests for outputs are in tests/test_atomic.py."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest

import ches
from ches import ChesError
from ches.cli import main
from conftest import MODEL_DIR, ROOT

SAMPLE = ROOT / "examples" / "data" / "hh-sample.jsonl"
ROWS = [json.loads(line) for line in SAMPLE.read_text().splitlines()[:6]]


def digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) with the SHA-256 of its bytes."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working folder holding a small data file, a scored Parquet file, a model copy and an unrelated file."""
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    scored_rows(tmp_path)
    shutil.copytree(MODEL_DIR, tmp_path / "model")
    (tmp_path / "notes.txt").write_text("my notes")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "keep-me.txt").write_text("unrelated work")
    monkeypatch.chdir(tmp_path)
    return tmp_path


_SCORED = {}


def scored_rows(folder: Path) -> None:
    if "rows" not in _SCORED:
        _SCORED["rows"] = ches.score(ROWS, str(MODEL_DIR), progress=False, layout="padded")
    _SCORED["rows"].to_parquet(str(folder / "scores.parquet"))


def run_cli(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def write(path: Path, content) -> None:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


# ---------------------------------------------------------------- files: (setup, argv, message)
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
                                 r"'chosen'.*question, answer|question.*answer"),
    "unknown extension": (("pairs.txt", "chosen,rejected\n"), ["score", "pairs.txt", "-m", "model"],
                          r"cannot tell the format of pairs.txt"),
    "folder that is not a dataset": (("plain-folder/readme.md", "hi"), ["score", "plain-folder", "-m", "model"],
                                     r"plain-folder is a folder but not one written by save_to_disk"),
    "parquet without rows": (("none.parquet", "EMPTY-PARQUET"), ["score", "none.parquet", "-m", "model"],
                             r"none.parquet holds no rows"),
    "damaged dataset folder": (("broken-ds/state.json", "{not json"), ["score", "broken-ds", "-m", "model"],
                               r"broken-ds"),
    "mixed row types": (("mixed.jsonl", '{"chosen": "a", "rejected": "b"}\n{"chosen": ["a"], "rejected": "b"}\n'),
                        ["score", "mixed.jsonl", "-m", "model"], r"mixed.jsonl: rows do not share one schema"),
    "scores file for report is raw data": (None, ["report", "pairs.jsonl", "-o", "r.html"],
                                           r"report needs a file written by 'ches score'"),
}

# ---------------------------------------------------------------- rows
ROW_CASES = {
    "missing rejected column": ('{"prompt": "p", "chosen": "a"}\n', r"rejected"),
    "chosen is null": ('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": null, "rejected": "b"}\n',
                       r"row 1"),
    "chosen is a number": ('{"prompt": "p", "chosen": 3, "rejected": "b"}\n', r"chosen.*row 0|row 0.*chosen"),
    "prompt is a number": ('{"prompt": 3, "chosen": "a", "rejected": "b"}\n', r"prompt"),
    "unknown chat role": ('{"prompt": [{"role": "human", "content": "Hi"}], "chosen": [{"role": "assistant", '
                          '"content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}\n',
                          r"row 0: message 0 has the unknown role 'human'"),
    "message without content": ('{"prompt": [{"role": "user"}], "chosen": [{"role": "assistant", "content": "a"}], '
                                '"rejected": [{"role": "assistant", "content": "b"}]}\n', r"row 0"),
    "standard and conversational mixed": ('{"prompt": "p", "chosen": [{"role": "assistant", "content": "a"}], '
                                          '"rejected": "b"}\n', r"row 0"),
}

# ---------------------------------------------------------------- models
MODEL_CASES = {
    "missing model folder": (None, ["score", "pairs.jsonl", "-m", "./no-such-model"], r"no-such-model"),
    "empty model folder": ("empty", ["score", "pairs.jsonl", "-m", "empty-model"], r"empty-model"),
    "corrupt weights": ("corrupt-weights", ["score", "pairs.jsonl", "-m", "model"], r"could not load model 'model'"),
    "corrupt config": ("corrupt-config", ["score", "pairs.jsonl", "-m", "model"], r"model"),
    "cuda without cuda": (None, ["score", "pairs.jsonl", "-m", "model", "--device", "cuda"], r"no usable CUDA device"),
    "cuda index out of range": (None, ["score", "pairs.jsonl", "-m", "model", "--device", "cuda:7"], r"CUDA"),
    "nonsense device": (None, ["score", "pairs.jsonl", "-m", "model", "--device", "gpu please"], r"not a torch device"),
    "missing tokenizer": (None, ["score", "pairs.jsonl", "-m", "model", "--tokenizer", "./no-tokenizer"], r"no-tokenizer"),
}

# ---------------------------------------------------------------- options
OPTION_CASES = {
    "max length 1": (["score", "pairs.jsonl", "-m", "model", "--max-length", "1"], r"max_length=1 must be an integer >= 2"),
    "max length negative": (["score", "pairs.jsonl", "-m", "model", "--max-length", "-5"], r"max_length=-5"),
    "max length not a number": (["score", "pairs.jsonl", "-m", "model", "--max-length", "ten"], r"--max-length.*'ten'"),
    "batch tokens zero": (["score", "pairs.jsonl", "-m", "model", "--batch-tokens", "0"], r"batch_tokens=0 must be a positive"),
    "unknown layout": (["score", "pairs.jsonl", "-m", "model", "--layout", "ragged"], r"--layout.*'ragged'"),
    "unknown dtype": (["score", "pairs.jsonl", "-m", "model", "--dtype", "int8"], r"--dtype.*'int8'"),
    "max memory not json": (["score", "pairs.jsonl", "-m", "model", "--max-memory", "{70GiB"], r"--max-memory"),
    "unknown flag": (["score", "pairs.jsonl", "-m", "model", "--fast"], r"unrecognized arguments: --fast"),
    "no command": ([], r"required"),
    "score without model": (["score", "pairs.jsonl"], r"--model"),
    "quantile above 1": (["filter", "scores.parquet", "--quantile", "1.5"], r"quantile=1.5 must be in \(0, 1\]"),
    "quantile zero": (["filter", "scores.parquet", "--quantile", "0"], r"quantile=0.0 must be in \(0, 1\]"),
    "keep too many": (["filter", "scores.parquet", "--keep", "999"], r"keep=999 is outside \[0, 6\]"),
    "keep negative": (["filter", "scores.parquet", "--keep", "-1"], r"keep=-1 is outside"),
    "two rules": (["filter", "scores.parquet", "--keep", "2", "--max-score", "0"], r"not allowed with argument"),
    "window without around": (["filter", "scores.parquet", "--window", "4"], r"window= sets the size of the around="),
    "window too large": (["filter", "scores.parquet", "--around", "0.5", "--window", "99"], r"window size 99 must be in"),
    "around outside [0, 1]": (["filter", "scores.parquet", "--around", "2"], r"window centre 2.0 must be a quantile"),
    "unknown measure": (["filter", "scores.parquet", "--measure", "cosine"], r"--measure.*'cosine'"),
    "raw data without model": (["filter", "pairs.jsonl"], r"has no 'ln_ches' column; pass model="),
    "scoring flags without model": (["filter", "scores.parquet", "--max-length", "64", "--layout", "padded"],
                                    r"--max-length, --layout only apply when scoring; pass --model too"),
    "report unknown measure": (["report", "scores.parquet", "-o", "r.html", "--measure", "x"], r"--measure.*'x'"),
    "report without output": (["report", "scores.parquet"], r"--output"),
    "report top zero": (["report", "scores.parquet", "-o", "r.html", "--top", "0"], r"top=0 must be a positive integer"),
    "validate n zero": (["validate", "pairs.jsonl", "-m", "model", "--n", "0"], r"n=0"),
    "validate negative steps": (["validate", "pairs.jsonl", "-m", "model", "--n", "4", "--steps", "-1"],
                                r"steps=-1 must be a positive integer"),
    "validate zero lr": (["validate", "pairs.jsonl", "-m", "model", "--n", "4", "--lr", "0"], r"learning_rate=0.0 must be > 0"),
    "validate zero beta": (["validate", "pairs.jsonl", "-m", "model", "--n", "4", "--beta", "0"], r"beta=0.0 must be > 0"),
    "split of a single file": (["score", "pairs.jsonl", "-m", "model", "--split", "test"],
                               r"split='test' was given, but pairs.jsonl is a single file with no splits"),
}

# ---------------------------------------------------------------- outputs
OUTPUT_CASES = {
    "current folder": (["score", "pairs.jsonl", "-m", "model", "-o", "."], r"is the current folder"),
    "current folder with overwrite": (["score", "pairs.jsonl", "-m", "model", "-o", ".", "--overwrite"],
                                      r"is the current folder"),
    "unrelated folder": (["score", "pairs.jsonl", "-m", "model", "-o", "results"],
                         r"results exists and is not a dataset folder written by ches"),
    "unrelated folder with overwrite": (["score", "pairs.jsonl", "-m", "model", "-o", "results", "--overwrite"],
                                        r"results exists and is not a dataset folder written by ches"),
    "existing file": (["score", "pairs.jsonl", "-m", "model", "-o", "notes.parquet"], None),  # set up below
    "inside a file": (["score", "pairs.jsonl", "-m", "model", "-o", "notes.txt/scores.parquet"],
                      r"notes.txt is a file, not a folder"),
    "unknown output extension": (["score", "pairs.jsonl", "-m", "model", "-o", "scores.txt"],
                                 r"unknown output format '.txt'"),
    "gzipped parquet": (["score", "pairs.jsonl", "-m", "model", "-o", "scores.parquet.gz"],
                        r"gzip is supported for .jsonl.gz, .json.gz, .csv.gz"),
    "output is the input": (["filter", "scores.parquet", "-o", "scores.parquet", "--overwrite"],
                            r"would replace the input scores.parquet"),
    "output folder holds the input": (["score", "sub/pairs.jsonl", "-m", "model", "-o", "sub", "--overwrite"],
                                      r"would replace the input"),
    "embeddings wrong extension": (["score", "pairs.jsonl", "-m", "model", "--save-embeddings", "e.bin"],
                                   r"e.bin: expected a name ending in .safetensors"),
    "embeddings exist": (["score", "pairs.jsonl", "-m", "model", "--save-embeddings", "notes.safetensors"], None),
    "report to a text file": (["report", "scores.parquet", "-o", "r.txt"], r"r.txt: expected a name ending in .html"),
    "report exists": (["report", "scores.parquet", "-o", "old.html"], r"old.html exists; pass --overwrite"),
    "validate output exists": (["validate", "pairs.jsonl", "-m", "model", "-o", "old.json"], r"old.json exists; pass --overwrite"),
    "stray sidecar": (["score", "pairs.jsonl", "-m", "model", "-o", "fresh.parquet"], r"fresh.parquet.meta.json exists"),
    "output folder is a file": (["score", "pairs.jsonl", "-m", "model", "-o", "notes.txt"], r"unknown output format"),
    "cache dir is a file": (["score", "pairs.jsonl", "-m", "model", "--cache-dir", "notes.txt"], r"notes.txt is not a folder"),
}


def prepare(workdir: Path) -> None:
    """Extra files some cases need."""
    (workdir / "notes.parquet").write_text("an old output the user wants to keep")
    (workdir / "notes.safetensors").write_text("old embeddings")
    (workdir / "old.html").write_text("<p>old report</p>")
    (workdir / "old.json").write_text("{}")
    (workdir / "fresh.parquet.meta.json").write_text("{}")
    (workdir / "sub").mkdir(exist_ok=True)
    shutil.copy(workdir / "pairs.jsonl", workdir / "sub" / "pairs.jsonl")
    (workdir / "empty-model").mkdir(exist_ok=True)


def assert_one_line_error(code: int, err: str, message: str | None) -> None:
    lines = [line for line in err.splitlines() if line.startswith("ches: error:")]
    assert code == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    if message:
        import re

        assert re.search(message, lines[0]), lines[0]


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


@pytest.mark.parametrize("case", sorted(ROW_CASES))
def test_rows(case, workdir, capsys):
    content, message = ROW_CASES[case]
    (workdir / "rows.jsonl").write_text(content)
    before = digest(workdir)
    assert_one_line_error(*run_cli(["score", "rows.jsonl", "-m", "model"], capsys), message)
    assert digest(workdir) == before
    with pytest.raises(ChesError, match=message):  # the same through the Python API
        ches.score(str(workdir / "rows.jsonl"), str(workdir / "model"), progress=False)


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_models(case, workdir, capsys):
    setup, argv, message = MODEL_CASES[case]
    prepare(workdir)
    if setup == "corrupt-weights":
        (workdir / "model" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    if setup == "corrupt-config":
        (workdir / "model" / "config.json").write_text("{broken")
    before = digest(workdir)
    assert_one_line_error(*run_cli(argv, capsys), message)
    assert digest(workdir) == before


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_options(case, workdir, capsys):
    argv, message = OPTION_CASES[case]
    before = digest(workdir)
    assert_one_line_error(*run_cli(argv, capsys), message)
    assert digest(workdir) == before


@pytest.mark.parametrize("case", sorted(OUTPUT_CASES))
def test_outputs_are_checked_before_work_and_never_replaced_unasked(case, workdir, capsys, monkeypatch):
    argv, message = OUTPUT_CASES[case]
    prepare(workdir)
    if message is None:
        message = r"exists; pass --overwrite"
    import ches.models

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(ches.api, "load_model", no_model)  # every output problem is found before the model loads
    before = digest(workdir)
    assert_one_line_error(*run_cli(argv, capsys), message)
    assert digest(workdir) == before


# ---------------------------------------------------------------- the Python API
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
    "two filter rules": (lambda m: ches.filter(_SCORED["rows"], 0.5, keep=3), r"give at most one of quantile="),
    "misspelled filter option": (lambda m: ches.filter(_SCORED["rows"], windw=3), r"unknown option 'windw'"),
    "scoring option without model": (lambda m: ches.filter(_SCORED["rows"], max_length=64),
                                     r"'max_length' only apply when scoring"),
    "window without around": (lambda m: ches.filter(_SCORED["rows"], window=4), r"window= sets the size"),
    "rank unknown measure": (lambda m: ches.rank(_SCORED["rows"], measure="cosine"), r"unknown measure 'cosine'"),
    "summary of raw rows": (lambda m: ches.summary(ROWS), r"has no 'ln_ches' column"),
    "report over an existing file": (lambda m: ches.report.write_report(_SCORED["rows"], "old.html"),
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


# ---------------------------------------------------------------- what happens after the checks
def test_filter_rank_and_summary_work_split_by_split_on_a_dataset_dict(workdir):
    prepare(workdir)
    scored = _SCORED["rows"]
    halves = datasets.DatasetDict({"a": scored.select(range(4)), "b": scored.select(range(4, len(scored)))})
    kept = ches.filter(halves, 0.5)
    assert isinstance(kept, datasets.DatasetDict) and sorted(kept) == ["a", "b"]
    for name, part in halves.items():  # each split by its own quantile, as if filtered alone
        assert kept[name].to_list() == ches.filter(part, 0.5).to_list()
    ranked = ches.rank(halves)
    assert [len(ranked[name]) for name in ("a", "b")] == [4, len(scored) - 4]
    assert ranked["a"].to_list() == ches.rank(halves["a"]).to_list()
    assert ches.summary(halves)["b"] == ches.summary(halves["b"])


def test_overwrite_replaces_only_what_was_asked(workdir, capsys):
    assert main(["score", "pairs.jsonl", "-m", "model", "-o", "out", "--no-progress"]) == 0
    first = digest(workdir / "out")
    code, err = run_cli(["score", "pairs.jsonl", "-m", "model", "-o", "out", "--no-progress"], capsys)
    assert_one_line_error(code, err, r"out exists; pass --overwrite")
    assert main(["score", "pairs.jsonl", "-m", "model", "-o", "out", "--no-progress", "--overwrite",
                 "--max-length", "64"]) == 0
    assert digest(workdir / "out") != first and (workdir / "results" / "keep-me.txt").read_text() == "unrelated work"
    assert max(ches.inputs.load_data("out")["chosen_tokens"]) <= 64
    assert not [path for path in workdir.iterdir() if path.name.startswith(".")]  # no temporary left behind


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".jsonl.gz", ".json", ".parquet", ""])
def test_every_output_format_round_trips_through_filter_report_and_the_api(suffix, workdir, capsys):
    output = f"scores-out{suffix}"
    assert main(["score", "pairs.jsonl", "-m", "model", "-o", output, "--no-progress"]) == 0
    reference = ches.filter(_SCORED["rows"], keep=3)
    assert main(["filter", output, "--keep", "3", "-o", "kept.parquet"]) == 0
    assert list(ches.inputs.load_data("kept.parquet")["chosen"]) == list(reference["chosen"])
    assert main(["report", output, "-o", "report.html"]) == 0
    assert "6 of 6 rows scored" in (workdir / "report.html").read_text()
    stats = ches.summary(output)
    assert stats["scored"] == 6 and stats["measures"]["ches"]["max"] == pytest.approx(max(_SCORED["rows"]["ches"]))


def test_nan_scores_are_not_scored_everywhere(workdir):
    rows = _SCORED["rows"].to_list()
    rows[1]["ln_ches"] = float("nan")  # ches_skip still says None
    rows[2]["ches"] = float("inf")
    data = datasets.Dataset.from_list(rows)
    stats = ches.summary(data)
    assert stats["scored"] == 4 and stats["skip_reasons"] == {"score is NaN or infinite": 2}
    assert all(math.isfinite(value) for value in stats["measures"]["ln_ches"].values())
    kept = ches.filter(data, quantile=1.0)
    assert len(kept) == 5 and rows[1]["chosen"] not in list(kept["chosen"])  # ln_ches NaN: dropped
    ranked = ches.rank(data, measure="ln_ches")
    assert ranked[len(ranked) - 1]["chosen"] == rows[1]["chosen"] and math.isnan(ranked[len(ranked) - 1]["ches_percentile"])
    ches.report.write_report(data, "nan.html")
    assert "4 of 6 rows scored" in (workdir / "nan.html").read_text()


def test_json_outputs_are_strict(workdir, capsys):
    from ches.export import write_json

    write_json("strict.json", {"a": float("nan"), "b": [float("inf"), 1.0]})
    assert json.loads((workdir / "strict.json").read_text(), parse_constant=lambda name: pytest.fail(name)) == {
        "a": None, "b": [None, 1.0]}
    assert main(["score", "pairs.jsonl", "-m", "model", "--no-progress", "--max-length", "2"]) == 0  # every row skipped
    printed = capsys.readouterr().out
    json.loads(printed, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))


def test_an_unreadable_sidecar_next_to_the_input_is_a_warning(workdir, caplog):
    import logging

    (workdir / "scores.parquet.meta.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="ches"):
        assert main(["filter", "scores.parquet", "--keep", "2", "-o", "kept.jsonl"]) == 0
    assert "ignoring the unreadable metadata file scores.parquet.meta.json" in caplog.text
    assert json.loads((workdir / "kept.jsonl.meta.json").read_text())["data_metadata"] is None


def test_filter_with_a_model_rescores_scored_data(workdir):
    stale = _SCORED["rows"].map(lambda row: {"ln_ches": -row["ln_ches"]})  # scores from "another model"
    fresh = ches.filter(stale, keep=3, model=str(workdir / "model"))
    assert list(fresh["chosen"]) == list(ches.filter(_SCORED["rows"], keep=3)["chosen"])


# ---------------------------------------------------------------- cache
def test_cache_recomputes_after_one_weight_element_changes(workdir, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(workdir / "model")
    first = ches.score(ROWS, model, tokenizer, cache_dir="cache", progress=False)
    with torch.no_grad():  # one element, far from where a strided sample would look
        parameter = model.model.layers[-1].mlp.down_proj.weight
        parameter.view(-1)[parameter.numel() // 2 + 7] += 0.5
    second = ches.score(ROWS, model, tokenizer, cache_dir="cache", progress=False)
    fresh = ches.score(ROWS, model, tokenizer, progress=False)
    assert list(second["ches"]) == pytest.approx(list(fresh["ches"]), rel=1e-9)
    assert list(second["ches"]) != pytest.approx(list(first["ches"]), rel=1e-9)
    assert len(list((workdir / "cache").iterdir())) == 2  # a second run key, the first left as it was


def test_cache_ignores_the_batch_budget_and_recomputes_a_corrupt_shard(workdir, tokenizer, caplog):
    import logging

    model = str(workdir / "model")
    first = ches.score(ROWS, model, cache_dir="cache", batch_tokens=4096, progress=False)
    [run] = list((workdir / "cache").iterdir())
    [shard] = list(run.glob("chunk-*.safetensors"))
    resumed_at = shard.stat().st_mtime_ns
    again = ches.score(ROWS, model, cache_dir="cache", batch_tokens=512, progress=False)  # another budget: same key
    assert shard.stat().st_mtime_ns == resumed_at and list(again["ches"]) == list(first["ches"])
    shard.write_bytes(shard.read_bytes()[:50])  # a shard cut short (e.g. a full disk)
    with caplog.at_level(logging.WARNING, logger="ches"):
        third = ches.score(ROWS, model, cache_dir="cache", progress=False)
    assert "is unreadable or incomplete" in caplog.text and list(third["ches"]) == pytest.approx(list(first["ches"]))


def test_spearman_matches_pandas_with_ties():
    import pandas

    from ches.stats import spearman

    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 20, 500).astype(float), rng.normal(size=500).round(1)
    reference = pandas.Series(a).rank(method="average").corr(pandas.Series(b).rank(method="average"))  # Pearson of ranks
    assert spearman(a, b) == pytest.approx(reference, abs=1e-12)


# ---------------------------------------------------------------- signals
def test_ctrl_c_is_one_line_and_leaves_no_output(workdir, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ches.api, "score_run", interrupted)
    before = digest(workdir)
    code = main(["score", "pairs.jsonl", "-m", "model", "-o", "scores-new.parquet"])
    err = capsys.readouterr().err
    assert code == 130 and err.count("\n") == 1 and err.startswith("ches: interrupted") and "Traceback" not in err
    assert digest(workdir) == before


def test_an_error_deep_in_a_library_is_one_line_naming_it(workdir, capsys, monkeypatch):
    import pyarrow

    def broken(*args, **kwargs):
        raise pyarrow.lib.ArrowInvalid("Column 3: In chunk 0: Invalid: offsets\nnot monotonic")

    monkeypatch.setattr(datasets.Dataset, "to_parquet", broken)
    before = digest(workdir)
    code, err = run_cli(["filter", "scores.parquet", "--keep", "2", "-o", "kept.parquet"], capsys)
    assert_one_line_error(code, err, r"ArrowInvalid \(in \w+\): Column 3: In chunk 0: Invalid: offsets not monotonic")
    assert digest(workdir) == before


def test_cache_works_with_an_offloaded_model(workdir):
    offload = {"device_map": "auto", "max_memory": {"cpu": "150KB"}, "offload_folder": str(workdir / "offload")}
    reference = ches.score(ROWS, str(workdir / "model"), progress=False)
    scored = ches.score(ROWS, str(workdir / "model"), cache_dir="cache", progress=False, **offload)
    again = ches.score(ROWS, str(workdir / "model"), cache_dir="cache", progress=False, **offload)
    assert list(scored["ches"]) == pytest.approx(list(reference["ches"]), rel=1e-5)
    assert list(again["ches"]) == list(scored["ches"])


# ---------------------------------------------------------------- their own column names, threads
PERSONA = ROOT / "examples" / "data" / "persona-ends-justify-means.jsonl"
PERSONA_COLUMNS = {"prompt": "question", "chosen": "answer_matching_behavior", "rejected": "answer_not_matching_behavior"}


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
    scored = ches.inputs.load_data("persona.parquet")
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


def test_threads_are_set_for_the_call_and_recorded(workdir):
    import torch

    default = torch.get_num_threads()
    _, info = ches.api.score_run(ROWS, str(workdir / "model"), num_threads=1, progress=False)
    assert info.threads == 1 and torch.get_num_threads() == default
    with pytest.raises(ChesError, match=r"num_threads=0 must be a positive integer"):
        ches.score(ROWS, str(workdir / "model"), num_threads=0, progress=False)


def test_no_progress_silences_every_bar_and_progress_shows_only_ches_bar(workdir, capsys):
    import datasets.utils.logging as datasets_logging

    assert main(["score", "pairs.jsonl", "-m", "model", "-o", "quiet.parquet", "--no-progress"]) == 0
    assert "%|" not in capsys.readouterr().err  # no bar at all: weight loading, conversion, ches
    assert main(["score", "pairs.jsonl", "-m", "model", "-o", "loud.parquet"]) == 0
    bars = {line.split(":")[0].strip() for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if "%|" in line}
    assert bars == {"ches"}
    assert datasets_logging.is_progress_bar_enabled()  # the libraries' own setting is given back


# ---------------------------------------------------------------- the Hub, unreachable
@pytest.mark.parametrize("offline", [True, False])
def test_a_hub_id_without_a_connection_fails_at_once_in_one_line(offline, workdir, capsys, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: refused at once
    why = r"offline mode is on \(HF_HUB_OFFLINE=1\)" if offline else r"http://127.0.0.1:9 cannot be reached"
    before = digest(workdir)
    assert_one_line_error(*run_cli(["score", "pairs.jsonl", "-m", "some-org/some-model"], capsys),
                          rf"could not load model 'some-org/some-model': it is not a local folder, {why}")
    assert_one_line_error(*run_cli(["score", "some-org/some-data", "-m", "model"], capsys),
                          rf"'some-org/some-data' is not an existing local path, and as a Hub dataset id .*{why}")
    assert digest(workdir) == before and constants.HF_HUB_OFFLINE == offline  # the switch is given back
