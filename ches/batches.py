"""Batches: length-sorted sequences under a token budget, right-padded, with the positions to sum.

Right padding needs no attention mask in a causal decoder: every real token sits before every pad
token of its row, so causal attention never lets it see padding, and position ids ``0..L-1`` are the
default ones. This keeps every architecture on its fastest (``is_causal``) attention path.

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
        sum_rows: ``[K]`` the batch row each of those positions belongs to.
        last_positions: ``[B]`` flat index of each row's last summed position.
    """

    input_ids: torch.Tensor
    sum_positions: torch.Tensor
    sum_rows: torch.Tensor
    last_positions: torch.Tensor

    def to(self, device: torch.device) -> "Batch":
        non_blocking = device.type == "cuda"
        return Batch(*(tensor.to(device, non_blocking=non_blocking) for tensor in (
            self.input_ids, self.sum_positions, self.sum_rows, self.last_positions)))


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
