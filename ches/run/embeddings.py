"""Per-row hidden-state sums on disk, as safetensors (tensors and string metadata only; never pickles).

A file written by :class:`EmbeddingWriter` (``ches.score(..., save_embeddings=...)``) holds, for N rows and
hidden width H:

- ``row_index`` ``[N]`` int64: the row's position in the scored dataset,
- ``chosen_sum``, ``rejected_sum`` ``[N, H]`` float32: ``S+`` and ``S-``,
- ``chosen_last``, ``rejected_last`` ``[N, H]`` float32: hidden states at the last summed positions,
- ``chosen_tokens``, ``rejected_tokens`` ``[N]`` int64: ``|y+|`` and ``|y-|``,

and string metadata (model, ches version, ...). Skipped rows are not stored. Any score can be
recomputed from it without another model pass, e.g. ``ches.scores.ln_ches(...)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

TENSORS = ("row_index", "chosen_sum", "rejected_sum", "chosen_last", "rejected_last", "chosen_tokens",
           "rejected_tokens")


def load_embeddings(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a file written by ``ches.score(..., save_embeddings=path)``: ``(tensors, metadata)``.

    >>> import tempfile, torch
    >>> writer = EmbeddingWriter(tempfile.mkdtemp() + "/e.safetensors", 3, {"model": "m"})
    >>> writer.add(0, torch.arange(2), {name: torch.zeros(2, 3) for name in ("chosen_sum", "rejected_sum",
    ...            "chosen_last", "rejected_last")}, torch.ones(2), torch.ones(2))
    >>> tensors, metadata = load_embeddings(writer.finish([0]))
    >>> tensors["chosen_sum"].shape, metadata["model"]
    (torch.Size([2, 3]), 'm')
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}, dict(handle.metadata() or {})


def embedding_file(save_embeddings: str | os.PathLike, split_name: str | None) -> Path:
    """The embeddings file of a split: ``name.safetensors``, or ``name.SPLIT.safetensors`` for a split of a
    ``DatasetDict``.

    >>> embedding_file("e.safetensors", None), embedding_file("e.safetensors", "test")
    (PosixPath('e.safetensors'), PosixPath('e.test.safetensors'))
    """
    target = Path(save_embeddings)
    if split_name is None:
        return target
    return target.with_name(f"{target.stem}.{split_name}{target.suffix or '.safetensors'}")


class EmbeddingWriter:
    """Writes the embeddings of a run chunk by chunk, never holding them all.

    Each finished chunk's rows go to a part file in a staging folder beside ``target`` (``.NAME.parts``;
    processes of a multi-process run write their own chunks there, so it must be on a shared filesystem,
    as a cache folder must). :meth:`finish` then assembles ``target`` in row order from the parts, one
    chunk at a time, into a memory-mapped file that is renamed into place (a reader never sees a
    half-written file), and removes the staging folder.
    """

    def __init__(self, target: str | os.PathLike, hidden_size: int, metadata: dict[str, str], rows: int | None = None):
        self.target, self.hidden_size, self.metadata = Path(target), hidden_size, metadata
        self.parts = self.target.with_name(f".{self.target.name}.parts")
        if rows is not None:
            self.check_space(rows)
        self.parts.mkdir(parents=True, exist_ok=True)

    def file_bytes(self, rows: int) -> int:
        """Bytes of the data of a file of ``rows`` rows (the header adds well under a kilobyte)."""
        return rows * (4 * 4 * self.hidden_size + 3 * 8)

    def check_space(self, rows: int) -> None:
        """Refuse to start when the folder of ``target`` cannot hold the parts and the assembled file (twice the
        file, until the parts are removed): a full disk found before the run, not at its end."""
        import shutil

        from ..errors import ChesError

        folder = self.target.absolute().parent
        while not folder.exists():
            folder = folder.parent
        needed, free = 2 * self.file_bytes(rows), shutil.disk_usage(folder).free
        if needed > free:
            raise ChesError(f"{self.target}: the embeddings of {rows} rows need about {needed / 2**20:.1f} MiB while they "
                            f"are written (parts, then the file), but {folder} has {free / 2**20:.1f} MiB free; free some "
                            "space or write them elsewhere.")

    def add(self, chunk_id: int, rows: torch.Tensor, sums: dict[str, torch.Tensor], chosen_tokens: torch.Tensor,
            rejected_tokens: torch.Tensor) -> None:
        """Store chunk ``chunk_id``: ``rows`` ``[n]`` row indices, ``sums`` the four ``[n, H]`` tensors."""
        from safetensors.torch import save_file

        from ..data.export import staged

        tensors = {"row_index": rows.long(), **sums, "chosen_tokens": chosen_tokens.long(),
                   "rejected_tokens": rejected_tokens.long()}
        with staged(self.parts / f"part-{chunk_id:08d}.safetensors") as temporary:
            save_file({name: tensors[name].contiguous() for name in TENSORS}, str(temporary))

    def finish(self, chunk_ids: list[int]) -> Path:
        """Assemble ``target`` from the parts of ``chunk_ids`` (all chunks of the run), rows in order."""
        import json

        import numpy as np
        from safetensors import safe_open

        from ..data.export import staged

        parts = [self.parts / f"part-{chunk_id:08d}.safetensors" for chunk_id in chunk_ids]
        indices = []
        for part in parts:
            with safe_open(str(part), framework="pt") as handle:
                indices.append(handle.get_tensor("row_index"))
        order = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long)
        rows, width = len(order), self.hidden_size
        position = torch.empty(int(order.max()) + 1 if rows else 0, dtype=torch.long)
        position[order.sort().values] = torch.arange(rows)  # row index -> its place in the file
        shapes = {name: [rows, width] if name.endswith(("_sum", "_last")) else [rows] for name in TENSORS}
        header, offset = {"__metadata__": {key: str(value) for key, value in self.metadata.items()}}, 0
        for name in TENSORS:
            size = 4 * rows * width if name.endswith(("_sum", "_last")) else 8 * rows
            header[name] = {"dtype": "F32" if name.endswith(("_sum", "_last")) else "I64", "shape": shapes[name],
                            "data_offsets": [offset, offset + size]}
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # data starts 8-byte aligned
        with staged(self.target) as temporary:
            with open(temporary, "wb") as handle:
                handle.write(len(encoded).to_bytes(8, "little") + encoded)
                handle.flush()
                reserve(handle, 8 + len(encoded) + offset)
            start = 8 + len(encoded)
            for name in TENSORS:
                begin = start + header[name]["data_offsets"][0]
                if rows == 0:
                    continue
                kind = np.float32 if name.endswith(("_sum", "_last")) else np.int64
                view = np.memmap(temporary, dtype=kind, mode="r+", offset=begin, shape=tuple(shapes[name]))
                for part in parts:
                    with safe_open(str(part), framework="pt") as handle:
                        where = position[handle.get_tensor("row_index")].numpy()
                        view[where] = handle.get_tensor(name).numpy()
                view.flush()
                del view
        self.discard()
        return self.target

    def discard(self) -> None:
        """Remove the staging folder and its parts."""
        import shutil

        shutil.rmtree(self.parts, ignore_errors=True)


def reserve(handle, size: int) -> None:
    """Grow an open file to ``size`` bytes with its disk blocks allocated now, so that a full disk is an
    ``OSError`` here (ENOSPC) and not a ``SIGBUS`` later, when a memory map writes into a hole of a sparse
    file. Where ``posix_fallocate`` is missing, the file is only extended (sparse)."""
    allocate = getattr(os, "posix_fallocate", None)
    if allocate is None:
        handle.truncate(size)
        return
    try:
        allocate(handle.fileno(), 0, size)
    except OSError as error:
        import errno

        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)):
            raise
        handle.truncate(size)  # a file system that cannot allocate ahead
