"""The model pass of ``ches.pairs``: every prompt's sequences, in chunks that are shared among processes and cached.

A chunk is a run of whole prompts holding about ``chunk_sequences`` sequences (default :attr:`ChunkSizes.sequences
<ches.run.chunk_loop.ChunkSizes>`; each prompt's responses and its prompt corrections,
:class:`ches.builder.plan.PromptPlan`). It is the unit of work, of caching and of sharing, run by the loop
``ches.score`` runs its chunks with (:func:`ches.run.chunk_loop.run_chunks`): under ``torchrun`` / ``accelerate
launch`` each process runs a share of the chunks (balanced by tokens, :meth:`ches.run.distributed.Process.share`)
and the processes then exchange the sums, so every process holds all of them and selects the same pairs; with
``cache_dir`` each finished chunk's sums are kept (:class:`ches.run.cache.ShardCache`, named by a hash of the
chunk's token sequences), so a second run, or a run after a crash, runs only the chunks not yet kept. A chunk's
batches depend on the chunk alone, so one process, several, or a resumed run give the same numbers.

>>> from ches.data.tokens import TokenSequence
>>> one = TokenSequence([1, 2, 3], 0, 2)
>>> chunk_groups([[one, one], [one], [one, one, one]], limit=3)
[[0, 1], [2]]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..data.tokens import TokenSequence
from ..model.engine import HiddenSums
from ..model.layouts import LayoutChoice
from ..model.logps import LMHead
from ..model.models import LoadedModel
from ..run.cache import ShardCache, chunk_key
from ..run.chunk_loop import Bar, Chunk, ChunkSizes, ChunkWork, run_chunks
from ..run.distributed import Process
from ..run.progress import progress_bar
from ..run.runner import run_sequences


@dataclass(frozen=True)
class GroupSums:
    """What :func:`run_groups` computed: the sums of every sequence, in order (on every process), the
    token slots that reached the model (over all processes), and the chunks read from the cache."""

    sums: HiddenSums
    tokens_run: int
    chunks_reused: int


def chunk_groups(groups: Sequence[Sequence[TokenSequence]], limit: int = ChunkSizes.sequences) -> list[list[int]]:
    """Consecutive groups (indices) in chunks of at least ``limit`` sequences, the last one possibly smaller."""
    chunks, current, count = [], [], 0
    for index, group in enumerate(groups):
        current.append(index)
        count += len(group)
        if count >= limit:
            chunks.append(current)
            current, count = [], 0
    return chunks + ([current] if current else [])


def run_groups(groups: Sequence[Sequence[TokenSequence]], loaded: LoadedModel, *, layout: LayoutChoice,
               batch_tokens: int, head: LMHead | None = None, cache: ShardCache | None = None,
               process: Process | None = None, progress: bool = False,
               chunk_sequences: int = ChunkSizes.sequences) -> GroupSums:
    """The :class:`~ches.model.engine.HiddenSums` of every sequence of every group (a group's sequences share a
    prompt, written once where the layout allows), in order; with ``head`` their log-probabilities too.

    Args:
        groups: each prompt's sequences.
        loaded, layout, batch_tokens: the run's model, layout (set up for it) and batch budget.
        head: the model's output layer, for log-probabilities.
        cache: where finished chunks are kept and found.
        process: this process's place in the job (default: the only one).
        progress: a bar over sequences (on the main process).
        chunk_sequences: sequences per chunk (whole prompts: :func:`chunk_groups`).
    """
    work = _GroupChunks(groups, loaded, layout=layout, batch_tokens=batch_tokens, head=head,
                        chunk_sequences=chunk_sequences)
    return run_chunks(work, process=process or Process(), cache=cache, progress=progress).result


@dataclass(frozen=True)
class _GroupChunk:
    """One chunk of prompts: its sequences in order, the positions (among them) of each prompt's, and the
    prompts' sequences (what its cache key hashes)."""

    members: list[TokenSequence]
    local: list[list[int]]
    groups: list[list[TokenSequence]]


