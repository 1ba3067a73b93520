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
from conftest import MODEL_DIR, ROOT

import ches
from ches import ChesError
from ches.cli import main

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

# ---------------------------------------------------------------- rows
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

# ---------------------------------------------------------------- models
MODEL_CASES = {
    "missing model folder": (None, ["score", "pairs.jsonl", "-m", "./no-such-model"],
                             r"model folder ./no-such-model does not exist; pass a local model folder or a Hub id"),
    "empty model folder": ("empty", ["score", "pairs.jsonl", "-m", "empty-model"],
                           r"model folder empty-model has no config.json .*: it is not a Hugging Face model folder"),
    "corrupt weights": ("corrupt-weights", ["score", "pairs.jsonl", "-m", "model"], r"could not load model 'model'"),
    "corrupt config": ("corrupt-config", ["score", "pairs.jsonl", "-m", "model"],
                       r"could not load model 'model' \(OSError: .*config file at 'model/config.json' is not a valid JSON"),
    "cuda without cuda": (None, ["score", "pairs.jsonl", "-m", "model", "--device", "cuda"], r"no usable CUDA device"),
    "cuda index out of range": (None, ["score", "pairs.jsonl", "-m", "model", "--device", "cuda:7"],
                                r"device='cuda:7', but this machine has (no usable CUDA device|\d+ CUDA device)"),
    "nonsense device": (None, ["score", "pairs.jsonl", "-m", "model", "--device", "gpu please"], r"not a torch device"),
    "missing tokenizer": (None, ["score", "pairs.jsonl", "-m", "model", "--tokenizer", "./no-tokenizer"],
                          r"tokenizer folder ./no-tokenizer does not exist; pass a local tokenizer folder or a Hub id"),
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
    "no command": ([], r"the following arguments are required: command \(see 'ches --help'\)"),
    "score without model": (["score", "pairs.jsonl"], r"the following arguments are required: --model/-m"),
    "quantile above 1": (["filter", "scores.parquet", "--quantile", "1.5"], r"quantile=1.5 must be in \(0, 1\]"),
    "quantile zero": (["filter", "scores.parquet", "--quantile", "0"], r"quantile=0.0 must be in \(0, 1\]"),
    "keep too many": (["filter", "scores.parquet", "--keep", "999"], r"keep=999 is outside \[0, 6\]"),
    "keep negative": (["filter", "scores.parquet", "--keep", "-1"], r"keep=-1 is outside"),
    "two rules": (["filter", "scores.parquet", "--keep", "2", "--max-score", "0"], r"not allowed with argument"),
    "window without around": (["filter", "scores.parquet", "--window", "4"], r"window= sets the size of the around="),
    "window too large": (["filter", "scores.parquet", "--around", "0.5", "--window", "99"], r"window size 99 must be in"),
    "around outside [0, 1]": (["filter", "scores.parquet", "--around", "2"], r"around=2.0 must be a quantile in \[0, 1\]"),
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
    import ches.model.models

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(ches.run.runs, "load_model", no_model)  # every output problem is found before the model loads
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
    assert max(ches.data.inputs.load_data("out")["chosen_tokens"]) <= 64
    assert not [path for path in workdir.iterdir() if path.name.startswith(".")]  # no temporary left behind


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".jsonl.gz", ".json", ".parquet", ""])
def test_every_output_format_round_trips_through_filter_report_and_the_api(suffix, workdir, capsys):
    output = f"scores-out{suffix}"
    assert main(["score", "pairs.jsonl", "-m", "model", "-o", output, "--no-progress"]) == 0
    reference = ches.filter(_SCORED["rows"], keep=3)
    assert main(["filter", output, "--keep", "3", "-o", "kept.parquet"]) == 0
    assert list(ches.data.inputs.load_data("kept.parquet")["chosen"]) == list(reference["chosen"])
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
    from ches.data.export import write_json

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

    from ches.scores.stats import spearman

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


# ================================================================ never a silent wrong number (issue 20)
def no_model_load(monkeypatch) -> None:
    """Make any model load fail the test: the case must be refused before it."""
    import ches.model.models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the problem was found")

    for module in (ches.run.runs, ches.evaluate.validation):
        monkeypatch.setattr(module, "load_model", refuse)


# ---------------------------------------------------------------- lost data: the user's columns
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


def test_rank_columns_of_the_user_are_protected_and_a_ranking_is_redone(workdir):
    scored = _SCORED["rows"]
    mine = scored.add_column("ches_rank", ["my own"] * len(scored))
    with pytest.raises(ChesError, match=r"has column\(s\) \['ches_rank'\]"):
        ches.rank(mine)
    ranked = ches.rank(scored)
    assert ches.rank(ranked).to_list() == ranked.to_list()  # an earlier ranking is replaced by the same one


