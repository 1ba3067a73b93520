"""Which names of data, models and tokenizers are local paths, and whether they exist: a rule that needs no
heavy import, so that the command line checks its paths before torch, transformers and datasets load (a
mistyped path fails at once) and the loaders apply the same rule.

A name is taken for a local path when it starts with ``.``, ``/`` or ``~`` (or, for data, ends in a data
file's extension; for a model or tokenizer, has more parts than ``org/name`` or starts with a folder that
exists here); anything else may be a Hub id (``org/name``), which only the Hub can confirm.

A file ches writes has its record beside it, the sidecar ``<file>.meta.json``: :func:`sidecar_path` names it and
:func:`read_sidecar` is the one reader of it (for ``ches.load_data`` and the command line's record of its input).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..errors import ChesError

logger = logging.getLogger("ches")

#: the data file formats ches reads (each also gzipped: ``.jsonl.gz``, ...)
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
LOCAL_PREFIXES = (".", "/", "~")


def check_data_exists(path: str | os.PathLike) -> None:
    """Refuse data named by a local path (or a data file's name) that does not exist; a Hub id passes.

    >>> check_data_exists("some-org/some-dataset")
    >>> check_data_exists("no-such-file.jsonl")
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: data file no-such-file.jsonl does not exist.
    """
    name = str(path)
    local = Path(name)  # as the loader reads it (a shell expands ``~``)
    if local.exists():
        return
    if local.suffix in DATA_SUFFIXES + (".gz",) or name.startswith(LOCAL_PREFIXES):
        raise ChesError(f"data file {name} does not exist.")


def check_folder_exists(name: str | os.PathLike, role: str) -> None:
    """Refuse a ``role`` (``"model"``, ``"tokenizer"``) named by a local path that is not a folder; a Hub id passes.

    >>> check_folder_exists("some-org/some-model", "model")
    >>> check_folder_exists("./no-such-model", "model")
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: model folder ./no-such-model does not exist; pass a local model folder or a Hub id.
    """
    name = str(name)
    if looks_local(name) and not os.path.isdir(os.path.expanduser(name)):
        parts = name.split("/")
        why = (f" ({parts[0]} is a folder here, so {name} is read as a local path)" if len(parts) == 2
               and not name.startswith(LOCAL_PREFIXES) else "")
        raise ChesError(f"{role} folder {name} does not exist{why}; pass a local {role} folder or a Hub id.")


def looks_local(name: str) -> bool:
    """Whether a model or tokenizer name can only be a local path: it starts with ``.``, ``/`` or ``~``, has
    more parts than a Hub id's ``org/name``, or its first part is a folder here (``examples/tiny-hh-modl``,
    mistyped, is local: ``examples`` is a folder of this directory).

    >>> looks_local("./model"), looks_local("a/b/c"), looks_local("some-org/some-model"), looks_local("gpt2")
    (True, True, False, False)
    """
    parts = name.split("/")
    return name.startswith(LOCAL_PREFIXES) or len(parts) > 2 or (len(parts) == 2 and os.path.isdir(parts[0]))


def refuse_existing(output: str | os.PathLike) -> None:
    """The error for an output that exists when replacing it was not asked for.

    >>> refuse_existing("scores.parquet")
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: scores.parquet exists; pass --overwrite (overwrite=True) to replace it.
    """
    raise ChesError(f"{output} exists; pass --overwrite (overwrite=True) to replace it.")


def model_paths(model, tokenizer=None) -> tuple[str, ...]:
    """The local folders a run reads its model from: the model's (a path, or a loaded model's
    ``name_or_path``), a PEFT adapter's base model, the tokenizer's. Nothing is ever written into them.

    >>> model_paths("examples/tiny-hh-model", "some-org/some-tokenizer")
    ('examples/tiny-hh-model',)
    """
    names = [getattr(item, "name_or_path", None) if not isinstance(item, (str, os.PathLike)) else item
             for item in (model, tokenizer)]
    folders = [str(name) for name in names if name and os.path.isdir(os.path.expanduser(str(name)))]
    for folder in list(folders):
        try:
            with open(os.path.join(os.path.expanduser(folder), "adapter_config.json"), encoding="utf-8") as handle:
                base = json.load(handle).get("base_model_name_or_path")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(base, str) and os.path.isdir(os.path.expanduser(base)):
            folders.append(base)
    return tuple(dict.fromkeys(folders))


def sidecar_path(output: str | os.PathLike) -> Path:
    """Where the metadata of ``output`` goes: ``scores.parquet`` -> ``scores.parquet.meta.json``.

    >>> sidecar_path("out/scores.parquet").name
    'scores.parquet.meta.json'
    """
    output = Path(output)
    return output.with_name(output.name + ".meta.json")


def read_sidecar(path: str | os.PathLike, warn: bool = True) -> dict | None:
    """The ``.meta.json`` sidecar of the data file ``path`` (what ches recorded when it wrote the file), or None:
    there is none, or it cannot be read, which is a warning naming the sidecar and what is wrong with it (the
    data is still read; only the record is ignored). ``warn=False``: a second reading of a sidecar whose reader
    warned already (the command line records its input's sidecar after ``load_data`` read it), so the warning
    is said once.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> read_sidecar(folder / "s.csv") is None
    True
    >>> _ = sidecar_path(folder / "s.csv").write_text('{"rows_written": 2}')
    >>> read_sidecar(folder / "s.csv")
    {'rows_written': 2}
    """
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None
    try:
        content = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        problem = f"{type(error).__name__}: {error}"
    else:
        if isinstance(content, dict):
            return content
        problem = f"it holds a JSON {type(content).__name__}, not the object ches writes"
    if warn:
        logger.warning("ignoring the unreadable metadata file %s (%s)", sidecar, problem)
    return None
