"""Export: output locations checked before any work, and every output written atomically, never over
something the user did not ask to replace.

Datasets go by extension: ``.parquet``, ``.jsonl``, ``.json`` (JSON Lines, as ``Dataset.to_json``
writes), ``.csv`` — the text formats also gzipped (``.jsonl.gz``, ``.json.gz``, ``.csv.gz``), as inputs
accept them — or a folder (``save_to_disk``; any path without one of those extensions).

The rules, for every file ches writes (datasets, sidecars, reports, embeddings, cache shards):

- :func:`check_output` runs before the model is loaded: the parent must be (or can be made) a
  writable folder, the extension must be understood, an existing file is replaced only with
  ``overwrite``, and an existing folder only with ``overwrite`` *and* if it is a dataset folder
  (``save_to_disk``) — never the current folder, never a folder holding the input.
- Everything is written to a temporary sibling and renamed into place (:func:`staged`): after a crash
  or kill at any moment the path holds the complete old output or the complete new one. A folder
  replaces a folder by an atomic exchange of the two (Linux ``renameat2``), then the old one is
  removed; where that call is missing, the old folder is first renamed aside (a crash in that instant
  leaves it there, under ``.NAME.old-PID``).
- The sidecar ``<output>.meta.json`` says how the output was made; it is written right after the
  output, so a crash between the two renames can leave the new output with the previous sidecar.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import gzip
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ChesError
from .paths import refuse_existing, sidecar_path  # noqa: F401 (sidecar_path: ches.data.export's, as before)

if TYPE_CHECKING:  # imported by write_dataset only, so that the output checks run before datasets is imported
    import datasets

FILE_WRITERS = {".parquet": "to_parquet", ".jsonl": "to_json", ".json": "to_json", ".csv": "to_csv"}
COMPRESSIBLE = (".jsonl", ".json", ".csv")

DATASET_FOLDER_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")  # what save_to_disk writes
#: how a CSV file is written (``pandas.DataFrame.to_csv`` keywords, through ``Dataset.to_csv``): every text field
#: quoted, numbers not. Quoting only what holds a comma, a quote or ``\n`` (pandas' default) leaves a lone ``\r``
#: bare, and pandas' reader ends a row there: one row read back as two, the rest shifted. Quoted, every line-break
#: character (``\r``, ``\r\n``, ``\x0b``, ``\x0c``, ``\x1c``-``\x1e``, ``\x85``, ``\u2028``, ``\u2029``) reads
#: back as written (:func:`ches.data.inputs.load_data`).
CSV_OPTIONS = {"index": False, "quoting": csv.QUOTE_NONNUMERIC}
#: what each writer of ``datasets`` is told (CSV as :data:`CSV_OPTIONS`); JSON is written by :func:`write_json_lines`
WRITER_OPTIONS = {".csv": CSV_OPTIONS}


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, read a MiB at a time (the sidecar records the input's and the output's).

    >>> import tempfile, pathlib
    >>> empty = pathlib.Path(tempfile.mkdtemp()) / "empty"
    >>> _ = empty.write_bytes(b"")
    >>> file_sha256(empty)[:16]
    'e3b0c44298fc1c14'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dataset_format(output: str | os.PathLike) -> tuple[str | None, bool]:
    """``(extension, gzipped)`` of a dataset output; ``(None, False)`` for a folder.

    >>> dataset_format("a/scores.jsonl.gz"), dataset_format("a/scores.parquet"), dataset_format("a/scores")
    (('.jsonl', True), ('.parquet', False), (None, False))
    """
    output = Path(output)
    if output.suffix == ".gz":
        inner = Path(output.stem).suffix
        if inner in COMPRESSIBLE:
            return inner, True
        raise ChesError(f"{output}: gzip is supported for {', '.join(s + '.gz' for s in COMPRESSIBLE)} outputs; "
                        f"{inner or 'this name'} is not one of them.")
    if output.suffix in FILE_WRITERS:
        return output.suffix, False
    if output.suffix:
        raise ChesError(f"{output}: unknown output format {output.suffix!r}; use {', '.join(FILE_WRITERS)} "
                        f"({', '.join(s + '.gz' for s in COMPRESSIBLE)} gzipped), or a name without an extension "
                        "for a save_to_disk folder.")
    return None, False


def check_output(output: str | os.PathLike, *, overwrite: bool = False, folder: bool = False,
                 suffixes: tuple[str, ...] | None = None, inputs: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Check, before any work, that ``output`` can be written without losing anything; return it as a Path.

    Args:
        output: the file (or, with ``folder``, the folder) to write.
        overwrite: the user asked for an existing output to be replaced.
        folder: ``output`` is a folder (``save_to_disk``); otherwise a file.
        suffixes: the extensions allowed for a file output (``None``: any).
        inputs: paths the run reads (data, model and tokenizer folders): writing over them, over a folder
            holding them, or inside one of them is refused (:func:`check_apart_from_inputs`).

    Raises:
        ChesError: naming the path and what to do.
    """
    output = Path(output)
    if suffixes is not None and not folder and not any(output.name.endswith(suffix) for suffix in suffixes):
        raise ChesError(f"{output}: expected a name ending in {' or '.join(suffixes)}.")
    resolved = output.resolve()
    if resolved == Path.cwd().resolve() or str(output) in (".", "./", ""):
        raise ChesError(f"{output!s} is the current folder; give the output a name of its own (e.g. scores.parquet).")
    check_apart_from_inputs(output, inputs)
    if output.is_dir():
        if not folder:
            raise ChesError(f"{output} is a folder; give a file name (e.g. {output / 'scores.parquet'}).")
        if not any((output / name).is_file() for name in DATASET_FOLDER_FILES):
            raise ChesError(f"{output} exists and is not a dataset folder written by ches (save_to_disk); "
                            "refusing to replace it: choose a new folder name.")
        if not overwrite:
            refuse_existing(output)
    elif output.exists() or output.is_symlink():
        if folder:
            raise ChesError(f"{output} exists and is a file, not a dataset folder; choose another output path.")
        if not overwrite:
            refuse_existing(output)
    _check_parent(output)
    return output


