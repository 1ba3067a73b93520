"""Per-row hidden-state sums on disk, as safetensors (tensors and string metadata only; never pickles).

A file written by :func:`save_embeddings` holds, for N rows and hidden width H:

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


def save_embeddings(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write ``tensors`` (the keys in ``TENSORS``) and ``metadata`` atomically to a safetensors file."""
    from safetensors.torch import save_file

    from .export import staged

    missing = [name for name in TENSORS if name not in tensors]
    if missing:
        raise ValueError(f"save_embeddings needs tensors {missing}")
    path = Path(path)
    with staged(path) as temporary:
        save_file({name: tensors[name].contiguous() for name in TENSORS}, str(temporary),
                  metadata={key: str(value) for key, value in metadata.items()})
    return path


def load_embeddings(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a file written by :func:`save_embeddings`: ``(tensors, metadata)``.

    >>> import tempfile, torch
    >>> rows = {name: torch.zeros(2, 3) for name in TENSORS}
    >>> path = save_embeddings(tempfile.mkdtemp() + "/e.safetensors", rows, {"model": "m"})
    >>> tensors, metadata = load_embeddings(path)
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


def embedding_tensors(rows) -> dict[str, torch.Tensor]:
    """The :data:`TENSORS` of the run rows of a :class:`ches.runner.ScoredRows` computed with its sums."""
    owners = torch.tensor(rows.owners, dtype=torch.long)
    return {"row_index": owners, **rows.sums.tensors(),
            "chosen_tokens": torch.tensor(rows.columns["chosen_tokens"], dtype=torch.long)[owners],
            "rejected_tokens": torch.tensor(rows.columns["rejected_tokens"], dtype=torch.long)[owners]}
