"""The command line's flags, made from the options dataclasses (:mod:`ches.options`), and what every command
shares: reading them back as keyword arguments, checking the outputs before any model work, the record
of what was written. :mod:`ches.cli` and :mod:`ches.cli.pairs` build their commands from this one home.

Each field of an options dataclass gives one flag, from its ``metadata``: ``help``, ``type`` (``bool``
makes a switch; ``"columns"`` is read as ``NAME=COLUMN,...``), ``choices``, ``metavar``, ``flag`` (the flag's
name; ``""``: from the field's name; ``None``: Python only), ``group`` (flags of one group exclude each
other). The default shown in the help is the field's own, so it is written once.

Imports nothing heavy, so ``ches --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import ChesError


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (a :class:`ChesError`), with no usage dump."""

    def error(self, message: str):
        raise ChesError(f"{message} (see '{self.prog} --help')")


@dataclass
class Outcome:
    """What a command produced: a dataset for rank 0 to write to ``output``, or a file it ``written``
    itself; either way the sidecar gets ``meta``."""

    meta: dict
    dataset: Any = None
    output: Path | None = None
    written: Path | None = None


def add_options(parser: argparse.ArgumentParser, options: type, names: tuple[str, ...] | None = None,
                defaults: dict[str, Any] | None = None, choices: dict[str, tuple] | None = None,
                helps: dict[str, str] | None = None) -> None:
    """A flag for each field in ``names`` (default: every field with a flag) of the dataclass ``options``,
    its help, type and choices read from the field's metadata; ``defaults``, ``choices`` and ``helps``
    override the fields' (a command that takes a subset of another's options with defaults of its own).
    A flag with choices shows them (``--rule {min_ches,...}``)."""
    from ..options import flag_of

    defaults, choices, helps = defaults or {}, choices or {}, helps or {}
    groups: dict[str, Any] = {}
    for item in fields(options):
        meta = item.metadata
        if meta.get("flag") is None or (names is not None and item.name not in names):
            continue
        where = parser
        if meta.get("group"):
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_mutually_exclusive_group()
            where = groups[meta["group"]]
        flag = flag_of(item.name, meta)
        default = defaults.get(item.name, None if item.default is MISSING else item.default)
        text = helps.get(item.name, meta["help"])
        if meta["type"] is bool:
            action = "store_false" if flag.startswith("--no-") else "store_true"
            where.add_argument(flag, dest=item.name, action=action, default=default, help=text)
            continue
        shown = _stated_default(default, text, meta.get("none"))
        kind = str if meta["type"] == "columns" else meta["type"]  # parsed after argparse, for ches' own message
        allowed = choices.get(item.name, meta["choices"])
        where.add_argument(flag, dest=item.name, type=kind, choices=allowed, default=default,
                           metavar=meta.get("metavar") or (None if allowed else flag.removeprefix("--").upper()),
                           help=text + shown)


def _stated_default(default: Any, text: str, none: str | None) -> str:
    """What a flag's help adds about its default: `` (default X)``, `` (default: what None means)``, or nothing
    where the help already says it."""
    if "(default" in text:
        return ""
    if default is not None:
        return f" (default {default})"
    return f" (default: {none})" if none else ""


def option_values(args: argparse.Namespace, options: type) -> dict[str, Any]:
    """The fields of ``options`` given flags on this command, by name, as keyword arguments."""
    given = {item.name: getattr(args, item.name) for item in fields(options)
             if item.metadata.get("flag") is not None and hasattr(args, item.name)}
    if given.get("columns") is not None:
        from ..data.columns import parse_columns

        given["columns"] = parse_columns(given["columns"])
    return given


def add_data(parser: argparse.ArgumentParser, metavar: str, help: str) -> None:
    parser.add_argument("data", metavar=metavar, help=help)


def add_model(parser: argparse.ArgumentParser, required: bool) -> None:
    """``--model`` and ``--tokenizer``."""
    parser.add_argument("--model", "-m", required=required, help="local folder or Hub id of a causal LM")
    parser.add_argument("--tokenizer", help="tokenizer folder or Hub id (default: the model's)")


def add_scoring(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None,
                defaults: dict[str, Any] | None = None, choices: dict[str, tuple] | None = None,
                helps: dict[str, str] | None = None) -> None:
    """The flags of :class:`~ches.options.ScoreOptions` (``names``: a subset) and of the ``from_pretrained``
    keywords (:data:`~ches.options.MODEL_KWARGS`)."""
    from ..options import MODEL_KWARGS, ScoreOptions, flag_of

    add_options(parser, ScoreOptions, names, defaults, choices, helps)
    for name, (text, kind) in MODEL_KWARGS.items():
        flag = flag_of(name, {})
        if kind is bool:
            parser.add_argument(flag, action="store_true", help=text)
        else:
            parser.add_argument(flag, type=json.loads if kind == "memory" else kind, help=text)


