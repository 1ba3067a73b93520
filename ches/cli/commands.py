"""The ``ches`` command: a thin layer that turns flags into the Python API's keyword arguments.

    ches score  DATA --model M [--split S] [--output FILE] [--max-length N] [--dtype D] [--device D] [--batch-tokens N]
    ches filter DATA_OR_SCORES [--model M] [--quantile Q | --max-score T | --keep N | --around Q] [--measure M]
                [--drop-flags FLAG,...] [--output FILE] [--no-scores]
    ches report SCORES --output report.html
    ches validate DATA --model M [--n 64] [--steps 5] [--lr 1e-6] [--beta 0.1] [--output results.json]
    ches pairs  DATA --model M [--rule min_ches] [--measure ln_ches] [--output FILE]

Each command's flags come from its options dataclass (:mod:`ches.options`, via :mod:`ches.cli.flags`). Every
file written gets a ``<file>.meta.json`` sidecar. Errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import sys
import time
from typing import TYPE_CHECKING

from .. import __version__
from ..errors import ChesError, one_line
from .flags import (
    Outcome,
    Parser,
    add_data,
    add_model,
    add_options,
    add_output,
    add_scoring,
    check_outputs,
    check_paths_first,
    input_metadata,
    option_values,
    rows_written,
    score_kwargs,
)

if TYPE_CHECKING:
    from ..run.chunk_loop import ChunkSizes


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ches", description="CHES scores for preference data, on the tokens DPO trains on.")
    parser.add_argument("--version", action="version", version=f"ches {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, (text, add, _) in COMMANDS.items():
        add(commands.add_parser(name, help=text))
    return parser


def _pairs_command(pairs: argparse.ArgumentParser) -> None:
    from .pairs import add_command

    add_command(pairs)


def run_pairs(args) -> Outcome:
    from .pairs import run_command

    return run_command(args)


def _score_command(score: argparse.ArgumentParser) -> None:
    add_data(score, "DATA", "file (.jsonl/.json/.parquet/.csv[.gz]), save_to_disk folder, or Hub id")
    add_model(score, required=True)
    add_scoring(score)
    add_output(score, "where to write the scored rows (.parquet/.jsonl/.json/.csv or a folder)")


def _filter_command(filter_: argparse.ArgumentParser) -> None:
    from ..options import FilterOptions

    add_data(filter_, "DATA_OR_SCORES", "raw data (needs --model) or what 'ches score' wrote (a file or folder)")
    add_model(filter_, required=False)
    add_scoring(filter_)
    add_options(filter_, FilterOptions)
    add_output(filter_, "where to write the kept rows")


def _validate_command(validate: argparse.ArgumentParser) -> None:
    from ..options import ValidateOptions

    add_data(validate, "DATA", "preference data (as for 'ches score')")
    add_model(validate, required=True)
    add_options(validate, ValidateOptions)
    add_output(validate, "write the full results as JSON", dataset=False, suffixes=(".json",))


def _audit_command(audit: argparse.ArgumentParser) -> None:
    from ..options import AUDIT_SCORE_OPTIONS, AuditOptions

    add_data(audit, "SCORES", "what 'ches score --logps' wrote for the training pairs, before training")
    add_model(audit, required=True)
    add_options(audit, AuditOptions)
    add_scoring(audit, AUDIT_SCORE_OPTIONS)
    add_output(audit, "where to write the audited rows (.parquet/.jsonl/.json/.csv or a folder)")
    audit.add_argument("--next-round", action="store_true",
                       help="write the rows as the trained model scores them (its scores and log-probs, recorded as "
                            "its reference) instead of the audit columns: the data of a second DPO round from the "
                            "trained model")


def _report_command(report: argparse.ArgumentParser) -> None:
    from ..options import ReportOptions

    add_data(report, "SCORES", "what 'ches score' wrote (a file or folder)")
    add_options(report, ReportOptions)
    add_output(report, "the .html file to write", required=True, dataset=False, suffixes=(".html", ".htm"))


def run_score(args) -> Outcome:
    from ..api import score_run
    from ..data.export import to_json
    from ..scores.stats import summarize

    check_outputs(args)
    given = score_kwargs(args)
    scored, info = score_run(args.data, args.model, args.tokenizer, overwrite=args.overwrite,
                             chunk_sizes=args.chunk_sizes, **given)
    embeddings = given.get("save_embeddings")
    meta = {"run": info.as_dict(), "embeddings": str(embeddings) if embeddings else None, **rows_written(scored)}
    if args.output:
        return Outcome(meta, dataset=scored, output=args.output)
    from ..data.columns import SCORE_COLUMNS
    from ..data.inputs import column

    for part in scored.values() if hasattr(scored, "values") else [scored]:  # the score columns only: fast
        print(to_json(summarize({name: column(part, name) for name in SCORE_COLUMNS})))
    return Outcome(meta)


def run_filter(args) -> Outcome:
    from ..filtering import filter_run
    from ..options import FILTER_RULES

    check_outputs(args)
    call = _filter_call(args)
    kept, cut = filter_run(args.data, **call)
    rules = call["options"]
    meta = {"measure": rules.measure, "rule": {name: getattr(rules, name) for name in (*FILTER_RULES, "window")},
            "drop_flags": list(rules.drop_flags),
            **({"cut_per_split": {name: part.as_dict() for name, part in cut.items()}} if isinstance(cut, dict)
               else {"cut": cut.as_dict()}), **rows_written(kept)}
    if args.output:
        return Outcome(meta, dataset=kept, output=args.output)
    per_split = meta.get("rows_written_per_split")
    detail = f" ({', '.join(f'{name}: {count}' for name, count in per_split.items())})" if per_split else ""
    print(f"kept {meta['rows_written']} rows{detail} (pass --output to write them)")
    return Outcome(meta)


def _filter_call(args) -> dict:
    """The keywords ``ches filter`` passes to :func:`ches.filter_run` (``--overwrite`` is the output's without
    ``--model``): the API refuses the scoring flags that would do nothing (:func:`ches.options.scoring_options`)."""
    from ..options import FilterOptions

    return {"options": FilterOptions(**option_values(args, FilterOptions)), "model": args.model,
            "tokenizer": args.tokenizer, **score_kwargs(args), **({"overwrite": args.overwrite} if args.model else {})}


def _audit_call(args) -> dict:
    """The keywords ``ches audit`` passes to :func:`ches.audit`."""
    from ..options import AUDIT_SCORE_OPTIONS, AuditOptions

    return {**option_values(args, AuditOptions), **score_kwargs(args, AUDIT_SCORE_OPTIONS)}


def check_options(args) -> None:
    """Every option value of ``args.command`` checked before the heavy imports (a ``--quantile 95`` fails at once),
    by the function of :mod:`ches.options` that the command's API function checks its keywords with, given the
    keywords the command passes it: the command line and Python refuse the same values with the same message."""
    from .. import options as o
    from .pairs import call_kwargs

    checks = {"score": lambda: o.ScoreOptions.from_kwargs(**score_kwargs(args)),
              "filter": lambda: o.filter_options(**_filter_call(args)),
              "validate": lambda: o.ValidateOptions.from_kwargs(**option_values(args, o.ValidateOptions)),
              "report": lambda: o.ReportOptions(**option_values(args, o.ReportOptions)),
              "pairs": lambda: o.pairs_options(**call_kwargs(args)),
              "audit": lambda: o.audit_options(**_audit_call(args))}
    checks[args.command]()


def run_report(args) -> Outcome:
    from ..data.columns import check_score_columns
    from ..data.inputs import load_data
    from ..evaluate.results import load_validation
    from ..options import ReportOptions
    from ..report import ranked_by, write_report

    options = ReportOptions(**option_values(args, ReportOptions))
    check_outputs(args)
    validation = load_validation(options.validation) if options.validation else None
    data = load_data(args.data, options.split)  # every split, one section each, without --split
    for name, part in data.items() if hasattr(data, "keys") else [(None, data)]:
        check_score_columns(part, args.data if name is None else f"{args.data} (split {name!r})")
    measure = ranked_by(options.measure, validation)[0]  # the one asked for, or the recommended, or ln_ches
    path = write_report(data, args.output, measure=options.measure, top=options.top,
                        overwrite=args.overwrite, validation=validation)
    return Outcome({"measure": measure, "top": options.top}, written=path)


def run_validate(args) -> Outcome:
    from ..data.export import write_json
    from ..evaluate.validation import format_table, validate
    from ..options import ValidateOptions

    options = ValidateOptions(**option_values(args, ValidateOptions))  # every value checked before the output
    check_outputs(args)
    result = validate(args.data, args.model, args.tokenizer, options=options)
    from ..run.distributed import Process

    if not Process.current().is_main:  # under torchrun / accelerate every rank trains; rank 0 says and writes
        return Outcome({})
    print(format_table(result))
    if args.output:
        return Outcome({"settings": result["settings"]}, written=write_json(args.output, result))
    return Outcome({})


def run_audit(args) -> Outcome:
    from ..evaluate.auditing import audit, format_audit

    check_outputs(args)
    next_round = args.next_round
    if next_round and not args.output:
        raise ChesError("--next-round says what --output holds (the rows as the trained model scores them); pass "
                        "--output too.")
    call = _audit_call(args)
    if call.get("validation") is not None:  # the whole file checked, before the data and the model
        from ..evaluate.results import load_validation

        call["validation"] = load_validation(call["validation"])
    result = audit(args.data, args.model, args.tokenizer, **call)
    print(format_audit(result.summary))
    written = result.next_round if next_round else result.dataset
    meta = {"run": result.info.as_dict(), "audit": result.summary, "next_round": next_round, **rows_written(written)}
    if args.output:
        return Outcome(meta, dataset=written, output=args.output)
    return Outcome(meta)


#: every command, in the order ``ches --help`` lists them: name -> (help, add its flags, run it); a command
#: defined in a module of its own (``ches pairs``: :mod:`ches.cli.pairs`) is imported when it is used
COMMANDS = {
    "score": ("score every pair of DATA", _score_command, run_score),
    "filter": ("keep the pairs least likely to cause likelihood displacement", _filter_command, run_filter),
    "validate": ("check that CHES predicts displacement for a model", _validate_command, run_validate),
    "report": ("write a self-contained HTML report of a scores file", _report_command, run_report),
    "pairs": ("build DPO pairs from rated responses, chosen by CHES", _pairs_command, run_pairs),
    "audit": ("after DPO: did the trained model displace the preferred responses?", _audit_command, run_audit),
}


def main(argv: list[str] | None = None, *, chunk_sizes: ChunkSizes | None = None) -> int:
    """Entry point of ``ches`` and ``python -m ches``; returns the exit status. ``chunk_sizes``: how much a chunk
    of ``ches score`` / ``ches pairs`` holds (default :class:`~ches.run.chunk_loop.ChunkSizes`), for tests and
    benchmarks that drive the command line and need small chunks; no flag sets it."""
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("ches").setLevel(logging.INFO)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with _terminate_as_exception():
        return _main(argv, started, chunk_sizes)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every ``finally`` runs (staging files removed) before exit."""


