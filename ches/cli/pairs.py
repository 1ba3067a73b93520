"""``ches pairs``: the command-line face of :func:`ches.pairs` (in :data:`ches.cli.COMMANDS`, which imports this
module only when the command's flags are built or it runs; the flags both share live in :mod:`ches.cli.flags`, so
this module never imports :mod:`ches.cli`).

    ches pairs INPUT --model M --output OUT [--rule R] [--measure M] [--min-margin X] [--per-prompt K] [--seed S]
               [--columns prompt=...,responses=...,ratings=...] [--rating-field FIELD] [--overwrite]

The pairing flags come from :class:`~ches.options.PairOptions` and :class:`~ches.options.PairInputOptions`,
the scoring flags from :class:`~ches.options.ScoreOptions` (the subset :data:`~ches.options.PAIR_SCORE_OPTIONS`)
and the ``from_pretrained`` keywords, as for ``ches score`` (all through :mod:`ches.cli.flags`). Imports nothing heavy at module level, so
``ches --help`` stays fast. The prompts that gave no pair are listed, with the reason, under
``skipped_prompts`` in the output's ``.meta.json`` sidecar, the responses that could not be scored under
``unscored_responses``.
"""

from __future__ import annotations

import argparse

from . import flags


def add_command(parser: argparse.ArgumentParser) -> None:
    """The flags of ``ches pairs``: the keyword arguments of :func:`ches.pairs`."""
    from ..options import PAIR_LAYOUT_DEFAULT, PAIR_LAYOUTS, PAIR_SCORE_OPTIONS, PairInputOptions, PairOptions

    flags.add_data(parser, "INPUT", "rows with a prompt, responses and ratings (file, folder or Hub id)")
    flags.add_model(parser, required=True)
    flags.add_options(parser, PairOptions)
    flags.add_options(parser, PairInputOptions)
    flags.add_scoring(parser, PAIR_SCORE_OPTIONS, choices={"layout": PAIR_LAYOUTS},
                helps={"layout": f"how sequences are batched (default: {PAIR_LAYOUT_DEFAULT})"})
    flags.add_output(parser, "where to write the pairs (.parquet/.jsonl/.json/.csv or a folder)")


def run_command(args) -> flags.Outcome:
    """``ches pairs``: check the output, build the pairs, hand the dataset and sidecar content to the CLI."""
    from ..builder.api import describe_run, pairs_run

    flags.check_outputs(args)
    built, info = pairs_run(args.data, args.model, args.tokenizer, chunk_sizes=args.chunk_sizes, **call_kwargs(args))
    run = info.as_dict()
    meta = {"run": {name: value for name, value in run.items() if name not in LISTED}, "rows_written": built.num_rows,
            **{name: run[name] for name in LISTED}}
    listed = " (listed in the .meta.json sidecar)" if args.output and (info.skipped_prompts or info.unscored_responses) else ""
    print(describe_run(info, reasons=False).removeprefix("ches.pairs: ") + listed)
    if args.output:
        return flags.Outcome(meta, dataset=built, output=args.output)
    return flags.Outcome(meta)


def call_kwargs(args) -> dict:
    """The keywords ``ches pairs`` passes to :func:`ches.pairs_run` (and :func:`ches.options.pairs_options` checks)."""
    from ..options import PAIR_SCORE_OPTIONS, PairInputOptions, PairOptions

    return {**flags.option_values(args, PairOptions), **flags.option_values(args, PairInputOptions),
            **flags.score_kwargs(args, PAIR_SCORE_OPTIONS)}


#: the lists of the run's record that the sidecar keeps at its top level, next to the run
LISTED = ("skipped_prompts", "unscored_responses")