def add_output(parser: argparse.ArgumentParser, help: str, *, required: bool = False, dataset: bool = True,
               suffixes: tuple[str, ...] | None = None) -> None:
    """``--output`` and ``--overwrite``: with ``dataset``, the output is a dataset (a file, or a folder);
    otherwise a file ending in one of ``suffixes``. The command's :func:`check_outputs` reads them back."""
    parser.add_argument("--output", "-o", type=Path, required=required, help=help)
    parser.set_defaults(output_is_dataset=dataset, output_suffixes=suffixes)
    replaced = "output files (and a dataset folder written by ches)" if dataset else "the output file and its sidecar"
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace existing {replaced}; without it an existing output is an error")


def score_kwargs(args: argparse.Namespace, names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The options of ``ches.score`` given on the command line, by name (``from_pretrained`` keywords too);
    ``names``: the subset a command takes (the rest of its flags are other options' fields)."""
    from ..options import MODEL_KWARGS, ScoreOptions

    given = {name: value for name, value in option_values(args, ScoreOptions).items() if names is None or name in names}
    given |= {name: getattr(args, name) for name in MODEL_KWARGS if hasattr(args, name)}
    if given.get("max_memory") is not None:  # JSON keys are strings; GPU indices are ints for transformers
        given["max_memory"] = {int(key) if str(key).isdigit() else key: value for key, value in given["max_memory"].items()}
    return given


def check_outputs(args: argparse.Namespace) -> None:
    """Check ``--output`` and its sidecar before any model work, against the shape of the result (a single
    file cannot hold splits): nothing existing is replaced unless ``--overwrite`` was given, and nothing
    lands on an input or inside an input folder (the data, the model, the tokenizer, a file of
    :data:`INPUT_FILE_OPTIONS`), ``--overwrite`` or not. What the output may be comes from :func:`add_output`. (``ches.score`` checks ``--save-embeddings``
    and ``--cache-dir`` the same way.)"""
    from ..data.export import dataset_format

    if args.output is None:
        return
    if args.output_is_dataset and dataset_format(args.output)[0] is not None:
        _check_single_file_output(args)
    _check_output_paths(args)


#: the options whose value is a file a command reads (beside the data, model and tokenizer): no output lands on them
INPUT_FILE_OPTIONS = ("dpo_config", "validation")


def _check_output_paths(args: argparse.Namespace) -> None:
    """What :func:`check_outputs` checks of the paths alone (no data is read, no heavy library imported)."""
    from ..data.export import check_output, dataset_format, sidecar_path
    from ..data.paths import model_paths

    inputs = (args.data, *model_paths(getattr(args, "model", None), getattr(args, "tokenizer", None)),
              *[path for path in (getattr(args, name, None) for name in INPUT_FILE_OPTIONS) if isinstance(path, str)])
    folder = args.output_is_dataset and dataset_format(args.output)[0] is None
    check_output(args.output, overwrite=args.overwrite, folder=folder, suffixes=args.output_suffixes, inputs=inputs)
    check_output(sidecar_path(args.output), overwrite=args.overwrite, suffixes=(".meta.json",), inputs=inputs)


def check_paths_first(args: argparse.Namespace) -> None:
    """What can be checked of a command's paths before torch, transformers and datasets are imported, so
    that a trivial mistake fails at once: a data file, model or tokenizer folder named by a local path that
    does not exist (a name that may be a Hub id is left to the loaders), and every check of
    :func:`check_outputs` that needs no data read (an existing output without ``--overwrite``, an unknown
    extension, an output on an input)."""
    from ..data.paths import check_data_exists, check_folder_exists

    check_data_exists(args.data)
    for role in ("model", "tokenizer"):
        if getattr(args, role, None) is not None:
            check_folder_exists(getattr(args, role), role)
    if getattr(args, "output", None) is not None:
        _check_output_paths(args)


def _check_single_file_output(args: argparse.Namespace) -> None:
    """Refuse a single-file ``--output`` for data with splits (a folder or Hub dataset, no ``--split``),
    before any model work: the result would have splits too. A local file never has splits."""
    from ..data.inputs import load_data

    if getattr(args, "split", None) is not None or Path(args.data).is_file():
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


def input_metadata(data: str, split: str | None) -> dict:
    """What the sidecar records of the input: its path, split, SHA-256, and the sidecar of a file ches wrote (read
    by :func:`ches.data.paths.read_sidecar`, after the command read the data and its sidecar)."""
    from ..data.export import file_sha256
    from ..data.paths import read_sidecar, sidecar_path

    path = Path(data)
    meta = {"data": data, "split": split}
    if path.is_file():
        meta["data_sha256"] = file_sha256(path)
        if sidecar_path(path).is_file():  # the run that produced a scores file travels with what is made from it
            # None when it cannot be read: the command read the data with load_data, which warned already
            meta["data_metadata"] = read_sidecar(path, warn=False)
    return meta
