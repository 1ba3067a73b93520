"""The decoder pass: run only the model body and reduce its last hidden states to per-sequence sums.

This module runs the model for scores (the layouts' probes and the ``shared_prompt`` layout's KV-cache run,
in :mod:`ches.model.layouts`, :mod:`ches.evaluate.probes` and the cache's weight hash touch it too, for their
own ends). For each sequence it returns

- ``sums[i]``: the float32 sum of the hidden states at the sequence's summed positions, and
- ``last[i]``: the hidden state at its last summed position (for ``last_hidden_ip``),

copying nothing else back from the device. The LM head never runs; ``output_hidden_states`` is never
requested. Half-precision hidden states are widened to float32 before summing, so 2,000-token
completions in bf16/fp16 give finite sums.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from einops import rearrange

from ..data.tokens import TokenSequence
from ..errors import ChesError
from .attention import SEGMENTS_KEYWORD
from .batches import Batch, collate, group_length, pack, pack_groups, padded_length, rows_that_fit
from .logps import LMHead, sequence_logp_parts

logger = logging.getLogger("ches")


@dataclass(frozen=True)
class HiddenSums:
    """Per-sequence reductions of the last hidden state.

    Attributes:
        sums: ``[N, H]`` float32, ``S`` for each sequence.
        last: ``[N, H]`` float32, the hidden state at each sequence's last summed position.
        logps: ``[N]`` float64, each completion's log-probability under the model (:mod:`ches.model.logps`),
            when the pass was asked for them.
        shared_logps: ``[N]`` float64, with ``logps``: the log-probability of each completion's first
            :attr:`~ches.data.tokens.TokenSequence.shared` tokens (LD-DPO's shared part; all of them when None).
    """

    sums: torch.Tensor
    last: torch.Tensor
    logps: torch.Tensor | None = None
    shared_logps: torch.Tensor | None = None


def run_body(body: torch.nn.Module, batch: Batch, head: LMHead | None = None):
    """One forward pass of the decoder body; returns ``([B, H] sums, [B, H] last)`` in float32, and with a
    ``head`` also ``[B]`` float64 completion log-probabilities and those of their LD-DPO shared parts (the head
    applied at the summed positions only).

    A batch's attention segments (padding-free rows) go to every layer's kernel with the forward's
    keyword arguments, where the model passes those on; otherwise the kernel reads them itself.
    """
    extra = {} if batch.position_ids is None else {"position_ids": batch.position_ids}
    if batch.segments is not None and _passes_keywords(body):
        extra[SEGMENTS_KEYWORD] = batch.segments
    hidden = body(input_ids=batch.input_ids, use_cache=False, **extra).last_hidden_state
    flat = rearrange(hidden, "rows tokens hidden -> (rows tokens) hidden")  # on the last layer's device
    sums = torch.zeros(len(batch.last_positions), flat.shape[-1], dtype=torch.float32, device=flat.device)
    summed = flat.index_select(0, batch.sum_positions.to(flat.device))
    sums.index_add_(0, batch.sum_rows.to(flat.device), summed.float())
    last = flat.index_select(0, batch.last_positions.to(flat.device)).float()
    if head is None:
        return sums, last
    shared = batch.sum_shared if batch.sum_shared is not None else torch.ones_like(batch.sum_rows, dtype=torch.bool)
    return sums, last, *sequence_logp_parts(head, summed, batch.sum_targets, batch.sum_rows, len(batch.last_positions),
                                            shared)


def _passes_keywords(body: torch.nn.Module) -> bool:
    """Whether ``body``'s forward takes arbitrary keyword arguments (which transformers hands on to attention)."""
    module = getattr(body, "_orig_mod", body)  # a torch.compile'd body: ask the module it wraps
    return _takes_any_keyword(type(module).forward)


@functools.lru_cache(maxsize=32)
def _takes_any_keyword(function) -> bool:
    return any(parameter.kind is inspect.Parameter.VAR_KEYWORD
               for parameter in inspect.signature(function).parameters.values())


class Batching:
    """How :func:`hidden_sums` cuts its units (a sequence, or the sequences of a group that share a prompt)
    into batches: which units the next batch takes, how it is built, and what to continue with when it does
    not fit in memory. One subclass per way: :class:`PaddedRows`, :class:`PackedRows`, :class:`OneRow`."""

    groups_allowed = False  # whether a unit may hold several sequences (written with their prompt once)

    def take(self, remaining: list[int], lengths: Sequence[int], budget: int, pad_multiple: int) -> list[int]:
        """The longest-first prefix of ``remaining`` (unit indices) that the next batch holds, at least one."""
        raise NotImplementedError

    def build(self, units: Sequence[Sequence[TokenSequence]], lengths: Sequence[int], pad_id: int,
              pad_multiple: int, longest: int) -> Batch:
        """The batch of these units (``lengths``: theirs; ``longest``: the longest unit of the whole run)."""
        raise NotImplementedError

    def after_out_of_memory(self) -> Batching | None:
        """The batching to go on with after an out-of-memory error, or None to go on with half the budget."""
        return None


@dataclass(frozen=True)
class PaddedRows(Batching):
    """One sequence per row, right-padded (to a multiple of ``pad_multiple``) to the batch's longest."""

    def take(self, remaining, lengths, budget, pad_multiple):
        return remaining[: rows_that_fit(lengths[remaining[0]], budget, pad_multiple)]

    def build(self, units, lengths, pad_id, pad_multiple, longest):
        return collate([unit[0] for unit in units], pad_id, pad_multiple)


@dataclass(frozen=True)
class PackedRows(Batching):
    """Sequences back to back in rows as long as the longest sequence (which bounds the block-diagonal mask a
    masked kernel builds), as many rows as the budget holds; on out of memory, padded rows (a row cannot be
    shorter than the longest sequence)."""

    def take(self, remaining, lengths, budget, pad_multiple):
        row_length = padded_length(max(lengths), pad_multiple)
        return _fill_rows(remaining, lengths, row_length, max(1, budget // row_length))

    def build(self, units, lengths, pad_id, pad_multiple, longest):
        return pack([unit[0] for unit in units], pad_id, padded_length(longest, pad_multiple))

    def after_out_of_memory(self):
        logger.warning("out of memory with packed rows; continuing with padded batches")
        return PaddedRows()


@dataclass(frozen=True)
class OneRow(Batching):
    """Each batch one row of at most the budget's tokens (padded to ``pad_multiple`` only), for ches'
    padding-free kernel (:mod:`ches.model.attention`), which reads the sequence bounds off the position ids; the
    sequences of a unit share their prompt, written once (:func:`ches.model.batches.pack_groups`)."""

    groups_allowed = True

    def take(self, remaining, lengths, budget, pad_multiple):
        return _fill(remaining, lengths, budget)

    def build(self, units, lengths, pad_id, pad_multiple, longest):
        return pack_groups(units, pad_id, padded_length(sum(lengths), pad_multiple)).with_segments()


def hidden_sums(
    body: torch.nn.Module,
    sequences: Sequence[TokenSequence],
    *,
    hidden_size: int,
    batch_tokens: int,
    device: torch.device,
    pad_id: int,
    pad_multiple: int = 1,
    batching: Batching | None = None,
    groups: Sequence[Sequence[int]] | None = None,
    on_done: Callable[[list[int]], None] | None = None,
    head: LMHead | None = None,
) -> HiddenSums:
    """Run ``body`` over ``sequences`` in token-budget batches and collect :class:`HiddenSums`.

    Units (a sequence, or a group of sequences sharing a prompt) are processed longest first. On an
    out-of-memory error the batching gives way (:meth:`Batching.after_out_of_memory`) or the token budget
    is halved and the batch retried (logged); a single unit that does not fit raises :class:`ChesError`.

    Args:
        body: the decoder without its LM head (``model.base_model``), already on ``device``.
        sequences: what to run; ``sequences[i]`` fills row ``i`` of the result.
        hidden_size: width ``H`` of the last hidden state.
        batch_tokens: token slots per batch (rows x row length, padding included).
        device: where ``body`` lives.
        pad_id: token id used for padding (never attended to by real tokens).
        pad_multiple: pad lengths up to a multiple of this (helps kernel reuse on GPUs).
        batching: how batches are made (:class:`PaddedRows` by default); :mod:`ches.model.layouts` picks it.
        groups: sequences that share a prompt, run with the prompt written once (needs :class:`OneRow`).
            Default: every sequence on its own.
        on_done: called with the indices of the sequences of each finished batch.
        head: the model's output layer: also each completion's log-probability (:mod:`ches.model.logps`).
    """
    batching = PaddedRows() if batching is None else batching
    if groups is not None and not batching.groups_allowed:
        raise ValueError(f"groups (shared prompts) need OneRow batching, not {type(batching).__name__}")
    units = [[index] for index in range(len(sequences))] if groups is None else [list(group) for group in groups]
    lengths = [group_length([sequences[index] for index in unit]) for unit in units]
    finished: list[tuple] = []  # (members, sums, last[, logps]), kept on the device until the end,
    remaining = sorted(range(len(units)), key=lambda unit: -lengths[unit])  # so the host prepares the next batch
    budget = batch_tokens
    with torch.inference_mode():
        while remaining:
            chosen = batching.take(remaining, lengths, budget, pad_multiple)
            batch = batching.build([[sequences[index] for index in units[unit]] for unit in chosen],
                                   [lengths[unit] for unit in chosen], pad_id, pad_multiple, max(lengths))
            try:
                outputs = run_body(body, batch.to(device), head)
            except torch.OutOfMemoryError:
                del batch
                torch.cuda.empty_cache()
                fallback = batching.after_out_of_memory()
                if fallback is not None:
                    batching = fallback
                    continue
                if len(chosen) == 1:
                    raise ChesError(
                        f"a single {'sequence' if groups is None else 'pair'} of {lengths[chosen[0]]} tokens does not "
                        "fit in device memory; pass max_length= to truncate, or a smaller dtype."
                    ) from None
                budget = max(budget // 2, 1)
                logger.warning("out of memory with %d sequences (longest %d tokens); halving batch_tokens to %d",
                               len(chosen), lengths[chosen[0]], budget)
                continue
            members = [index for unit in chosen for index in units[unit]]
            finished.append((members, *outputs))
            remaining = remaining[len(chosen):]
            if on_done is not None:
                on_done(members)
    sums = torch.empty(len(sequences), hidden_size, dtype=torch.float32)
    last = torch.empty(len(sequences), hidden_size, dtype=torch.float32)
    logps = torch.empty(len(sequences), dtype=torch.float64) if head is not None else None
    shared_logps = torch.empty(len(sequences), dtype=torch.float64) if head is not None else None
    for members, batch_sums, batch_last, *batch_logps in finished:
        index = torch.tensor(members)
        sums[index] = batch_sums.cpu()
        last[index] = batch_last.cpu()
        if logps is not None:
            logps[index], shared_logps[index] = batch_logps
    return HiddenSums(sums=sums, last=last, logps=logps, shared_logps=shared_logps)


def _fill(remaining: list[int], lengths: Sequence[int], capacity: int) -> list[int]:
    """The longest-first prefix of ``remaining`` whose lengths add up to at most ``capacity`` (at least one)."""
    total, count = 0, 0
    for index in remaining:
        total += lengths[index]
        if total > capacity and count:
            break
        count += 1
    return remaining[:count]


def _fill_rows(remaining: list[int], lengths: Sequence[int], row_length: int, rows: int) -> list[int]:
    """The longest-first prefix of ``remaining`` that first-fit packing puts into ``rows`` rows of
    ``row_length`` tokens (as :func:`ches.model.batches.pack` will), at least one.

    >>> _fill_rows([0, 1, 2, 3], [6, 5, 4, 3], row_length=10, rows=1)
    [0]
    >>> _fill_rows([0, 1, 2, 3], [6, 5, 4, 3], row_length=10, rows=2)
    [0, 1, 2, 3]
    """
    used: list[int] = []
    for count, unit in enumerate(remaining):
        slot = next((row for row, filled in enumerate(used) if filled + lengths[unit] <= row_length), None)
        if slot is None and len(used) == rows:
            return remaining[: max(count, 1)]
        if slot is None:
            used.append(lengths[unit])
        else:
            used[slot] += lengths[unit]
    return list(remaining)
