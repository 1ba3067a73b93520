"""Outputs: checked before any model work, never replacing a file unasked, never written into an input's
folder, every format read back as written; the kill tests are in tests/test_atomic.py."""

from __future__ import annotations

import json
import shutil

import datasets
import pytest
from edges import ROWS, assert_one_line_error, digest, no_model_load, prepare, run_cli, scored_sample

import ches
from ches import ChesError
from ches.cli import main

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
    reference = ches.filter(scored_sample(), keep=3)
    assert main(["filter", output, "--keep", "3", "-o", "kept.parquet"]) == 0
    assert list(ches.data.inputs.load_data("kept.parquet")["chosen"]) == list(reference["chosen"])
    assert main(["report", output, "-o", "report.html"]) == 0
    assert "6 of 6 rows scored" in (workdir / "report.html").read_text()
    stats = ches.summary(output)
    assert stats["scored"] == 6 and stats["measures"]["ches"]["max"] == pytest.approx(max(scored_sample()["ches"]))


def test_json_outputs_are_strict(workdir, capsys):
    from ches.data.export import write_json

    write_json("strict.json", {"a": float("nan"), "b": [float("inf"), 1.0]})
    assert json.loads((workdir / "strict.json").read_text(), parse_constant=lambda name: pytest.fail(name)) == {
        "a": None, "b": [None, 1.0]}
    assert main(["score", "pairs.jsonl", "-m", "model", "--no-progress", "--max-length", "2"]) == 0  # every row skipped
    printed = capsys.readouterr().out
    json.loads(printed, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))


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
    parts = datasets.DatasetDict({"a": scored_sample().select(range(3)), "b": scored_sample().select(range(3, 6))})
    parts.save_to_disk(str(workdir / "splits"))
    no_model_load(monkeypatch)
    before = digest(workdir)
    for argv in (["filter", "splits", "-m", "model", "-o", "kept.jsonl"], ["score", "splits", "-m", "model", "-o", "s.parquet"],
                 ["filter", "splits", "-o", "kept.parquet"]):
        assert_one_line_error(*run_cli(argv, capsys), r"splits \['a', 'b'\], so the result has them too, but --output")
    assert digest(workdir) == before
