"""The one loop over chunks that ``ches.score`` and ``ches.pairs`` share: share -> bar -> cache -> run -> gather.

A run's work is cut into chunks by a plan the data alone fixes (pairs of similar length for ``ches.score``,
:func:`ches.run.chunks.plan_chunks`; whole prompts for ``ches.pairs``, :func:`ches.builder.passes.chunk_groups`).
:func:`run_chunks` gives this process its share of the chunks (balanced by cost,
:meth:`~ches.run.distributed.Process.share`), opens the progress bar (on the main process), and takes each of its
chunks in order: read from the cache where a shard holds it, else run and kept there; handed to the work; the
memory its pass freed returned to the system. After the last chunk, or the first error, the bar closes and every
process learns of any failure (:meth:`~ches.run.distributed.Process.fail_together`) before the processes exchange
their results, so none is left waiting for one that stopped.

What differs between the two runs (what a chunk is, how it runs, what its result holds and how the results are
exchanged) is a :class:`ChunkWork`; how large a chunk is, a :class:`ChunkSizes`.

>>> ChunkSizes()
ChunkSizes(pairs=256, sequences=512)
"""

from __future__ import annotations

import contextlib
import ctypes
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import torch

from ..errors import ChesError
from .cache import ShardCache
from .distributed import Process

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(frozen=True)
class ChunkSizes:
    """How much one chunk holds: the unit of work, of caching, of resuming and of sharing among processes.

    A chunk's batches depend on the chunk alone, so these sizes are part of what a run computes (a cache
    shard holds one chunk); the defaults are what ``ches.score``, ``ches.pairs`` and ``ches score`` /
    ``ches pairs`` use. Tests and benchmarks pass smaller ones (``chunk_sizes=`` of
    :func:`ches.api.score_run`, :func:`ches.builder.api.pairs_run` and :func:`ches.cli.commands.main`).

    Attributes:
        pairs: pairs per chunk of ``ches.score``.
        sequences: sequences per chunk of ``ches.pairs`` (whole prompts: a chunk may hold more).

    >>> ChunkSizes(pairs=0)
    Traceback (most recent call last):
    ches.errors.ChesError: chunk_sizes.pairs must be a whole number of at least 1; got 0.
    """

    pairs: int = 256
    sequences: int = 512

    def __post_init__(self) -> None:
        for name in ("pairs", "sequences"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ChesError(f"chunk_sizes.{name} must be a whole number of at least 1; got {value!r}.")


class Bar(Protocol):
    """What the loop asks of a progress bar (tqdm's, or :class:`ches.run.progress.TokenProgress`)."""

    def update(self, n: int) -> object: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Chunk(Generic[Item]):
    """One chunk of this process's share, ready to run.

    Attributes:
        position: the chunk's number in the run's plan.
        item: the work's own description of the chunk (what :meth:`ChunkWork.compute` and
            :meth:`ChunkWork.keep` read).
        rows: the rows of its cache shard (the length of each of its tensors).
        units: how far the bar moves for it when it is read from the cache.
    """

    position: int
    item: Item
    rows: int
    units: int


class ChunkWork(ABC, Generic[Item, Result]):
    """What one kind of chunked run does with its chunks (one subclass per run: ``ches.score``'s pairs,
    ``ches.pairs``' prompts). An instance is one run: :meth:`keep` collects into it."""

    #: the tensors of a chunk's cache shard, by name
    names: tuple[str, ...]

    @abstractmethod
    def costs(self) -> list[float]:
        """Each chunk's cost (its tokens or characters), in plan order: what the processes share evenly."""

    @abstractmethod
    def open_bar(self, mine: list[int]) -> Bar | None:
        """The progress bar over this process's chunks ``mine`` (called on the process that shows it)."""

    @abstractmethod
    def chunks(self, mine: list[int], bar: Bar | None) -> Iterator[Chunk[Item]]:
        """This process's chunks ``mine`` (positions in the plan), in order, ready to run."""

    @abstractmethod
    def key(self, item: Item) -> str:
        """The chunk's cache key (:func:`ches.run.cache.chunk_key` of its token sequences)."""

    @abstractmethod
    def compute(self, item: Item, bar: Bar | None) -> dict[str, torch.Tensor]:
        """Run the chunk: its :attr:`names` tensors, each of :attr:`Chunk.rows` rows; the bar moves as batches finish."""

    @abstractmethod
    def keep(self, chunk: Chunk[Item], tensors: dict[str, torch.Tensor]) -> None:
        """Take a finished chunk's tensors (computed, or read from the cache)."""

    @abstractmethod
    def gather(self, process: Process, reused: int) -> Result:
        """Every process's kept results, on every process (called on every process at the same point);
        ``reused``: this process's chunks read from the cache."""


@dataclass(frozen=True)
class ChunksRun(Generic[Result]):
    """What :func:`run_chunks` gives back: the work's gathered result, and this process's chunks read from the cache."""

    result: Result
    reused: int


def run_chunks(work: ChunkWork[Item, Result], *, process: Process, cache: ShardCache | None = None,
               progress: bool = False) -> ChunksRun[Result]:
    """Run ``work``'s chunks, shared among the processes of ``process``'s job, each read from ``cache`` where it
    holds it (else computed and kept there), with a bar when ``progress`` (on the main process); then gather
    every process's results (see the module docstring).

    Raises:
        Exception: the first error of this process's chunks, after the others were told; on a process
            whose chunks were fine but another's failed, a :class:`~ches.errors.ChesError` saying so.
    """
    mine = process.share(work.costs())
    bar = work.open_bar(mine) if progress and process.is_main else None
    reused, failure = 0, None
    try:
        with contextlib.closing(work.chunks(mine, bar)) as chunks:  # a reader thread stops when the loop does
            for chunk in chunks:
                tensors, cached = _cached_or_computed(work, chunk, cache, bar)
                reused += cached
                work.keep(chunk, tensors)
                release_freed_memory()
    except Exception as error:  # every process learns of it below, instead of waiting at the exchange
        failure = error
    finally:
        if bar is not None:  # an error is printed on a line of its own
            bar.close()
    process.fail_together(failure)
    return ChunksRun(work.gather(process, reused), reused)


def _cached_or_computed(work: ChunkWork[Item, Result], chunk: Chunk[Item], cache: ShardCache | None,
                        bar: Bar | None) -> tuple[dict[str, torch.Tensor], bool]:
    """A chunk's tensors, and whether they came from ``cache`` (where they are saved when computed)."""
    if cache is None:
        return work.compute(chunk.item, bar), False
    key = work.key(chunk.item)
    stored = cache.load(key, rows=chunk.rows, names=work.names)
    if stored is not None:
        if bar is not None:
            bar.update(chunk.units)
        return stored, True
    computed = work.compute(chunk.item, bar)
    cache.save(key, computed)
    return computed, False


def release_freed_memory() -> None:
    """Hand memory freed by the allocator back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    A chunk's passes allocate and free many buffers of ``tokens x hidden size`` floats, of sizes that vary
    from chunk to chunk; glibc keeps such freed blocks in its heap, where they fragment, so without this
    the resident memory of a long run creeps up with the hidden size (4.2 KB per pair at width 1,024 over
    100,000 pairs, measured in benchmarks/scale.py) although nothing is held. Trimming once per chunk
    keeps it flat, for about a millisecond.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the symbols already loaded in this process: glibc's, on Linux
    except (OSError, AttributeError, TypeError):  # no such function (macOS, musl) or no dlopen (Windows)
        return
    trim(0)
