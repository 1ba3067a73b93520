"""Does ``ches validate`` fit the paper's models on one GPU? Memory and time of a default validate, by arithmetic.

    python benchmarks/validate_memory.py                    # the markdown table (docs/validation.md)
    python benchmarks/validate_memory.py --json out.json    # and every number as JSON
    python benchmarks/validate_memory.py --measure          # CPU peak memory of the bundled model's validate

Each subset run of ``ches validate`` is one run of ``ches.trl.DPOTrainer`` (TRL 1.16's DPOTrainer with
precompute_ref_log_probs semantics: no reference model, no reference pass; the reference log-probs are ches'
scoring pass). Full fine-tuning trains a fresh bf16 copy of the model; LoRA (``--lora-r R``: lora_alpha = 2R,
target_modules="all-linear") injects adapters into the same model. A batch is B pairs = 2B sequences of at most
T tokens, chosen and rejected in one forward. The script computes, from the model's shape alone (no torch):

- the exact parameter count P (checked against the published totals and, in tests/test_validate_memory.py,
  against transformers' own models) and the LoRA trainable count;
- the GPU memory of one subset run, term by term (weights, gradients, AdamW states, adapters, activations with
  and without gradient checkpointing, TRL's fused LM head, the kept scorer copy where it applies);
- the FLOPs and an estimated wall time of a default validate (scoring pass + 9 subsets x 2 seeds of DPO +
  one forward per run to measure the trained log-probabilities).

Every assumption is a named constant below; docs/validation.md ("Memory and time on one GPU") prints the table.
``--measure`` runs ``ches validate`` on the bundled model (examples/tiny-hh-model) in one child process per
configuration (full fine-tuning, ``--lora-r 8``) and reports each child's peak RSS and wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GB = 1e9  # the table's unit: decimal gigabytes (an "80 GB" GPU holds 80 x 1e9 bytes: 81,559 MiB on an H100 80GB)

# --- The models' shapes, from their public Hugging Face config.json files. ------------------------------------------
# allenai/OLMo-1B-hf: hidden_size 2048, num_hidden_layers 16, num_attention_heads 16 (= num_key_value_heads),
# intermediate_size 8192, vocab_size 50304, tie_word_embeddings true, hidden_act silu (SwiGLU MLP). Verified against
# stored copies of that config.json (fine-tunes whose _name_or_path is allenai/OLMo-1B-hf, e.g.
# onnx-community/OLMo-1B-hf, kykim0/OLMo-1B-SFT-hf; the original repository's file itself was not in the index).
# OLMo (v1) normalizes with a LayerNorm without parameters (transformers' OlmoLayerNorm), so its norms add none.
# Published total: 1.18B parameters (OLMo paper, Groeneveld et al. 2024, table 1: "1B ... 1.18B").
# meta-llama/Meta-Llama-3-8B: hidden_size 4096, num_hidden_layers 32, num_attention_heads 32,
# num_key_value_heads 8, intermediate_size 14336, vocab_size 128256, tie_word_embeddings false, RMSNorm with a weight.
# Verified against stored copies of that config.json (e.g. jerryzh168/llama3-8B and NousResearch's duplicate of
# Meta-Llama-3-8B-Instruct, same shape; the gated original was not in the index). Published total: 8.03B.
SHAPES: dict[str, dict] = {
    "OLMo-1B": dict(hidden=2048, layers=16, heads=16, kv_heads=16, intermediate=8192, vocab=50304, tied=True,
                    norm_weights=False, published=1.18e9),
    "Llama-3-8B": dict(hidden=4096, layers=32, heads=32, kv_heads=8, intermediate=14336, vocab=128256, tied=False,
                       norm_weights=True, published=8.03e9),
}

# --- What a default `ches validate` runs (ches.options / the issue-31 protocol). -----------------------------------
N_PAIRS = 64          # --n: pairs per subset
POOL_FACTOR = 20      # the scored pool: 20 x n rows
SUBSETS = 9           # ln_ches / ches / edit_distance / length difference, lowest and highest, plus one random
SEEDS = 2
EPOCHS = 1
BATCH_PAIRS = 8       # per_device_train_batch_size: pairs per step (2 x sequences per forward)
MAX_LENGTH = 512      # tokens per sequence, prompt + completion (keep_start)

# --- Byte sizes. --------------------------------------------------------------------------------------------------
BF16 = 2
FP32 = 4

# --- TRL 1.16's fused LM head (trl.trainer.utils.add_fused_lm_head, trl.kernels.chunked_logprob): the training
# forward never materializes the (2B, T, V) logits; it projects 4,096 tokens x 32,768 vocabulary columns at a time
# and, in the backward, accumulates the hidden-state gradient (and the LM head's weight gradient when it trains)
# in float32.
FUSED_TOKEN_TILE = 4096
FUSED_VOCAB_TILE = 32768

# --- LoRA's extra saved input: peft casts each adapted linear's input to the adapters' float32 (LoraConfig's
# autocast_adapter_dtype keeps them float32); under the bf16 autocast of TRL's default DPOConfig(bf16=True)
# lora_A recasts it to bf16 and saves that copy (and lora_B its r-wide bf16 input). With bf16=False: 4 bytes.
LORA_SAVED_BYTES = BF16

# --- Fixed overhead: the CUDA context, cuBLAS/flash workspaces, allocator fragmentation (an assumption). ---------
OVERHEAD_GB = 2.0

# --- Throughput assumptions for the time estimate. -----------------------------------------------------------------
PEAK_BF16_FLOPS = 989e12    # H100 / H200 SXM dense bf16 tensor-core peak (NVIDIA data sheets)
TRAIN_MFU = 0.40            # assumed model-FLOPs utilization of a TRL DPO step at batch 8 x 2 sequences
# Measured ches.score throughput on one H200, bf16, default layout (docs/performance.md, "GPU results"):
# OLMo-1B shape on hh-rlhf, all 2,312 pairs, the whole call: 192,196 tokens/s; Llama-3-8B shape (2k-token
# completions): 31,584 tokens/s (56.5 % MFU against the measured 747-781 TFLOP/s matmul rate).
SCORING_TOKENS_PER_S = {"OLMo-1B": 192_196, "Llama-3-8B": 31_584}
# Mean tokens per sequence of hh-rlhf rows: 378,189 tokens / (1,024 pairs x 2) = 185 (docs/performance.md, the
# H200 hh-rlhf rows); the upper bound is max_length (every sequence full, or padded to it).
MEAN_TOKENS = 185
DISK_BYTES_PER_S = 2e9      # reloading a fresh copy for each full fine-tuning run (local NVMe; an assumption)
GPU_MEMORY_GB = 80.0
TIGHT = 0.9                 # a total above 90 % of the GPU is "tight": the estimate's slack is about that much


@dataclass(frozen=True)
class Shape:
    """A decoder-only transformer with GQA attention and a SwiGLU MLP (Llama/OLMo layout)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    norm_weights: bool
    published: float = 0.0

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def linears(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of each linear layer of one decoder layer: what target_modules="all-linear" adapts.

        >>> Shape(64, 2, 4, 2, 128, 100, False, True).linears()["k_proj"]
        (64, 32)
        """
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {"q_proj": (self.hidden, q), "k_proj": (self.hidden, kv), "v_proj": (self.hidden, kv),
                "o_proj": (q, self.hidden), "gate_proj": (self.hidden, self.intermediate),
                "up_proj": (self.hidden, self.intermediate), "down_proj": (self.intermediate, self.hidden)}


def shape(name: str) -> Shape:
    """The named model's shape.

    >>> shape("Llama-3-8B").head_dim
    128
    """
    return Shape(**SHAPES[name])


def parameter_count(s: Shape) -> dict[str, int]:
    """Parameters by part, exactly as transformers builds the model: embeddings, per-layer linears, norms, lm_head.

    >>> parameter_count(Shape(64, 2, 4, 2, 128, 100, False, True))["total"]
    86848
    """
    per_layer_linear = sum(d_in * d_out for d_in, d_out in s.linears().values())
    norms = (2 * s.layers + 1) * s.hidden if s.norm_weights else 0
    parts = {"embeddings": s.vocab * s.hidden, "layers": s.layers * per_layer_linear, "norms": norms,
             "lm_head": 0 if s.tied else s.vocab * s.hidden}
    parts["total"] = sum(parts.values())
    # the weights a forward multiplies by: all but the embedding lookup (tied: the embedding is the LM head)
    parts["matmul"] = parts["total"] - (0 if s.tied else parts["embeddings"]) - norms
    return parts


def lora_parameter_count(s: Shape, r: int) -> int:
    """Trainable LoRA parameters: r x (d_in + d_out) for every linear layer of every decoder layer (lm_head is not
    targeted by "all-linear").

    >>> lora_parameter_count(Shape(64, 2, 4, 2, 128, 100, False, True), 8)
    16384
    """
    return s.layers * sum(r * (d_in + d_out) for d_in, d_out in s.linears().values())


def norm_bytes_per_token(s: Shape, frozen: bool) -> int:
    """Bytes one norm keeps per token: its float32 input (4h) and float32 statistics (RMSNorm: 1/rms, 4 B;
    LayerNorm: mean and 1/std, 8 B); when it and the next linear train, also the bf16 normalized value that the
    weight multiplies (RMSNorm with a weight, 2h) and the bf16 output that the linear keeps for its weight gradient
    (2h). Frozen (LoRA), neither the weight product nor the frozen linear keeps anything.

    >>> norm_bytes_per_token(shape("Llama-3-8B"), frozen=False), norm_bytes_per_token(shape("Llama-3-8B"), frozen=True)
    (32772, 16388)
    """
    statistics = FP32 if s.norm_weights else 2 * FP32
    kept = 0 if frozen else (2 * BF16 if s.norm_weights else BF16) * s.hidden
    return FP32 * s.hidden + statistics + kept


def activation_bytes_per_token_layer(s: Shape, lora_r: int | None, lora_saved_bytes: int = LORA_SAVED_BYTES) -> int:
    """Bytes one token keeps for the backward in one decoder layer, bf16 weights, eager PyTorch, flash/SDPA attention.

    The tensors autograd saves (the count of Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
    Transformer Models", redone for this layout: no dropout, no attention-probability matrix, SwiGLU, GQA, HF's
    float32 norms), checked tensor by tensor against torch's saved-tensor hooks in tests/test_validate_memory.py:
    2 norms (:func:`norm_bytes_per_token`); attention keeps q, k, v after RoPE, its output and the float32
    log-sum-exp per head (2 (q + 2 kv) + 2 q + 4 heads); the MLP keeps gate, SiLU(gate) and up (3 x 2I) and, when
    down_proj trains, their product (2I). LoRA (every base weight frozen) adds, per adapted linear, the copy of its
    input that lora_A keeps (peft casts it to the adapters' float32; the bf16 autocast recasts it) and the adapter's
    r-wide middle: lora_saved_bytes x (d_in + r).

    >>> activation_bytes_per_token_layer(shape("Llama-3-8B"), None)
    200840
    """
    frozen = lora_r is not None
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    attention = BF16 * (q + 2 * kv) + BF16 * q + FP32 * s.heads
    mlp = (3 if frozen else 4) * BF16 * s.intermediate
    lora = 0 if lora_r is None else sum(lora_saved_bytes * (d_in + lora_r) for d_in, _ in s.linears().values())
    return 2 * norm_bytes_per_token(s, frozen) + attention + mlp + lora


@dataclass(frozen=True)
class Setting:
    """One row of the table: how the subset run trains."""

    model: str
    method: str                 # "full" or "lora"
    checkpointing: bool
    lora_r: int = 8
    batch_pairs: int = BATCH_PAIRS
    max_length: int = MAX_LENGTH


def memory_terms(setting: Setting) -> dict[str, float]:
    """GPU bytes of one subset run's training step, by term (the peak is the backward of a full batch).

    >>> terms = memory_terms(Setting("Llama-3-8B", "lora", True))
    >>> round(terms["weights"] / 1e9, 2), round(terms["total"] / 1e9, 1)
    (16.06, 24.6)
    """
    s = shape(setting.model)
    params = parameter_count(s)["total"]
    tokens = 2 * setting.batch_pairs * setting.max_length       # chosen and rejected in one forward
    lora = setting.method == "lora"
    trainable = lora_parameter_count(s, setting.lora_r) if lora else params
    per_layer = activation_bytes_per_token_layer(s, setting.lora_r if lora else None)
    # the final norm; TRL's fused LM head keeps its output (the last hidden states, 2h) even when frozen
    final_norm = norm_bytes_per_token(s, frozen=lora) + (BF16 * s.hidden if lora else 0)
    if setting.checkpointing:   # each layer keeps its bf16 input; the backward recomputes one layer at a time
        activations = tokens * (s.layers * BF16 * s.hidden + per_layer + final_norm)
    else:
        activations = tokens * (s.layers * per_layer + final_norm)
    terms = {
        "weights": BF16 * params,
        # float32 adapters and the bf16 copies autocast caches of them for the step
        "adapters": (FP32 + BF16) * trainable if lora else 0,
        "gradients": FP32 * trainable if lora else BF16 * params,
        "adamw": 2 * FP32 * trainable if lora else 2 * BF16 * params,
        "activations": activations,
        # TRL's fused LM head: the float32 hidden-state gradient, one projection tile, and (full FT) the float32
        # weight-gradient accumulator of the LM head (the embedding when tied)
        "lm_head": FP32 * tokens * s.hidden + BF16 * FUSED_TOKEN_TILE * FUSED_VOCAB_TILE
                   + (0 if lora else FP32 * s.vocab * s.hidden),
        # an allowance for the backward's working set: one layer's activation gradients live at once
        "backward_workspace": tokens * activation_bytes_per_token_layer(s, None),
        "overhead": OVERHEAD_GB * GB,
    }
    terms["total"] = sum(terms.values())
    # full FT of a model passed in memory keeps the user's (scorer's) copy beside the trained one
    terms["scorer_copy"] = 0 if lora else BF16 * params
    terms["total_with_scorer_copy"] = terms["total"] + terms["scorer_copy"]
    # what TRL's fused head saves: the (2B, T, V) logits in float32, as a plain forward + log_softmax would hold
    terms["materialized_logits"] = FP32 * tokens * s.vocab
    # the fp32-master alternative (mixed precision: fp32 master weights + fp32 exp_avg + exp_avg_sq), full FT
    terms["fp32_master_adamw"] = 3 * FP32 * params if not lora else 0
    return terms


def validate_flops(setting: Setting, mean_tokens: int) -> dict[str, float]:
    """FLOPs of a default validate: 2 P t for a forward, 6 P t for a full-FT step, 4 P t for LoRA (no weight
    gradients for frozen weights), +2 P t when checkpointing recomputes the forward; P = the multiplied weights.

    >>> flops = validate_flops(Setting("OLMo-1B", "full", False), 185)
    >>> flops["runs"], flops["scoring_tokens"]
    (18, 473600)
    """
    p = parameter_count(shape(setting.model))["matmul"]
    pool_tokens = POOL_FACTOR * N_PAIRS * 2 * mean_tokens
    run_tokens = N_PAIRS * 2 * mean_tokens
    step = (4 if setting.method == "lora" else 6) + (2 if setting.checkpointing else 0)
    runs = SUBSETS * SEEDS
    return {"scoring_tokens": pool_tokens, "run_tokens": run_tokens, "runs": runs,
            "scoring": 2 * p * pool_tokens, "training_per_run": step * p * run_tokens * EPOCHS,
            "after_forward_per_run": 2 * p * run_tokens}


def validate_seconds(setting: Setting, mean_tokens: int) -> dict[str, float]:
    """Estimated wall time of a default validate on one H100/H200: the scoring at ches' measured rate, the DPO
    runs at TRAIN_MFU of the bf16 peak, and (full FT) one reload of the weights per run.

    >>> round(validate_seconds(Setting("Llama-3-8B", "lora", False), 185)["total"])
    64
    """
    flops = validate_flops(setting, mean_tokens)
    rate = TRAIN_MFU * PEAK_BF16_FLOPS
    params = parameter_count(shape(setting.model))["total"]
    scoring = flops["scoring_tokens"] / SCORING_TOKENS_PER_S[setting.model]
    runs = flops["runs"] * (flops["training_per_run"] + flops["after_forward_per_run"]) / rate
    reload = 0.0 if setting.method == "lora" else flops["runs"] * BF16 * params / DISK_BYTES_PER_S
    return {"scoring": scoring, "runs": runs, "reload": reload, "total": scoring + runs + reload}


def settings() -> list[Setting]:
    """The table's rows: each model x {full FT, LoRA r=8} x {no checkpointing, gradient checkpointing}."""
    return [Setting(model, method, checkpointing) for model in SHAPES for method in ("full", "lora")
            for checkpointing in (False, True)]


def table() -> tuple[str, list[dict]]:
    """The markdown table and its rows as dicts (the --json content)."""
    header = ("| model | method | grad. ckpt | weights | adapters | grads | AdamW | activations | LM head | "
              "bwd workspace | overhead | **total GB** | fits 80 GB | + scorer copy | validate, min (T=185 / 512) |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    rows = []
    for setting in settings():
        terms = memory_terms(setting)
        times = {t: validate_seconds(setting, t) for t in (MEAN_TOKENS, setting.max_length)}
        gb = {key: value / GB for key, value in terms.items()}
        fits = gb["total"] <= GPU_MEMORY_GB
        verdict = ("yes" if gb["total"] <= TIGHT * GPU_MEMORY_GB else "tight") if fits else "**no**"
        method = "full FT" if setting.method == "full" else f"LoRA r={setting.lora_r}"
        copy = "—" if setting.method == "lora" else (
            f"{gb['total_with_scorer_copy']:.1f} ({'fits' if gb['total_with_scorer_copy'] <= GPU_MEMORY_GB else 'no'})")
        lines.append(
            f"| {setting.model} | {method} | {'yes' if setting.checkpointing else 'no'} | {gb['weights']:.1f} | "
            f"{gb['adapters']:.2f} | {gb['gradients']:.2f} | {gb['adamw']:.2f} | {gb['activations']:.1f} | "
            f"{gb['lm_head']:.2f} | {gb['backward_workspace']:.1f} | {gb['overhead']:.0f} | **{gb['total']:.1f}** | "
            f"{verdict} | {copy} | "
            f"{times[MEAN_TOKENS]['total'] / 60:.1f} / {times[setting.max_length]['total'] / 60:.1f} |")
        rows.append({"setting": asdict(setting), "bytes": terms, "fits_80gb": fits,
                     "seconds": {str(t): value for t, value in times.items()},
                     "flops": validate_flops(setting, MEAN_TOKENS)})
    return "\n".join(lines), rows


def shapes_summary() -> list[dict]:
    """Each model's exact parameter count, its published total, and the LoRA r=8 trainable count."""
    out = []
    for name in SHAPES:
        s = shape(name)
        count = parameter_count(s)
        out.append({"model": name, "shape": asdict(s), "parameters": count, "published": s.published,
                    "relative_to_published": count["total"] / s.published - 1,
                    "lora_r8_trainable": lora_parameter_count(s, 8),
                    "activation_bytes_per_token_layer": activation_bytes_per_token_layer(s, None),
                    "activation_bytes_per_token_layer_lora_r8": activation_bytes_per_token_layer(s, 8)})
    return out


def measure(n: int, pool: int | None, lora_r: int, configurations: list[str], workdir: Path,
            extra: dict[str, list[str]] | None = None) -> list[dict]:
    """Run ``ches validate`` on the bundled model once per configuration, each in its own child process; return
    each child's peak RSS (os.wait4's ru_maxrss, the child's own) and wall time."""
    data = ROOT / "examples" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
    results = []
    for configuration in configurations:
        output = workdir / f"validate-{configuration}.json"
        command = [sys.executable, "-m", "ches", "validate", str(data), "--model", str(ROOT / "examples" / "tiny-hh-model"),
                   "--n", str(n), "--output", str(output), "--overwrite", "--no-progress"]
        command += ["--pool", str(pool)] if pool else []
        command += ["--lora-r", str(lora_r)] if configuration == "lora" else []
        command += (extra or {}).get(configuration, [])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        started = time.perf_counter()
        child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        stdout = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        peak_mb = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024) / 1e6   # Linux reports KiB
        results.append({"configuration": configuration, "command": " ".join(command), "returncode": child.returncode,
                        "peak_rss_mb": peak_mb, "seconds": seconds, "output_tail": stdout[-2000:]})
        print(f"{configuration}: exit {child.returncode}, peak RSS {peak_mb:,.0f} MB, {seconds:,.1f} s", flush=True)
        if child.returncode:
            print(stdout[-2000:], file=sys.stderr)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write every number as JSON")
    parser.add_argument("--measure", action="store_true", help="measure the bundled model's CPU peak memory")
    parser.add_argument("--n", type=int, default=N_PAIRS, help="--measure: ches validate --n")
    parser.add_argument("--pool", type=int, help="--measure: ches validate --pool (default: its own, 20 x n)")
    parser.add_argument("--lora-r", type=int, default=8, help="--measure: the LoRA rank of the lora configuration")
    parser.add_argument("--configurations", default="full,lora",
                        help="--measure: comma-separated, of full (full fine-tuning) and lora (--lora-r)")
    parser.add_argument("--full-args", default="", help="--measure: more ches validate flags for the full configuration")
    parser.add_argument("--lora-args", default="", help="--measure: more ches validate flags for the lora configuration")
    parser.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "results" / "validate-memory",
                        help="--measure: where the validate outputs go")
    args = parser.parse_args(argv)
    markdown, rows = table()
    result = {"assumptions": {
        "n": N_PAIRS, "pool": POOL_FACTOR * N_PAIRS, "subsets": SUBSETS, "seeds": SEEDS, "epochs": EPOCHS,
        "batch_pairs": BATCH_PAIRS, "max_length": MAX_LENGTH, "mean_tokens": MEAN_TOKENS,
        "peak_bf16_flops": PEAK_BF16_FLOPS, "train_mfu": TRAIN_MFU, "scoring_tokens_per_s": SCORING_TOKENS_PER_S,
        "disk_bytes_per_s": DISK_BYTES_PER_S, "overhead_gb": OVERHEAD_GB, "gpu_memory_gb": GPU_MEMORY_GB},
        "models": shapes_summary(), "rows": rows}
    for model in result["models"]:
        count = model["parameters"]
        print(f"{model['model']}: P = {count['total']:,} ({count['total'] / 1e9:.3f}B; published "
              f"{model['published'] / 1e9:.2f}B, {model['relative_to_published']:+.2%}); LoRA r=8 trainable "
              f"{model['lora_r8_trainable']:,}; activations {model['activation_bytes_per_token_layer']:,} B per token "
              f"per layer ({model['activation_bytes_per_token_layer_lora_r8']:,} with LoRA r=8)")
    print()
    print(markdown)
    if args.measure:
        args.workdir.mkdir(parents=True, exist_ok=True)
        configurations = [c.strip() for c in args.configurations.split(",") if c.strip()]
        extra = {"full": shlex.split(args.full_args), "lora": shlex.split(args.lora_args)}
        result["measured"] = measure(args.n, args.pool, args.lora_r, configurations, args.workdir, extra)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(m["returncode"] == 0 for m in result.get("measured", [])) else 1


if __name__ == "__main__":
    sys.exit(main())
