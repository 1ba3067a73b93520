"""Memory and time of ches.score as the number of pairs grows, at two hidden sizes.

    python benchmarks/scale.py                                  # 10k and 100k pairs, hidden 64 and 1,024
    python benchmarks/scale.py --pairs 10000 100000 1000000     # add the million (about 20 minutes on 2 cores)

Each run is its own process (so peak RSS is that run's): it writes N synthetic pairs of about 40 tokens
(prompt ~20, completions ~10 each, words drawn from the bundled hh-rlhf text) to a Parquet file, builds
a Llama of the given hidden size (no decoder layers by default: the embeddings and final norm) with the bundled tokenizer's 4,096-word vocabulary, scores the
file with ``ches.score(..., layout="padded")`` and reports its peak RSS (``ru_maxrss``), the RSS after
loading the data and the model (the baseline), and the wall time. The slope between two sizes, in bytes
per pair and per token, is the memory a pair costs beyond the input's own (memory-mapped) Arrow data.
Writes JSON (default benchmarks/results/scale.json).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "tiny-hh-model"


def words() -> list[str]:
    with gzip.open(ROOT / "examples" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz", "rt", encoding="utf-8") as f:
        return " ".join(json.loads(line)["chosen"] for _, line in zip(range(400), f)).split()


def write_pairs(path: Path, count: int, seed: int = 0) -> None:
    """``count`` pairs of about 40 tokens as Parquet, written in blocks (the writer never holds them all)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng, vocabulary = random.Random(seed), words()

    def text(n: int) -> str:
        return " ".join(rng.choice(vocabulary) for _ in range(n))

    writer = None
    for start in range(0, count, 50_000):
        block = range(start, min(count, start + 50_000))
        table = pa.table({"prompt": [f"\n\nHuman: {text(14)}\n\nAssistant:" for _ in block],
                          "chosen": [" " + text(8) for _ in block], "rejected": [" " + text(8) for _ in block]})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def one_run(data: str, hidden: int, pairs: int, layers: int) -> dict:
    """Score ``data`` with a ``layers``-layer model of width ``hidden`` in this process; the numbers of the run."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT))
    import ches
    from ches.data.inputs import load_data

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 64),
                         max_position_embeddings=512)
    model = LlamaForCausalLM(config).eval()
    dataset = load_data(data)
    baseline = rss_bytes()
    start = time.perf_counter()
    scored = ches.score(dataset, model, tokenizer, layout="padded", progress=False)
    seconds = time.perf_counter() - start
    tokens = int(sum(scored["prompt_tokens"]) + sum(scored["chosen_tokens"]) + sum(scored["rejected_tokens"]))
    return {"pairs": pairs, "hidden": hidden, "seconds": seconds, "baseline_rss": baseline,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "tokens": tokens,
            "scored": int(sum(skip is None for skip in scored["ches_skip"]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--layers", type=int, default=0,
                        help="decoder layers (default 0: embeddings and the final norm only, so the run measures "
                             "ches' own memory and time at any hidden size, not the model's compute)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    parser.add_argument("--run", nargs=4, metavar=("DATA", "HIDDEN", "PAIRS", "LAYERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:  # the child process: one measurement, as JSON on stdout
        print(json.dumps(one_run(args.run[0], *map(int, args.run[1:]))))
        return
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for pairs in args.pairs:
            data = Path(folder) / f"pairs-{pairs}.parquet"
            write_pairs(data, pairs)
            for hidden in args.hidden:
                child = subprocess.run([sys.executable, __file__, "--run", str(data), str(hidden), str(pairs), str(args.layers)],
                                       capture_output=True, text=True, check=True)
                run = json.loads(child.stdout.strip().splitlines()[-1])
                runs.append(run)
                print(f"{pairs:>9,} pairs  hidden {hidden:>5}: {run['seconds']:8.1f} s, peak RSS "
                      f"{run['peak_rss'] / 2**20:8.1f} MiB (baseline {run['baseline_rss'] / 2**20:7.1f} MiB), "
                      f"{run['tokens'] / pairs:.1f} tokens per pair", flush=True)
    slopes = []
    for hidden in args.hidden:
        mine = sorted((run for run in runs if run["hidden"] == hidden), key=lambda run: run["pairs"])
        for small, large in zip(mine, mine[1:]):
            extra = (large["peak_rss"] - large["baseline_rss"]) - (small["peak_rss"] - small["baseline_rss"])
            rows, tokens = large["pairs"] - small["pairs"], large["tokens"] - small["tokens"]
            slopes.append({"hidden": hidden, "from": small["pairs"], "to": large["pairs"],
                           "bytes_per_pair": extra / rows, "bytes_per_token": extra / tokens})
            print(f"hidden {hidden:>5}, {small['pairs']:,} -> {large['pairs']:,} pairs: "
                  f"{extra / rows:,.0f} bytes per pair, {extra / tokens:,.1f} bytes per token (peak above baseline)")
    import torch

    result = {"layers": args.layers, "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "torch": torch.__version__, "runs": runs, "slopes": slopes}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
