"""The ``ches`` command: a thin layer that turns flags into the Python API's keyword arguments.

    ches score  DATA --model M [--split S] [--output FILE] [--max-length N] [--dtype D] [--device D] [--batch-tokens N]
    ches filter DATA_OR_SCORES [--model M] [--quantile Q | --max-score T | --keep N | --around Q] [--measure M]
                [--output FILE] [--no-scores]
    ches report SCORES --output report.html
    ches validate DATA --model M [--n 64] [--steps 5] [--lr 1e-6] [--beta 0.1] [--output results.json]
    ches pairs  DATA --model M [--rule min_ches] [--measure ln_ches] [--output FILE]

Every file written gets a ``<file>.meta.json`` sidecar. Errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__, pairs_cli
from .errors import ChesError, one_line


@dataclass
class Outcome:
    """What a command produced: a dataset for rank 0 to write to ``output``, or a file it ``written``
    itself; either way the sidecar gets ``meta``."""

    meta: dict
    dataset: Any = None
    output: Path | None = None
    written: Path | None = None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise ChesError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ches", description="CHES scores for preference data, on the tokens DPO trains on.")
    parser.add_argument("--version", action="version", version=f"ches {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _score_command(commands.add_parser("score", help="score every pair of DATA"))
    _filter_command(commands.add_parser("filter", help="keep the pairs least likely to cause likelihood displacement"))
    _validate_command(commands.add_parser("validate", help="check that CHES predicts displacement for a model"))
    _report_command(commands.add_parser("report", help="write a self-contained HTML report of a scores file"))
    pairs_cli.add_command(commands.add_parser("pairs", help="build DPO pairs from rated responses, chosen by CHES"))
    return parser


def _score_command(score: argparse.ArgumentParser) -> None:
    score.add_argument("data", metavar="DATA", help="file (.jsonl/.json/.parquet/.csv[.gz]), save_to_disk folder, or Hub id")
    _model_options(score, required=True)
    score.add_argument("--output", "-o", type=Path, help="where to write the scored rows (.parquet/.jsonl/.json/.csv or a folder)")
    score.add_argument("--save-embeddings", type=Path, help="also write S+ and S- per row to this .safetensors file")
    _overwrite_option(score)


def _filter_command(filter_: argparse.ArgumentParser) -> None:
    filter_.add_argument("data", metavar="DATA_OR_SCORES", help="raw data (needs --model) or a file written by 'ches score'")
    _model_options(filter_, required=False)
    rule = filter_.add_mutually_exclusive_group()
    rule.add_argument("--quantile", type=float, help="fraction of scored rows to keep, lowest scores first (default 0.95)")
    rule.add_argument("--max-score", type=float, help="keep rows whose score is at most this")
    rule.add_argument("--keep", type=int, help="keep this many rows with the lowest scores")
    rule.add_argument("--around", type=float, help="keep --window rows centred on this quantile of the sorted scores")
    filter_.add_argument("--window", type=int, help="rows kept with --around (default 512)")
    _measure_option(filter_)
    filter_.add_argument("--output", "-o", type=Path, help="where to write the kept rows")
    filter_.add_argument("--no-scores", action="store_true", help="drop the score columns (exactly the input schema)")
    _overwrite_option(filter_)


def _validate_command(validate: argparse.ArgumentParser) -> None:
    validate.add_argument("data", metavar="DATA", help="preference data (as for 'ches score')")
    _model_flags(validate, required=True)
    _option_flags(validate, ("split", "device", "dtype", "max_length", "num_threads", "progress"),
                  defaults={"dtype": "float32", "max_length": 512})
    validate.add_argument("--n", type=int, default=64, help="pairs probed, spread over the CHES range (default 64)")
    validate.add_argument("--steps", type=int, default=5, help="DPO steps per probe (default 5)")
    validate.add_argument("--lr", type=float, default=1e-6, help="RMSprop learning rate (default 1e-6)")
    validate.add_argument("--beta", type=float, default=0.1, help="DPO beta (default 0.1)")
    validate.add_argument("--pool", type=int, help="rows scored to choose from (default: all, or 20 x n)")
    validate.add_argument("--seed", type=int, default=0)
    validate.add_argument("--output", "-o", type=Path, help="write the full results as JSON")
    _overwrite_option(validate)


def _report_command(report: argparse.ArgumentParser) -> None:
    report.add_argument("data", metavar="SCORES", help="a file written by 'ches score'")
    report.add_argument("--output", "-o", type=Path, required=True, help="the .html file to write")
    _measure_option(report)
    report.add_argument("--top", type=int, default=20, help="pairs shown at each end (default 20)")
    report.add_argument("--split", help="split of a folder with several splits")
    _overwrite_option(report)


def _overwrite_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing output files (and a dataset folder written by ches); without it an "
                             "existing output is an error")


def _measure_option(parser: argparse.ArgumentParser) -> None:
    from .columns import DEFAULT_MEASURE, MEASURES

    parser.add_argument("--measure", default=DEFAULT_MEASURE, choices=list(MEASURES),
                        help=f"the score to select by (default {DEFAULT_MEASURE})")


def _model_flags(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--model", "-m", required=required, help="local folder or Hub id of a causal LM")
    parser.add_argument("--tokenizer", help="tokenizer folder or Hub id (default: the model's)")


def _model_options(parser: argparse.ArgumentParser, required: bool) -> None:
    """``--model``, ``--tokenizer`` and a flag per :class:`~ches.options.ScoreOptions` field and
    ``from_pretrained`` keyword (:data:`~ches.options.MODEL_KWARGS`)."""
    _model_flags(parser, required)
    _option_flags(parser)
    _from_pretrained_flags(parser)


def _from_pretrained_flags(parser: argparse.ArgumentParser) -> None:
    """A flag per ``from_pretrained`` keyword of :data:`~ches.options.MODEL_KWARGS`."""
    from .options import MODEL_KWARGS

    for name, (text, kind) in MODEL_KWARGS.items():
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action="store_true", help=text)
        else:
            parser.add_argument(flag, type=json.loads if kind == "memory" else kind, help=text)


def _option_flags(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None,
                  defaults: dict[str, Any] | None = None, choices: dict[str, tuple] | None = None,
                  options: type | None = None) -> None:
    """A flag for each field in ``names`` (default: every field with a flag) of ``options`` (default
    :class:`~ches.options.ScoreOptions`), its help, type and choices read from the field's metadata;
    ``defaults`` and ``choices`` override the fields'."""
    from dataclasses import MISSING, fields

    from .options import ScoreOptions

    defaults, choices = defaults or {}, choices or {}
    for item in fields(options or ScoreOptions):
        meta = item.metadata
        if meta["flag"] is None or (names is not None and item.name not in names):
            continue
        flag = meta["flag"] or "--" + item.name.replace("_", "-")
        default = defaults.get(item.name, None if item.default is MISSING else item.default)
        shown = f" (default {default})" if default is not None and not isinstance(default, bool) else ""
        if meta["type"] is bool:
            action = "store_false" if flag.startswith("--no-") else "store_true"
            parser.add_argument(flag, dest=item.name, action=action, help=meta["help"])
            continue
        kind = str if meta["type"] == "columns" else meta["type"]  # parsed after argparse, for ches' own message
        parser.add_argument(flag, dest=item.name, type=kind, choices=choices.get(item.name, meta["choices"]),
                            default=default, metavar=meta.get("metavar") or flag.removeprefix("--").upper(),
                            help=meta["help"] + shown)