def test_no_scores_after_filtering_keeps_the_prompt(workdir, capsys):
    """The reported loss: after `--columns prompt=ches` and `filter --no-scores` the rows had no prompt. Now the
    mapping is refused, and a legitimate mapping keeps every input column through --no-scores."""
    persona = [json.loads(line) for line in PERSONA.read_text().splitlines()[:6]]
    (workdir / "persona.jsonl").write_text("".join(json.dumps(row) + "\n" for row in persona))
    columns = ",".join(f"{role}={name}" for role, name in PERSONA_COLUMNS.items())
    assert main(["score", "persona.jsonl", "-m", "model", "--columns", columns, "-o", "p.parquet", "--no-progress"]) == 0
    assert main(["filter", "p.parquet", "--keep", "3", "--no-scores", "-o", "clean.jsonl"]) == 0
    kept = [json.loads(line) for line in (workdir / "clean.jsonl").read_text().splitlines()]
    assert list(kept[0]) == list(persona[0]) and {row["question"] for row in kept} <= {row["question"] for row in persona}


# ---------------------------------------------------------------- lost data: nothing lands in an input
def test_nothing_is_written_into_the_model_or_tokenizer_folder(workdir, capsys, monkeypatch):
    shutil.copytree(workdir / "model", workdir / "tok")
    prepare(workdir)
    no_model_load(monkeypatch)
    cases = [
        (["score", "pairs.jsonl", "-m", "model", "--save-embeddings", "model/model.safetensors", "--overwrite"],
         r"model/model.safetensors would replace the input|lies inside the input folder model"),
        (["score", "pairs.jsonl", "-m", "model", "--save-embeddings", "model/e.safetensors"], r"inside the input folder model"),
        (["score", "pairs.jsonl", "-m", "model", "-o", "model/scores.parquet"], r"inside the input folder model"),
        (["score", "pairs.jsonl", "-m", "model", "-o", "model", "--overwrite"], r"would replace the input model"),
        (["score", "pairs.jsonl", "-m", "model", "--tokenizer", "tok", "-o", "tok/s.jsonl"], r"inside the input folder tok"),
        (["score", "pairs.jsonl", "-m", "model", "--cache-dir", "model/cache"], r"inside the input folder model"),
        (["score", "pairs.jsonl", "-m", "model", "--cache-dir", "model"], r"would replace the input model"),
        (["filter", "pairs.jsonl", "-m", "model", "-o", "model/kept.parquet", "--overwrite"], r"inside the input folder model"),
        (["validate", "pairs.jsonl", "-m", "model", "-o", "model/config.json", "--overwrite"], r"inside the input folder model"),
        (["pairs", "pairs.jsonl", "-m", "model", "-o", "model/tokenizer.json", "--overwrite"], r"model/tokenizer.json"),
        (["score", "pairs.jsonl", "-m", "model", "-o", "pairs.jsonl", "--overwrite"], r"would replace the input pairs.jsonl"),
    ]
    before = digest(workdir)
    for argv, message in cases:
        assert_one_line_error(*run_cli(argv, capsys), message)
    assert digest(workdir) == before
    loaded = ches.model.models.load_model(str(workdir / "model")).model  # a loaded model's folder is protected too
    for call in (lambda: ches.score(ROWS, loaded, save_embeddings=str(workdir / "model" / "e.safetensors")),
                 lambda: ches.score(ROWS, str(workdir / "model"), cache_dir=str(workdir / "model" / "cache"))):
        with pytest.raises(ChesError, match=r"inside the input folder"):
            call()
    assert digest(workdir) == before
    monkeypatch.undo()  # the model may load now
    ches.score(ROWS, str(workdir / "model"), cache_dir=str(workdir), progress=False)  # a cache beside the model: fine
    after = digest(workdir)
    assert all(after[name] == value for name, value in before.items())  # only the cache's own folder was added


def test_a_single_file_output_for_split_data_is_refused_before_the_model(workdir, capsys, monkeypatch):
    parts = datasets.DatasetDict({"a": _SCORED["rows"].select(range(3)), "b": _SCORED["rows"].select(range(3, 6))})
    parts.save_to_disk(str(workdir / "splits"))
    no_model_load(monkeypatch)
    before = digest(workdir)
    for argv in (["filter", "splits", "-m", "model", "-o", "kept.jsonl"], ["score", "splits", "-m", "model", "-o", "s.parquet"],
                 ["filter", "splits", "-o", "kept.parquet"]):
        assert_one_line_error(*run_cli(argv, capsys), r"splits \['a', 'b'\], so the result has them too, but --output")
    assert digest(workdir) == before


