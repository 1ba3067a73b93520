"""The throughput benchmark keeps working: a CI-sized run of it agrees with the official-style loop.

Nothing here is timed; the timings it prints belong to benchmarks/results and docs/performance.md.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_throughput_benchmark_quick_mode_runs_and_agrees(tmp_path):
    output = tmp_path / "throughput.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--device", "cpu", "--quick",
               "--pairs", "6", "--repeats", "1", "--output", str(output)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    result = json.loads(output.read_text())
    assert [entry["method"] for entry in result["results"]] == ["official-style loop", "ches.score"]
    assert result["agreement"]["spearman_ln_ches"] >= 0.999 and result["agreement"]["max_relative_error_ln_ches"] < 1e-4
    assert all(entry["tokens_per_s"] > 0 and entry["mfu_measured"] > 0 for entry in result["results"])


@pytest.mark.slow
def test_engine_profile_accounts_for_the_engines_time(tmp_path):
    output = tmp_path / "profile.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "engine_profile.py"), "--device", "cpu", "--quick",
               "--pairs", "6", "--output", str(output)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    result = json.loads(output.read_text())
    kinds = result["seconds_by_kind"]
    assert kinds["matrix multiply"] > 0 and kinds["attention"] > 0
    assert abs(sum(kinds.values()) - result["device_busy_seconds"]) < 1e-6
    assert 0 < result["ideal_seconds_at_matmul_rate"] and result["engine_seconds_profiled"] > 0


@pytest.mark.slow
def test_audit_evidence_benchmark_runs_end_to_end(tmp_path):
    """TRL DPO through ches.trl.DPOTrainer on each training set, audited; a tiny run of the real script."""
    output = tmp_path / "audit-evidence.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "audit_evidence.py"), "--pairs", "64", "--seeds", "1",
               "--output", str(output)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-3000:]
    result = json.loads(output.read_text())
    assert set(result["runs"]) == {"all", "ln_ches 5%", "ln_ches 95%", "random 5%", "random 95%"}
    scored = result["settings"]["scored"]
    sizes = {name: runs[0]["pairs"] for name, runs in result["runs"].items()}
    assert sizes["all"] == scored and sizes["ln_ches 5%"] == sizes["random 5%"] == round(0.05 * scored)
    assert sizes["ln_ches 95%"] == sizes["random 95%"] == round(0.95 * scored)
    assert all(0 <= run["fraction_displaced"] <= 1 for runs in result["runs"].values() for run in runs)
    assert len(result["timing"]["trl_precompute_seconds"]) == 2 and not output.with_name(output.name + ".partial").exists()
