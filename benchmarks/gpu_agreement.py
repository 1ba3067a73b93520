"""bf16 on CUDA against float32 on CPU: the same pairs must rank the same (Spearman >= 0.999).

    python benchmarks/gpu_agreement.py [--rows 2312] [--model examples/tiny-hh-model]

Scores the bundled hh-rlhf pairs twice with the same model — CUDA with ches.score's defaults (bfloat16,
padded layout) and CPU float32 — and prints Spearman correlations and the largest relative error
(against each measure's scale). Exits non-zero below 0.999. Needs a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ches  # noqa: E402
from ches.data.inputs import column, load_data  # noqa: E402
from ches.scores.stats import spearman  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2312)
    parser.add_argument("--model", default=str(ROOT / "examples" / "tiny-hh-model"))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/gpu-agreement.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    data = load_data(str(ROOT / "examples" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz")).select(range(args.rows))
    gpu = ches.score(data, args.model, progress=False)
    cpu = ches.score(data, args.model, device="cpu", dtype="float32", progress=False)
    kept = [i for i, reason in enumerate(column(cpu, "ches_skip")) if reason is None]
    result = {"device": torch.cuda.get_device_name(), "rows": len(kept), "torch": torch.__version__}
    for measure in ("ches", "ln_ches", "last_hidden_ip"):
        a = np.asarray(column(gpu, measure))[kept]
        b = np.asarray(column(cpu, measure))[kept]
        result[measure] = {"spearman": spearman(a, b), "max_relative_error": float(np.abs(a - b).max() / np.abs(b).max())}
    print(json.dumps(result, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    if min(result[m]["spearman"] for m in ("ches", "ln_ches")) < 0.999:
        sys.exit("bf16 CUDA scores do not rank like float32 CPU scores (Spearman < 0.999)")


if __name__ == "__main__":
    main()
