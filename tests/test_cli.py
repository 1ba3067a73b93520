"""CLI round trips equal the Python API; every file gets a sidecar; errors are one line with status 2."""

import json
import math
import subprocess
import sys

import datasets
import pytest
from conftest import MODEL_DIR, ROOT
from edges import PERSONA, PERSONA_COLUMNS, assert_one_line_error, digest, run_cli

import ches
from ches.cli import main
from ches.data.inputs import load_data

SAMPLE = str(ROOT / "examples" / "data" / "hh-sample.jsonl")
MODEL = str(MODEL_DIR)


def same_scores(first, second):
    assert first.column_names == second.column_names
    for name in first.column_names:
        left, right = list(first[name]), list(second[name])
        if name in ("ches", "ln_ches", "last_hidden_ip", "edit_distance"):
            assert all((math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-9)
                       for a, b in zip(left, right)), name
        else:
            assert left == right, name


@pytest.fixture(scope="module")
def python_scores():
    return ches.score(SAMPLE, MODEL, progress=False)


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".json", ".csv", ""])
def test_score_round_trip_equals_python(suffix, python_scores, tmp_path):
    output = tmp_path / f"scores{suffix or '_folder'}"
    assert main(["score", SAMPLE, "--model", MODEL, "--output", str(output), "--no-progress"]) == 0
    written = load_data(str(output))
    if suffix == ".csv":  # CSV has no types: compare through the same casts
        assert list(written["chosen"]) == list(python_scores["chosen"])
        assert [float(v) for v in written["ln_ches"]] == pytest.approx(list(python_scores["ln_ches"]), rel=1e-12)
    else:
        same_scores(written, python_scores)
    meta = json.loads((tmp_path / f"{output.name}.meta.json").read_text())
    assert meta["command"][:2] == ["ches", "score"] and meta["rows_written"] == 64
    assert meta["run"]["model"] == MODEL and meta["run"]["dtype"] == "float32" and meta["data_sha256"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_filter_from_scores_file_and_from_raw_data_equal_python(python_scores, tmp_path):
    scores = tmp_path / "scores.parquet"
    assert main(["score", SAMPLE, "-m", MODEL, "-o", str(scores), "--no-progress"]) == 0
    from_scores, from_raw = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(["filter", str(scores), "--quantile", "0.25", "-o", str(from_scores), "--no-scores"]) == 0
    assert main(["filter", SAMPLE, "--model", MODEL, "--quantile", "0.25", "-o", str(from_raw), "--no-scores",
                 "--no-progress"]) == 0
    expected = ches.filter(python_scores, 0.25, keep_scores=False)
    assert load_data(from_scores).to_list() == expected.to_list() == load_data(from_raw).to_list()
    assert len(expected) == 16 and expected.column_names == ["chosen", "rejected"]
    meta = json.loads((tmp_path / "a.jsonl.meta.json").read_text())
    assert meta["rule"]["quantile"] == 0.25 and meta["measure"] == "ln_ches"
    assert meta["data_metadata"]["run"]["model"] == MODEL  # provenance of the scores file travels along


def test_filter_rules_on_the_command_line(python_scores, tmp_path):
    scores = tmp_path / "scores.parquet"
    python_scores.to_parquet(str(scores))
    for flags, expected in [(["--keep", "5"], ches.filter(python_scores, keep=5)),
                            (["--max-score", "0", "--measure", "ches"], ches.filter(python_scores, max_score=0, measure="ches")),
                            (["--around", "0.5", "--window", "8"], ches.filter(python_scores, around=0.5, window=8))]:
        output = tmp_path / "kept.parquet"
        assert main(["filter", str(scores), *flags, "-o", str(output), "--overwrite"]) == 0  # the same file each time
        assert list(load_data(str(output))["chosen"]) == list(expected["chosen"])


@pytest.mark.parametrize("measure, sign", [("ln_ches", 1), ("edit_distance", -1)])
def test_the_sidecars_threshold_as_max_score_keeps_the_same_rows(measure, sign, python_scores, tmp_path, caplog):
    scores, first, second = tmp_path / "scores.parquet", tmp_path / "a.parquet", tmp_path / "b.parquet"
    python_scores.to_parquet(str(scores))
    with caplog.at_level("INFO", logger="ches"):
        assert main(["filter", str(scores), "--quantile", "0.3", "--measure", measure, "-o", str(first)]) == 0
    cut = json.loads((tmp_path / "a.parquet.meta.json").read_text())["cut"]
    value = {i: sign * v for i, v in enumerate(python_scores[measure])}  # every row of the sample is scored
    kept = sorted(value, key=lambda i: (value[i], i))[:round(0.3 * 64)]
    assert cut == {"measure": measure, "rule": "quantile", "threshold": max(value[i] for i in kept),
                   "window_scores": None, "kept": len(kept), "scored": 64, "unscored_dropped": 0}
    name = "-" * (sign < 0) + measure
    assert f"kept {len(kept)} of 64 scored rows ({name} <= {cut['threshold']!r}; 0 unscored rows dropped)" in caplog.messages
    assert main(["filter", str(scores), "--max-score", repr(cut["threshold"]), "--measure", measure, "-o", str(second)]) == 0
    tied = {i for i in value if value[i] == cut["threshold"]}  # ties at the threshold: all kept by --max-score
    expected = sorted(set(kept) | tied)
    assert load_data(str(second))["chosen"][:] == [python_scores["chosen"][i] for i in expected]
    if not tied - set(kept):
        assert load_data(str(second)).to_list() == load_data(str(first)).to_list()


@pytest.fixture(scope="module")
def two_splits(tmp_path_factory):
    """A folder of two splits, scored by `ches score`."""
    folder = tmp_path_factory.mktemp("splits")
    rows = load_data(SAMPLE)
    datasets.DatasetDict({"train": rows.select(range(24)), "test": rows.select(range(24, 40))}).save_to_disk(
        str(folder / "raw"))
    assert main(["score", str(folder / "raw"), "-m", MODEL, "-o", str(folder / "scored"), "--no-progress"]) == 0
    return folder / "scored"


def test_filter_records_and_logs_each_splits_cut(two_splits, tmp_path, caplog):
    with caplog.at_level("INFO", logger="ches"):
        assert main(["filter", str(two_splits), "--keep", "10", "-o", str(tmp_path / "kept")]) == 0
    cuts = json.loads((tmp_path / "kept.meta.json").read_text())["cut_per_split"]
    scored, kept = load_data(str(two_splits)), load_data(str(tmp_path / "kept"))
    assert list(cuts) == ["train", "test"]
    for name, cut in cuts.items():
        assert cut["threshold"] == max(kept[name]["ln_ches"]) and (cut["kept"], cut["scored"]) == (10, len(scored[name]))
        assert sum(line.startswith(f"{name}: kept 10 of {len(scored[name])} scored rows (ln_ches <= {cut['threshold']!r};")
                   for line in caplog.messages) == 1
        again = tmp_path / f"{name}.parquet"
        assert main(["filter", str(two_splits), "--split", name, "--max-score", repr(cut["threshold"]), "-o",
                     str(again)]) == 0
        expected = [row for row in scored[name] if row["ln_ches"] <= cut["threshold"]]
        assert load_data(str(again))["chosen"][:] == [row["chosen"] for row in expected] == kept[name]["chosen"][:]


def test_report_on_a_folder_of_splits_has_a_section_per_split(two_splits, tmp_path):
    import re

    assert main(["report", str(two_splits), "--top", "2", "-o", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert re.findall(r"<h2[^>]*>(.*?)</h2>", page) == ["Recommendation", "Split train", "Split test"]
    sections = dict(zip(["train", "test"], page.split("<h2 ")[1:]))
    for name, part in load_data(str(two_splits)).items():
        section = sections[name]
        assert f"<p>{len(part)} of {len(part)} rows scored" in section and section.count("2 highest ln_ches") == 1
        highest = max(range(len(part)), key=lambda i: part["ln_ches"][i])  # rows numbered within their split
        table = section[section.index("2 highest ln_ches"):section.index("2 lowest ln_ches")]
        assert re.findall(r"<td class='num'>(\d+)</td>", table)[0] == str(highest)
    assert main(["report", str(two_splits), "--split", "test", "--top", "2", "-o", str(tmp_path / "test.html")]) == 0
    one = (tmp_path / "test.html").read_text(encoding="utf-8")
    assert "id='split-" not in one and "<h2>2 highest ln_ches (most displacement-prone)</h2>" in one
    assert "<p>16 of 16 rows scored" in one


def test_save_embeddings_recomputes_the_scores(python_scores, tmp_path):
    embeddings = tmp_path / "emb.safetensors"
    assert main(["score", SAMPLE, "-m", MODEL, "--save-embeddings", str(embeddings), "--no-progress"]) == 0
    tensors, metadata = ches.load_embeddings(embeddings)
    assert metadata["model"] == MODEL and tensors["row_index"].tolist() == list(range(64))
    from ches import scores

    recomputed = scores.ln_ches(tensors["chosen_sum"], tensors["rejected_sum"], tensors["chosen_tokens"],
                                tensors["rejected_tokens"])
    assert recomputed.tolist() == pytest.approx(list(python_scores["ln_ches"]), rel=1e-9)
    assert scores.ches(tensors["chosen_sum"], tensors["rejected_sum"]).tolist() == pytest.approx(
        list(python_scores["ches"]), rel=1e-9)


@pytest.mark.parametrize("argv, message", [
    (["score", "missing.jsonl", "--model", MODEL], "ches: error: data file missing.jsonl does not exist."),
    (["score", SAMPLE, "--model", "/no/model"], "ches: error: model folder /no/model does not exist"),
    (["filter", SAMPLE], "ches: error: the data has no 'ln_ches' column"),
    (["filter", SAMPLE, "--quantile", "0"], "ches: error: quantile=0.0 must be in (0, 1]"),  # before the data is read
    (["score", SAMPLE], "ches: error: the following arguments are required: --model/-m"),
    (["filter", SAMPLE, "--keep", "2", "--quantile", "0.5"], "ches: error: argument --quantile: not allowed with"),
])
def test_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err


def test_missing_column_error_names_the_column(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "p", "answer": "a"}) + "\n")
    assert main(["score", str(path), "--model", MODEL]) == 2
    assert "missing column(s) ['chosen', 'rejected']" in capsys.readouterr().err


def test_python_dash_m_runs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ches", "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"ches {ches.__version__}"


def test_dataset_dict_output_needs_a_folder_or_split(tmp_path):
    folder = tmp_path / "dd"
    datasets.DatasetDict({"a": load_data(SAMPLE).select(range(3)), "b": load_data(SAMPLE).select(range(3, 5))}
                         ).save_to_disk(str(folder))
    assert main(["score", str(folder), "-m", MODEL, "-o", str(tmp_path / "x.jsonl"), "--no-progress"]) == 2
    assert main(["score", str(folder), "-m", MODEL, "-o", str(tmp_path / "out"), "--no-progress"]) == 0
    assert {k: len(v) for k, v in load_data(str(tmp_path / "out")).items()} == {"a": 3, "b": 2}
    assert main(["score", str(folder), "-m", MODEL, "--split", "b", "-o", str(tmp_path / "b.jsonl"), "--no-progress"]) == 0
    assert len(load_data(tmp_path / "b.jsonl")) == 2


@pytest.mark.parametrize("extra, hint", [
    ([], "; pass --cache-dir DIR to keep finished chunks, so that running the command again resumes where it stopped"),
    (["--cache-dir", "work"], "; run the same command again to resume: the finished chunks are kept in --cache-dir work"),
])
def test_ctrl_c_says_how_to_resume(extra, hint, monkeypatch, capsys):
    from ches.cli import commands as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "score", (*cli.COMMANDS["score"][:2], interrupted))
    assert main(["score", SAMPLE, "--model", MODEL, *extra]) == 130
    assert capsys.readouterr().err.strip() == ("ches: interrupted; outputs are written atomically, so nothing "
                                               f"half-written was left{hint}")


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