def _score_kwargs(args) -> dict:
    """The options of ``ches.score`` given on the command line, by name."""
    from dataclasses import fields

    from .options import MODEL_KWARGS, ScoreOptions

    names = [item.name for item in fields(ScoreOptions) if item.metadata["flag"] is not None] + list(MODEL_KWARGS)
    given = {name: getattr(args, name) for name in names if hasattr(args, name)}
    if given.get("max_memory") is not None:
        given["max_memory"] = _memory(given["max_memory"])
    if given.get("columns") is not None:
        given["columns"] = _columns(given["columns"])
    return given


def _columns(text: str | None) -> dict | None:
    from .inputs import parse_columns

    return None if text is None else parse_columns(text)


def _check_outputs(args, *, dataset: bool = True, suffixes: tuple[str, ...] | None = None) -> None:
    """Check ``--output`` and its sidecar before any model work, against the shape of the result (a single
    file cannot hold splits): nothing existing is replaced unless ``--overwrite`` was given, and nothing
    lands on an input or inside an input folder (the data, the model, the tokenizer), ``--overwrite`` or
    not. (``ches.score`` checks ``--save-embeddings`` and ``--cache-dir`` the same way.)"""
    from .export import check_output, dataset_format, sidecar_path
    from .models import model_paths

    inputs = (args.data, *model_paths(getattr(args, "model", None), getattr(args, "tokenizer", None)))
    if args.output is None:
        return
    folder = dataset and dataset_format(args.output)[0] is None
    if dataset and not folder:
        _check_single_file_output(args)
    check_output(args.output, overwrite=args.overwrite, folder=folder, suffixes=suffixes, inputs=inputs)
    check_output(sidecar_path(args.output), overwrite=args.overwrite, suffixes=(".meta.json",), inputs=inputs)


