"""Batches: length-sorted sequences under a token budget, with the positions to sum.

Two layouts:

- **padded** (:func:`collate`): one sequence per row, right-padded. No attention mask is needed in a
  causal decoder: every real token sits before every pad token of its row, so causal attention never
  lets it see padding, and position ids ``0..L-1`` are the default ones. Every architecture stays on
  its fastest (``is_causal``) attention path.
- **packed** (:func:`pack`): several sequences per row, position ids restarting at 0 for each; no
  padding inside a row. Correct only where the model turns restarting position ids into a
  block-diagonal causal mask (transformers does so when no attention mask and no cache are passed);
  :func:`ches.engine.packing_is_exact` checks that on the model itself before it is used.

Memory: a batch holds at most ``batch_tokens`` token slots (``rows x padded length``), so activation
memory is bounded by ``batch_tokens`` times the model's per-token activation size, whatever the lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .tokens import ScoredSequence


@dataclass(frozen=True)
class Batch:
    """Tensors for one forward pass.

    Attributes:
        input_ids: ``[B, T]`` right-padded token ids.
        sum_positions: ``[K]`` flat indices into the ``B * T`` positions whose hidden states are summed.
        sum_rows: ``[K]`` which sequence of the batch (0..S-1) each of those positions belongs to.
        last_positions: ``[S]`` flat index of each sequence's last summed position.
    """

    input_ids: torch.Tensor
    sum_positions: torch.Tensor
    sum_rows: torch.Tensor
    last_positions: torch.Tensor
    position_ids: torch.Tensor | None = None  # packed layout only: ``[R, T]``, restarting at 0 per sequence

    def to(self, device: torch.device) -> "Batch":
        """The batch on ``device``; to CUDA through pinned memory without blocking the host."""
        cuda = device.type == "cuda"

        def move(tensor):
            if tensor is None:
                return None
            return (tensor.pin_memory() if cuda else tensor).to(device, non_blocking=cuda)

        return Batch(*(move(tensor) for tensor in (
            self.input_ids, self.sum_positions, self.sum_rows, self.last_positions, self.position_ids)))


def longest_first(sequences: Sequence[ScoredSequence]) -> list[int]:
    """Indices of ``sequences`` from longest to shortest (stable), so memory peaks in the first batch.

    >>> longest_first([ScoredSequence([1, 2], 0, 1), ScoredSequence([1, 2, 3], 0, 2)])
    [1, 0]
    """
    return sorted(range(len(sequences)), key=lambda index: -len(sequences[index].input_ids))


def padded_length(length: int, multiple: int) -> int:
    """``length`` rounded up to a multiple of ``multiple``.

    >>> padded_length(65, 64)
    128
    """
    return -(-length // multiple) * multiple


def rows_that_fit(longest: int, batch_tokens: int, multiple: int = 1) -> int:
    """How many sequences of at most ``longest`` tokens fit in ``batch_tokens`` slots (at least one).

    >>> rows_that_fit(100, 1000), rows_that_fit(5000, 1000)
    (10, 1)
    """
    return max(1, batch_tokens // padded_length(longest, multiple))


def collate(sequences: Sequence[ScoredSequence], pad_id: int, multiple: int = 1) -> Batch:
    """Right-pad ``sequences`` into one :class:`Batch`.

    >>> batch = collate([ScoredSequence([1, 2, 3], 0, 2), ScoredSequence([1, 4], 0, 1)], pad_id=0)
    >>> batch.input_ids.tolist(), batch.sum_positions.tolist(), batch.last_positions.tolist()
    ([[1, 2, 3], [1, 4, 0]], [0, 1, 3], [1, 3])
    """
    width = padded_length(max(len(sequence.input_ids) for sequence in sequences), multiple)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    positions, rows, last = [], [], []
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence.input_ids)] = torch.tensor(sequence.input_ids, dtype=torch.long)
        positions.append(torch.arange(sequence.start, sequence.end) + row * width)
        rows.append(torch.full((sequence.end - sequence.start,), row, dtype=torch.long))
        last.append(row * width + sequence.end - 1)
    return Batch(
        input_ids=input_ids,
        sum_positions=torch.cat(positions),
        sum_rows=torch.cat(rows),
        last_positions=torch.tensor(last, dtype=torch.long),
    )


def pack(sequences: Sequence[ScoredSequence], pad_id: int, row_length: int) -> Batch:
    """Pack ``sequences`` (each at most ``row_length`` long) into rows of ``row_length`` tokens, first fit.

    Sequence ``i`` of the batch keeps index ``i`` in ``sum_rows``/``last_positions``. The unused tail
    of a row is padding with its own restarting positions, after every real token of the row.

    >>> batch = pack([ScoredSequence([1, 2, 3], 0, 2), ScoredSequence([1, 4], 0, 1)], pad_id=0, row_length=6)
    >>> batch.input_ids.tolist(), batch.position_ids.tolist()
    ([[1, 2, 3, 1, 4, 0]], [[0, 1, 2, 0, 1, 0]])
    >>> batch.sum_positions.tolist(), batch.sum_rows.tolist(), batch.last_positions.tolist()
    ([0, 1, 3], [0, 0, 1], [1, 3])
    """
    rows: list[list[int]] = []  # sequence indices per row
    used: list[int] = []
    for index, sequence in enumerate(sequences):
        length = len(sequence.input_ids)
        slot = next((row for row, filled in enumerate(used) if filled + length <= row_length), None)
        if slot is None:
            rows.append([])
            used.append(0)
            slot = len(rows) - 1
        rows[slot].append(index)
        used[slot] += length
    input_ids = torch.full((len(rows), row_length), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), row_length), dtype=torch.long)
    positions: list = [None] * len(sequences)
    last = [0] * len(sequences)
    for row, members in enumerate(rows):
        offset = 0
        for index in members:
            sequence = sequences[index]
            length = len(sequence.input_ids)
            input_ids[row, offset : offset + length] = torch.tensor(sequence.input_ids, dtype=torch.long)
            position_ids[row, offset : offset + length] = torch.arange(length)
            base = row * row_length + offset
            positions[index] = torch.arange(sequence.start, sequence.end) + base
            last[index] = base + sequence.end - 1
            offset += length
        position_ids[row, offset:] = torch.arange(row_length - offset)
    return Batch(
        input_ids=input_ids,
        sum_positions=torch.cat(positions),
        sum_rows=torch.cat([torch.full((len(p),), i, dtype=torch.long) for i, p in enumerate(positions)]),
        last_positions=torch.tensor(last, dtype=torch.long),
        position_ids=position_ids,
    )
