"""The wall time and peak GPU memory of a whole ``ches validate`` on a model of a paper's shape (random weights of the
OLMo-1B or Llama-3-8B shape, the project's tokenizer, the bundled hh-rlhf rows): full fine-tuning and LoRA, each one
in-process ``ches.validate`` call with the subsets protocol (n = 64, 2 seeds: 18 TRL runs), for the table of
docs/validation.md#memory-and-time-on-one-gpu.

    python benchmarks/validate_gpu.py --output benchmarks/results/validate-gpu-olmo1b.json        # on a GPU
    python benchmarks/validate_gpu.py --shape small --n 3 --seeds 1 --device cpu --dtype float32   # a CPU smoke run

Random weights are what the memory and the time depend on (the shapes, the tokens); the recommendation on them
means nothing and is recorded only to show the call ran to its end.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import ches  # noqa: E402
from throughput import SHAPES, build_model  # noqa: E402

DATA = ROOT / "examples" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
TOKENIZER = ROOT / "examples" / "tiny-hh-model"


def one_validate(folder: str, configuration: str, args) -> dict:
    """One ``ches.validate`` call, timed, with the device's peak memory."""
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = ches.validate(str(DATA), folder, str(TOKENIZER), n=args.n, seeds=args.seeds, dtype=args.dtype,
                           device=args.device, learning_rate=args.lr, max_length=args.max_length, progress=False,
                           lora_r=args.lora_r if configuration == "lora" else None)
    seconds = time.perf_counter() - started
    runs = [run for item in result["subsets"] for run in item["runs"]]
    return {"configuration": configuration, "seconds": seconds,
            "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
            "runs": len(runs), "training_seconds": sum(run["seconds"] for run in runs),
            "action": result["recommendation"]["action"], "settings": result["settings"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="olmo-1b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--configurations", default="lora,full", help="comma-separated, of lora and full")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    results = {"shape": args.shape, "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else
               args.device, "torch": torch.__version__, "n": args.n, "seeds": args.seeds, "dtype": args.dtype,
               "max_length": args.max_length, "runs": []}
    with tempfile.TemporaryDirectory() as folder:
        model = build_model(args.shape, len(tokenizer), getattr(torch, args.dtype), "cpu")
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        del model
        for configuration in [name.strip() for name in args.configurations.split(",") if name.strip()]:
            entry = one_validate(folder, configuration, args)
            results["runs"].append(entry)
            peak = f", peak {entry['peak_gb']:.1f} GB" if entry["peak_gb"] is not None else ""
            print(f"{args.shape} {configuration}: {entry['seconds']:.1f} s ({entry['runs']} runs, "
                  f"{entry['training_seconds']:.1f} s in them){peak}; {entry['action']}", flush=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