def check_apart_from_inputs(output: str | os.PathLike, inputs: tuple[str | os.PathLike | None, ...], *,
                            may_hold_inputs: bool = False) -> None:
    """Refuse an output that is an input, is an input's ``.meta.json`` sidecar (:func:`sidecar_path`: the record
    of how ches wrote it, which the output's own sidecar or an output named so would replace), holds an input
    (unless ``may_hold_inputs``: a cache folder only adds a subfolder of its own), or lies inside an input
    folder (a model's or tokenizer's folder, a ``save_to_disk`` data folder): ches never writes onto what it
    reads, ``--overwrite`` or not. Inputs that are not local paths (Hub ids, ``None``) are skipped.

    Callers check an output and its sidecar both, so an output whose sidecar would be the input's sidecar (the
    output is the input) or the input itself (``x.csv`` beside the input ``x.csv.meta.json``) is refused too.

    >>> import tempfile, pathlib
    >>> model = pathlib.Path(tempfile.mkdtemp())
    >>> check_apart_from_inputs(model / "model.safetensors", (str(model),))
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: .../model.safetensors lies inside the input folder ...; ches never writes into a folder it reads: choose a path outside it.
    >>> data = model / "scores.csv"
    >>> _ = data.write_text("chosen,rejected")
    >>> check_apart_from_inputs(model.parent / "kept.csv", (str(data),))
    >>> check_apart_from_inputs(model / "scores.csv.meta.json", (str(data),))
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: .../scores.csv.meta.json would replace scores.csv.meta.json, the sidecar of the input .../scores.csv (the record of how ches wrote it); choose another output path.
    """
    resolved = Path(output).resolve()
    for source in inputs:
        if source is None or not os.path.exists(os.path.expanduser(str(source))):
            continue
        source_path = Path(os.path.expanduser(str(source))).resolve()
        if resolved == source_path or (resolved in source_path.parents and not may_hold_inputs):
            raise ChesError(f"{output} would replace the input {source}; choose another output path.")
        given = Path(os.path.expanduser(str(source)))  # the sidecar read is the one beside the name given
        if resolved in (sidecar_path(given).resolve(), sidecar_path(source_path).resolve()):
            raise ChesError(f"{output} would replace {sidecar_path(Path(source).name)}, the sidecar of the input "
                            f"{source} (the record of how ches wrote it); choose another output path.")
        if source_path.is_dir() and source_path in resolved.parents:
            raise ChesError(f"{output} lies inside the input folder {source}; ches never writes into a folder it "
                            "reads: choose a path outside it.")