@contextlib.contextmanager
def _terminate_as_exception():
    """Inside the block, SIGTERM raises :class:`Terminated` instead of ending the process at once (the
    default, which leaves staging files behind); the previous handler is restored after."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str], started: str, chunk_sizes: ChunkSizes | None = None) -> int:
    args = None
    try:  # the commands that run chunks read args.chunk_sizes
        args = build_parser().parse_args(argv, namespace=argparse.Namespace(chunk_sizes=chunk_sizes))
        check_paths_first(args)  # before the heavy imports: a mistyped path fails at once
        check_options(args)  # and so does a bad option value
        from ..run.quiet import library_bars_off

        with library_bars_off():  # ches' own bar only (none with --no-progress)
            outcome = COMMANDS[args.command][2](args)
        meta = {"ches_version": __version__, "command": ["ches", *argv], "started": started,
                **input_metadata(args.data, getattr(args, "split", None)), **outcome.meta,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        from ..run.distributed import Process

        if not Process.current().is_main:  # under torchrun / accelerate only rank 0 writes
            return 0
        if outcome.dataset is not None:  # what the rows' log-probs were computed with travels with them
            from ..data.columns import reference_of

            reference = reference_of(outcome.dataset)
            meta = {**meta, **({"reference": reference} if reference is not None else {})}
        if outcome.dataset is not None:
            from ..data.export import file_sha256, write_dataset

            with library_bars_off():
                outcome.written = write_dataset(outcome.dataset, outcome.output, overwrite=args.overwrite)
            if outcome.written.is_file():  # load_data tells an edited file from a misread one by it
                meta["output_sha256"] = file_sha256(outcome.written)
        if outcome.written is not None:
            from ..data.export import sidecar_path, write_json

            write_json(sidecar_path(outcome.written), meta)
            print(f"wrote {outcome.written} (+ {outcome.written.name}.meta.json)", file=sys.stderr)
    except ChesError as error:
        print(f"ches: error: {one_line(error, limit=2000)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ches: interrupted; outputs are written atomically, so nothing half-written was left{_resume_hint(args)}",
              file=sys.stderr)
        return 130
    except Terminated:
        print("ches: terminated (SIGTERM); outputs are written atomically, so nothing half-written was left",
              file=sys.stderr)
        return 143
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            print(f"ches: error: {type(error).__name__}{_origin(error)}: {one_line(error, limit=2000)}", file=sys.stderr)
            return 2
        where = f" ({error.filename})" if error.filename else ""
        print(f"ches: error: no space left on the device{where}: {one_line(error.strerror or error)}; nothing "
              "half-written was left: free some space, or write the output, embeddings or cache elsewhere.",
              file=sys.stderr)
        return 2
    except Exception as error:  # whatever layer it came from (OS, pyarrow, torch, ...): one line, no traceback
        where = _origin(error)
        print(f"ches: error: {type(error).__name__}{where}: {one_line(error, limit=2000)}", file=sys.stderr)
        return 2
    return 0


def _resume_hint(args) -> str:
    """How to resume an interrupted command that takes ``--cache-dir`` (empty for the others)."""
    if args is None or not hasattr(args, "cache_dir"):
        return ""
    if args.cache_dir is not None:
        return f"; run the same command again to resume: the finished chunks are kept in --cache-dir {args.cache_dir}"
    return "; pass --cache-dir DIR to keep finished chunks, so that running the command again resumes where it stopped"


def _origin(error: BaseException) -> str:
    """`` (in module)`` for an error raised outside ches, naming the library it came from."""
    traceback = error.__traceback__
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    module = traceback.tb_frame.f_globals.get("__name__", "") if traceback is not None else ""
    return "" if not module or module.startswith("ches") else f" (in {module.split('.')[0]})"


def main_exit() -> None:
    """Console-script wrapper: exit with :func:`main`'s status."""
    sys.exit(main())
