"""DPO's reference log-probs two ways, side by side in one run: TRL's own precompute and ``ches score --logps``.

    python benchmarks/reference_logps.py                   # CPU: the small 32k-vocabulary Llama, 256 hh-rlhf pairs
    python benchmarks/reference_logps.py --device cuda --shape olmo-1b --dtype bfloat16 --pairs 1024

On the same rows and the same model: TRL 1.16's ``DPOTrainer(precompute_ref_log_probs=True)`` at its
default batch size (the time of building the trainer, which tokenizes and precomputes), ``ches.score`` with
``logps=True`` (CHES and the log-probs in one pass), and a plain ``ches.score`` (what the log-probs add).
Each is timed ``--repeats`` times, in alternation; the medians are reported with the largest difference
between the two sets of log-probs on the rows both kept. Writes JSON (default
benchmarks/results/cpu-reference-logps.json). Not a test: nothing is asserted on time.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from throughput import SHAPES, build_model, hh_rows, synchronize  # noqa: E402

import ches  # noqa: E402


def trl_precompute(rows, model, tokenizer, max_length: int | None, device: str):
    """TRL's own reference pass: ``(seconds, ref_chosen_logps, ref_rejected_logps)`` of the rows it keeps."""
    import datasets
    from trl import DPOConfig, DPOTrainer

    with tempfile.TemporaryDirectory() as folder:
        args = DPOConfig(output_dir=folder, max_length=max_length, report_to="none", use_cpu=device == "cpu",
                         bf16=next(model.parameters()).dtype == torch.bfloat16, precompute_ref_log_probs=True,
                         dataset_num_proc=None)
        data = datasets.Dataset.from_list(rows)
        synchronize(device)
        started = time.perf_counter()
        trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
        synchronize(device)
        seconds = time.perf_counter() - started
        return seconds, list(trainer.train_dataset["ref_chosen_logps"]), list(trainer.train_dataset["ref_rejected_logps"])


def ches_pass(rows, model, tokenizer, max_length: int | None, device: str, logps: bool):
    synchronize(device)
    started = time.perf_counter()
    scored = ches.score(rows, model, tokenizer, logps=logps, max_length=max_length, device=device, progress=False)
    synchronize(device)
    return time.perf_counter() - started, scored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=1024, help="TRL's default (truncation keep_start)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "cpu-reference-logps.json"))
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ROOT / "examples" / "tiny-hh-model")
    model = build_model(args.shape, None, getattr(torch, args.dtype), args.device)
    rows = hh_rows(args.pairs)
    times = {"trl precompute": [], "ches score --logps": [], "ches score": []}
    for _ in range(args.repeats):
        seconds, chosen, rejected = trl_precompute(rows, copy.deepcopy(model), tokenizer, args.max_length, args.device)
        times["trl precompute"].append(seconds)
        seconds, scored = ches_pass(rows, model, tokenizer, args.max_length, args.device, logps=True)
        times["ches score --logps"].append(seconds)
        times["ches score"].append(ches_pass(rows, model, tokenizer, args.max_length, args.device, logps=False)[0])
    kept = [index for index, reason in enumerate(scored["ches_skip"]) if reason is None]
    difference = max(max(abs(scored["chosen_logps"][row] - value) for row, value in zip(kept, chosen)),
                     max(abs(scored["rejected_logps"][row] - value) for row, value in zip(kept, rejected)))
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "device": args.device, "shape": args.shape, "dtype": args.dtype, "pairs": args.pairs, "rows_compared": len(kept),
        "max_length": args.max_length, "repeats": args.repeats, "seconds": times, "median_seconds": medians,
        "speedup_over_trl": medians["trl precompute"] / medians["ches score --logps"],
        "logps_cost_over_plain_score": medians["ches score --logps"] / medians["ches score"] - 1,
        "max_abs_difference_nats": difference, "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
    }
    import transformers
    import trl

    result |= {"transformers": transformers.__version__, "trl": trl.__version__}
    for name, value in medians.items():
        print(f"{name:20s} {value:7.2f} s")
    print(f"ches score --logps is {result['speedup_over_trl']:.1f}x faster than TRL's precompute; the log-probs add "
          f"{100 * result['logps_cost_over_plain_score']:.0f} % to a plain ches score; largest difference "
          f"{difference:.1e} nats over {len(kept)} rows")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
