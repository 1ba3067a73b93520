"""The model pass of ``ches.pairs``: every prompt's sequences, in chunks that are shared among processes and cached.

A chunk is a run of whole prompts holding about :data:`CHUNK_SEQUENCES` sequences (each prompt's
responses and its prompt corrections, :class:`ches.builder.api.PromptPlan`). It is the unit of work, of
caching and of sharing: under ``torchrun`` / ``accelerate launch`` each process runs a share of the
chunks (balanced by tokens, :meth:`ches.run.distributed.Process.share`) and the processes then exchange the
sums, so every process holds all of them and selects the same pairs; with ``cache_dir`` each finished
chunk's sums are kept (:class:`ches.run.cache.ShardCache`, named by a hash of the chunk's token sequences),
so a second run, or a run after a crash, runs only the chunks not yet kept. A chunk's batches depend on
the chunk alone, so one process, several, or a resumed run give the same numbers.

>>> from ches.data.tokens import TokenSequence
>>> one = TokenSequence([1, 2, 3], 0, 2)
>>> chunk_groups([[one, one], [one], [one, one, one]], limit=3)
[[0, 1], [2]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..data.tokens import TokenSequence
from ..model.engine import HiddenSums
from ..model.layouts import LayoutChoice
from ..model.logps import LMHead
from ..run.cache import ShardCache, chunk_key
from ..run.distributed import Process
from ..run.runner import progress_bar, release_freed_memory, run_sequences

#: sequences per chunk (whole prompts: a chunk may hold more): the unit of work, of caching and of sharing
CHUNK_SEQUENCES = 512


@dataclass(frozen=True)
class GroupSums:
    """What :func:`run_groups` computed: the sums of every sequence, in order (on every process), the
    token slots that reached the model (over all processes), and the chunks read from the cache."""

    sums: HiddenSums
    tokens_run: int
    chunks_reused: int


def chunk_groups(groups: Sequence[Sequence[TokenSequence]], limit: int | None = None) -> list[list[int]]:
    """Consecutive groups (indices) in chunks of at least ``limit`` sequences (default :data:`CHUNK_SEQUENCES`),
    the last one possibly smaller."""
    limit = CHUNK_SEQUENCES if limit is None else limit
    chunks, current, count = [], [], 0
    for index, group in enumerate(groups):
        current.append(index)
        count += len(group)
        if count >= limit:
            chunks.append(current)
            current, count = [], 0
    return chunks + ([current] if current else [])


def run_groups(groups: Sequence[Sequence[TokenSequence]], loaded, *, layout: LayoutChoice, batch_tokens: int,
               head: LMHead | None = None, cache: ShardCache | None = None, process: Process | None = None,
               progress: bool = False) -> GroupSums:
    """The :class:`~ches.model.engine.HiddenSums` of every sequence of every group (a group's sequences share a
    prompt, written once where the layout allows), in order; with ``head`` their log-probabilities too.

    Args:
        groups: each prompt's sequences.
        loaded, layout, batch_tokens: the run's model, layout (set up for it) and batch budget.
        head: the model's output layer, for log-probabilities.
        cache: where finished chunks are kept and found.
        process: this process's place in the job (default: the only one).
        progress: a bar over sequences (on the main process).
    """
    process = process or Process()
    chunks = chunk_groups(groups)
    sequences = [list(group) for group in groups]
    starts = [0]
    for group in sequences:
        starts.append(starts[-1] + len(group))
    mine = process.share([float(sum(len(item.input_ids) for index in chunk for item in sequences[index]))
                          for chunk in chunks])
    bar = progress_bar(sum(starts[chunk[-1] + 1] - starts[chunk[0]] for chunk in (chunks[i] for i in mine)),
                       progress and process.is_main, unit="sequence")
    names = ("sums", "last") + (("logps",) if head is not None else ())
    indices, parts, tokens_run, reused, failure = [], {name: [] for name in names}, 0, 0, None
    try:
        for position in mine:
            chunk = chunks[position]
            members = [item for index in chunk for item in sequences[index]]
            first = starts[chunk[0]]
            local = [list(range(starts[index] - first, starts[index + 1] - first)) for index in chunk]
            key = chunk_key([sequences[index] for index in chunk]) if cache is not None else None
            stored = cache.load(key, rows=len(members), names=names) if cache is not None else None
            if stored is None:
                done = None if bar is None else (lambda finished: bar.update(len(finished)))
                result = run_sequences(members, local, loaded, layout=layout, batch_tokens=batch_tokens, on_done=done,
                                       head=head)
                stored = {"sums": result.sums, "last": result.last} | ({"logps": result.logps} if head else {})
                tokens_run += layout.strategy.token_slots(members, local)
                if cache is not None:
                    cache.save(key, stored)
                release_freed_memory()
            else:
                reused += 1
                if bar is not None:
                    bar.update(len(members))
            indices.append(torch.arange(first, first + len(members)))
            for name in names:
                parts[name].append(stored[name])
    except Exception as error:  # every process learns of it below, instead of waiting at the exchange
        failure = error
    finally:
        if bar is not None:
            bar.close()
    process.fail_together(failure)
    return _gathered(process, indices, parts, starts[-1], tokens_run, reused, loaded.hidden_size)


def _gathered(process: Process, indices: list[torch.Tensor], parts: dict[str, list[torch.Tensor]], total: int,
              tokens_run: int, reused: int, hidden_size: int) -> GroupSums:
    """Every process's sums placed by sequence, on every process; the counts summed over processes."""
    index = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long)
    empty = {"sums": torch.zeros(0, hidden_size), "last": torch.zeros(0, hidden_size),
             "logps": torch.zeros(0, dtype=torch.float64)}
    values = {name: process.gather_rows(index, torch.cat(chunks) if chunks else empty[name], total)
              for name, chunks in parts.items()}
    counts = process.gather_flat(torch.tensor([tokens_run, reused], dtype=torch.long))
    return GroupSums(HiddenSums(values["sums"], values["last"], values.get("logps")),
                     tokens_run=int(sum(count[0] for count in counts)), chunks_reused=int(sum(count[1] for count in counts)))
