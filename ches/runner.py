"""The per-pair pipeline: pairs -> plans -> chunks of decoder passes -> per-pair scores.

:func:`plan_pairs` tokenizes the pairs and plans each row: a :class:`~ches.tokens.SequencePair` to
run, or a :class:`~ches.tokens.Skip` saying why not. :func:`score_planned` runs the plans in chunks of
``CHUNK_PAIRS`` pairs (longest pairs first, a fixed order), so a chunk's numbers depend neither on
which process computes it, nor on how many there are, nor on whether the run was resumed. Each chunk
is reduced to its score columns as soon as its hidden sums exist: a row costs a few numbers, not
``4 x H`` floats, unless the caller keeps the sums (for embeddings). Each process computes its share
of the chunks (balanced by token count), loading finished ones from the cache when there is one; the
scores are then exchanged, so every process returns all of them. Tokenization and edit distances are
shared the same way: each process does one block of rows.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from . import scores
from .cache import ShardCache
from .distributed import Process
from .engine import HiddenSums, hidden_sums, shared_prompt_sums
from .errors import ChesError
from .formats import Pair, pair_problem
from .layouts import LayoutChoice
from .models import LoadedModel, max_positions
from .stats import skip_reasons
from .tokens import SequencePair, Skip, TokenizedPair, TokenSequence, from_flat, to_flat, to_sequences, tokenize_pairs

logger = logging.getLogger("ches")

CHUNK_PAIRS = 256
#: per-pair numbers computed from the hidden sums (the rest of the score columns come from the plans)
SUM_SCORES = ("ches", "ln_ches", "last_hidden_ip")


@dataclass(frozen=True)
class PlannedPairs:
    """Pairs tokenized and planned, before any forward pass.

    Attributes:
        plans: per row, the two sequences to run, or why the row is skipped.
        tokenized: per row, its TRL token ids.
        owners: the rows that are run; ``work[k]`` is row ``owners[k]``'s pair.
        work: the sequence pairs to run.
    """

    plans: list[SequencePair | Skip]
    tokenized: list[TokenizedPair]
    owners: list[int]
    work: list[SequencePair]


@dataclass(frozen=True)
class SideSums:
    """Hidden-state reductions of ``N`` pairs, one ``[N, H]`` float32 tensor per side and kind."""

    chosen_sum: torch.Tensor
    rejected_sum: torch.Tensor
    chosen_last: torch.Tensor
    rejected_last: torch.Tensor

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"chosen_sum": self.chosen_sum, "rejected_sum": self.rejected_sum,
                "chosen_last": self.chosen_last, "rejected_last": self.rejected_last}


@dataclass(frozen=True)
class ScoredRows:
    """What :func:`score_planned` computed for a table of rows.

    Attributes:
        columns: the score columns for the dataset, by name (:data:`ches.columns.SCORE_COLUMNS`),
            NaN / zero where ``ches_skip`` has a reason.
        owners: the rows that were run.
        sums: the hidden sums of ``owners``' pairs, in that order; only when asked for (embeddings).
        prompt_cut: rows whose prompt ids were not a prefix of the full ids (cut as in TRL).
    """

    columns: dict[str, list]
    owners: list[int]
    sums: SideSums | None
    prompt_cut: int


def plan_pairs(pairs: Sequence[Pair], loaded: LoadedModel, *, max_length: int | None,
               process: Process | None = None) -> PlannedPairs:
    """Tokenize normalized pairs (shared over processes) and plan each row's sequences or skip reason."""
    tokenized = tokenize_shared(pairs, loaded.tokenizer, process or Process())
    context = max_positions(loaded.model)
    plans = [_plan(pair, tokens, max_length, context) for pair, tokens in zip(pairs, tokenized)]
    owners = [row for row, plan in enumerate(plans) if isinstance(plan, SequencePair)]
    return PlannedPairs(plans, tokenized, owners, [plans[row] for row in owners])


def _plan(pair: Pair, tokenized: TokenizedPair, max_length: int | None, context: int | None) -> SequencePair | Skip:
    problem = pair_problem(pair)
    if problem is not None:
        return Skip(problem)
    plan = to_sequences(tokenized, max_length)
    if isinstance(plan, Skip) or context is None:
        return plan
    longest = max(len(sequence.input_ids) for sequence in plan)
    if longest > context:
        return Skip(f"sequence of {longest} tokens exceeds the model's context ({context}); pass max_length")
    return plan


def score_planned(planned: PlannedPairs, loaded: LoadedModel, *, layout: LayoutChoice, batch_tokens: int,
                  progress: bool = False, cache: ShardCache | None = None, keep_sums: bool = False,
                  process: Process | None = None) -> ScoredRows:
    """Run the model over planned pairs in ``layout`` (resolved for this model) and score every row."""
    process = process or Process()
    bar = progress_bar(len(planned.work), progress and process.is_main)
    computed, reused = compute_scores(planned.work, loaded, layout=layout, batch_tokens=batch_tokens, process=process,
                                      cache=cache, keep_sums=keep_sums, on_pairs=bar.update if bar is not None else None)
    result = _assemble(planned, computed, edit_distances(planned.plans, process))
    summary = _summary(result, loaded.name) + (f"; {reused} finished chunks reused from {cache.folder}" if reused else "")
    if bar is not None:
        bar.close()
        if not logger.isEnabledFor(logging.INFO):  # nobody would see the log record: show it with the bar
            bar.write(summary, file=sys.stderr)
    if process.is_main:
        logger.info(summary)
    return result