def test_filter_counts_rows_per_split(workdir, capsys):
    parts = datasets.DatasetDict({"a": _SCORED["rows"].select(range(4)), "b": _SCORED["rows"].select(range(4, 6))})
    parts.save_to_disk(str(workdir / "splits"))
    assert main(["filter", "splits", "--quantile", "0.5"]) == 0
    assert "kept 3 rows (a: 2, b: 1)" in capsys.readouterr().out
    assert main(["filter", "splits", "--quantile", "0.5", "-o", "kept"]) == 0
    meta = json.loads((workdir / "kept.meta.json").read_text())
    assert meta["rows_written"] == 3 and meta["rows_written_per_split"] == {"a": 2, "b": 1}


# ---------------------------------------------------------------- silent wrong results: the checkpoint
def edit_weights(folder: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    save_file(edit(weights), str(folder / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("edit, message", [
    (lambda w: {k: v for k, v in w.items() if ".layers.3." not in k},
     r"missing: model\.layers\.3\.input_layernorm\.weight, .* and 5 more"),
    (lambda w: {k: v for k, v in w.items() if k != "model.norm.weight"}, r"missing: model\.norm\.weight\)"),
    (lambda w: {**w, "model.layers.4.mlp.up_proj.weight": w["model.layers.3.mlp.up_proj.weight"].clone()},
     r"unexpected: model\.layers\.4\.mlp\.up_proj\.weight"),
    (lambda w: {**w, "model.norm.weight": w["model.norm.weight"][:64]},
     r"mis-shaped: model\.norm\.weight \(checkpoint \(64,\), model \(128,\)\)"),
])
def test_a_checkpoint_that_does_not_fill_the_body_is_refused(edit, message, workdir, capsys):
    edit_weights(workdir / "model", edit)
    before = digest(workdir)
    assert_one_line_error(*run_cli(["score", "pairs.jsonl", "-m", "model", "-o", "s.parquet"], capsys),
                          rf"model 'model': the checkpoint does not match the model's body \({message}")
    assert digest(workdir) == before
    with pytest.raises(ChesError, match=message):
        ches.pairs([{"prompt": "Q:", "responses": [" a", " b"], "ratings": [1, 0]}], "model", progress=False)


def test_weights_outside_the_body_are_only_logged(workdir, caplog):
    import logging

    import torch

    edit_weights(workdir / "model", lambda w: {**w, "v_head.weight": torch.zeros(1, 128)})
    with caplog.at_level(logging.WARNING, logger="ches"):
        scored = ches.score(ROWS, "model", progress=False, layout="padded")
    assert "outside the decoder body are missing or unexpected (v_head.weight)" in caplog.text
    assert list(scored["ches"]) == list(_SCORED["rows"]["ches"])


def test_custom_code_never_runs_or_prompts_without_trust_remote_code(workdir, capsys, monkeypatch):
    folder = workdir / "custom"
    shutil.copytree(workdir / "model", folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="custom_llama", auto_map={"AutoConfig": "custom.CustomConfig",
                                                       "AutoModelForCausalLM": "custom.CustomForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom.py").write_text(
        f"import pathlib\npathlib.Path({str(folder / 'RAN')!r}).write_text('custom code ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'custom_llama'\n"
        "class CustomForCausalLM(LlamaForCausalLM):\n    config_class = CustomConfig\n")
    monkeypatch.setattr("builtins.input", lambda *args: pytest.fail("asked on the terminal"))
    before = digest(workdir)
    assert_one_line_error(*run_cli(["score", "pairs.jsonl", "-m", "custom"], capsys),
                          r"'custom' needs custom code of its own to load; ches runs such code only when asked: pass "
                          r"--trust-remote-code \(Python: trust_remote_code set to True\)")
    assert digest(workdir) == before and not (folder / "RAN").exists()
    assert main(["score", "pairs.jsonl", "-m", "custom", "--trust-remote-code", "--no-progress"]) == 0
    assert (folder / "RAN").read_text() == "custom code ran"


def test_revision_of_a_local_folder_is_refused(workdir, capsys):
    assert_one_line_error(*run_cli(["score", "pairs.jsonl", "-m", "model", "--revision", "v2"], capsys),
                          r"revision='v2' selects a version of a Hub model, but model is a local folder")


def _longer_tokenizer(*, eos: bool = False):
    """The bundled tokenizer (4,096 tokens, as many as the model's embeddings) with one token more,
    ``<unused_0>`` (id 4096); ``eos``: that token is its EOS."""
    from transformers import AutoTokenizer

    longer = AutoTokenizer.from_pretrained(MODEL_DIR)
    if eos:
        longer.add_special_tokens({"eos_token": "<unused_0>"})
    else:
        longer.add_tokens(["<unused_0>"])
    assert len(longer) == 4097 and longer.convert_tokens_to_ids("<unused_0>") == 4096
    return longer


def test_a_tokenizer_longer_than_the_embeddings_scores_as_without_its_unused_token(workdir):
    scored = ches.score(ROWS, "model", _longer_tokenizer(), progress=False, layout="padded", logps=True)
    plain = ches.score(ROWS, "model", progress=False, layout="padded", logps=True)
    for name in ("ches", "ln_ches", "chosen_logps", "rejected_logps"):
        assert scored[name] == plain[name], name
    rows = [{"prompt": "Human: hi\n\nAssistant:", "responses": [" a", " b c", " d"], "ratings": [3, 1, 2]}]
    pairs = ches.pairs(rows, "model", _longer_tokenizer(), progress=False, dtype="float32")
    assert pairs["ches"] == ches.pairs(rows, "model", progress=False, dtype="float32")["ches"]


def test_data_using_a_token_the_model_has_no_embedding_for_is_refused_naming_row_id_and_token(workdir, capsys):
    rows = [dict(row) for row in ROWS]
    rows[3]["chosen"] += " <unused_0>"
    message = (r"^row 3: token id 4096 \('<unused_0>'\) has no embedding in the model \(ids 0\.\.4095\): the tokenizer "
               r"has tokens the model was not given .*; remove that token from the row, or pass the model's own tokenizer\.$")
    with pytest.raises(ChesError, match=message):
        ches.score(rows, "model", _longer_tokenizer(), progress=False, layout="padded")
    _longer_tokenizer().save_pretrained(workdir / "longer-tokenizer")
    write(workdir / "unused.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    assert_one_line_error(*run_cli(["score", "unused.jsonl", "-m", "model", "--tokenizer", "longer-tokenizer"], capsys),
                          message.removeprefix("^"))
    candidates = [{"prompt": "Q:", "responses": [" a", " b"], "ratings": [1, 0]},
                  {"prompt": "Q:", "responses": [" a", " b <unused_0>"], "ratings": [1, 0]}]
    with pytest.raises(ChesError, match=r"^row 1: token id 4096 \('<unused_0>'\) has no embedding in the model"):
        ches.pairs(candidates, "model", _longer_tokenizer(), progress=False)


def test_an_eos_token_the_model_has_no_embedding_for_is_refused_when_the_model_is_loaded(workdir, capsys):
    message = (r"the tokenizer's EOS token '<unused_0>' has id 4096, but the model has embeddings for ids 0\.\.4095 only, "
               r"and that token is in every sequence TRL trains on")
    longer = _longer_tokenizer(eos=True)
    longer.save_pretrained(workdir / "eos-tokenizer")
    assert_one_line_error(*run_cli(["score", "pairs.jsonl", "-m", "model", "--tokenizer", "eos-tokenizer"], capsys), message)
    with pytest.raises(ChesError, match=message):
        ches.pairs([{"prompt": "Q:", "responses": [" a", " b"], "ratings": [1, 0]}], "model", longer, progress=False)


@pytest.mark.parametrize("damage", ["no added_tokens", "not json"])
def test_a_damaged_tokenizer_file_is_named(damage, workdir, capsys):
    path = workdir / "model" / "tokenizer.json"
    if damage == "not json":
        path.write_text("{not json")
    else:
        content = json.loads(path.read_text())
        del content["added_tokens"]
        path.write_text(json.dumps(content))
    assert_one_line_error(*run_cli(["score", "pairs.jsonl", "-m", "model"], capsys),
                          r"could not load the tokenizer of the model 'model' \(model/tokenizer.json is damaged: ")


def test_a_folder_without_tokenizer_files_and_a_missing_model_are_named_as_such(workdir, capsys):
    """A model folder saved without its tokenizer is named as that (the message was transformers' cut-off
    ValueError); a Hub id that cannot be had is a missing model in ches audit too, not a tokenizer problem."""
    assert run_cli(["score", "pairs.jsonl", "-m", "model", "--logps", "-o", "logps.parquet", "--no-progress"], capsys)[0] == 0
    (workdir / "model" / "tokenizer.json").unlink()
    (workdir / "model" / "tokenizer_config.json").unlink()
    assert_one_line_error(*run_cli(["score", "pairs.jsonl", "-m", "model"], capsys),
                          r"could not load the tokenizer of the model 'model' \(the folder holds none of tokenizer.json, "
                          r"tokenizer.model, vocab.json, tokenizer_config.json: save the tokenizer there")
    assert_one_line_error(*run_cli(["audit", "logps.parquet", "-m", "nobody/no-such-model"], capsys),
                          r"could not load model 'nobody/no-such-model': it is not a local folder")


# ---------------------------------------------------------------- silent wrong results: the numbers
def test_hidden_states_that_are_not_finite_are_marked_only_where_they_are(workdir, caplog):
    import logging

    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(workdir / "model")
    counts = {}
    for row in ROWS:
        for token in set(tokenizer(row["chosen"])["input_ids"]):
            counts[token] = counts.get(token, 0) + 1
    rare = min((token for token, count in counts.items() if count == 1 and token > 10))
    affected = [index for index, row in enumerate(ROWS) if rare in tokenizer(row["chosen"])["input_ids"]]
    edit_weights(workdir / "model", lambda w: {**w, "model.embed_tokens.weight": torch.where(
        torch.arange(4096)[:, None] == rare, w["model.embed_tokens.weight"] * 1e6, w["model.embed_tokens.weight"])})
    fine = ches.score(ROWS, "model", progress=False, dtype="float32")  # 1e6 is a float32 number: all scored
    assert all(reason is None for reason in fine["ches_skip"])
    with caplog.at_level(logging.INFO, logger="ches"):
        assert main(["score", "pairs.jsonl", "-m", "model", "--dtype", "float16", "-o", "half.parquet", "--no-progress"]) == 0
    err = caplog.text
    half = ches.data.inputs.load_data("half.parquet")
    marked = [index for index, reason in enumerate(half["ches_skip"]) if reason]
    assert marked == affected and all(math.isnan(half["ln_ches"][index]) for index in marked)
    assert half["ches_skip"][marked[0]].startswith("hidden states are not finite (NaN or inf) in float16, whose largest "
                                                   "number is 65504: try dtype='bfloat16' or 'float32'")
    assert all(math.isfinite(half["ln_ches"][index]) for index in range(len(ROWS)) if index not in marked)
    assert f"scored {len(ROWS) - len(marked)} of {len(ROWS)} rows" in err and "hidden states are not finite" in err
    run = json.loads((workdir / "half.parquet.meta.json").read_text())["run"]
    assert run["skipped"] == {"data": len(marked)} and run["dtype"] == "float16"
    assert list(run["skip_reasons"]["data"].values()) == [len(marked)]
    for layout in ("prefix_shared", "packed", "padded", "shared_prompt"):  # an overflow never spreads to other rows
        again = ches.score(ROWS, "model", dtype="float16", layout=layout, progress=False)
        assert [index for index, reason in enumerate(again["ches_skip"]) if reason] == marked, layout


def test_a_run_with_no_finite_hidden_state_fails_in_one_line(workdir, capsys):
    import torch

    edit_weights(workdir / "model", lambda w: {**w, "model.layers.1.mlp.down_proj.weight":
                                               w["model.layers.1.mlp.down_proj.weight"].index_fill(0, torch.tensor([0]), float("nan"))})
    before = digest(workdir)
    assert_one_line_error(*run_cli(["score", "pairs.jsonl", "-m", "model", "-o", "s.parquet", "--save-embeddings",
                                    "e.safetensors", "--no-progress"], capsys),
                          r"nothing was scored: for every row that ran \(6\), hidden states are not finite \(NaN or inf\) "
                          r"in float32: the model's weights or computation give NaN or inf")
    assert digest(workdir) == before


def test_an_empty_conversational_prompt_is_skipped_as_trl_refuses_it(workdir, tokenizer):
    import copy

    differ = {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
              "rejected": [{"role": "user", "content": "Yo"}, {"role": "assistant", "content": "Go"}]}
    shared = {"chosen": differ["chosen"], "rejected": [differ["chosen"][0], {"role": "assistant", "content": "Go"}]}
    explicit = {"prompt": [], "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}
    system = copy.deepcopy(tokenizer)  # a template that adds a system turn to every conversation
    system.chat_template = ("{{ bos_token }}<|im_start|>system\nBe kind.<|im_end|>\n" + tokenizer.chat_template
                            .removeprefix("{{ bos_token }}"))
    for template in (tokenizer, system):
        scored = ches.score([differ, shared], "model", template, progress=False)
        assert scored["ches_skip"][0].startswith("conversational prompt has no messages") and scored["ches_skip"][1] is None
        assert "TRL cannot train on it" in scored["ches_skip"][0] and math.isnan(scored["ches"][0])
        assert ches.score([explicit], "model", template, progress=False)["ches_skip"][0].startswith(
            "conversational prompt has no messages")
    from transformers import AutoTokenizer  # the reason is TRL's: transformers refuses the empty conversation

    with pytest.raises(ValueError, match="empty conversation"):
        AutoTokenizer.from_pretrained(workdir / "model").apply_chat_template([], tokenize=True)


# ---------------------------------------------------------------- options that cannot act, or disagree
OPTION_CASES_20 = {
    "chosen and rejected from one column": (lambda: ches.score(ROWS, "model", columns={"chosen": "chosen", "rejected": "chosen"}),
                                            r"column 'chosen' would be read as both 'chosen' and 'rejected'"),
    "chosen mapped onto rejected": (lambda: ches.score(ROWS, "model", columns={"chosen": "rejected"}),
                                    r"column 'rejected' would be read as both 'chosen' and 'rejected'"),
    "prompt from the chosen column": (lambda: ches.score(ROWS, "model", columns={"prompt": "chosen"}),
                                      r"column 'chosen' would be read as both 'prompt' and 'chosen'"),
    "dtype and torch_dtype disagree": (lambda: ches.score(ROWS, "model", dtype="float32", model_kwargs={"torch_dtype": "bfloat16"}),
                                       r"dtype='float32' and model_kwargs\['torch_dtype'\]='bfloat16' disagree"),
    "dtype twice in model_kwargs": (lambda: ches.score(ROWS, "model", model_kwargs={"dtype": "float16", "torch_dtype": "float32"}),
                                    r"model_kwargs\['dtype'\]='float16' and model_kwargs\['torch_dtype'\]='float32' disagree"),
    "dtype auto": (lambda: ches.score(ROWS, "model", model_kwargs={"dtype": "auto"}), r"model_kwargs\['dtype'\]='auto' is not supported"),
    "options not options": (lambda: ches.score(ROWS, "model", options="fast"), r"options= must be a ches.ScoreOptions"),
    "options dict misspelled": (lambda: ches.score(ROWS, "model", options={"max_lenght": 3}), r"unknown option 'max_lenght'"),
    "options dict and keyword": (lambda: ches.score(ROWS, "model", options={"max_length": 3}, max_length=4),
                                 r"max_length given both in options= and as keywords"),
    "model_kwargs a string": (lambda: ches.score(ROWS, "model", model_kwargs="device_map=auto"),
                              r"model_kwargs must be a dict of from_pretrained keywords.*got str 'device_map=auto'"),
    "filter keep fraction": (lambda: ches.filter(_SCORED["rows"], keep=2.7), r"keep=2.7 must be a whole number of rows"),
    "filter quantile True": (lambda: ches.filter(_SCORED["rows"], quantile=True), r"quantile=True must be a number"),
    "filter quantile text": (lambda: ches.filter(_SCORED["rows"], quantile="0.5"), r"quantile='0.5' must be a number"),
    "filter max_score nan": (lambda: ches.filter(_SCORED["rows"], max_score=float("nan")), r"max_score=nan must be a number"),
    "filter window fraction": (lambda: ches.filter(_SCORED["rows"], around=0.5, window=2.5), r"window=2.5 must be a whole number"),
    "rating_field on generic rows": (lambda: ches.pairs([{"prompt": "p", "responses": ["a", "b"], "ratings": [1, 0]}], "model",
                                                        rating_field="fine-grained_score"),
                                     r"rating_field='fine-grained_score' picks the rating field of raw UltraFeedback rows"),
    "columns on UltraFeedback rows": (lambda: ches.pairs([{"instruction": "Q", "completions": [{"response": "a", "overall_score": 1}]}],
                                                         "model", columns={"prompt": "instruction"}),
                                      r"these are raw UltraFeedback rows \(instruction, completions\).*drop columns="),
    "pairs roles from one column": (lambda: ches.pairs([{"prompt": "p", "responses": ["a", "b"], "ratings": [1, 0]}], "model",
                                                       columns={"ratings": "responses"}),
                                    r"column 'responses' would be read as both 'responses' and 'ratings'"),
    "validate pool below n": (lambda: ches.validate(ROWS, "model", n=4, pool=1), r"pool=1 must hold at least the n=4 pairs"),
    "validate lr inf": (lambda: ches.validate(ROWS, "model", n=4, learning_rate=float("inf")),
                        r"learning_rate=inf must be > 0 and finite"),
    "validate beta nan": (lambda: ches.validate(ROWS, "model", n=4, beta=float("nan")), r"beta=nan must be > 0 and finite"),
    "validate seed negative": (lambda: ches.validate(ROWS, "model", n=4, seed=-1), r"seed=-1 must be an integer >= 0"),
    "validate n fraction": (lambda: ches.validate(ROWS, "model", n=4.5), r"n=4.5 must be an integer"),
}


@pytest.mark.parametrize("case", sorted(OPTION_CASES_20))
def test_options_that_cannot_act_or_disagree_are_refused_before_the_model(case, workdir, monkeypatch):
    no_model_load(monkeypatch)
    call, message = OPTION_CASES_20[case]
    before = digest(workdir)
    with pytest.raises(ChesError, match=message):
        call()
    assert digest(workdir) == before


def test_validate_flags_that_cannot_act(workdir, capsys, monkeypatch):
    no_model_load(monkeypatch)
    for argv, message in [(["--pool", "1", "--n", "4"], r"pool=1 must hold at least the n=4 pairs"),
                          (["--lr", "inf", "--n", "4"], r"learning_rate=inf must be > 0 and finite"),
                          (["--seed", "-1", "--n", "4"], r"seed=-1 must be an integer >= 0")]:
        assert_one_line_error(*run_cli(["validate", "pairs.jsonl", "-m", "model", *argv], capsys), message)


def test_the_dtype_that_ran_is_the_dtype_recorded(workdir):
    scored, info = ches.api.score_run(ROWS, "model", model_kwargs={"torch_dtype": "bfloat16"}, progress=False)
    assert (info.dtype, info.options["dtype"], info.options["model_kwargs"]) == ("bfloat16", "bfloat16", {})
    assert scored["ches"] != _SCORED["rows"]["ches"]  # it really ran in bfloat16
    import torch

    _, same = ches.api.score_run(ROWS, "model", dtype=torch.bfloat16, model_kwargs={"dtype": "bf16"}, progress=False)
    assert same.dtype == "bfloat16"


def test_a_verdict_needs_enough_pairs_for_an_interval():
    from ches.evaluate.validation import MIN_PAIRS_FOR_VERDICT, verdict

    entry = {"spearman_total": -1.0, "spearman_total_ci95": (-1.0, -1.0)}
    few = {"correlations": {"ln_ches": entry}, "summary": {"fraction_displaced": 0.0}, "rows": [{}] * 4}
    assert verdict(few).startswith("verdict (probes protocol): no verdict on ln_ches: 4 probed pairs (Spearman -1.000, 95% CI [-1.00, -1.00]) "
                                   "are too few for a confidence interval")
    wide = dict(few, rows=[{}] * MIN_PAIRS_FOR_VERDICT, correlations={"ln_ches": {**entry, "spearman_total_ci95": (-1.0, -0.5)}})
    assert "ranks displacement the wrong way" in verdict(wide)


# ---------------------------------------------------------------- clear errors instead of raw exceptions
def test_score_columns_of_the_wrong_type_name_file_and_column(workdir, capsys):
    rows = _SCORED["rows"].to_list()
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
    kept = ches.filter(_SCORED["rows"], quantile=np.float32(0.5))
    assert kept.to_list() == ches.filter(_SCORED["rows"], quantile=0.5).to_list()
    assert ches.filter(_SCORED["rows"], keep=np.int64(2)).to_list() == ches.filter(_SCORED["rows"], keep=2).to_list()


def test_options_as_a_dict_are_read_as_keywords(workdir):
    scored, info = ches.api.score_run(ROWS, "model", options={"max_length": 64, "layout": "padded"}, progress=False)
    assert info.options["max_length"] == 64 and max(scored["chosen_tokens"]) <= 64


# ---------------------------------------------------------------- ches pairs: no response dropped silently
def short_context_model(workdir: Path) -> str:
    """The bundled model, told its context is 48 tokens (only ches' checks read it)."""
    folder = workdir / "short"
    shutil.copytree(workdir / "model", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 48}))
    return str(folder)


LONG = " and then" * 40  # far beyond 48 tokens


def test_an_unscorable_top_rated_response_skips_the_prompt_naming_it(workdir):
    model = short_context_model(workdir)
    rows = [{"prompt": "Q:", "responses": [LONG, " b", " c"], "ratings": [3, 2, 1]},
            {"prompt": "Q:", "responses": [" a", LONG, " c"], "ratings": [3, 2, 1]},
            {"prompt": "Q:", "responses": [" a", " b", LONG], "ratings": [3, 2, 1]},
            {"prompt": "Q:", "responses": [LONG, " b", " c"], "ratings": [3, 3, 1]}]
    built, info = ches.pairs_run(rows, model, progress=False)
    assert [item.source_row for item in info.skipped_prompts] == [0]
    assert info.skipped_prompts[0].reason.startswith("the top-rated response 0 (rating 3) could not be scored: ")
    assert "tokens exceeds the model's context (48); pass max_length" in info.skipped_prompts[0].reason
    assert built["source_row"] == [1, 2, 3] and built["chosen_index"] == [0, 0, 1]
    assert built["unscored_responses"] == [[1], [2], [0]]  # said in the output of every pair it touched
    assert [(item.source_row, item.response) for item in info.unscored_responses] == [(0, 0), (1, 1), (2, 2), (3, 0)]
    worst = ches.pairs_run(rows, model, rule="max_margin", progress=False)[1]  # the lowest-rated one is needed too
    assert {item.source_row: item.reason.split(" could")[0] for item in worst.skipped_prompts} == {
        0: "the top-rated response 0 (rating 3)", 2: "the lowest-rated response 2 (rating 1)"}
    every, info = ches.pairs_run(rows, model, rule="all_min_ches", progress=False)  # searches every pair: nothing needed
    assert not info.skipped_prompts and every["unscored_responses"] == [[0], [1], [2], [0]]


def test_score_and_pairs_give_a_response_too_long_for_the_context_one_reason(workdir):
    """The context limit is worded once: ches.score's skip reason for a pair and ches.pairs' reason for the same
    response are the sentence written out here, with the sequence's own length counted by the tokenizer."""
    from transformers import AutoTokenizer

    model = short_context_model(workdir)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokens = len(tokenizer("Q:" + LONG + tokenizer.eos_token)["input_ids"])
    expected = f"sequence of {tokens} tokens exceeds the model's context (48); pass max_length"
    scored = ches.score([{"prompt": "Q:", "chosen": LONG, "rejected": " b"}], model, progress=False)
    assert scored["ches_skip"] == [expected]
    _, info = ches.pairs_run([{"prompt": "Q:", "responses": [" a", LONG, " b"], "ratings": [3, 2, 1]}], model,
                             progress=False)
    assert [(item.response, item.reason) for item in info.unscored_responses] == [(1, expected)]


def test_a_response_whose_hidden_states_are_not_finite_is_listed_not_paired(workdir):
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(workdir / "model")
    blown = tokenizer(" zebra")["input_ids"][-1]
    edit_weights(workdir / "model", lambda w: {**w, "model.embed_tokens.weight": torch.where(
        torch.arange(4096)[:, None] == blown, w["model.embed_tokens.weight"] * 1e6, w["model.embed_tokens.weight"])})
    rows = [{"prompt": "Q:", "responses": [" yes", " a zebra", " no"], "ratings": [3, 2, 1]},
            {"prompt": "Q:", "responses": [" a zebra", " yes", " no"], "ratings": [3, 2, 1]}]
    built, info = ches.pairs_run(rows, "model", dtype="float16", progress=False)
    assert built["source_row"] == [0] and built["rejected"] == [" no"]
    assert built["unscored_responses"] == [[1]] and info.skipped_prompts[0].source_row == 1
    assert "could not be scored: hidden states are not finite (NaN or inf) in float16" in info.skipped_prompts[0].reason
    assert [(item.source_row, item.response) for item in info.unscored_responses] == [(0, 1), (1, 0)]
    assert not ches.pairs_run(rows, "model", dtype="float32", progress=False)[1].unscored_responses  # a float32 number: scored


def test_pairs_cli_lists_unscored_responses(workdir, capsys):
    model = short_context_model(workdir)
    rows = [{"prompt": "Q:", "responses": [" a", LONG, " c"], "ratings": [3, 2, 1]}]
    (workdir / "cands.jsonl").write_text(json.dumps(rows[0]) + "\n")
    assert main(["pairs", "cands.jsonl", "-m", model, "-o", "built.jsonl", "--no-progress"]) == 0
    assert "1 response could not be scored" in capsys.readouterr().out
    meta = json.loads((workdir / "built.jsonl.meta.json").read_text())
    assert meta["unscored_responses"][0]["response"] == 1 and "context (48)" in meta["unscored_responses"][0]["reason"]
    assert json.loads((workdir / "built.jsonl").read_text())["unscored_responses"] == [1]


# ---------------------------------------------------------------- ends: a full disk, SIGTERM
def test_a_full_disk_while_assembling_embeddings_is_one_line_and_leaves_nothing(workdir, capsys, monkeypatch):
    import errno
    import os

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    before = digest(workdir)
    assert_one_line_error(*run_cli(["score", "pairs.jsonl", "-m", "model", "--save-embeddings", "e.safetensors",
                                    "--cache-dir", "cache", "-o", "s.parquet", "--no-progress"], capsys),
                          r"no space left on the device: No space left on device; nothing half-written was left")
    assert {name: value for name, value in digest(workdir).items() if not name.startswith("cache/")} == before
    assert not [path for path in workdir.iterdir() if path.name.startswith(".")]


def test_too_little_space_for_the_embeddings_is_found_before_the_run(workdir, capsys, monkeypatch):
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    before = digest(workdir)
    assert_one_line_error(*run_cli(["score", "pairs.jsonl", "-m", "model", "--save-embeddings", "e.safetensors"], capsys),
                          r"e.safetensors: the embeddings of 6 rows need about 0.0 MiB while they are written .* has 0.0 MiB free")
    assert digest(workdir) == before


@pytest.mark.slow
def test_sigterm_ends_in_one_line_and_removes_the_staging_folder(workdir):
    import os
    import signal
    import subprocess
    import sys
    import time

    persona = PERSONA.read_text().splitlines()
    (workdir / "many.jsonl").write_text("\n".join(persona * 4) + "\n")
    columns = ",".join(f"{role}={name}" for role, name in PERSONA_COLUMNS.items())
    before = digest(workdir)
    process = subprocess.Popen([sys.executable, "-m", "ches", "score", "many.jsonl", "-m", "model", "--columns", columns,
                                "--save-embeddings", "e.safetensors", "-o", "s.parquet", "--threads", "1", "--no-progress"],
                               cwd=workdir, stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    staging = workdir / ".e.safetensors.parts"
    deadline = time.time() + 120
    while not list(staging.glob("part-*")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read()
    process.send_signal(signal.SIGTERM)
    err = process.communicate(timeout=120)[1]
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("ches: ")]
    assert process.returncode == 143 and lines == [
        "ches: terminated (SIGTERM); outputs are written atomically, so nothing half-written was left"], err
    assert digest(workdir) == before and not staging.exists()
