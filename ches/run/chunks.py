"""Chunks: the plan of a run's work (rows cut into chunks of similar length), each chunk's rows tokenized
into the sequences TRL trains on, and the background thread that does so ahead of the device.

The rows are cut into chunks, block by block, longest text first (:func:`plan_chunks`): a fixed plan that
depends on the data alone, so a chunk's numbers depend neither on which process computes it, nor on how
many there are, nor on whether the run was resumed. :func:`stream_chunks` reads and tokenizes a
process's chunks in a background thread, a few (:data:`AHEAD`) ahead of the device.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..data.formats import Pair, pair_problem
from ..data.integrity import chunk_flags, to_bits
from ..data.rows import BLOCK_ROWS, RowSource
from ..data.tokens import (
    SequencePair,
    Skip,
    TokenizedPair,
    check_ids,
    sequence_digest,
    to_sequences,
    tokenize_pairs,
    too_long_reason,
)
from ..model.models import LoadedModel, max_positions
from ..scores import formulas as scores

AHEAD = 4  # chunks tokenized ahead of the device


def plan_chunks(lengths: np.ndarray, chunk_pairs: int, block_rows: int | None = None) -> list[np.ndarray]:
    """Row indices cut into chunks of ``chunk_pairs``: block by block (``block_rows`` rows), each block's
    rows longest first (stable), so a chunk holds rows of similar length and the plan streams. The
    default ``block_rows`` is :data:`ches.data.rows.BLOCK_ROWS`; ``chunk_pairs`` is the runner's
    (default :attr:`ches.run.chunk_loop.ChunkSizes.pairs`).

    >>> [chunk.tolist() for chunk in plan_chunks(np.array([3, 5, 4, 1, 2]), chunk_pairs=2, block_rows=4)]
    [[1, 2], [0, 3], [4]]
    """
    block_rows, chunks = block_rows or BLOCK_ROWS, []
    for begin in range(0, len(lengths), block_rows):
        order = begin + np.argsort(-lengths[begin : begin + block_rows], kind="stable")
        chunks += [order[start : start + chunk_pairs] for start in range(0, len(order), chunk_pairs)]
    return chunks


@dataclass(frozen=True)
class PlannedChunk:
    """One chunk's rows, tokenized and planned (the work of one step of the stream).

    Attributes:
        chunk_id: the chunk's number in the run's plan.
        rows: ``[n]`` the rows, in chunk order.
        plans: per row, the two sequences to run, or why the row is skipped.
        numbers: per row, the score columns known before the model runs (edit distance, token counts,
            whether the prompt was cut, the integrity flags as :func:`ches.data.integrity.to_bits` integers), as
            :data:`ches.run.runner.NUMBERS` names them.
        digests: per row, the :func:`~ches.data.tokens.token_digest` of the sequences it runs (None when skipped).
    """

    chunk_id: int
    rows: np.ndarray
    plans: list[SequencePair | Skip]
    numbers: dict[str, list]
    digests: list[str | None]

    @property
    def work(self) -> list[SequencePair]:
        return [plan for plan in self.plans if isinstance(plan, SequencePair)]


def plan_chunk(chunk_id: int, rows: np.ndarray, pairs: Sequence[Pair], tokenizer, *, max_length: int | None,
               context: int | None, embedding_rows: int | None = None, split: str | None = None) -> PlannedChunk:
    """Tokenize a chunk's pairs (``pairs[i]`` is row ``rows[i]``) and plan each row.

    Raises:
        ChesError: a row of ``split`` whose sequences hold an id of ``embedding_rows`` or more (a token the
            model has no embedding for; :func:`ches.data.tokens.check_ids`), before any of the chunk runs.
    """
    tokenized = tokenize_pairs(pairs, tokenizer, rows=rows)
    plans = [_plan(pair, tokens, max_length, context) for pair, tokens in zip(pairs, tokenized)]
    check_ids(rows, [plan if isinstance(plan, SequencePair) else () for plan in plans], tokenizer, embedding_rows, split)
    numbers: dict[str, list] = {"edit_distance": [], "prompt_tokens": [], "chosen_tokens": [], "rejected_tokens": [],
                                "prompt_cut": [tokens.prompt_cut > 0 for tokens in tokenized],
                                "flag_bits": [to_bits(flags)
                                              for flags in chunk_flags(tokenized, tokenizer, max_length)]}
    for plan, tokens in zip(plans, tokenized):
        if isinstance(plan, SequencePair):
            numbers["edit_distance"].append(scores.edit_distance(plan.chosen.completion_ids, plan.rejected.completion_ids))
            counts = (plan.prompt_tokens, *plan.completion_tokens)
        else:
            numbers["edit_distance"].append(float("nan"))
            counts = (len(tokens.prompt_ids), 0, 0)
        for name, count in zip(("prompt_tokens", "chosen_tokens", "rejected_tokens"), counts):
            numbers[name].append(count)
    digests = [sequence_digest(plan) if isinstance(plan, SequencePair) else None for plan in plans]
    return PlannedChunk(chunk_id, rows, plans, numbers, digests)


def plan_pairs(pairs: Sequence[Pair], loaded: LoadedModel, *, max_length: int | None, rows: Sequence[int] | None = None,
               split: str | None = None) -> list[SequencePair | Skip]:
    """Each pair's two token sequences as ``ches.score`` runs them, or why it is skipped (``rows``: the
    pairs' row numbers in ``split``, for errors; default ``0..n-1``)."""
    rows = np.arange(len(pairs)) if rows is None else np.asarray(rows)
    return plan_chunk(-1, rows, pairs, loaded.tokenizer, max_length=max_length, context=max_positions(loaded.model),
                      embedding_rows=loaded.embedding_rows, split=split).plans


