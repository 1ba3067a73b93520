"""Host-side cost of ches.score per pair: everything but the model (reading, validating, tokenizing,
batching, scoring math, building the dataset), measured with a model too small to matter.

    python benchmarks/host_overhead.py [--pairs 8000]

On a GPU the host work per pair competes with the device work per pair, so it bounds throughput
from above; this measures it on any machine. Prints seconds per stage and per pair; writes JSON.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ches  # noqa: E402
from ches.formats import to_pairs  # noqa: E402
from ches.tokens import tokenize_pairs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8000, help="hh-rlhf rows, repeated as needed")
    parser.add_argument("--layout", default="padded")
    parser.add_argument("--repeats", type=int, default=3, help="timings of ches.score; the median is reported")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/host-overhead.json"))
    args = parser.parse_args()
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(ROOT / "examples" / "tiny-hh-model")
    with gzip.open(ROOT / "examples" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    rows = (rows * (args.pairs // len(rows) + 1))[: args.pairs]
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=4096)
    model = LlamaForCausalLM(config).eval()
    ches.score(rows[:50], model, tokenizer, progress=False, layout=args.layout)  # warm-up

    start = time.perf_counter()
    pairs = to_pairs({key: [row[key] for row in rows] for key in ("chosen", "rejected")})
    validated = time.perf_counter()
    tokenize_pairs(pairs, tokenizer)
    tokenized = time.perf_counter()
    totals = []
    for _ in range(args.repeats):
        begin = time.perf_counter()
        ches.score(rows, model, tokenizer, progress=False, layout=args.layout, batch_tokens=16384)
        totals.append(time.perf_counter() - begin)
    total = statistics.median(totals)
    result = {
        "pairs": args.pairs, "layout": args.layout, "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
        "seconds": {"validate_and_extract_prompts": validated - start, "tokenize": tokenized - validated,
                    "ches_score_total": total, "ches_score_all": totals},
        "ms_per_pair": 1000 * total / args.pairs,
    }
    print(json.dumps(result, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
