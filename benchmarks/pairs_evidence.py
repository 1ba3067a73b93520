"""Do pairs built by CHES displace less? DPO probes on pairs from ches.pairs, min_ches vs max_margin vs random.

    python benchmarks/pairs_evidence.py          # about a minute on a 2-core CPU

Model: examples/tiny-hh-model (1.4M parameters, float32). Data: the paper's Section 3 setting, Persona
"ends-justify-means" statements, each with eight candidate answers: the aligned answer
(``answer_not_matching_behavior``, " No" or " Yes") rated 2; three rephrasings of it rated 1 (" Never",
" Nope", " No, I would not say that." for " No"); the four opposite answers rated 0. Every rule pairs
the same chosen response (the rated-2 answer); only the rejected one differs.

For each seed: ``n`` statements drawn at random; pairs built by ``min_ches`` (ln_ches and ches),
``max_margin`` and ``random`` (seeded); then

1. single-pair probes: DPO on each pair alone (RMSprop, beta 0.1, ``steps`` full-batch steps), change of
   log pi(chosen|x);
2. set probes: DPO on all ``n`` pairs of a rule together, mean change of log pi(chosen|x) over them.

Reported: means with 95 % bootstrap intervals over prompts (pooled over seeds), paired differences to
``max_margin`` and ``random``, and how often each rule's rejected answer has the chosen answer's meaning.
Writes benchmarks/results/pairs_evidence.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ches  # noqa: E402
from ches.evaluate.probes import DPOProbe  # noqa: E402
from ches.evaluate.validation import probe_sequences  # noqa: E402
from ches.scores.stats import bootstrap_interval  # noqa: E402

MODEL = ROOT / "examples" / "tiny-hh-model"
PERSONA = ROOT / "examples" / "data" / "persona-ends-justify-means.jsonl"
FAMILIES = {" No": [" No", " Never", " Nope", " No, I would not say that."],
            " Yes": [" Yes", " Sure", " Absolutely", " Yes, I would say that."]}
RULES = {"min_ches (ln_ches)": {"rule": "min_ches", "measure": "ln_ches"},
         "min_ches (ches)": {"rule": "min_ches", "measure": "ches"},
         "max_margin": {"rule": "max_margin"}, "random": {"rule": "random"}}
MAX_LENGTH = 256
BETA = 0.1


def candidate_rows(statements: list[dict]) -> list[dict]:
    rows = []
    for row in statements:
        good = row["answer_not_matching_behavior"]
        bad = " Yes" if good == " No" else " No"
        rows.append({"prompt": f"\n\nHuman: {row['question']}\n\nAssistant:",
                     "responses": FAMILIES[good] + FAMILIES[bad], "ratings": [2.0, 1.0, 1.0, 1.0, 0, 0, 0, 0]})
    return rows


def mean_interval(values: np.ndarray, seed: int = 0) -> dict:
    low, high = bootstrap_interval(np.mean, values, resamples=2000, seed=seed)
    return {"mean": float(np.mean(values)), "ci95": [float(low), float(high)], "n": int(len(values))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="statements per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "pairs_evidence.json")
    args = parser.parse_args()
    started = time.time()
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).eval()
    statements = [json.loads(line) for line in PERSONA.read_text(encoding="utf-8").splitlines()]
    single = {name: [] for name in RULES}
    same_meaning = {name: [] for name in RULES}
    set_runs = []
    for seed in args.seeds:
        picked = np.sort(np.random.default_rng(seed).choice(len(statements), size=args.n, replace=False))
        rows = candidate_rows([statements[i] for i in picked])
        probe = DPOProbe(model, steps=args.steps, learning_rate=args.lr, beta=BETA)
        entry = {"seed": seed}
        for name, options in RULES.items():
            built, info = ches.pairs_run(rows, model, tokenizer, seed=seed, max_length=MAX_LENGTH, progress=False, **options)
            assert not info.skipped_prompts and built["source_row"] == list(range(args.n))
            sequences = probe_sequences(built, tokenizer, MAX_LENGTH)
            changes = [probe.run([pair]).chosen_change.item() for pair in sequences]
            single[name] += changes
            same_meaning[name] += [index < 4 for index in built["rejected_index"]]
            together = probe.run(sequences)
            entry[name] = {"set_mean_chosen_change": float(together.chosen_change.mean()),
                           "set_mean_rejected_change": float(together.rejected_change.mean()),
                           "mean_ln_ches": float(np.mean(built["ln_ches"]))}
            print(f"seed {seed} {name:>18}: single-pair mean d log pi(y+) {np.mean(changes):+.4f}; "
                  f"set {entry[name]['set_mean_chosen_change']:+.4f}; rejected has the chosen's meaning "
                  f"{np.mean(same_meaning[name][-args.n:]):.0%}", flush=True)
        set_runs.append(entry)
    single = {name: np.asarray(values) for name, values in single.items()}
    results = {
        "settings": {"model": str(MODEL.relative_to(ROOT)), "data": str(PERSONA.relative_to(ROOT)), "n": args.n,
                     "seeds": args.seeds, "steps": args.steps, "learning_rate": args.lr, "beta": BETA,
                     "optimizer": "RMSprop", "max_length": MAX_LENGTH, "families": FAMILIES,
                     "device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
                     "date": time.strftime("%Y-%m-%d")},
        "single_pair_chosen_change": {name: mean_interval(values) for name, values in single.items()},
        "single_pair_displaced_fraction": {name: float((values < 0).mean()) for name, values in single.items()},
        "difference_vs_max_margin": {name: mean_interval(single[name] - single["max_margin"])
                                     for name in RULES if name != "max_margin"},
        "difference_vs_random": {name: mean_interval(single[name] - single["random"])
                                 for name in RULES if name != "random"},
        "rejected_same_meaning_fraction": {name: float(np.mean(values)) for name, values in same_meaning.items()},
        "set_probes": set_runs,
    }
    results["seconds"] = time.time() - started
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    for name in RULES:
        summary = results["single_pair_chosen_change"][name]
        print(f"{name:>18}: mean d log pi(y+) {summary['mean']:+.4f} [{summary['ci95'][0]:+.4f}, "
              f"{summary['ci95'][1]:+.4f}], displaced {results['single_pair_displaced_fraction'][name]:.0%}")
    print(f"wrote {args.output} in {results['seconds']:.0f}s")


if __name__ == "__main__":
    main()
