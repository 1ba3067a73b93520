"""Resumable runs: finished chunks of per-pair scores on disk, keyed by everything that changes them.

A cache folder holds one subfolder per *settings key* — a hash of the ches version, the model's identity
(name, revision, and a hash of every byte of its weights), dtype, device type, layout and attention
kernel — and in it one safetensors shard per finished chunk, named by a hash of the chunk's exact token
sequences (so of the data, its format, the tokenizer, its chat template and ``max_length``). A shard
holds its pairs' ``ches``, ``ln_ches`` and ``last_hidden_ip`` (a few bytes per pair), plus the hidden
sums only when embeddings were asked for: a million-pair cache is tens of megabytes. A different setting
or different tokens give a different name, so stale shards are never reused; settings that do not change
the numbers (the batch budget, which on a GPU follows the free memory) are left out, so a resumed run
finds its chunks. Shards are written atomically (temporary file, then rename); a shard that cannot be
read, does not hold the chunk's rows, or lacks the sums a run now needs, is recomputed with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from ..data.export import staged
from ..data.tokens import Skip
from ..errors import ChesError

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


def open_cache(cache_dir: str | os.PathLike, loaded, layout: str, work: str | None = None) -> ShardCache:
    """The cache of a run: a folder under ``cache_dir`` keyed by the settings that change the numbers
    (ches version, model identity and weights, dtype, device type, layout, attention kernel; ``work``:
    what a shard holds, when not ``ches.score``'s per-pair numbers, e.g. ``"pairs"``: ``ches.pairs``'
    per-sequence sums). Inside, each chunk's shard is named by :func:`chunk_key` of its token sequences."""
    from .. import __version__
    from ..model.models import attention_kernel

    settings = {"ches": __version__, "model": loaded.name, "revision": getattr(loaded.model.config, "_commit_hash", None),
                "weights": model_fingerprint(loaded.model), "dtype": str(loaded.dtype), "device": loaded.device.type,
                "layout": layout, "attention": attention_kernel(loaded.model)} | ({"work": work} if work else {})
    return ShardCache(cache_dir, hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:24])


def chunk_key(plans) -> str:
    """Hash of a chunk's rows in order: each row's two token sequences with their summed positions, or
    its skip reason. Equal keys mean equal work, so a shard is reused exactly when it holds this chunk.

    >>> from ches.data.tokens import SequencePair, Skip, TokenSequence
    >>> pair = SequencePair(TokenSequence([1, 2], 0, 1), TokenSequence([1, 3], 0, 1))
    >>> chunk_key([pair, Skip("empty prompt")]) == chunk_key([pair, Skip("empty prompt")]) != chunk_key([pair])
    True
    """
    digest = hashlib.sha256()
    for plan in plans:
        if isinstance(plan, Skip):
            digest.update(f"skip:{plan.reason}\0".encode())
            continue
        for sequence in plan:
            digest.update(f"{sequence.start},{sequence.end}:".encode())
            digest.update(torch.tensor(sequence.input_ids, dtype=torch.int64).numpy().tobytes())
    return digest.hexdigest()[:32]


class ShardCache:
    """Chunks of named per-pair tensors (``[rows]`` or ``[rows, H]``) under ``folder / key``."""

    def __init__(self, folder: str | os.PathLike, key: str):
        self.folder = Path(folder) / key
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ChesError(f"cache_dir {folder} is not a folder (a file is in the way).") from None

    def _path(self, chunk: str) -> Path:
        return self.folder / f"chunk-{chunk}.safetensors"

    def load(self, chunk: str, rows: int, names: tuple[str, ...]) -> dict[str, torch.Tensor] | None:
        """The chunk's tensors ``names`` if a whole shard of ``rows`` rows holding them was finished, else
        None (recompute). A shard that cannot be read, or holds other shapes or fewer tensors, is
        reported and recomputed."""
        from safetensors.torch import load_file

        path = self._path(chunk)
        if not path.is_file():
            return None
        try:
            recorded = shard_key(path)
            if recorded != chunk:  # a shard copied or renamed from another chunk, or written before shards kept keys
                raise ValueError(f"it records the key {recorded!r}, not {chunk!r}")
            tensors = load_file(str(path))
            if any(name not in tensors or len(tensors[name]) != rows for name in names):
                raise ValueError(f"expected {', '.join(names)} of {rows} rows")
        except Exception as error:  # safetensors, OS or shape: whatever it is, the shard is not usable
            logger.warning("cache shard %s is unreadable or incomplete (%s: %s); recomputing it", path,
                           type(error).__name__, error)
            return None
        return {name: tensors[name] for name in names}

    def save(self, chunk: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        with staged(self._path(chunk)) as temporary:
            save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(temporary),
                      metadata={"chunk_key": chunk})


def shard_key(path: str | os.PathLike) -> str | None:
    """The :func:`chunk_key` a shard records of the chunk it holds (in its safetensors metadata), or None."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return (handle.metadata() or {}).get("chunk_key")
