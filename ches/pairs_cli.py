"""``ches pairs``: the command-line face of :func:`ches.pairs` (registered in :mod:`ches.cli`).

    ches pairs INPUT --model M --output OUT [--rule R] [--measure M] [--min-margin X] [--per-prompt K] [--seed S]
               [--columns prompt=...,responses=...,ratings=...] [--rating-field FIELD] [--overwrite]

The pairing flags come from :class:`~ches.options.PairOptions`, the scoring flags from
:class:`~ches.options.ScoreOptions` (the subset :data:`~ches.options.PAIR_SCORE_OPTIONS`) and the
``from_pretrained`` keywords, as for ``ches score``. Imports nothing heavy at module level, so
``ches --help`` stays fast. The prompts that gave no pair are listed, with the reason, under
``skipped_prompts`` in the output's ``.meta.json`` sidecar.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


def add_command(parser: argparse.ArgumentParser) -> None:
    """The flags of ``ches pairs``: the keyword arguments of :func:`ches.pairs`."""
    from .cli import _from_pretrained_flags, _model_flags, _option_flags, _overwrite_option
    from .options import PAIR_LAYOUTS, PAIR_SCORE_OPTIONS, PairOptions

    parser.add_argument("data", metavar="INPUT", help="rows with a prompt, responses and ratings (file, folder or Hub id)")
    _model_flags(parser, required=True)
    parser.add_argument("--output", "-o", type=Path,
                        help="where to write the pairs (.parquet/.jsonl/.json/.csv or a folder)")
    _option_flags(parser, options=PairOptions)
    parser.add_argument("--columns", metavar="NAME=COLUMN,...", help="e.g. prompt=question,responses=outs,ratings=scores")
    parser.add_argument("--rating-field", help="the completion field rated, for raw UltraFeedback rows (default "
                                               "overall_score)")
    _option_flags(parser, PAIR_SCORE_OPTIONS, choices={"layout": PAIR_LAYOUTS})
    _from_pretrained_flags(parser)
    _overwrite_option(parser)


def run_command(args):
    """``ches pairs``: check the output, build the pairs, hand the dataset and sidecar content to the CLI."""
    from .cli import Outcome, _check_outputs, _score_kwargs
    from .options import PairOptions
    from .pair_builder import pairs

    _check_outputs(args)
    rules = {item.name: getattr(args, item.name) for item in dataclasses.fields(PairOptions)}
    result = pairs(args.data, args.model, args.tokenizer, rating_field=args.rating_field, **rules,
                   **_score_kwargs(args))  # with --columns, parsed (ches.pairs' own columns=)
    meta = {"run": result.info.as_dict(), "rows_written": result.dataset.num_rows,
            "skipped_prompts": [dataclasses.asdict(item) for item in result.skipped],
            "unscored_responses": [dataclasses.asdict(item) for item in result.unscored]}
    listed = " (listed in the .meta.json sidecar)" if args.output else ""
    print(f"{result.dataset.num_rows} pairs from {result.info.prompts_paired} of {result.info.rows} prompts; "
          f"{len(result.skipped)} prompts skipped; {len(result.unscored)} responses could not be scored{listed}")
    if args.output:
        return Outcome(meta, dataset=result.dataset, output=args.output)
    return Outcome(meta)