def _memory(max_memory: dict | None) -> dict | None:
    """JSON keys are strings; GPU indices are ints for transformers."""
    if max_memory is None:
        return None
    return {int(key) if str(key).isdigit() else key: value for key, value in max_memory.items()}


def _input_metadata(data: str, split: str | None) -> dict:
    path = Path(data)
    meta = {"data": data, "split": split}
    if path.is_file():
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        meta["data_sha256"] = digest.hexdigest()
        sidecar = path.with_name(path.name + ".meta.json")
        if sidecar.is_file():  # the run that produced a scores file travels with what is made from it
            try:
                meta["data_metadata"] = json.loads(sidecar.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                logging.getLogger("ches").warning("ignoring the unreadable metadata file %s (%s)", sidecar, error)
                meta["data_metadata"] = None
    return meta


def run_score(args) -> Outcome:
    from .api import score_run
    from .export import to_json
    from .stats import summarize

    _check_outputs(args)
    scored, info = score_run(args.data, args.model, args.tokenizer, save_embeddings=args.save_embeddings,
                             overwrite=args.overwrite, **_score_kwargs(args))
    meta = {"run": info.as_dict(), "embeddings": str(args.save_embeddings) if args.save_embeddings else None,
            **rows_written(scored)}
    if args.output:
        return Outcome(meta, dataset=scored, output=args.output)
    from .columns import SCORE_COLUMNS
    from .inputs import column

    for part in scored.values() if hasattr(scored, "values") else [scored]:  # the score columns only: fast
        print(to_json(summarize({name: column(part, name) for name in SCORE_COLUMNS})))
    return Outcome(meta)


def _check_single_file_output(args) -> None:
    """Refuse a single-file ``--output`` for data with splits (a folder or Hub dataset, no ``--split``),
    before any model work: the result would have splits too. A local file never has splits."""
    from .inputs import load_data

    if args.split is not None or Path(args.data).is_file():
        return
    loaded = load_data(args.data)  # a folder is memory-mapped; a Hub dataset is read from the local cache after
    if hasattr(loaded, "keys"):
        raise ChesError(f"{args.data} has splits {sorted(loaded)}, so the result has them too, but --output "
                        f"{args.output} is a single file; pass --split, or an --output folder to write them all.")


def rows_written(dataset) -> dict:
    """What the sidecar records of the rows written: their number, and per split for a ``DatasetDict``.

    >>> import datasets
    >>> parts = datasets.DatasetDict({"a": datasets.Dataset.from_dict({"x": [1, 2]}), "b": datasets.Dataset.from_dict({"x": [3]})})
    >>> rows_written(parts)
    {'rows_written': 3, 'rows_written_per_split': {'a': 2, 'b': 1}}
    """
    if hasattr(dataset, "keys"):
        per_split = {name: part.num_rows for name, part in dataset.items()}
        return {"rows_written": sum(per_split.values()), "rows_written_per_split": per_split}
    return {"rows_written": dataset.num_rows}


def run_filter(args) -> Outcome:
    from .filtering import filter as filter_rows

    _check_outputs(args)
    if not args.model:  # scoring flags without a model would do nothing
        idle = [f"--{name.replace('_', '-')}" for name, value in {"tokenizer": args.tokenizer, **_score_kwargs(args)}.items()
                if name not in ("split", "progress") and value not in (None, False)]
        if idle:
            raise ChesError(f"{', '.join(idle)} only apply when scoring; pass --model too, or drop them.")
    kwargs = _score_kwargs(args) if args.model else {"split": args.split}
    rule = {"quantile": args.quantile, "max_score": args.max_score, "keep": args.keep, "around": args.around,
            "window": args.window}
    kept = filter_rows(args.data, measure=args.measure, model=args.model, tokenizer=args.tokenizer,
                       keep_scores=not args.no_scores, **rule, **kwargs)
    meta = {"measure": args.measure, "rule": rule, **rows_written(kept)}
    if args.output:
        return Outcome(meta, dataset=kept, output=args.output)
    per_split = meta.get("rows_written_per_split")
    detail = f" ({', '.join(f'{name}: {count}' for name, count in per_split.items())})" if per_split else ""
    print(f"kept {meta['rows_written']} rows{detail} (pass --output to write them)")
    return Outcome(meta)


def run_report(args) -> Outcome:
    from .columns import check_score_columns
    from .inputs import load_data
    from .report import write_report

    _check_outputs(args, dataset=False, suffixes=(".html", ".htm"))
    data = load_data(args.data, args.split)
    if hasattr(data, "keys"):
        raise ChesError(f"{args.data} has splits {sorted(data)}; pass --split.")
    check_score_columns(data, args.data)
    path = write_report(data, args.output, measure=args.measure, top=args.top, overwrite=args.overwrite)
    return Outcome({"measure": args.measure, "top": args.top}, written=path)


def run_validate(args) -> Outcome:
    from .export import write_json
    from .validation import format_table, validate

    _check_outputs(args, dataset=False, suffixes=(".json",))
    result = validate(args.data, args.model, args.tokenizer, n=args.n, steps=args.steps, learning_rate=args.lr,
                      beta=args.beta, max_length=args.max_length, pool=args.pool, split=args.split,
                      device=args.device, dtype=args.dtype, seed=args.seed, progress=args.progress,
                      num_threads=args.num_threads)
    print(format_table(result))
    if args.output:
        return Outcome({"settings": result["settings"]}, written=write_json(args.output, result))
    return Outcome({})


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ches`` and ``python -m ches``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("ches").setLevel(logging.INFO)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with _terminate_as_exception():
        return _main(argv, started)


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


def _main(argv: list[str], started: str) -> int:
    try:
        args = build_parser().parse_args(argv)
        commands = {"score": run_score, "filter": run_filter, "report": run_report, "validate": run_validate,
                    "pairs": pairs_cli.run_command}
        from .quiet import library_bars_off

        with library_bars_off():  # ches' own bar only (none with --no-progress)
            outcome = commands[args.command](args)
        meta = {"ches_version": __version__, "command": ["ches", *argv], "started": started,
                **_input_metadata(args.data, args.split), **outcome.meta,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        from .distributed import Process

        if not Process.current().is_main:  # under torchrun / accelerate only rank 0 writes
            return 0
        if outcome.dataset is not None:
            from .export import write_dataset

            with library_bars_off():
                outcome.written = write_dataset(outcome.dataset, outcome.output, overwrite=args.overwrite)
        if outcome.written is not None:
            from .export import sidecar_path, write_json

            write_json(sidecar_path(outcome.written), meta)
            print(f"wrote {outcome.written} (+ {outcome.written.name}.meta.json)", file=sys.stderr)
    except ChesError as error:
        print(f"ches: error: {one_line(error, limit=2000)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ches: interrupted; outputs are written atomically, so nothing half-written was left", file=sys.stderr)
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
