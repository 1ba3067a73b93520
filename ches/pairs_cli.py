"""``ches pairs``: the command-line face of :func:`ches.pairs` (registered in :mod:`ches.cli`).

    ches pairs INPUT --model M --output OUT [--rule R] [--measure M] [--min-margin X] [--per-prompt K] [--seed S]
               [--columns prompt=...,responses=...,ratings=...] [--rating-field overall_score] [--overwrite]

Imports nothing heavy at module level, so ``ches --help`` stays fast. The prompts that gave no pair are
listed, with the reason, under ``skipped_prompts`` in the output's ``.meta.json`` sidecar.
"""

from __future__ import annotations

import argparse
import dataclasses

def add_command(parser: argparse.ArgumentParser) -> None:
    """The flags of ``ches pairs``: the keyword arguments of :func:`pairs`."""
    parser.add_argument("data", metavar="INPUT", help="rows with a prompt, responses and ratings (file, folder or Hub id)")
    parser.add_argument("--model", "-m", required=True, help="local folder or Hub id of a causal LM")
    parser.add_argument("--tokenizer", help="tokenizer folder or Hub id (default: the model's)")
    parser.add_argument("--output", "-o", help="where to write the pairs (.parquet/.jsonl/.json/.csv or a folder)")
    parser.add_argument("--rule", default="min_ches", choices=["min_ches", "all_min_ches", "max_margin", "random"], help="how pairs are chosen (default min_ches)")
    parser.add_argument("--measure", default="ln_ches", choices=["ln_ches", "ches"])
    parser.add_argument("--min-margin", type=float, default=0.0, help="smallest rating gap of a pair (default 0)")
    parser.add_argument("--per-prompt", type=int, default=1, help="pairs kept per prompt, at most (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --rule random (default 0)")
    parser.add_argument("--columns", metavar="NAME=COLUMN,...", help="e.g. prompt=question,responses=outs,ratings=scores")
    parser.add_argument("--rating-field", default="overall_score", help="UltraFeedback completion field (default overall_score)")
    parser.add_argument("--split", help="split of a DatasetDict / Hub dataset")
    parser.add_argument("--max-length", type=int, help="keep the first N tokens of each sequence (TRL keep_start)")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--device", help="e.g. cuda, cpu (default: CUDA when available)")
    parser.add_argument("--batch-tokens", type=int, help="token slots per forward batch")
    parser.add_argument("--layout", choices=["prefix_shared", "packed", "padded"], help="default prefix_shared (probed on the model)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow custom model code from the Hub")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output (and its sidecar)")


def run_command(args):
    """``ches pairs``: check the output, build the pairs, hand the dataset and sidecar content to the CLI."""
    from pathlib import Path

    from .cli import Outcome, _check_outputs
    from .inputs import parse_columns
    from .pair_builder import pairs

    args.output = Path(args.output) if args.output else None
    _check_outputs(args)
    result = pairs(args.data, args.model, args.tokenizer, rule=args.rule, measure=args.measure,
                   min_margin=args.min_margin, per_prompt=args.per_prompt, seed=args.seed,
                   columns=parse_columns(args.columns) if args.columns else None, rating_field=args.rating_field,
                   split=args.split, max_length=args.max_length, dtype=args.dtype, device=args.device,
                   batch_tokens=args.batch_tokens, layout=args.layout, trust_remote_code=args.trust_remote_code)
    meta = {"run": result.info, "rows_written": result.dataset.num_rows,
            "skipped_prompts": [dataclasses.asdict(item) for item in result.skipped]}
    print(f"{result.dataset.num_rows} pairs from {result.info['prompts_paired']} of {result.info['rows']} prompts; "
          f"{len(result.skipped)} prompts skipped" + (" (listed in the .meta.json sidecar)" if args.output else ""))
    if args.output:
        return Outcome(meta, dataset=result.dataset, output=args.output)
    return Outcome(meta)
