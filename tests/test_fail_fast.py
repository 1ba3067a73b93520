"""A trivial mistake on the command line (a missing data file, a mistyped model or tokenizer folder, an existing
output) is refused before torch, transformers or datasets are imported, with exit status 2 and the loaders'
own message; a name that may be a Hub id is left to the loaders."""

import json
import subprocess
import sys

import pytest
from conftest import MODEL_DIR, ROOT

from ches.cli import build_parser
from ches.cli.flags import check_paths_first
from ches.errors import ChesError

DATA = str(ROOT / "examples" / "data" / "hh-sample.jsonl")
HEAVY = ("torch", "transformers", "datasets")


def run_in_fresh_process(argv: list[str]) -> dict:
    """``ches.cli.main(argv)`` in a new interpreter: its exit status, stderr, and which heavy modules it imported."""
    code = ("import contextlib, io, json, sys\n"
            "from ches.cli import main\n"
            "err = io.StringIO()\n"
            "with contextlib.redirect_stderr(err):\n"
            f"    status = main({argv!r})\n"
            f"print(json.dumps({{'status': status, 'stderr': err.getvalue(), "
            f"'heavy': [name for name in {HEAVY!r} if name in sys.modules]}}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv, message", [
    (["score", "no-such-data.jsonl", "--model", str(MODEL_DIR)], "data file no-such-data.jsonl does not exist."),
    (["score", "./no-such-folder", "--model", str(MODEL_DIR)], "data file ./no-such-folder does not exist."),
    (["filter", "/no/such/scores.parquet"], "data file /no/such/scores.parquet does not exist."),
    (["report", "missing.parquet", "--output", "r.html"], "data file missing.parquet does not exist."),
    (["score", DATA, "--model", "./examples/tiny-hh-modl"],
     "model folder ./examples/tiny-hh-modl does not exist; pass a local model folder or a Hub id."),
    (["score", DATA, "--model", "examples/tiny-hh-modl"],  # no "./", but examples/ is a folder here (cwd=ROOT)
     "model folder examples/tiny-hh-modl does not exist (examples is a folder here, so examples/tiny-hh-modl is read "
     "as a local path); pass a local model folder or a Hub id."),
    (["validate", DATA, "--model", str(MODEL_DIR), "--tokenizer", "~/no-such-tokenizer"],
     "tokenizer folder ~/no-such-tokenizer does not exist; pass a local tokenizer folder or a Hub id."),
    (["audit", DATA, "--model", str(MODEL_DIR), "--output", "{tmp}/old.parquet"],
     "{tmp}/old.parquet exists; pass --overwrite (overwrite=True) to replace it."),
    (["validate", DATA, "--model", str(MODEL_DIR), "--output", "{tmp}/old.json"],
     "{tmp}/old.json exists; pass --overwrite (overwrite=True) to replace it."),
])
def test_refused_before_the_heavy_imports(argv, message, tmp_path):
    (tmp_path / "old.parquet").write_text("an earlier output")
    (tmp_path / "old.json").write_text("{}")
    outcome = run_in_fresh_process([part.replace("{tmp}", str(tmp_path)) for part in argv])
    assert outcome["status"] == 2
    assert outcome["stderr"].strip() == f"ches: error: {message.replace('{tmp}', str(tmp_path))}"
    assert outcome["heavy"] == []


def test_the_loaders_give_the_same_messages():
    """The command line's early check and the Python API apply one rule, with one message."""
    from ches.data.inputs import load_data
    from ches.model.models import load_model

    with pytest.raises(ChesError, match="^data file no-such-data.jsonl does not exist.$"):
        load_data("no-such-data.jsonl")
    with pytest.raises(ChesError, match="^model folder ./examples/tiny-hh-modl does not exist; pass a local"):
        load_model("./examples/tiny-hh-modl")


@pytest.mark.parametrize("argv", [
    ["score", "some-org/some-dataset", "--model", "some-org/some-model", "--tokenizer", "other-org/tokenizer"],
    ["score", DATA, "--model", str(MODEL_DIR), "--output", "new-scores.parquet"],
])
def test_what_may_be_right_passes_the_early_check(argv, tmp_path):
    check_paths_first(build_parser().parse_args(argv))


@pytest.mark.parametrize("argv, message", [
    (["report", DATA, "--output", "r.txt"], "r.txt: expected a name ending in .html or .htm."),
    (["score", DATA, "--model", str(MODEL_DIR), "--output", "scores.txt"], "scores.txt: unknown output format '.txt'"),
    (["score", DATA, "--model", str(MODEL_DIR), "--output", str(MODEL_DIR / "scores.parquet")],
     f"{MODEL_DIR / 'scores.parquet'} lies inside the input folder {MODEL_DIR}"),
    (["validate", DATA, "--model", str(MODEL_DIR), "--output", "README.md", "--overwrite"],
     "README.md: expected a name ending in .json."),
])
def test_every_output_check_runs_before_the_heavy_imports(argv, message):
    outcome = run_in_fresh_process(argv)
    assert outcome["status"] == 2
    assert outcome["stderr"].startswith(f"ches: error: {message}")
    assert outcome["heavy"] == []


@pytest.mark.parametrize("argv, message", [
    (["filter", DATA, "--quantile", "95"], "quantile=95.0 must be in (0, 1]: the fraction of scored rows to keep (e.g. "
                                           "0.95, not 95)."),
    (["filter", DATA, "--model", str(MODEL_DIR), "--quantile", "0"], "quantile=0.0 must be in (0, 1]: the fraction of "
                                                                      "scored rows to keep (e.g. 0.95, not 95)."),
    (["filter", DATA, "--around", "1.5"], "around=1.5 must be a quantile in [0, 1]: where the window's centre lies in the "
                                          "sorted scores (0 = least similar)."),
    (["filter", DATA, "--keep", "-3"], "keep=-3 is outside [0, the number of scored rows]: the rows to keep."),
    (["filter", DATA, "--max-length", "64"], "max_length= (--max-length) only applies when scoring; pass model= "
                                             "(--model) too, or drop it."),
    (["validate", DATA, "--model", str(MODEL_DIR), "--n", "-1"], "n=-1 must be an integer >= 3."),
    (["validate", DATA, "--model", str(MODEL_DIR), "--lr", "0"], "learning_rate=0.0 must be > 0 and finite."),
    (["validate", DATA, "--model", str(MODEL_DIR), "--columns", "chosen"],
     "--columns 'chosen': expected NAME=COLUMN pairs separated by commas, e.g. prompt=question,chosen=answer_a,"
     "rejected=answer_b."),
    (["score", DATA, "--model", str(MODEL_DIR), "--batch-tokens", "0"],
     "batch_tokens=0 must be a positive integer (or None for an automatic size)."),
    (["report", DATA, "--output", "r.html", "--top", "0"], "top=0 must be a positive integer: the pairs shown at each end."),
    (["pairs", DATA, "--model", str(MODEL_DIR), "--per-prompt", "0"], "per_prompt=0 must be a positive integer."),
    (["audit", DATA, "--model", str(MODEL_DIR), "--resamples", "0"], "resamples=0 must be a positive integer."),
])
def test_bad_option_values_are_refused_before_the_heavy_imports(argv, message):
    outcome = run_in_fresh_process(argv)
    assert outcome["status"] == 2 and outcome["heavy"] == []
    if message is not None:
        assert outcome["stderr"].strip() == f"ches: error: {message}"
