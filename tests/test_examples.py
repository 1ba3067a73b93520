"""The examples run as documented (quick settings), so they cannot drift from the library."""

import ast
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def run(*args):
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_quickstart(tmp_path):
    result = subprocess.run([sys.executable, "examples/quickstart.py", "--rows", "30", "--output-dir", str(tmp_path / "quick")],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "Highest length-normalized CHES" in out and "Lowest length-normalized CHES" in out
    assert f"wrote 30 scored rows to {tmp_path / 'quick' / 'scores.parquet'}" in out and "opposite signs" in out
    assert (tmp_path / "quick" / "report.html").read_text().count("<img") >= 2  # the report, with its figures
    # the pairs are shown as the report shows them: the prompt's end, then each completion from its start, as
    # TRL's extract_prompt splits the transcript
    import datasets
    from trl.data_utils import extract_prompt

    scored = datasets.Dataset.from_parquet(str(tmp_path / "quick" / "scores.parquet")).sort("ln_ches", reverse=True)
    top = extract_prompt({"chosen": scored[0]["chosen"], "rejected": scored[0]["rejected"]})
    lines = out.splitlines()
    shown = lines[lines.index("Highest length-normalized CHES (most displacement-prone by the paper's measure):") + 1:][:4]
    printed = {match[1]: ast.literal_eval(match[2]) for match in (re.match(r"\s*(\w+)[^'\"]*(['\"].*)$", line)
                                                                 for line in shown[1:])}
    assert printed["prompt"].endswith(" ".join(top["prompt"].split())[-40:])
    for side in ("chosen", "rejected"):
        assert printed[side].startswith(" ".join(top[side].split())[:40])
    # only ches' own bar and summary on stderr, no datasets bars (Filter, Map, Creating parquet, Generating)
    assert not [line for line in result.stderr.replace("\r", "\n").splitlines()
                if line.strip() and not line.startswith("ches:")], result.stderr[-2000:]


@pytest.mark.slow
def test_score_and_filter():
    assert "kept 61 of 64 rows (quantile 0.95) and 3 (quantile 0.05)" in run("examples/score_and_filter.py")


@pytest.mark.slow
def test_dpo_after_filtering(tmp_path):
    out = run("-c", f"import sys; sys.path.insert(0, 'examples'); import dpo_after_filtering as e; "
                    f"e.main(steps=1, output_dir={str(tmp_path)!r})")
    assert "training on 61 pairs, columns ['chosen', 'rejected']" in out and "final loss" in out
