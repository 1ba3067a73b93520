"""Where a ches.score call's time goes on the device: kernel time by kind, and how long the device sat idle.

    python benchmarks/engine_profile.py --device cuda --lengths hh --pairs 1024   # OLMo-1B shape, bf16
    python benchmarks/engine_profile.py --quick                                   # CPU, small model: checks the script

One ``ches.score`` call (its defaults, plus any --layout / --batch-tokens) runs under ``torch.profiler``
after a warm-up call. Device kernels are sorted into matrix multiplies, attention, elementwise and
normalization, copies and indexing, and the rest, by kernel name; the device's busy time is the sum of
its kernels' times (one stream), and idle time is the engine's wall-clock time less that. Beside them:
the time the useful tokens (a prompt-once pass) would take at the matrix-multiply rate measured in the
same run, which is what a useful-token MFU of 100 % would mean. On CPU the same table is built from the
profiler's operator times (a check that the script runs, not a GPU figure). Results go to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from throughput import (  # noqa: E402
    EngineClock,
    build_model,
    hh_rows,
    matmul_rate,
    non_embedding_parameters,
    synchronize,
    synthetic_rows,
)

import ches  # noqa: E402
import ches.api  # noqa: E402
from ches.data.formats import to_pairs  # noqa: E402
from ches.data.tokens import to_sequences, tokenize_pairs  # noqa: E402

KINDS = (  # first match wins; names of CUDA kernels (cuBLAS/CUTLASS/nvjet, FlashAttention, Triton from inductor), aten operators
    ("matrix multiply", re.compile(r"gemm|cutlass|nvjet|sm\d+_xmma|cublas|triton_tem|aten::(mm|addmm|bmm|matmul|linear)$", re.I)),
    ("attention", re.compile(r"flash|fmha|attn|attention", re.I)),
    ("copies and indexing", re.compile(r"memcpy|memset|copy|index|gather|scatter|cat|catarray|aten::(where|to|_to_copy)$",
                                       re.I)),
    ("elementwise and norms", re.compile(r"elementwise|vectorized|reduce|norm|silu|triton_(poi|red|per)|aten::(mul|add|pow|mean|rsqrt|neg|sum)",
                                         re.I)),
)


def kind_of(name: str) -> str:
    """The kind of a kernel or operator, by its name.

    >>> kind_of("nvjet_tst_128x256_64x4_1x2_h_bz_coopB_NNT"), kind_of("void flash_fwd_kernel<...>")
    ('matrix multiply', 'attention')
    """
    return next((kind for kind, pattern in KINDS if pattern.search(name)), "other")


def device_times(profiler, cuda: bool) -> list[tuple[str, float]]:
    """``(name, seconds)`` of every device kernel (CUDA), or of every top-level-ish aten operator's own time (CPU)."""
    rows = []
    for event in profiler.key_averages():
        if cuda:
            seconds = getattr(event, "self_device_time_total", None)
            if seconds is None:
                seconds = event.self_cuda_time_total
            if event.device_type == torch.autograd.DeviceType.CUDA and seconds > 0:
                rows.append((event.key, seconds / 1e6))
        elif event.key.startswith("aten::") and event.self_cpu_time_total > 0:
            rows.append((event.key, event.self_cpu_time_total / 1e6))
    return sorted(rows, key=lambda row: -row[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", default=None, help="default: olmo-1b on GPU, small on CPU")
    parser.add_argument("--lengths", choices=["real", "long", "hh"], default="hh")
    parser.add_argument("--pairs", type=int, default=None, help="default: 1024 on GPU, 64 on CPU (16 with --quick)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--layout", default=None)
    parser.add_argument("--batch-tokens", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="ches.score(compile=True); the warm-up compiles")
    parser.add_argument("--trace", type=Path, default=None, help="also write a Chrome trace here (large)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/engine-profile.json"))
    args = parser.parse_args()

    cuda = args.device.startswith("cuda")
    shape = args.shape or ("olmo-1b" if cuda else "small")
    pairs = args.pairs or (1024 if cuda else (16 if args.quick else 64))
    dtype = torch.bfloat16 if cuda else torch.float32
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ROOT / "examples" / "tiny-hh-model")
    rows = hh_rows(pairs) if args.lengths == "hh" else synthetic_rows(pairs, args.lengths)
    model = build_model(shape, None, dtype, args.device)
    options = dict(progress=False, layout=args.layout, batch_tokens=args.batch_tokens, compile=args.compile)
    ches.score(rows[:8], model, tokenizer, **options)  # warm-up: kernels chosen, probes run

    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    clock = EngineClock(args.device)
    synchronize(args.device)
    start = time.perf_counter()
    with profile(activities=activities) as profiler:
        scored, info = ches.api.score_run(rows, model, tokenizer, **options)
        synchronize(args.device)
    wall = time.perf_counter() - start
    if args.trace:
        profiler.export_chrome_trace(str(args.trace))

    kernels = device_times(profiler, cuda)
    busy = sum(seconds for _, seconds in kernels)
    by_kind: dict[str, float] = {}
    for name, seconds in kernels:
        by_kind[kind_of(name)] = by_kind.get(kind_of(name), 0.0) + seconds
    sequence_pairs = [to_sequences(pair) for pair in
                      tokenize_pairs(to_pairs({key: [row[key] for row in rows] for key in rows[0]}), tokenizer)]
    useful = sum(len(chosen.input_ids) + len(rejected.input_ids) - chosen.start - 1  # each prompt once
                 for chosen, rejected in sequence_pairs)
    rate = matmul_rate(args.device, dtype)
    ideal = useful * 2 * non_embedding_parameters(model) / rate
    device_name = torch.cuda.get_device_name() if cuda else "CPU"
    result = {
        "device": device_name, "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "date": time.strftime("%Y-%m-%d"), "shape": shape, "lengths": args.lengths, "pairs": pairs,
        "layout_used": info.layout, "batch_tokens": args.batch_tokens, "compile": args.compile, "matmul_flops_measured": rate,
        "useful_tokens": useful, "call_seconds_profiled": wall, "engine_seconds_profiled": clock.seconds,
        "device_busy_seconds": busy, "device_idle_seconds_in_engine": max(clock.seconds - busy, 0.0) if cuda else None,
        "ideal_seconds_at_matmul_rate": ideal, "useful_mfu_of_engine": ideal / clock.seconds,
        "seconds_by_kind": dict(sorted(by_kind.items(), key=lambda item: -item[1])),
        "top_kernels": [{"name": name[:160], "seconds": seconds} for name, seconds in kernels[:25]],
    }
    print(f"{device_name} | {shape} | {args.lengths} | {pairs} pairs | layout {info.layout} | torch {torch.__version__}")
    print(f"call {wall:.2f} s (profiled), engine {clock.seconds:.2f} s, device busy {busy:.2f} s; "
          f"useful tokens at the measured matmul rate: {ideal:.2f} s (useful MFU of the engine {ideal / clock.seconds:.1%})")
    for kind, seconds in result["seconds_by_kind"].items():
        print(f"  {kind:24s} {seconds:8.3f} s  {seconds / busy:6.1%}")
    print("top kernels:")
    for item in result["top_kernels"][:12]:
        print(f"  {item['seconds']:8.3f} s  {item['name'][:110]}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
