"""Likelihood displacement in miniature: the paper's Sections 3, 5 and 6 on the bundled model and hh-rlhf.

    python benchmarks/displacement.py            # quick mode, CPU, a few minutes
    python benchmarks/displacement.py --full     # more pairs, seeds and learning rates

Model: examples/tiny-hh-model (1.4M parameters, trained from scratch here; far from the paper's 1B-8B
models). Data: the bundled hh-rlhf harmless-base test split and the Persona "ends-justify-means" set.
DPO everywhere: RMSprop, beta = 0.1, the reference model = the starting model, full batch, float32,
on exactly the token sequences ches.score uses (max_length 256).

1. Single-pair probes (Section 5): for N pairs, DPO on that pair alone; displacement = drop of
   log pi(y+|x); Spearman/Pearson with each measure, 95 % bootstrap intervals, per seed and learning rate.
2. Figure 2: multi-sample DPO on windows of pairs centred on the 0/25/50/75/100th percentile of
   ches, ln_ches and edit similarity; mean change of log pi(y+|x) per window.
3. Section 6: DPO on (a) a random training set, (b) the rows ches.filter keeps of it, (c) a random
   subset of (a) of the same size as (b); mean change of log pi(y+|x) over each set's rows, per step.
4. Section 3 (Persona): DPO on one prompt with single-token answers; which tokens gain the
   probability mass.

Writes results.json and PNG figures to --output (default benchmarks/results/displacement).
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
from ches.data.columns import MEASURES  # noqa: E402
from ches.data.inputs import column, load_data  # noqa: E402
from ches.data.tokens import TokenSequence  # noqa: E402
from ches.evaluate.probes import DPOProbe, sequence_logps  # noqa: E402
from ches.evaluate.validation import correlation_table, probe_sequences, run_probes  # noqa: E402
from ches.scores.select import keep_window, similarity  # noqa: E402

MODEL = ROOT / "examples" / "tiny-hh-model"
HH = ROOT / "examples" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
PERSONA = ROOT / "examples" / "data" / "persona-ends-justify-means.jsonl"
MAX_LENGTH = 256
BETA = 0.1


def single_pair_probes(model, tokenizer, data, scored, usable, settings) -> list[dict]:
    runs = []
    for seed in settings["seeds"]:
        rng = np.random.default_rng(seed)
        picked = np.sort(rng.choice(usable, size=settings["n"], replace=False))
        sequences = probe_sequences(data.select(picked), tokenizer, MAX_LENGTH)
        chosen_tokens = np.asarray(column(scored.select(picked), "chosen_tokens"), dtype=float)
        rejected_tokens = np.asarray(column(scored.select(picked), "rejected_tokens"), dtype=float)
        measures = {name: similarity(column(scored.select(picked), name), name) for name in MEASURES}
        for learning_rate in settings["learning_rates"]:
            started = time.time()
            probe = DPOProbe(model, steps=settings["steps"], learning_rate=learning_rate, beta=BETA)
            changes = run_probes(probe, sequences, progress=False)
            table = correlation_table(measures, -changes[:, 0], chosen_tokens, rejected_tokens, seed=seed)
            runs.append({"seed": seed, "learning_rate": learning_rate, "n": settings["n"], "steps": settings["steps"],
                         "mean_chosen_change": float(changes[:, 0].mean()),
                         "mean_rejected_change": float(changes[:, 1].mean()),
                         "fraction_displaced": float((changes[:, 0] < 0).mean()), "correlations": table,
                         "seconds": time.time() - started})
            print(f"  probes seed {seed} lr {learning_rate:g}: Spearman with displacement "
                  + ", ".join(f"{m} {table[m]['spearman_total']:+.2f}" for m in MEASURES)
                  + f"; displaced {runs[-1]['fraction_displaced']:.0%}", flush=True)
    return runs


def windows(model, tokenizer, data, scored, usable, settings) -> dict:
    """Figure 2: mean change of log pi(y+|x) after DPO on a window around each percentile of a measure."""
    out = {}
    for measure in ("ches", "ln_ches", "edit_distance"):
        values = similarity(np.asarray(column(scored, measure))[usable], measure)
        out[measure] = []
        for center in (0.0, 0.25, 0.5, 0.75, 1.0):
            rows = usable[keep_window(values, center, settings["window"])]
            sequences = probe_sequences(data.select(rows), tokenizer, MAX_LENGTH)
            probe = DPOProbe(model, steps=settings["window_steps"], learning_rate=settings["window_lr"], beta=BETA)
            result = probe.run(sequences)
            out[measure].append({"percentile": center * 100, "mean_chosen_change": float(result.chosen_change.mean()),
                                 "mean_rejected_change": float(result.rejected_change.mean()),
                                 "mean_score": float(np.mean(values[np.isin(usable, rows)]))})
        print(f"  windows by {measure}: " + ", ".join(f"p{w['percentile']:.0f} {w['mean_chosen_change']:+.3f}"
                                                     for w in out[measure]), flush=True)
    return out


def filtering(model, tokenizer, data, scored, usable, settings) -> list[dict]:
    """Section 6: DPO on all / CHES-filtered / random rows of a training set; log pi(y+|x) change per step."""
    runs = []
    for seed in settings["seeds"]:
        rng = np.random.default_rng(100 + seed)
        train = np.sort(rng.choice(usable, size=settings["train"], replace=False))
        kept = ches.filter(scored.select(train), quantile=settings["quantile"])
        filtered = train[np.searchsorted(np.asarray(column(scored.select(train), "row_id")), column(kept, "row_id"))]
        random_subset = np.sort(rng.choice(train, size=len(filtered), replace=False))
        entry = {"seed": seed, "train_rows": len(train), "kept_rows": len(filtered), "quantile": settings["quantile"]}
        for name, rows in (("all", train), ("ches_filtered", filtered), ("random_subset", random_subset)):
            sequences = probe_sequences(data.select(rows), tokenizer, MAX_LENGTH)
            flat = [s for pair in sequences for s in pair]
            with torch.no_grad():
                start = sequence_logps(model, flat)[0::2]
            curve = []

            def record(step, trained, flat=flat, start=start, curve=curve):
                curve.append(float((sequence_logps(trained, flat)[0::2] - start).mean()))

            DPOProbe(model, steps=settings["train_steps"], learning_rate=settings["window_lr"], beta=BETA).run(
                sequences, on_step=record)
            entry[name] = curve
        runs.append(entry)
        print(f"  section 6 seed {seed}: final mean change of log pi(y+) — all {entry['all'][-1]:+.3f}, "
              f"ches-filtered {entry['ches_filtered'][-1]:+.3f}, random {entry['random_subset'][-1]:+.3f}", flush=True)
    return runs


def persona(model, tokenizer, settings) -> list[dict]:
    """Section 3: one prompt, single-token answers; which tokens gain the probability mass."""
    rows = [json.loads(line) for line in PERSONA.read_text(encoding="utf-8").splitlines()[: settings["prompts"]]]
    answers = [(" Yes", " No"), (" No", " never")]
    out = []
    for row in rows:
        prompt_ids = tokenizer(f"\n\nHuman: {row['question']}\n\nAssistant:")["input_ids"]
        for preferred, dispreferred in answers:
            ids = [tokenizer(word, add_special_tokens=False)["input_ids"] for word in (preferred, dispreferred)]
            assert all(len(i) == 1 for i in ids), "single-token answers expected"
            pair = tuple(TokenSequence(prompt_ids + i, len(prompt_ids) - 1, len(prompt_ids)) for i in ids)

            def next_token(trained, prompt_ids=prompt_ids):
                logits = trained(input_ids=torch.tensor([prompt_ids])).logits[0, -1]
                return torch.softmax(logits.float(), -1)

            with torch.no_grad():
                before = next_token(model)
            result = DPOProbe(model, steps=settings["persona_steps"], learning_rate=settings["persona_lr"],
                              beta=BETA).run([pair], inspect=next_token)
            gain = result.inspected - before
            top = torch.topk(gain, 5)
            out.append({"statement": row["statement"], "preferred": preferred, "dispreferred": dispreferred,
                        "p_preferred": [float(before[ids[0][0]]), float(result.inspected[ids[0][0]])],
                        "p_dispreferred": [float(before[ids[1][0]]), float(result.inspected[ids[1][0]])],
                        "top_gainers": [{"token": tokenizer.decode([int(t)]), "gain": float(g),
                                         "before": float(before[t]), "after": float(result.inspected[t])}
                                        for g, t in zip(top.values, top.indices)]})
            print(f"  persona {preferred!r} > {dispreferred!r}: p(y+) {out[-1]['p_preferred'][0]:.3f} -> "
                  f"{out[-1]['p_preferred'][1]:.3f}; top gainers "
                  + ", ".join(f"{g['token']!r} {g['gain']:+.3f}" for g in out[-1]["top_gainers"][:3]), flush=True)
    return out


def plot(results: dict, output: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.4), dpi=110, sharey=True)
    for axis, (measure, rows) in zip(axes, results["windows"].items()):
        axis.bar([f"{r['percentile']:.0f}" for r in rows], [r["mean_chosen_change"] for r in rows], color="#3b6ea8")
        label = "edit similarity (-edit_distance)" if measure == "edit_distance" else measure
        axis.set(title=f"windows by {label}", xlabel="percentile of the window centre")
        axis.axhline(0, color="black", linewidth=0.6)
    axes[0].set_ylabel("mean change of log π(y+|x)")
    figure.tight_layout()
    figure.savefig(output / "figure2-windows.png")
    files.append("figure2-windows.png")
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(5.5, 3.4), dpi=110)
    colors = {"all": "#555555", "ches_filtered": "#3b6ea8", "random_subset": "#a83b3b"}
    for run in results["filtering"]:
        for name, color in colors.items():
            axis.plot(range(1, len(run[name]) + 1), run[name], color=color, alpha=0.8,
                      label=name.replace("_", " ") if run is results["filtering"][0] else None)
    axis.axhline(0, color="black", linewidth=0.6)
    axis.set(title="Section 6 in miniature", xlabel="DPO step", ylabel="mean change of log π(y+|x)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(output / "section6-filtering.png")
    files.append("section6-filtering.png")
    plt.close(figure)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="more pairs, seeds and learning rates (slow on CPU)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "displacement")
    args = parser.parse_args()
    settings = {"n": 128, "seeds": [0, 1], "learning_rates": [1e-6, 1e-5], "steps": 5, "window": 32,
                "window_steps": 5, "window_lr": 1e-6, "train": 128, "quantile": 0.25, "train_steps": 8,
                "prompts": 2, "persona_steps": 10, "persona_lr": 1e-5}
    if args.full:
        settings |= {"n": 256, "seeds": [0, 1, 2], "learning_rates": [1e-7, 1e-6, 1e-5], "window": 64,
                     "window_steps": 10, "train": 256, "train_steps": 16, "prompts": 5}
    torch.manual_seed(0)
    started = time.time()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).eval()
    data = load_data(str(HH))
    data = data.add_column("row_id", list(range(len(data))))
    scored = ches.score(data, model, tokenizer, max_length=MAX_LENGTH, progress=False)
    usable = np.flatnonzero([reason is None for reason in column(scored, "ches_skip")])
    print(f"scored {len(data)} hh-rlhf pairs ({len(usable)} usable at max_length {MAX_LENGTH}) "
          f"in {time.time() - started:.0f}s", flush=True)
    results = {"settings": settings | {"model": str(MODEL.relative_to(ROOT)), "data": str(HH.relative_to(ROOT)),
                                       "max_length": MAX_LENGTH, "beta": BETA, "optimizer": "RMSprop",
                                       "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}}
    results["single_pair"] = single_pair_probes(model, tokenizer, data, scored, usable, settings)
    results["windows"] = windows(model, tokenizer, data, scored, usable, settings)
    results["filtering"] = filtering(model, tokenizer, data, scored, usable, settings)
    results["persona"] = persona(model, tokenizer, settings)
    results["seconds"] = time.time() - started
    args.output.mkdir(parents=True, exist_ok=True)
    results["figures"] = plot(results, args.output)
    (args.output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}/results.json and {', '.join(results['figures'])} in {results['seconds']:.0f}s")


if __name__ == "__main__":
    main()
