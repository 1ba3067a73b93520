"""Throughput of ches.score against the paper's official-style loop, on the same device, model and data.

    python benchmarks/throughput.py --quick                       # CPU, small model, a minute or two
    python benchmarks/throughput.py --device cuda                 # GPU, OLMo-1B-shaped model
    python benchmarks/throughput.py --device cuda --shape llama-8b --lengths long

(a) official-style: one sequence at a time, float32, full causal-LM forward with
    output_hidden_states=True (the LM head computed and thrown away), chosen and rejected separately;
(b) ches.score with its defaults (plus any --layout / --batch-tokens given).

Both score the same TRL token sequences; the script checks they agree (Spearman >= 0.999) and prints
samples/s, tokens/s, speed-up, peak memory and MFU (median of --repeats timings) = tokens/s x 2 x non-embedding parameters / the
matrix-multiply rate measured on the device in this run (bf16 on GPU, fp32 on CPU), plus the same
against the datasheet peak where one is known, and the useful-token MFU: the same with only the tokens a
prompt-once pass must compute (every token of both sequences less one copy of each prompt). Results go to a JSON file.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import random
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ches  # noqa: E402
import ches.api  # noqa: E402
from ches.data.formats import to_pairs  # noqa: E402
from ches.data.tokens import to_sequences, tokenize_pairs  # noqa: E402
from ches.run.chunk_loop import ChunkSizes  # noqa: E402

SHAPES = {  # hidden, layers, heads, kv heads, intermediate, vocab
    "small": (256, 4, 4, 4, 1024, 32000),
    "olmo-1b": (2048, 16, 16, 16, 8192, 50304),
    "llama-8b": (4096, 32, 32, 8, 14336, 128256),
}
DATASHEET_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core peak, FLOP/s


def build_model(shape: str, vocab_size: int | None, dtype: torch.dtype, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, kv_heads, intermediate, vocab = SHAPES[shape]
    config = LlamaConfig(vocab_size=vocab_size or vocab, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=intermediate,
                         max_position_embeddings=8192, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    return model


def non_embedding_parameters(model) -> int:
    embeddings = {id(p) for p in model.get_input_embeddings().parameters()}
    embeddings |= {id(p) for p in model.get_output_embeddings().parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embeddings)


def words_from_hh() -> list[str]:
    with gzip.open(ROOT / "examples" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz", "rt", encoding="utf-8") as f:
        return " ".join(json.loads(line)["chosen"] for line in f).split()


def synthetic_rows(pairs: int, lengths: str, seed: int = 0) -> list[dict]:
    """Rows whose prompt/completion word counts follow real preference data (about 1 token per word here)."""
    rng = random.Random(seed)
    words = words_from_hh()
    completion = (50, 400) if lengths == "real" else (1800, 2200)

    def text(n):
        start = rng.randrange(len(words) - n)
        return " ".join(words[start : start + n])

    return [{"prompt": text(rng.randint(50, 250)), "chosen": " " + text(rng.randint(*completion)),
             "rejected": " " + text(rng.randint(*completion))} for _ in range(pairs)]


def hh_rows(pairs: int) -> list[dict]:
    with gzip.open(ROOT / "examples" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(pairs), f)]


def official_loop(model, sequence_pairs, device) -> tuple[list[float], list[float]]:
    """The paper's released scoring loop, re-implemented: batch size 1, full LM forward, hidden_states[-1]."""
    ches_values, ln_values = [], []
    with torch.no_grad():
        for chosen, rejected in sequence_pairs:
            sums = []
            for sequence in (chosen, rejected):
                ids = torch.tensor([sequence.input_ids], device=device)
                hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
                sums.append(hidden[sequence.start : sequence.end].double().sum(0))
            plus, minus = sums
            n_plus, n_minus = chosen.end - chosen.start, rejected.end - rejected.start
            ches_values.append(float(plus @ minus - plus @ plus))
            ln_values.append(float(plus @ minus / (n_plus * n_minus) - plus @ plus / n_plus**2))
    return ches_values, ln_values


def timed(work, device: str, repeats: int):
    """``work()``'s result and the wall-clock seconds of each of ``repeats`` runs."""
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        result = work()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return result, seconds


