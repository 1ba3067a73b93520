"""Resumable runs: finished chunks of hidden-state sums on disk, keyed by everything that changes them.

A cache folder holds one subfolder per *run key* — a hash of the ches version, the exact token
sequences (so the data, its format, the tokenizer and ``max_length``), the model's identity (name,
revision, and a checksum of its weights), dtype, device type and layout — with one safetensors shard per
finished chunk. A different setting gives a different key, so stale shards are never reused. Shards are
written atomically (temporary file, then rename): a run killed at any moment leaves only whole shards.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .export import publish


def model_fingerprint(model: torch.nn.Module) -> str:
    """A checksum of a model's weights: names, shapes, dtypes and a strided sample of the values."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            flat = tensor.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 4096)].double().cpu()
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}:".encode())
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def run_key(settings: dict, sequences) -> str:
    """Hash of the run settings and every token sequence with its summed positions.

    >>> from ches.tokens import ScoredSequence
    >>> run_key({"a": 1}, [ScoredSequence([1, 2], 0, 1)]) == run_key({"a": 1}, [ScoredSequence([1, 2], 0, 1)])
    True
    """
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for sequence in sequences:
        digest.update(f"{sequence.start},{sequence.end}:".encode())
        digest.update(torch.tensor(sequence.input_ids, dtype=torch.int64).numpy().tobytes())
    return digest.hexdigest()[:24]


class ShardCache:
    """Chunks of ``{"sums", "last"}`` tensors under ``folder / key``."""

    def __init__(self, folder: str | os.PathLike, key: str):
        self.folder = Path(folder) / key
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, chunk: int) -> Path:
        return self.folder / f"chunk-{chunk:06d}.safetensors"

    def load(self, chunk: int) -> dict[str, torch.Tensor] | None:
        """The chunk's tensors, or None if it was not finished."""
        from safetensors.torch import load_file

        path = self._path(chunk)
        return load_file(str(path)) if path.is_file() else None

    def save(self, chunk: int, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        temporary = self.folder / f".chunk-{chunk:06d}.{os.getpid()}.tmp"
        save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(temporary))
        publish(temporary, self._path(chunk))
