"""CPU threads on a quiet and on a busy machine: ches' default thread count against every explicit one.

    python benchmarks/threads.py                  # the table of docs/performance.md#cpu-threads (about 35 minutes on 2 cores)
    python benchmarks/threads.py --quick          # a smoke run (a minute): small counts, one repeat
    python benchmarks/threads.py --env OMP_WAIT_POLICY=PASSIVE --entries score --output /tmp/passive.json

For each model and load, every entry point (``ches.score``, ``ches.pairs``, ``ches.validate``, the ``ches
score`` command) runs with ``num_threads`` left to ches (``default``) and with each explicit count from 1 to
the number of cores, each in a fresh process (so ``--env`` settings such as ``OMP_WAIT_POLICY`` apply
before torch starts), in interleaved order, ``--repeats`` times. The load is made here: ``quiet`` (nothing
else), ``one core busy`` (another process spinning), ``all cores busy`` (one spinning process per core);
the spinning processes are started before each run and stopped after it. The models:

- ``small``: a Llama of width 256, 4 layers, a 32k vocabulary (the CPU model of benchmarks/throughput.py),
  on 256 hh-rlhf pairs (``pairs``: 128 prompts with three responses; ``validate``: 16 probes of 2 steps);
- ``host``: the same with no decoder layer, on 4,000 hh-rlhf pairs: the host's work (reading, tokenizing,
  batching) and almost no model.

Only the seconds of the call itself are timed (not Python's start or the imports). Writes JSON (default
benchmarks/results/cpu-threads.json) and prints, per row, each setting's median and the default's ratio to
the best explicit count.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOADS = {"quiet": 0, "one core busy": 1, "all cores busy": None}  # spinning processes (None: one per core)
ENTRIES = ("score", "pairs", "validate", "cli")
MODELS = {"small": (256, 4, 1024), "host": (256, 0, 1024)}  # width, layers, MLP width; vocabulary 32,000


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def write_inputs(folder: Path, quick: bool) -> dict:
    """The two models (saved folders, with the bundled tokenizer) and the data files every run reads."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(ROOT / "examples" / "tiny-hh-model")
    paths = {}
    for name, (width, layers, mlp) in MODELS.items():
        config = LlamaConfig(vocab_size=32000, hidden_size=width, num_hidden_layers=layers, num_attention_heads=4,
                             num_key_value_heads=4, intermediate_size=mlp, max_position_embeddings=8192,
                             tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
        model.save_pretrained(folder / name)
        tokenizer.save_pretrained(folder / name)
        paths[name] = str(folder / name)
    with gzip.open(ROOT / "examples" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz", "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    counts = {"small": 32 if quick else 256, "host": 400 if quick else 4000}
    for name, count in counts.items():
        chosen = (rows * (count // len(rows) + 1))[:count]
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in chosen), encoding="utf-8")
    candidates = []
    for row in rows[: (16 if quick else 128)]:
        cut = row["chosen"].rfind("\n\nAssistant:") + len("\n\nAssistant:")
        answers = [row["chosen"][cut:], row["rejected"][row["rejected"].rfind("\n\nAssistant:") + 12:]]
        candidates.append({"prompt": row["chosen"][:cut], "responses": answers + [answers[0][:40]], "ratings": [2, 0, 1]})
    (folder / "candidates.jsonl").write_text("".join(json.dumps(row) + "\n" for row in candidates), encoding="utf-8")
    return {"models": paths, "counts": counts, "candidates": len(candidates)}


def child(spec: dict) -> dict:
    """One timed call in this (fresh) process; returns its seconds and the threads it ran with."""
    sys.path.insert(0, str(ROOT))
    import ches
    from ches.cli import main

    folder, model, threads = Path(spec["folder"]), spec["model_path"], spec["threads"]
    data = str(folder / f"{spec['model']}.jsonl")
    started = time.perf_counter()
    if spec["entry"] == "score":
        _, info = ches.api.score_run(data, model, num_threads=threads, progress=False)
        used, reason = info.threads, info.threads_reason
    elif spec["entry"] == "pairs":
        _, info = ches.pairs_run(str(folder / "candidates.jsonl"), model, num_threads=threads, progress=False)
        used, reason = info["threads"], info["threads_reason"]
    elif spec["entry"] == "validate":
        result = ches.validate(data, model, n=8 if spec["quick"] else 16, steps=2, max_length=256,
                               pool=32 if spec["quick"] else 64, num_threads=threads, progress=False)
        used, reason = result["settings"]["threads"], result["settings"]["threads_reason"]
    else:
        output = folder / f"cli-{os.getpid()}.parquet"
        argv = ["score", data, "--model", model, "--output", str(output), "--no-progress"]
        if main(argv + ([] if threads is None else ["--threads", str(threads)])) != 0:
            raise SystemExit("ches score failed")
        used = json.loads(Path(str(output) + ".meta.json").read_text())["run"]["threads"]
        reason = json.loads(Path(str(output) + ".meta.json").read_text())["run"]["threads_reason"]
    return {"seconds": time.perf_counter() - started, "threads": used, "reason": reason}


def spinners(count: int) -> list[subprocess.Popen]:
    """``count`` processes that keep one core each busy until stopped."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def measure(spec: dict, load: int, env: dict) -> dict:
    busy = spinners(load)
    try:
        time.sleep(0.5 if load else 0)  # let them reach the cores
        finished = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                  text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **env}, timeout=1800)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    if finished.returncode != 0:
        raise SystemExit(f"run failed: {spec}\n{finished.stderr[-2000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one repeat, score only")
    parser.add_argument("--repeats", type=int, default=None, help="runs per setting (default 2; 1 with --quick)")
    parser.add_argument("--entries", nargs="+", choices=ENTRIES, default=None, help="default: all (score with --quick)")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    parser.add_argument("--loads", nargs="+", choices=list(LOADS), default=list(LOADS))
    parser.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE", help="environment of the timed runs")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "cpu-threads.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    repeats = args.repeats or (1 if args.quick else 2)
    entries = args.entries or (["score"] if args.quick else list(ENTRIES))
    env = dict(item.split("=", 1) for item in args.env)
    settings = [None, *range(1, cores() + 1)]
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        inputs = write_inputs(folder, args.quick)
        for model, load_name, entry in itertools.product(args.models, args.loads, entries):
            if model == "host" and entry in ("pairs", "validate"):
                continue  # the host-work row of the issue is a scoring run
            load = cores() if LOADS[load_name] is None else LOADS[load_name]
            runs = {setting: [] for setting in settings}
            chosen = None
            for _ in range(repeats):
                for setting in settings:  # interleaved: a drift in the machine touches every setting alike
                    spec = {"folder": str(folder), "model": model, "model_path": inputs["models"][model],
                            "entry": entry, "threads": setting, "quick": args.quick}
                    result = measure(spec, load, env)
                    runs[setting].append(result["seconds"])
                    if setting is None:
                        chosen = (result["threads"], result["reason"])
            medians = {("default" if setting is None else setting): statistics.median(times)
                       for setting, times in runs.items()}
            best = min(value for key, value in medians.items() if key != "default")
            row = {"model": model, "entry": entry, "load": load_name, "spinning_processes": load,
                   "pairs": inputs["counts"][model] if entry != "pairs" else inputs["candidates"],
                   "seconds": {str(key if key is not None else "default"): times for key, times in runs.items()},
                   "median": {str(key): value for key, value in medians.items()},
                   "default_threads": chosen[0], "default_reason": chosen[1],
                   "default_over_best": medians["default"] / best}
            rows.append(row)
            shown = "  ".join(f"{key}: {value:6.2f} s" for key, value in medians.items())
            print(f"{model:6s} {entry:9s} {load_name:15s} {shown}  default ran {chosen[0]} thread(s), "
                  f"{row['default_over_best']:.2f}x the best", flush=True)
    import torch

    result = {"machine": {"cores": cores(), "processor": platform.processor() or platform.machine(),
                          "cpu_model": _cpu_model(), "python": platform.python_version(), "torch": torch.__version__},
              "env": env, "repeats": repeats, "quick": args.quick, "date": time.strftime("%Y-%m-%d"), "rows": rows,
              "worst_default_over_best": max(row["default_over_best"] for row in rows)}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"worst default / best explicit: {result['worst_default_over_best']:.2f}x; wrote {args.output}")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        return ""


if __name__ == "__main__":
    main()
