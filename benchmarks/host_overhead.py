"""Host-side cost of ches.score per pair: everything but the model (reading, validating, tokenizing,
batching, scoring math, building the dataset), measured with a model too small to matter.

    python benchmarks/host_overhead.py [--pairs 8000] [--dp-pairs 100]

On a GPU the host work per pair competes with the device work per pair, so it bounds throughput
from above; this measures it on any machine. Prints seconds per stage and per pair; writes JSON.

It also times the token edit distance ``Levenshtein(y+, y-) / max(|y+|, |y-|)`` per pair three ways:
``ches.scores.edit_distance`` (rapidfuzz), the bit-parallel pure-Python version it replaced, and a
plain dynamic-programming table (on the first ``--dp-pairs`` pairs only; it is slow), on the
tokenized hh-rlhf completions and on random sequences of 20-400 tokens.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ches  # noqa: E402
from ches.data.formats import to_pairs  # noqa: E402
from ches.data.tokens import tokenize_pairs  # noqa: E402
from ches.scores import edit_distance  # noqa: E402

IdPair = tuple[list[int], list[int]]


def bit_parallel_edit_distance(chosen_ids: list[int], rejected_ids: list[int]) -> float:
    """``Levenshtein(y+, y-) / max(|y+|, |y-|)`` in pure Python, bit-parallel (Myers 1999, Hyyro's form);
    what ``ches.scores.edit_distance`` computed before it used rapidfuzz, kept here as a comparison point.

    One column of the dynamic-programming table is two bit vectors of vertical steps, ``up`` (+1) and
    ``down`` (-1), over the longer sequence; each token of the shorter one updates the whole column
    with a dozen operations on Python integers as wide as the longer sequence.
    """
    longer_ids, shorter_ids = sorted((chosen_ids, rejected_ids), key=len, reverse=True)
    length = len(longer_ids)
    if length == 0:
        return 0.0
    matches: dict[int, int] = {}  # token -> bit i set where longer_ids[i] == token
    for position, token in enumerate(longer_ids):
        matches[token] = matches.get(token, 0) | (1 << position)
    column_mask, bottom = (1 << length) - 1, 1 << (length - 1)
    up, down, distance = column_mask, 0, length  # first column: distance i at row i
    for token in shorter_ids:
        match = matches.get(token, 0)
        vertical = match | down
        horizontal = (((match & up) + up) ^ up) | match
        step_up = down | (column_mask & ~(horizontal | up))
        step_down = up & horizontal
        if step_up & bottom:
            distance += 1
        elif step_down & bottom:
            distance -= 1
        step_up = ((step_up << 1) | 1) & column_mask  # row 0 grows by one per column
        step_down = (step_down << 1) & column_mask
        up = step_down | (column_mask & ~(vertical | step_up))
        down = step_up & vertical
    return distance / length


def plain_edit_distance(chosen_ids: list[int], rejected_ids: list[int]) -> float:
    """``Levenshtein(y+, y-) / max(|y+|, |y-|)`` from the textbook table, one row at a time:
    ``d[i][j] = min(d[i-1][j] + 1, d[i][j-1] + 1, d[i-1][j-1] + (y+[i] != y-[j]))``, O(|y+| |y-|) cells."""
    row = list(range(len(rejected_ids) + 1))
    for i, token in enumerate(chosen_ids, 1):
        diagonal, row[0] = row[0], i
        for j, other in enumerate(rejected_ids, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (token != other))
    return row[-1] / max(len(chosen_ids), len(rejected_ids), 1)


def random_id_pairs(count: int, seed: int = 0) -> list[IdPair]:
    """Pairs of random token-id sequences of 20-400 tokens; the second is the first, edited, so they share stretches."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        first = [rng.randrange(32000) for _ in range(rng.randrange(20, 401))]
        second = [token if rng.random() < 0.7 else rng.randrange(32000) for token in first if rng.random() < 0.9]
        pairs.append((first, second + [rng.randrange(32000) for _ in range(rng.randrange(0, 40))]))
    return pairs


def microseconds_per_pair(distance, id_pairs: list[IdPair], repeats: int = 3) -> tuple[float, list[float]]:
    """Best of ``repeats`` timings of ``distance`` over all pairs, in microseconds per pair, and the values."""
    best = float("inf")
    for _ in range(repeats):
        begin = time.perf_counter()
        values = [distance(chosen, rejected) for chosen, rejected in id_pairs]
        best = min(best, time.perf_counter() - begin)
    return 1e6 * best / len(id_pairs), values


def edit_distance_timings(id_pairs: list[IdPair], dp_pairs: int) -> dict:
    """Microseconds per pair of rapidfuzz (``ches.scores.edit_distance``) and the bit-parallel Python
    version over all pairs, and of all three (with the plain table) over the first ``dp_pairs``; the
    three must agree exactly."""
    subset = id_pairs[:dp_pairs]
    result = {"pairs": len(id_pairs), "dp_pairs": len(subset),
              "mean_tokens": statistics.fmean(len(ids) for pair in id_pairs for ids in pair),
              "dp_subset_mean_tokens": statistics.fmean(len(ids) for pair in subset for ids in pair),
              "us_per_pair": {}, "us_per_pair_dp_subset": {}}
    implementations = {"rapidfuzz": edit_distance, "bit_parallel": bit_parallel_edit_distance,
                       "plain_dp": plain_edit_distance}
    reference = None
    for name, distance in implementations.items():
        if name != "plain_dp":
            result["us_per_pair"][name], _ = microseconds_per_pair(distance, id_pairs)
        result["us_per_pair_dp_subset"][name], values = microseconds_per_pair(distance, subset, repeats=1)
        reference = values if reference is None else reference
        if values != reference:
            raise SystemExit(f"edit distances disagree: {name} vs rapidfuzz")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8000, help="hh-rlhf rows, repeated as needed")
    parser.add_argument("--layout", default="padded")
    parser.add_argument("--repeats", type=int, default=3, help="timings of ches.score; the median is reported")
    parser.add_argument("--dp-pairs", type=int, default=100, help="pairs timed with the plain DP edit distance")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/host-overhead.json"))
    args = parser.parse_args()
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(ROOT / "examples" / "tiny-hh-model")
    with gzip.open(ROOT / "examples" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    distinct = len(rows)  # the file's rows; past them the same pairs repeat
    rows = (rows * (args.pairs // len(rows) + 1))[: args.pairs]
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=4096)
    model = LlamaForCausalLM(config).eval()
    ches.score(rows[:50], model, tokenizer, progress=False, layout=args.layout)  # warm-up

    start = time.perf_counter()
    pairs = to_pairs({key: [row[key] for row in rows] for key in ("chosen", "rejected")})
    validated = time.perf_counter()
    token_pairs = tokenize_pairs(pairs, tokenizer)
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
    hh_pairs = [(pair.chosen_ids, pair.rejected_ids) for pair in token_pairs[:distinct]]
    result["edit_distance"] = {
        "hh_rlhf": edit_distance_timings(hh_pairs, args.dp_pairs),
        "random_20_400": edit_distance_timings(random_id_pairs(1000), args.dp_pairs),
    }
    print(json.dumps(result, indent=2))
    print("\nedit distance, microseconds per pair (all pairs | the first --dp-pairs pairs)")
    print(f"{'pairs':14s} {'mean tokens':>15s} {'rapidfuzz':>17s} {'bit-parallel':>17s} {'plain DP':>9s}")
    for name, timing in result["edit_distance"].items():
        every, subset = timing["us_per_pair"], timing["us_per_pair_dp_subset"]
        print(f"{name:14s} {timing['mean_tokens']:7.1f} | {timing['dp_subset_mean_tokens']:5.1f} "
              f"{every['rapidfuzz']:8.2f} | {subset['rapidfuzz']:6.2f} "
              f"{every['bit_parallel']:8.2f} | {subset['bit_parallel']:6.2f} {subset['plain_dp']:9.1f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
