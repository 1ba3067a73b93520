"""Resumable runs: finished chunks of per-pair scores on disk, keyed by everything that changes them.

A cache folder holds one subfolder per *run key* — a hash of the ches version, the exact token
sequences (so the data, its format, the tokenizer, its chat template and ``max_length``), the model's
identity (name, revision, and a hash of every byte of its weights), dtype, device type, layout and
attention kernel — with one safetensors shard per finished chunk: its pairs' ``ches``, ``ln_ches`` and
``last_hidden_ip`` (a few bytes per pair), plus the hidden sums only when embeddings were asked for. A different setting gives a different
key, so stale shards are never reused; settings that do not change the numbers (the batch budget, which
on a GPU follows the free memory) are left out, so a resumed run finds its chunks. Shards are written
atomically (temporary file, then rename); a shard that cannot be read, or does not hold the chunk's
rows (or lacks the sums a run now needs), is recomputed with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from .errors import ChesError
from .export import staged

logger = logging.getLogger("ches")

CHECKPOINT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth")


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of every byte of a model's weights (xxh3-128; names, shapes and dtypes included).

    Weights that are not in memory (offloaded to disk or CPU by a ``device_map``: meta tensors) are
    covered by hashing the checkpoint files the model was loaded from instead.

    >>> fingerprint = model_fingerprint(torch.nn.Linear(2, 2))
    >>> len(fingerprint)
    32
    """
    import xxhash

    digest = xxhash.xxh3_128()
    state = model.state_dict()
    if any(tensor.device.type == "meta" for tensor in state.values()):
        return _checkpoint_fingerprint(model, digest)
    with torch.no_grad():
        for name, tensor in state.items():
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}:".encode())
            flat = tensor.detach().reshape(-1)
            if flat.numel():
                digest.update(flat.contiguous().view(torch.uint8).cpu().numpy().data)
    return digest.hexdigest()


def _checkpoint_fingerprint(model: torch.nn.Module, digest) -> str:
    """Hash of the checkpoint files of a model whose weights are partly offloaded (meta tensors)."""
    folder = Path(str(getattr(model.config, "_name_or_path", "") or ""))
    files = sorted(path for pattern in CHECKPOINT_FILES for path in folder.glob(pattern)) if folder.is_dir() else []
    revision = getattr(model.config, "_commit_hash", None)
    if not files and not revision:
        raise ChesError("cache_dir needs to identify the model's weights, but some are offloaded and the model was "
                        "not loaded from a local folder or a Hub revision; drop cache_dir or load the model from a folder.")
    digest.update(f"revision:{revision}".encode())
    for path in files:
        digest.update(f"{path.name}:".encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()


def open_cache(cache_dir: str | os.PathLike, loaded, layout: str, pairs) -> ShardCache:
    """The cache of a run: its folder under ``cache_dir`` is keyed by :func:`run_key` of the settings that
    change the numbers (ches version, model identity and weights, dtype, device type, layout, attention
    kernel) and of every token sequence in ``pairs``."""
    from . import __version__
    from .models import attention_kernel

    settings = {"ches": __version__, "model": loaded.name, "revision": getattr(loaded.model.config, "_commit_hash", None),
                "weights": model_fingerprint(loaded.model), "dtype": str(loaded.dtype), "device": loaded.device.type,
                "layout": layout, "attention": attention_kernel(loaded.model)}
    return ShardCache(cache_dir, run_key(settings, [sequence for pair in pairs for sequence in pair]))


def run_key(settings: dict, sequences) -> str:
    """Hash of the run settings and every token sequence with its summed positions.

    >>> from ches.tokens import TokenSequence
    >>> run_key({"a": 1}, [TokenSequence([1, 2], 0, 1)]) == run_key({"a": 1}, [TokenSequence([1, 2], 0, 1)])
    True
    """
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for sequence in sequences:
        digest.update(f"{sequence.start},{sequence.end}:".encode())
        digest.update(torch.tensor(sequence.input_ids, dtype=torch.int64).numpy().tobytes())
    return digest.hexdigest()[:24]


class ShardCache:
    """Chunks of named per-pair tensors (``[rows]`` or ``[rows, H]``) under ``folder / key``."""

    def __init__(self, folder: str | os.PathLike, key: str):
        self.folder = Path(folder) / key
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ChesError(f"cache_dir {folder} is not a folder (a file is in the way).") from None

    def _path(self, chunk: int) -> Path:
        return self.folder / f"chunk-{chunk:06d}.safetensors"

    def load(self, chunk: int, rows: int, names: tuple[str, ...]) -> dict[str, torch.Tensor] | None:
        """The chunk's tensors ``names`` if a whole shard of ``rows`` rows holding them was finished, else
        None (recompute). A shard that cannot be read, or holds other shapes or fewer tensors, is
        reported and recomputed."""
        from safetensors.torch import load_file

        path = self._path(chunk)
        if not path.is_file():
            return None
        try:
            tensors = load_file(str(path))
            if any(name not in tensors or len(tensors[name]) != rows for name in names):
                raise ValueError(f"expected {', '.join(names)} of {rows} rows")
        except Exception as error:  # safetensors, OS or shape: whatever it is, the shard is not usable
            logger.warning("cache shard %s is unreadable or incomplete (%s: %s); recomputing it", path,
                           type(error).__name__, error)
            return None
        return {name: tensors[name] for name in names}

    def save(self, chunk: int, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        with staged(self._path(chunk)) as temporary:
            save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(temporary))