class _GroupChunks(ChunkWork[_GroupChunk, GroupSums]):
    """``ches.pairs``' chunks: whole prompts (:func:`chunk_groups`), their sequences' sums kept in order; a bar over
    sequences."""

    def __init__(self, groups: Sequence[Sequence[TokenSequence]], loaded: LoadedModel, *, layout: LayoutChoice,
                 batch_tokens: int, head: LMHead | None, chunk_sequences: int) -> None:
        self.loaded, self.layout, self.batch_tokens, self.head = loaded, layout, batch_tokens, head
        self.groups = [list(group) for group in groups]
        self.plan = chunk_groups(self.groups, chunk_sequences)
        self.starts = [0]
        for group in self.groups:
            self.starts.append(self.starts[-1] + len(group))
        self.names = ("sums", "last") + (("logps",) if head is not None else ())
        self.indices: list[torch.Tensor] = []
        self.parts: dict[str, list[torch.Tensor]] = {name: [] for name in self.names}
        self.tokens_run = 0

    def _span(self, position: int) -> tuple[int, int]:
        """The first sequence of chunk ``position`` and the one after its last."""
        chunk = self.plan[position]
        return self.starts[chunk[0]], self.starts[chunk[-1] + 1]

    def costs(self) -> list[float]:
        return [float(sum(len(item.input_ids) for index in chunk for item in self.groups[index])) for chunk in self.plan]

    def open_bar(self, mine: list[int]) -> Bar | None:
        return progress_bar(sum(end - begin for begin, end in map(self._span, mine)), True, unit="sequence")

    def chunks(self, mine: list[int], bar: Bar | None) -> Iterator[Chunk[_GroupChunk]]:
        for position in mine:
            chunk, (first, _) = self.plan[position], self._span(position)
            members = [item for index in chunk for item in self.groups[index]]
            local = [list(range(self.starts[index] - first, self.starts[index + 1] - first)) for index in chunk]
            item = _GroupChunk(members, local, [self.groups[index] for index in chunk])
            yield Chunk(position, item, rows=len(members), units=len(members))

    def key(self, item: _GroupChunk) -> str:
        return chunk_key(item.groups)

    def compute(self, item: _GroupChunk, bar: Bar | None) -> dict[str, torch.Tensor]:
        done = None if bar is None else (lambda finished: bar.update(len(finished)))
        result = run_sequences(item.members, item.local, self.loaded, layout=self.layout,
                               batch_tokens=self.batch_tokens, on_done=done, head=self.head)
        self.tokens_run += self.layout.strategy.token_slots(item.members, item.local)
        return {"sums": result.sums, "last": result.last} | ({"logps": result.logps} if self.head is not None else {})

    def keep(self, chunk: Chunk[_GroupChunk], tensors: dict[str, torch.Tensor]) -> None:
        first, end = self._span(chunk.position)
        self.indices.append(torch.arange(first, end))
        for name in self.names:
            self.parts[name].append(tensors[name])

    def gather(self, process: Process, reused: int) -> GroupSums:
        """Every process's sums placed by sequence, on every process; the counts summed over processes."""
        index = torch.cat(self.indices) if self.indices else torch.zeros(0, dtype=torch.long)
        hidden = self.loaded.hidden_size
        empty = {"sums": torch.zeros(0, hidden), "last": torch.zeros(0, hidden),
                 "logps": torch.zeros(0, dtype=torch.float64)}
        values = {name: process.gather_rows(index, torch.cat(parts) if parts else empty[name], self.starts[-1])
                  for name, parts in self.parts.items()}
        counts = process.gather_flat(torch.tensor([self.tokens_run, reused], dtype=torch.long))
        return GroupSums(HiddenSums(values["sums"], values["last"], values.get("logps")),
                         tokens_run=int(sum(count[0] for count in counts)),
                         chunks_reused=int(sum(count[1] for count in counts)))