def plan_chunks(pairs: Sequence[SequencePair], chunk_pairs: int) -> list[list[int]]:
    """Pair indices, longest pair first (stable), cut into chunks of ``chunk_pairs``.

    >>> seq = lambda n: TokenSequence(list(range(n)), 0, n - 1)
    >>> plan_chunks([SequencePair(seq(3), seq(2)), SequencePair(seq(5), seq(2)), SequencePair(seq(4), seq(4))], 2)
    [[1, 2], [0]]
    """
    order = sorted(range(len(pairs)), key=lambda i: -max(len(s.input_ids) for s in pairs[i]))
    return [order[start : start + chunk_pairs] for start in range(0, len(order), chunk_pairs)]


def run_chunk(pairs: Sequence[SequencePair], loaded: LoadedModel, *, layout: LayoutChoice, batch_tokens: int,
              on_done: Callable[[list[int]], None] | None = None) -> SideSums:
    """The engine's hidden sums of each pair's two sequences, in ``layout``. ``on_done`` gets the
    indices (into ``pairs``) of pairs finished so far, once per sequence finished."""
    count = len(pairs)
    sequences = [pair.chosen for pair in pairs] + [pair.rejected for pair in pairs]  # sequence i + count: i's rejected
    done = None if on_done is None else (lambda indices: on_done([index % count for index in indices]))
    groups = [(index, index + count) for index in range(count)]  # the two sequences of pair i share its prompt
    sums = run_sequences(sequences, groups, loaded, layout=layout, batch_tokens=batch_tokens, on_done=done)
    return SideSums(sums.sums[:count], sums.sums[count:], sums.last[:count], sums.last[count:])


def run_sequences(sequences: Sequence[TokenSequence], groups: Sequence[Sequence[int]], loaded: LoadedModel, *,
                  layout: LayoutChoice, batch_tokens: int,
                  on_done: Callable[[list[int]], None] | None = None) -> HiddenSums:
    """The engine's :class:`~ches.engine.HiddenSums` of ``sequences`` in ``layout`` (resolved for this
    model). ``groups`` are the indices of sequences that share a prompt: written once in the
    ``prefix_shared`` layout (any number per group), run through one KV cache in ``shared_prompt``
    (``(chosen, rejected)`` pairs only); the other layouts run every sequence on its own."""
    if layout.layout == "shared_prompt":
        return shared_prompt_sums(loaded.body, sequences, groups=groups, hidden_size=loaded.hidden_size,
                                  device=loaded.device, on_done=on_done)
    if layout.layout == "prefix_shared" and not layout.padding_free:
        raise ValueError("the prefix_shared layout runs on ches' padding-free kernel only")
    pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    return hidden_sums(loaded.body, sequences, hidden_size=loaded.hidden_size, batch_tokens=batch_tokens,
                       device=loaded.device, pad_id=pad_id, pad_multiple=64 if loaded.device.type == "cuda" else 1,
                       packing=layout.layout in ("packed", "prefix_shared"), one_row=layout.padding_free,
                       groups=groups if layout.layout == "prefix_shared" else None, on_done=on_done)


def pair_scores(pairs: Sequence[SequencePair], sums: SideSums) -> dict[str, torch.Tensor]:
    """The :data:`SUM_SCORES` of each pair (``[N]`` float64 each), from its hidden sums."""
    chosen_n, rejected_n = (torch.tensor(column, dtype=torch.long).reshape(-1)
                            for column in zip(*(pair.completion_tokens for pair in pairs)))
    return {"ches": scores.ches(sums.chosen_sum, sums.rejected_sum),
            "ln_ches": scores.ln_ches(sums.chosen_sum, sums.rejected_sum, chosen_n, rejected_n),
            "last_hidden_ip": scores.last_hidden_ip(sums.chosen_last, sums.rejected_last)}


