"""The examples run as documented (quick settings), so they cannot drift from the library."""

import os
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
    out = run("examples/quickstart.py", "--rows", "30", "--output-dir", str(tmp_path / "quick"))
    assert "Most displacement-prone pairs" in out and "Least displacement-prone pairs" in out
    assert f"wrote 30 scored rows to {tmp_path / 'quick' / 'scores.parquet'}" in out and "opposite signs" in out
    assert (tmp_path / "quick" / "report.html").read_text().count("<img") >= 2  # the report, with its figures


@pytest.mark.slow
def test_score_and_filter():
    assert "kept 61 of 64 rows (quantile 0.95) and 3 (quantile 0.05)" in run("examples/score_and_filter.py")


@pytest.mark.slow
def test_dpo_after_filtering(tmp_path):
    out = run("-c", f"import sys; sys.path.insert(0, 'examples'); import dpo_after_filtering as e; "
                    f"e.main(steps=1, output_dir={str(tmp_path)!r})")
    assert "training on 61 pairs, columns ['chosen', 'rejected']" in out and "final loss" in out
