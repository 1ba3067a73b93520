"""Does filtering by CHES change what DPO does to the preferred responses? Real TRL DPO runs, audited.

    python benchmarks/audit_evidence.py                      # about 40 minutes on 2 CPU cores; resumes if interrupted
    python benchmarks/audit_evidence.py --pairs 256 --seeds 1   # a quick look

The bundled model (examples/tiny-hh-model) scores ``--pairs`` hh-rlhf pairs with ``logps=True``; then TRL
1.16's DPO (through ``ches.trl.DPOTrainer``: the reference log-probs are ches', no reference pass) trains a
copy of it on each training set, and ``ches.audit`` measures the trained model on the pairs it trained on:

- ``all``: every scored pair;
- ``ln_ches 5%``: ``ches.filter(quantile=0.05)``, the paper's Section 6 setting (the 5 % least similar);
- ``ln_ches 95%``: ``ches.filter(quantile=0.95)``, a milder cut (drop the 5 % most similar);
- ``random 5%`` / ``random 95%``: random subsets of the same sizes;

each with ``--seeds`` training seeds (and random draws). Reported per run: the fraction of pairs whose
preferred response lost probability, the mean change of log pi(y+|x) with its bootstrap interval, and the
Spearman correlation of ln_ches, ches and the length difference with that change. Also times TRL's own
precompute on the same rows, for comparison with the reference pass that ches' scoring already did, and
then both back to back, twice (``timing``; ``--timing-only`` redoes just that on an existing result).
Writes JSON (default benchmarks/results/audit-evidence.json).
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ches  # noqa: E402

MODEL = ROOT / "examples" / "tiny-hh-model"


def hh_rows(count: int) -> list[dict]:
    with gzip.open(ROOT / "examples" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(count), f)]


def train_and_audit(subset, tokenizer, args, seed: int, folder: Path) -> dict:
    """Train a copy of the bundled model on ``subset`` (rows ches scored with logps) and audit it there."""
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig

    config = DPOConfig(output_dir=str(folder), max_length=args.max_length, report_to="none", bf16=False, use_cpu=True,
                       per_device_train_batch_size=args.batch_size, num_train_epochs=args.epochs,
                       learning_rate=args.learning_rate, beta=args.beta, seed=seed, save_strategy="no",
                       logging_steps=10_000, dataset_num_proc=None)
    policy = AutoModelForCausalLM.from_pretrained(MODEL)
    started = time.perf_counter()
    trainer = ches.trl.DPOTrainer(model=policy, args=config, train_dataset=subset, processing_class=tokenizer)
    trainer.train()
    seconds = time.perf_counter() - started
    result = ches.audit(subset, trainer.model, tokenizer, progress=False, seed=seed)
    summary = result.summary
    return {"pairs": len(subset), "seed": seed, "train_seconds": seconds,
            "fraction_displaced": summary["fraction_displaced"], "mean_chosen_change": summary["mean_chosen_change"],
            "mean_chosen_change_ci95": summary["mean_chosen_change_ci95"],
            "mean_rejected_change": summary["mean_rejected_change"],
            "spearman": {name: entry["spearman"] for name, entry in summary["measures"].items()},
            "spearman_given_lengths": {name: entry.get("spearman_given_lengths") for name, entry in summary["measures"].items()}}


def trl_precompute_seconds(rows, tokenizer, max_length: int) -> float:
    import datasets
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    with tempfile.TemporaryDirectory() as folder:
        config = DPOConfig(output_dir=folder, max_length=max_length, report_to="none", bf16=False, use_cpu=True,
                           precompute_ref_log_probs=True, dataset_num_proc=None)
        started = time.perf_counter()
        DPOTrainer(model=AutoModelForCausalLM.from_pretrained(MODEL), args=config,
                   train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer)
        return time.perf_counter() - started


def side_by_side(rows, tokenizer, max_length: int, repeats: int = 2) -> dict:
    """Seconds of ``ches.score(logps=True)`` and of TRL's own precompute on the same rows, alternated."""
    ches_seconds, trl_seconds = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        ches.score(rows, str(MODEL), logps=True, max_length=max_length, progress=False)
        ches_seconds.append(time.perf_counter() - started)
        trl_seconds.append(trl_precompute_seconds([dict(row) for row in rows], tokenizer, max_length))
    return {"ches_score_logps_seconds": ches_seconds, "trl_precompute_seconds": trl_seconds,
            "speedup_of_medians": statistics.median(trl_seconds) / statistics.median(ches_seconds),
            "date": time.strftime("%Y-%m-%d %H:%M"), "cpu_threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=1024)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "audit-evidence.json"))
    parser.add_argument("--timing-only", action="store_true",
                        help="only time ches score --logps and TRL's precompute back to back (twice each), and add "
                             "that to the existing --output under 'timing'")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    rows = hh_rows(args.pairs)
    if args.timing_only:
        output = Path(args.output)
        result = json.loads(output.read_text())
        result["timing"] = side_by_side(rows, tokenizer, args.max_length)
        output.write_text(json.dumps(result, indent=2) + "\n")
        print(result["timing"])
        return
    started = time.perf_counter()
    scored = ches.score(rows, str(MODEL), logps=True, max_length=args.max_length, progress=False)
    score_seconds = time.perf_counter() - started
    usable = ches.filter(scored, 1.0)  # every scored row (skipped ones have no reference log-probs)
    subsets = {"all": lambda seed: usable,
               "ln_ches 5%": lambda seed: ches.filter(usable, 0.05),
               "ln_ches 95%": lambda seed: ches.filter(usable, 0.95)}
    for name, quantile in (("random 5%", 0.05), ("random 95%", 0.95)):
        size = round(quantile * len(usable))
        subsets[name] = (lambda size: lambda seed: usable.select(
            sorted(np.random.default_rng(seed).choice(len(usable), size=size, replace=False).tolist())))(size)
    settings = {"pairs": args.pairs, "scored": len(usable), "max_length": args.max_length, "epochs": args.epochs,
                "learning_rate": args.learning_rate, "beta": args.beta, "batch_size": args.batch_size,
                "seeds": args.seeds, "optimizer": "AdamW (TRL default)"}
    output = Path(args.output)
    partial = output.with_name(output.name + ".partial")
    runs = {}
    if partial.exists() and json.loads(partial.read_text())["settings"] == settings:
        runs = json.loads(partial.read_text())["runs"]  # resume an interrupted run
    with tempfile.TemporaryDirectory() as folder:
        for name, make in subsets.items():
            runs.setdefault(name, [])
            for seed in range(len(runs[name]), args.seeds):
                result = train_and_audit(make(seed), tokenizer, args, seed, Path(folder) / f"{name}-{seed}")
                runs[name].append(result)
                partial.write_text(json.dumps({"settings": settings, "runs": runs}, indent=2) + "\n")
                print(f"{name:12s} seed {seed}: {result['pairs']:5d} pairs, displaced {result['fraction_displaced']:.0%}, "
                      f"mean change of log pi(y+|x) {result['mean_chosen_change']:+.3f} "
                      f"[{result['mean_chosen_change_ci95'][0]:+.3f}, {result['mean_chosen_change_ci95'][1]:+.3f}], "
                      f"Spearman ln_ches {result['spearman']['ln_ches']:+.2f} ches {result['spearman']['ches']:+.2f} "
                      f"length {result['spearman']['length difference']:+.2f}", flush=True)
    summary = {}
    for name, results in runs.items():
        displaced = np.array([result["fraction_displaced"] for result in results])
        change = np.array([result["mean_chosen_change"] for result in results])
        summary[name] = {"runs": len(results), "pairs": results[0]["pairs"],
                         "fraction_displaced_mean": float(displaced.mean()),
                         "fraction_displaced_range": [float(displaced.min()), float(displaced.max())],
                         "mean_chosen_change_mean": float(change.mean()),
                         "mean_chosen_change_range": [float(change.min()), float(change.max())],
                         "ln_ches_spearman_median": statistics.median(result["spearman"]["ln_ches"] for result in results),
                         "ches_spearman_median": statistics.median(result["spearman"]["ches"] for result in results)}
    trl_seconds = trl_precompute_seconds([dict(row) for row in rows], tokenizer, args.max_length)
    timing = side_by_side(rows, tokenizer, args.max_length)  # back to back, whatever else ran during the training
    import transformers
    import trl

    result = {"settings": settings,
              "score_with_logps_seconds": score_seconds, "trl_precompute_seconds": trl_seconds, "timing": timing,
              "runs": runs, "summary": summary, "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
              "transformers": transformers.__version__, "trl": trl.__version__, "python": platform.python_version(),
              "date": time.strftime("%Y-%m-%d")}
    print(f"ches score --logps on {args.pairs} pairs: {score_seconds:.1f} s; TRL's precompute on the same rows: "
          f"{trl_seconds:.1f} s")
    output.write_text(json.dumps(result, indent=2) + "\n")
    partial.unlink()


if __name__ == "__main__":
    main()