def compute_scores(
    pairs: Sequence[SequencePair],
    loaded: LoadedModel,
    *,
    layout: LayoutChoice,
    batch_tokens: int,
    process: Process,
    cache: ShardCache | None = None,
    keep_sums: bool = False,
    on_pairs: Callable[[int], None] | None = None,
) -> tuple[dict[str, torch.Tensor], int]:
    """The :data:`SUM_SCORES` of every pair (``[N]`` float64, on every process), plus the hidden sums
    (``[N, H]`` per :class:`SideSums` field) when ``keep_sums``; and how many chunks came from the cache."""
    chunks = plan_chunks(pairs, CHUNK_PAIRS)
    costs = [sum(len(s.input_ids) for p in chunk for s in pairs[p]) for chunk in chunks]
    names = SUM_SCORES + (tuple(SideSums.__dataclass_fields__) if keep_sums else ())
    indices, parts, reused = [], {name: [] for name in names}, 0
    for chunk_id in process.share(costs):
        members = chunks[chunk_id]
        stored = cache.load(chunk_id, rows=len(members), names=names) if cache is not None else None
        if stored is None:
            chunk = [pairs[p] for p in members]
            sums = run_chunk(chunk, loaded, layout=layout, batch_tokens=batch_tokens, on_done=_pair_counter(on_pairs))
            stored = pair_scores(chunk, sums) | (sums.tensors() if keep_sums else {})
            if cache is not None:
                cache.save(chunk_id, stored)
        else:
            reused += 1
            if on_pairs is not None:
                on_pairs(len(members))
        indices.append(torch.tensor(members, dtype=torch.long))
        for name in names:
            parts[name].append(stored[name])
    index = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long)
    empty = {name: torch.zeros(0, dtype=torch.float64) for name in SUM_SCORES}
    empty |= {name: torch.zeros(0, loaded.hidden_size) for name in names if name not in SUM_SCORES}
    gathered = {name: process.gather_rows(index, torch.cat(parts[name]) if parts[name] else empty[name], len(pairs))
                for name in names}
    return gathered, reused


def tokenize_shared(pairs: Sequence[Pair], tokenizer, process: Process) -> list[TokenizedPair]:
    """:func:`~ches.tokens.tokenize_pairs` of all pairs, each process tokenizing one contiguous block of
    them and the blocks then exchanged, so ``N`` processes tokenize ``N`` times faster instead of
    each doing all the work. An error in any process is raised in every process (none is left waiting).
    """
    if process.world == 1:
        return tokenize_pairs(pairs, tokenizer)
    begin, end = process.block(len(pairs))
    try:
        block, problem = tokenize_pairs(pairs[begin:end], tokenizer, first_row=begin), ""
    except ChesError as error:
        block, problem = [], str(error)
    problems = [bytes(p.tolist()).decode() for p in process.gather_flat(torch.tensor(list(problem.encode()), dtype=torch.long))]
    if any(problems):
        raise ChesError(next(p for p in problems if p))
    return [pair for flat in process.gather_flat(to_flat(block)) for pair in from_flat(flat)]


def edit_distances(plans: Sequence[SequencePair | Skip], process: Process) -> list[float]:
    """:func:`~ches.scores.edit_distance` of each planned pair's completions (NaN for a skipped row),
    each process computing one block of rows."""
    begin, end = process.block(len(plans))
    mine = [scores.edit_distance(plan.chosen.completion_ids, plan.rejected.completion_ids)
            if isinstance(plan, SequencePair) else float("nan") for plan in plans[begin:end]]
    return torch.cat(process.gather_flat(torch.tensor(mine, dtype=torch.float64))).tolist()


def _assemble(planned: PlannedPairs, computed: dict[str, torch.Tensor], distances: list[float]) -> ScoredRows:
    rows, owners = len(planned.plans), torch.tensor(planned.owners, dtype=torch.long)
    columns: dict[str, list] = {}
    for name in SUM_SCORES:
        full = torch.full((rows,), float("nan"), dtype=torch.float64)
        full[owners] = computed[name]
        columns[name] = full.tolist()
    columns["edit_distance"] = distances
    lengths = [(plan.prompt_tokens, *plan.completion_tokens) if isinstance(plan, SequencePair)
               else (len(tokens.prompt_ids), 0, 0) for plan, tokens in zip(planned.plans, planned.tokenized)]
    columns["prompt_tokens"], columns["chosen_tokens"], columns["rejected_tokens"] = (list(c) for c in zip(*lengths))
    columns["ches_skip"] = [plan.reason if isinstance(plan, Skip) else None for plan in planned.plans]
    sums = SideSums(**{name: computed[name] for name in SideSums.__dataclass_fields__}) if "chosen_sum" in computed else None
    return ScoredRows(columns, planned.owners, sums, prompt_cut=sum(pair.prompt_cut > 0 for pair in planned.tokenized))


def _pair_counter(on_pairs: Callable[[int], None] | None) -> Callable[[list[int]], None] | None:
    """Turn the engine's per-sequence callbacks (pair indices) into "n more pairs finished" calls."""
    if on_pairs is None:
        return None
    seen: dict[int, int] = {}

    def on_done(indices: list[int]) -> None:
        finished = 0
        for index in indices:
            seen[index] = seen.get(index, 0) + 1
            finished += seen[index] == 2
        on_pairs(finished)

    return on_done


def progress_bar(total: int, enabled: bool, unit: str = "pair"):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, desc="ches")


def _summary(result: ScoredRows, model_name: str) -> str:
    """One line: rows scored and skipped (by reason), and prompts cut at a token boundary."""
    reasons = skip_reasons(result.columns["ches_skip"])
    total, skipped = len(result.columns["ches_skip"]), sum(reasons.values())
    detail = "".join(f"; {count} {reason}" for reason, count in reasons.most_common())
    return (
        f"ches: scored {total - skipped} of {total} rows with {model_name}; skipped {skipped}{detail}; "
        f"{result.prompt_cut} prompts were not a token prefix of their completions and were cut to the "
        "common prefix, as TRL does"
    )