class EngineClock:
    """Seconds spent inside the engine (the decoder passes, synchronized), summed over calls: wraps the
    layouts' engine entry points so the device's share of a ``ches.score`` call can be told apart from
    host work (tokenization, edit distances, building the dataset)."""

    def __init__(self, device: str):
        import ches.model.layouts as layouts

        self.seconds, self.device = 0.0, device
        self.originals = {(layouts, "hidden_sums"): layouts.hidden_sums,
                          (layouts.SharedPrompt, "cached_sums"): layouts.SharedPrompt.cached_sums}
        for (owner, name), function in self.originals.items():
            setattr(owner, name, self.timed(function))

    def timed(self, function):
        def wrapper(*args, **kwargs):
            synchronize(self.device)
            start = time.perf_counter()
            result = function(*args, **kwargs)
            synchronize(self.device)
            self.seconds += time.perf_counter() - start
            return result

        return wrapper


def matmul_rate(device: str, dtype: torch.dtype) -> float:
    """Measured FLOP/s of a large square matrix multiply in ``dtype``."""
    size = 8192 if device.startswith("cuda") else 1024
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    repeats = 50 if device.startswith("cuda") else 10
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS in GiB (Linux: KiB)


def spearman(a, b) -> float:
    from ches.scores.stats import spearman as rank_correlation

    return rank_correlation(np.asarray(a), np.asarray(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: olmo-1b on GPU, small on CPU")
    parser.add_argument("--lengths", choices=["real", "long", "hh"], default="real",
                        help="synthetic real-like lengths, 2k-token completions, or the hh-rlhf rows")
    parser.add_argument("--pairs", type=int, default=None, help="default: 1024 on GPU, 96 on CPU (32 with --quick)")
    parser.add_argument("--official-pairs", type=int, default=None, help="pairs timed in the official loop (default all)")
    parser.add_argument("--quick", action="store_true", help="CPU-friendly: fewer pairs")
    parser.add_argument("--layout", choices=["auto", "prefix_shared", "packed", "padded", "shared_prompt"],
                        default="auto", help="ches.score layout (auto: chosen by estimated cost, recorded in the JSON)")
    parser.add_argument("--batch-tokens", type=int, default=None)
    parser.add_argument("--chunk-pairs", type=int, default=None,
                        help="pairs per work chunk (ches.run.chunk_loop.ChunkSizes.pairs; a chunk is never split across batches' rows)")
    parser.add_argument("--compile", action="store_true", help="ches.score(compile=True); the warm-up compiles")
    parser.add_argument("--attn-implementation", default=None, help="ches.score(attn_implementation=...)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="time each method this many times and report the median (default: 3 on CPU, 1 on GPU)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/throughput.json"))
    args = parser.parse_args()

    cuda = args.device.startswith("cuda")
    shape = args.shape or ("olmo-1b" if cuda else "small")
    pairs = args.pairs or (1024 if cuda else (32 if args.quick else 96))
    dtype = torch.bfloat16 if cuda else torch.float32
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ROOT / "examples" / "tiny-hh-model")
    rows = hh_rows(pairs) if args.lengths == "hh" else synthetic_rows(pairs, args.lengths)
    tokenized = tokenize_pairs(to_pairs({k: [row[k] for row in rows] for k in rows[0]}), tokenizer)
    sequence_pairs = [to_sequences(pair) for pair in tokenized]
    tokens = sum(len(s.input_ids) for pair in sequence_pairs for s in pair)
    useful = tokens - sum(chosen.start + 1 for chosen, _ in sequence_pairs)  # what a prompt-once pass must compute

    # (a) official-style: float32 always, as the paper's script
    official_model = build_model(shape, None, torch.float32, args.device)
    n_official = min(args.official_pairs or pairs, pairs)
    official_tokens = sum(len(s.input_ids) for pair in sequence_pairs[:n_official] for s in pair)
    repeats = args.repeats or (1 if cuda else 3)
    (official_ches, official_ln), official_times = timed(
        lambda model=official_model: official_loop(model, sequence_pairs[:n_official], args.device), args.device, repeats)
    official_memory = peak_memory(args.device)
    del official_model
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    # (b) ches.score with its defaults: same weights (same seed), default dtype for the device
    model = build_model(shape, None, dtype, args.device)
    chunk_sizes = ChunkSizes(pairs=args.chunk_pairs) if args.chunk_pairs else ChunkSizes()
    layout = None if args.layout == "auto" else args.layout
    options = dict(progress=False, layout=layout, batch_tokens=args.batch_tokens, compile=args.compile,
                   attn_implementation=args.attn_implementation, chunk_sizes=chunk_sizes)
    _, warmup_times = timed(lambda: ches.score(rows[: min(8, pairs)], model, tokenizer, **options), args.device, 1)
    clock = EngineClock(args.device)
    (scored, info), ches_times = timed(lambda: ches.api.score_run(rows, model, tokenizer, **options), args.device, repeats)
    engine_seconds = clock.seconds / repeats
    ches_memory = peak_memory(args.device)

    rate = matmul_rate(args.device, dtype)
    flops_per_token = 2 * non_embedding_parameters(model)
    device_name = torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()
    datasheet = next((peak for name, peak in DATASHEET_BF16.items() if name in device_name), None) if cuda else None
    ours_ches, ours_ln = list(scored["ches"])[:n_official], list(scored["ln_ches"])[:n_official]
    scale = max(abs(v) for v in official_ln)

    def entry(name, times, n_pairs, n_tokens, memory):
        seconds = statistics.median(times)
        per_second = n_tokens / seconds
        return {"method": name, "seconds": seconds, "all_seconds": times, "pairs": n_pairs, "samples_per_s": n_pairs / seconds,
                "tokens_per_s": per_second, "peak_memory_gib": memory,
                "mfu_measured": per_second * flops_per_token / rate,
                "mfu_useful": per_second * useful / tokens * flops_per_token / rate,
                "mfu_datasheet": per_second * flops_per_token / datasheet if datasheet else None}

    result = {
        "device": device_name, "device_type": args.device, "shape": shape, "lengths": args.lengths,
        "pairs": pairs, "tokens": tokens, "useful_tokens": useful, "dtype_ches": str(dtype), "layout": args.layout,
        "layout_used": info.layout, "layout_reason": info.layout_reason,
        "batch_tokens": args.batch_tokens, "non_embedding_parameters": flops_per_token // 2,
        "matmul_flops_measured": rate, "matmul_dtype": str(dtype), "datasheet_flops": datasheet,
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "date": time.strftime("%Y-%m-%d"), "cpu_threads": torch.get_num_threads(),
        "agreement": {"spearman_ches": spearman(official_ches, ours_ches), "spearman_ln_ches": spearman(official_ln, ours_ln),
                      "max_relative_error_ln_ches": max(abs(a - b) for a, b in zip(official_ln, ours_ln)) / scale},
        "repeats": repeats, "compile": args.compile, "chunk_pairs": chunk_sizes.pairs, "attn_implementation": args.attn_implementation,
        "warmup_seconds": warmup_times[0],
        "engine_seconds": engine_seconds, "engine_share": engine_seconds / statistics.median(ches_times),
        "results": [entry("official-style loop", official_times, n_official, official_tokens, official_memory),
                    entry("ches.score", ches_times, pairs, tokens, ches_memory)],
    }
    result["speedup"] = result["results"][1]["tokens_per_s"] / result["results"][0]["tokens_per_s"]
    result["engine_only"] = {"tokens_per_s": tokens / engine_seconds,
                             "mfu_useful": useful / engine_seconds * flops_per_token / rate,
                             "speedup": tokens / engine_seconds / result["results"][0]["tokens_per_s"]}
    print(f"{device_name} | {shape} | {args.lengths} lengths | {pairs} pairs, {tokens} tokens | torch {torch.__version__}")
    print(f"measured matmul rate ({dtype}): {rate / 1e12:.2f} TFLOP/s")
    print(f"layout: {info.layout} ({info.layout_reason})")
    print(f"median of {repeats} timing(s) per method")
    print(f"{'method':22s} {'samples/s':>10s} {'tokens/s':>10s} {'speed-up':>9s} {'peak GiB':>9s} {'MFU':>7s} {'MFU(sheet)':>10s} {'useful MFU':>10s}")
    for item, speed in zip(result["results"], (1.0, result["speedup"])):
        sheet = f"{item['mfu_datasheet']:.1%}" if item["mfu_datasheet"] else "n/a"
        print(f"{item['method']:22s} {item['samples_per_s']:10.2f} {item['tokens_per_s']:10.0f} {speed:8.1f}x "
              f"{item['peak_memory_gib']:9.2f} {item['mfu_measured']:7.1%} {sheet:>10s} {item['mfu_useful']:10.1%}")
    engine = result["engine_only"]
    print(f"engine alone (decoder passes, synchronized): {engine_seconds:.2f} s of {statistics.median(ches_times):.2f} s, "
          f"{engine['tokens_per_s']:.0f} tokens/s, {engine['speedup']:.1f}x, useful MFU {engine['mfu_useful']:.1%}")
    agreement = result["agreement"]
    print(f"agreement: Spearman ches {agreement['spearman_ches']:.5f}, ln_ches {agreement['spearman_ln_ches']:.5f}, "
          f"max relative error (ln_ches, vs its scale) {agreement['max_relative_error_ln_ches']:.2e}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    if min(agreement["spearman_ches"], agreement["spearman_ln_ches"]) < 0.999:
        sys.exit("scores disagree with the official-style loop (Spearman < 0.999)")


if __name__ == "__main__":
    main()