def _plan(pair: Pair, tokenized: TokenizedPair, max_length: int | None, context: int | None) -> SequencePair | Skip:
    problem = pair_problem(pair)
    if problem is not None:
        return Skip(problem)
    plan = to_sequences(tokenized, max_length)
    if isinstance(plan, Skip) or context is None:
        return plan
    longest = max(len(sequence.input_ids) for sequence in plan)
    if longest > context:
        return Skip(too_long_reason(longest, context))
    return plan


def row_digests(source: RowSource, tokenizer, max_length: int | None) -> list[str | None]:
    """Each row's :func:`~ches.data.tokens.token_digest` as a scoring run with ``tokenizer`` and ``max_length``
    would record it (None for a row it would skip), without a model: a block of rows tokenized at a time."""
    digests: list[str | None] = []
    for begin in range(0, len(source.lengths), BLOCK_ROWS):
        pairs = source.pairs(range(begin, min(begin + BLOCK_ROWS, len(source.lengths))))
        for pair, tokens in zip(pairs, tokenize_pairs(pairs, tokenizer, first_row=begin)):
            plan = _plan(pair, tokens, max_length, None)
            digests.append(sequence_digest(plan) if isinstance(plan, SequencePair) else None)
    return digests


def sample_work(sources: Sequence[RowSource], loaded: LoadedModel, *, max_length: int | None,
                rows: int = 512) -> list[SequencePair]:
    """The planned pairs of up to ``rows`` rows spread evenly over ``sources``: what the layout estimate
    (:func:`ches.model.layouts.resolve_layout`) sees of the data's lengths."""
    total = sum(len(source.lengths) for source in sources)
    work = []
    for source in sources:
        count = len(source.lengths)
        picked = np.unique(np.linspace(0, count - 1, max(1, round(rows * count / max(total, 1)))).round().astype(int))
        pairs = source.pairs(picked)
        plans = plan_pairs(pairs, loaded, max_length=max_length, rows=picked, split=source.split)
        work += [plan for plan in plans if isinstance(plan, SequencePair)]
    return work


def stream_chunks(source: RowSource, chunks: list[np.ndarray], mine: list[int], loaded: LoadedModel,
            max_length: int | None) -> Iterator[PlannedChunk]:
    """This process's chunks, planned by a background thread up to :data:`AHEAD` chunks ahead of the
    caller. An error in the thread is raised here; leaving the loop early stops the thread."""
    context, ready, stop = max_positions(loaded.model), queue.Queue(maxsize=AHEAD), threading.Event()

    def produce() -> None:
        try:
            for chunk_id, pairs in zip(mine, source.chunk_pairs(chunks[chunk_id] for chunk_id in mine)):
                rows = chunks[chunk_id]
                item = plan_chunk(chunk_id, rows, pairs, loaded.tokenizer, max_length=max_length, context=context,
                                  embedding_rows=loaded.embedding_rows, split=source.split)
                while not _put(ready, item, stop):
                    if stop.is_set():
                        return
        except BaseException as error:  # handed to the consumer, which raises it
            _put(ready, error, stop)
            return
        _put(ready, None, stop)

    thread = threading.Thread(target=produce, name="ches-tokenize", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _put(ready: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` is set; False if it did not fit within a second (try again)."""
    while not stop.is_set():
        try:
            ready.put(item, timeout=1.0)
            return True
        except queue.Full:
            continue
    return False
