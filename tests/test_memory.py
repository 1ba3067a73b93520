"""Memory per row does not grow with the hidden size (issue 13): a CI-sized run of benchmarks/scale.py.

Each measurement is a fresh process scoring N synthetic pairs of about 50 tokens with a model of hidden
size 64 or 1,024 (no decoder layers, so the model's compute does not matter); the growth of peak RSS
from N = 1,500 to 6,000 rows, per row, is compared between the two widths. Holding per-row hidden sums
(four float32 vectors: 16 KB per row at width 1,024, 1 KB at 64) would make the wide model's growth at
least 15 KB per row larger; the bound below leaves room for allocator noise only.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCALE = ROOT / "benchmarks" / "scale.py"


@pytest.fixture(scope="module")
def growth(tmp_path_factory) -> dict[int, float]:
    """Peak-RSS growth per row, by hidden size."""
    sys.path.insert(0, str(SCALE.parent))
    from scale import write_pairs

    folder = tmp_path_factory.mktemp("scale")
    runs = {}
    for pairs in (1500, 6000):
        data = folder / f"pairs-{pairs}.parquet"
        write_pairs(data, pairs)
        for hidden in (64, 1024):
            child = subprocess.run([sys.executable, str(SCALE), "--run", str(data), str(hidden), str(pairs), "0"],
                                   capture_output=True, text=True, timeout=600)
            assert child.returncode == 0, child.stderr
            run = json.loads(child.stdout.strip().splitlines()[-1])
            assert run["scored"] == pairs
            runs[pairs, hidden] = run["peak_rss"] - run["baseline_rss"]
    return {hidden: (runs[6000, hidden] - runs[1500, hidden]) / 4500 for hidden in (64, 1024)}


@pytest.mark.slow
def test_memory_per_row_does_not_depend_on_the_hidden_size(growth):
    assert abs(growth[1024] - growth[64]) < 6_000, growth  # bytes per row