def _check_parent(output: Path) -> None:
    """The nearest existing ancestor of ``output`` must be a folder we can write in."""
    ancestor = output.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ChesError(f"cannot write {output}: {ancestor} is a file, not a folder.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ChesError(f"cannot write {output}: no write permission in {ancestor}.")


@contextlib.contextmanager
def staged(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path``; renamed onto ``path`` if the block succeeds, removed if not.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
    >>> with staged(target) as temporary:
    ...     _ = temporary.write_text("done")
    >>> target.read_text()
    'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield Path(temporary)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it 0600
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_dataset(dataset: datasets.Dataset | datasets.DatasetDict, output: str | os.PathLike, *,
                  overwrite: bool = False) -> Path:
    """Write ``dataset`` to ``output`` (format from the extension) atomically.

    Raises:
        ChesError: a ``DatasetDict`` asked to go into a single file, or ``output`` fails :func:`check_output`.
    """
    import datasets

    output = Path(output)
    extension, gzipped = dataset_format(output)
    if extension and isinstance(dataset, datasets.DatasetDict):
        raise ChesError(f"{output} is a single file but the result has splits {sorted(dataset)}; pass a split or "
                        "an output folder (save_to_disk).")
    check_output(output, overwrite=overwrite, folder=extension is None)
    if extension:
        with staged(output) as temporary:
            plain = temporary.with_name(temporary.name + extension)
            try:
                if extension in (".jsonl", ".json"):
                    write_json_lines(dataset, plain)
                else:
                    getattr(dataset, FILE_WRITERS[extension])(str(plain), **WRITER_OPTIONS.get(extension, {}))
                if gzipped:
                    with open(plain, "rb") as source, gzip.open(temporary, "wb") as target:
                        shutil.copyfileobj(source, target)
                else:
                    os.replace(plain, temporary)
            finally:
                if plain.exists():
                    plain.unlink()
        return output
    output.parent.mkdir(parents=True, exist_ok=True)
    workspace = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp"))
    try:
        dataset.save_to_disk(str(workspace / "dataset"))
        _replace_folder(workspace / "dataset", output)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    return output


def write_json_lines(dataset: datasets.Dataset, path: str | os.PathLike, batch_rows: int = 1024) -> None:
    """``dataset`` as JSON Lines (one object a row, UTF-8, as ``Dataset.to_json`` lays it out), every float with
    the digits that read back as the same float (Python's ``repr``; pandas, which ``to_json`` uses, keeps at
    most 15 decimals, so ``0.1 + 0.2`` came back as ``0.3``), NaN and infinities as ``null``.

    >>> import datasets, tempfile, pathlib, json
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "x.jsonl"
    >>> write_json_lines(datasets.Dataset.from_dict({"x": [0.1 + 0.2, float("nan")], "t": ["a\\rb", None]}), path)
    >>> [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    [{'x': 0.30000000000000004, 't': 'a\\rb'}, {'x': None, 't': None}]
    """
    with open(path, "w", encoding="utf-8") as handle:
        for begin in range(0, len(dataset), batch_rows):
            batch = dataset[begin : begin + batch_rows]
            names = list(batch)
            for values in zip(*(batch[name] for name in names)):
                row = strict_json(dict(zip(names, values)))
                handle.write(json.dumps(row, ensure_ascii=False, default=str, allow_nan=False) + "\n")


def _replace_folder(new: Path, output: Path) -> None:
    """Put folder ``new`` at ``output`` atomically; an old folder there ends up at ``new`` (then removed)."""
    if not output.exists():
        os.replace(new, output)  # renaming a folder onto a free name is atomic
        return
    if _exchange(new, output):
        shutil.rmtree(new)
        return
    aside = output.with_name(f".{output.name}.old-{os.getpid()}")
    os.replace(output, aside)
    os.replace(new, output)
    shutil.rmtree(aside)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0


def strict_json(value):
    """``value`` with every float that JSON cannot hold (NaN, ±inf) replaced by ``None``.

    >>> strict_json({"a": float("nan"), "b": [1.5, float("inf")]})
    {'a': None, 'b': [1.5, None]}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value


def to_json(content) -> str:
    """Indented strict JSON (NaN and infinities as ``null``)."""
    return json.dumps(strict_json(content), indent=2, default=str, allow_nan=False)


def write_json(path: str | os.PathLike, content: dict) -> Path:
    """Write ``content`` as indented strict JSON (NaN as ``null``), atomically."""
    return write_text(path, to_json(content) + "\n")


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with staged(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)
