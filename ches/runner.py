"""Running the decoder over all pairs: chunks, spread over ranks, optionally cached on disk.

The work is cut into chunks of ``CHUNK_PAIRS`` pairs (longest pairs first, a fixed order), so a chunk's
numbers do not depend on which rank computes it, on how many ranks there are, or on whether a run was
resumed. Each rank computes its share of the chunks (balanced by token count), loading finished ones
from the cache when there is one, and the sums are then gathered so every rank holds all of them.
Tokenization is shared the same way: each rank tokenizes one block of rows, and the blocks are exchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .attention import VARLEN
from .cache import ShardCache
from .distributed import Ranks
from .engine import HiddenSums, hidden_sums, shared_prompt_sums
from .errors import ChesError
from .formats import Pair
from .models import attention_kernel
from .scores import edit_distance
from .tokens import ScoredSequence, TokenizedPair, from_flat, to_flat, tokenize_pairs

CHUNK_PAIRS = 256


def plan_chunks(pairs: Sequence[tuple[ScoredSequence, ScoredSequence]], chunk_pairs: int) -> list[list[int]]:
    """Pair indices, longest pair first (stable), cut into chunks of ``chunk_pairs``.

    >>> seq = lambda n: ScoredSequence(list(range(n)), 0, n - 1)
    >>> plan_chunks([(seq(3), seq(2)), (seq(5), seq(2)), (seq(4), seq(4))], chunk_pairs=2)
    [[1, 2], [0]]
    """
    order = sorted(range(len(pairs)), key=lambda i: -max(len(s.input_ids) for s in pairs[i]))
    return [order[start : start + chunk_pairs] for start in range(0, len(order), chunk_pairs)]


def run_chunk(sequences: list[ScoredSequence], loaded, *, layout: str, batch_tokens: int, pad_id: int,
              on_done: Callable[[list[int]], None] | None) -> HiddenSums:
    """The engine call for one chunk, in the chosen layout (``sequences`` alternate chosen, rejected)."""
    if layout == "shared_prompt":
        return shared_prompt_sums(loaded.body, sequences, hidden_size=loaded.hidden_size, device=loaded.device,
                                  on_done=on_done)
    varlen = attention_kernel(loaded.model) == VARLEN
    if layout == "prefix_shared" and not varlen:
        raise ValueError("the prefix_shared layout runs on ches' padding-free kernel only")
    pairs = [(index, index + 1) for index in range(0, len(sequences), 2)] if layout == "prefix_shared" else None
    return hidden_sums(loaded.body, sequences, hidden_size=loaded.hidden_size, batch_tokens=batch_tokens,
                       device=loaded.device, pad_id=pad_id, pad_multiple=64 if loaded.device.type == "cuda" else 1,
                       packing=layout in ("packed", "prefix_shared"), one_row=varlen, groups=pairs, on_done=on_done)


def tokenize_shared(pairs: Sequence[Pair], tokenizer, ranks: Ranks) -> list[TokenizedPair]:
    """:func:`~ches.tokens.tokenize_pairs` of all pairs, each rank tokenizing one contiguous block of
    them and the blocks then exchanged, so ``N`` processes tokenize ``N`` times faster instead of
    each doing all the work. An error on any rank is raised on every rank (none is left waiting).
    """
    if ranks.world == 1:
        return tokenize_pairs(pairs, tokenizer)
    begin, end = ranks.block(len(pairs))
    try:
        block, problem = tokenize_pairs(pairs[begin:end], tokenizer, first_row=begin), ""
    except ChesError as error:
        block, problem = [], str(error)
    problems = [bytes(p.tolist()).decode() for p in ranks.gather_flat(torch.tensor(list(problem.encode()), dtype=torch.long))]
    if any(problems):
        raise ChesError(next(p for p in problems if p))
    return [pair for flat in ranks.gather_flat(to_flat(block)) for pair in from_flat(flat)]


def edit_distances(planned: Sequence, ranks: Ranks) -> list[float]:
    """:func:`~ches.scores.edit_distance` of each planned pair's completions (NaN for a skipped row,
    whose plan is its skip reason), each rank computing one block of rows."""
    begin, end = ranks.block(len(planned))
    mine = [float("nan") if isinstance(plan, str) else edit_distance(plan[0].completion_ids, plan[1].completion_ids)
            for plan in planned[begin:end]]
    return torch.cat(ranks.gather_flat(torch.tensor(mine, dtype=torch.float64))).tolist()


def compute_sums(
    pairs: Sequence[tuple[ScoredSequence, ScoredSequence]],
    loaded,
    *,
    layout: str,
    batch_tokens: int,
    pad_id: int,
    ranks: Ranks,
    cache: ShardCache | None = None,
    on_pairs: Callable[[int], None] | None = None,
) -> tuple[HiddenSums, int]:
    """Hidden sums of every pair's two sequences (``[2 * len(pairs), H]``, chosen then rejected),
    and how many chunks came from the cache."""
    chunks = plan_chunks(pairs, CHUNK_PAIRS)
    costs = [sum(len(s.input_ids) for p in chunk for s in pairs[p]) for chunk in chunks]
    indices, sums, last, reused = [], [], [], 0
    for chunk_id in ranks.share(costs):
        members = chunks[chunk_id]
        stored = cache.load(chunk_id, rows=2 * len(members)) if cache is not None else None
        if stored is None:
            sequences = [sequence for p in members for sequence in pairs[p]]
            done = _pair_counter(on_pairs)
            computed = run_chunk(sequences, loaded, layout=layout, batch_tokens=batch_tokens, pad_id=pad_id,
                                 on_done=done)
            stored = {"sums": computed.sums, "last": computed.last}
            if cache is not None:
                cache.save(chunk_id, stored)
        else:
            reused += 1
            if on_pairs is not None:
                on_pairs(len(members))
        indices.append(torch.tensor([2 * p + side for p in members for side in (0, 1)], dtype=torch.long))
        sums.append(stored["sums"])
        last.append(stored["last"])
    width = loaded.hidden_size
    index = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long)
    stacked_sums = torch.cat(sums) if sums else torch.zeros(0, width)
    stacked_last = torch.cat(last) if last else torch.zeros(0, width)
    total = 2 * len(pairs)
    return HiddenSums(ranks.gather_rows(index, stacked_sums, total), ranks.gather_rows(index, stacked_last, total)), reused


def _pair_counter(on_pairs: Callable[[int], None] | None) -> Callable[[list[int]], None] | None:
    """Turn the engine's per-sequence callbacks into "n more pairs finished" calls."""
    if on_pairs is None:
        return None
    seen: dict[int, int] = {}

    def on_done(indices: list[int]) -> None:
        finished = set()
        for index in indices:
            seen[index // 2] = seen.get(index // 2, 0) + 1
            if seen[index // 2] == 2:
                finished.add(index // 2)
        on_pairs(len(finished))

    return on_done
