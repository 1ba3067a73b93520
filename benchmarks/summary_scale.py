"""How long ``ches.summary`` and ``ches report`` take on many scored rows (no model involved).

    python benchmarks/summary_scale.py [--rows 1000000]

Builds a scored dataset of ``--rows`` rows (short texts, score columns with many tied values, 1 % NaN
scores as real files have after a skip) and times ``ches.summary`` and ``write_report`` once each.
Prints the seconds and writes them to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ches  # noqa: E402
from ches.report import write_report  # noqa: E402


def scored_rows(rows: int, seed: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    chosen_tokens, rejected_tokens = rng.integers(1, 400, rows), rng.integers(1, 400, rows)
    ches_values = rng.normal(size=rows).round(3) * 1e6  # rounded: many ties, as in real score files
    ln_ches = rng.normal(size=rows).round(4)
    ln_ches[rng.random(rows) < 0.01] = np.nan
    texts = [f"pair {index}" for index in range(rows)]
    return datasets.Dataset.from_dict({
        "prompt": texts, "chosen": texts, "rejected": texts, "ches": ches_values, "ln_ches": ln_ches,
        "edit_distance": rng.random(rows).round(2), "last_hidden_ip": rng.normal(size=rows),
        "prompt_tokens": rng.integers(1, 200, rows), "chosen_tokens": chosen_tokens, "rejected_tokens": rejected_tokens,
        "ches_skip": [None] * rows,
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/summary-scale.json"))
    args = parser.parse_args()
    data = scored_rows(args.rows)
    start = time.perf_counter()
    stats = ches.summary(data)
    summary_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        write_report(data, Path(folder) / "report.html")
        report_seconds = time.perf_counter() - start
    result = {"rows": args.rows, "scored": stats["scored"], "summary_seconds": summary_seconds,
              "report_seconds": report_seconds, "cpu": platform.processor() or platform.machine(),
              "date": time.strftime("%Y-%m-%d"), "ches": ches.__version__}
    print(json.dumps(result, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
