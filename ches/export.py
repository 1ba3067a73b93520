"""Export: write a dataset by file extension, atomically; and the JSON metadata sidecar next to a file.

``.parquet``, ``.jsonl``, ``.json`` (JSON Lines too, as ``Dataset.to_json`` writes), ``.csv``, or a
folder (``save_to_disk``; any path without one of those extensions). Each write goes to a temporary
sibling first and is renamed into place, so after a crash there is either no output or a complete one.
The sidecar ``<output>.meta.json`` says how the file was made.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import datasets

from .errors import ChesError

FILE_WRITERS = {".parquet": "to_parquet", ".jsonl": "to_json", ".json": "to_json", ".csv": "to_csv"}


def sidecar_path(output: str | os.PathLike) -> Path:
    """Where the metadata of ``output`` goes: ``scores.parquet`` -> ``scores.parquet.meta.json``.

    >>> sidecar_path("out/scores.parquet").name
    'scores.parquet.meta.json'
    """
    output = Path(output)
    return output.with_name(output.name + ".meta.json")


def write_dataset(dataset: datasets.Dataset | datasets.DatasetDict, output: str | os.PathLike) -> Path:
    """Write ``dataset`` to ``output`` (format from the extension) atomically.

    Raises:
        ChesError: a ``DatasetDict`` asked to go into a single file.
    """
    output = Path(output)
    writer = FILE_WRITERS.get(output.suffix)
    if writer and isinstance(dataset, datasets.DatasetDict):
        raise ChesError(f"{output} is a single file but the result has splits {sorted(dataset)}; pass a split or "
                        "an output folder (save_to_disk).")
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp"))
    try:
        if writer:
            staged = temporary / output.name
            getattr(dataset, writer)(str(staged), **({"index": False} if writer == "to_csv" else {}))
            os.replace(staged, output)
        else:
            staged = temporary / "dataset"
            dataset.save_to_disk(str(staged))
            if output.exists():
                shutil.rmtree(output) if output.is_dir() else output.unlink()
            os.replace(staged, output)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return output


def write_json(path: str | os.PathLike, content: dict) -> Path:
    """Write ``content`` as indented JSON, atomically."""
    return write_text(path, json.dumps(content, indent=2, default=str) + "\n")


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(text)
    publish(temporary, path)
    return path


def publish(temporary: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename a finished temporary file onto ``path`` with ordinary permissions (mkstemp makes it 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, path)
