"""Batches: length-sorted sequences under a token budget, with the positions to sum.

Two layouts:

- **padded** (:func:`collate`): one sequence per row, right-padded. No attention mask is needed in a
  causal decoder: every real token sits before every pad token of its row, so causal attention never
  lets it see padding, and position ids ``0..L-1`` are the default ones. Every architecture stays on
  its fastest (``is_causal``) attention path.
- **packed** (:func:`pack`): several sequences per row, position ids restarting at 0 for each; no
  padding inside a row. Correct only where attention keeps the sequences apart: ches' padding-free
  kernel (:mod:`ches.model.attention`) reads the bounds off the position ids, and transformers' own kernels
  turn them into a block-diagonal causal mask (when no attention mask and no cache are passed);
  :meth:`ches.model.layouts.Packed.exact` checks that on the model itself before it is used.

Memory: a batch holds at most ``batch_tokens`` token slots (``rows x padded length``), so activation
memory is bounded by ``batch_tokens`` times the model's per-token activation size, whatever the lengths.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..data.tokens import TokenSequence
from .attention import Segments, segments


@dataclass(frozen=True)
class Batch:
    """Tensors for one forward pass.

    Attributes:
        input_ids: ``[B, T]`` right-padded token ids.
        sum_positions: ``[K]`` flat indices into the ``B * T`` positions whose hidden states are summed.
        sum_rows: ``[K]`` which sequence of the batch (0..S-1) each of those positions belongs to.
        last_positions: ``[S]`` flat index of each sequence's last summed position.
        sum_targets: ``[K]`` the token each summed position predicts (its sequence's completion tokens),
            for the completions' log-probabilities (:mod:`ches.model.logps`).
        sum_shared: ``[K]`` whether each summed position predicts one of the completion's LD-DPO shared
            tokens (:attr:`~ches.data.tokens.TokenSequence.shared`), for the log-probability of that part.
    """

    input_ids: torch.Tensor
    sum_positions: torch.Tensor
    sum_rows: torch.Tensor
    last_positions: torch.Tensor
    position_ids: torch.Tensor | None = None  # packed layout only: ``[R, T]``, restarting at 0 per sequence
    segments: Segments | None = None  # padding-free rows only: the attention segments, read once per batch
    sum_targets: torch.Tensor | None = None
    sum_shared: torch.Tensor | None = None

    def with_segments(self) -> "Batch":
        """This batch with its attention :class:`~ches.model.attention.Segments`, read off the position ids
        here (on the host) so that no layer of the forward pass has to.

        >>> pack([TokenSequence([1, 2, 3], 0, 2), TokenSequence([1, 4], 0, 1)], 0, 6).with_segments().segments.spans.tolist()
        [[0, 3, 0, 0], [3, 5, 3, 0], [5, 6, 5, 0]]
        """
        return dataclasses.replace(self, segments=segments(self.position_ids))

    def to(self, device: torch.device) -> "Batch":
        """The batch on ``device``; to CUDA through pinned memory without blocking the host."""
        cuda = device.type == "cuda"

        def move(tensor):
            if tensor is None:
                return None
            return (tensor.pin_memory() if cuda else tensor).to(device, non_blocking=cuda)

        return Batch(*(move(tensor) for tensor in (
            self.input_ids, self.sum_positions, self.sum_rows, self.last_positions, self.position_ids)),
            None if self.segments is None else self.segments.apply(move), move(self.sum_targets), move(self.sum_shared))


CUDA_PAD_MULTIPLE = 64  # rows padded to a multiple of this on CUDA: fewer distinct shapes for its kernels


def pad_multiple(device_type: str) -> int:
    """What row lengths are padded to a multiple of on a device of this type.

    >>> pad_multiple("cuda"), pad_multiple("cpu")
    (64, 1)
    """
    return CUDA_PAD_MULTIPLE if device_type == "cuda" else 1


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


def collate(sequences: Sequence[TokenSequence], pad_id: int, multiple: int = 1) -> Batch:
    """Right-pad ``sequences`` into one :class:`Batch`.

    >>> batch = collate([TokenSequence([1, 2, 3], 0, 2), TokenSequence([1, 4], 0, 1)], pad_id=0)
    >>> batch.input_ids.tolist(), batch.sum_positions.tolist(), batch.last_positions.tolist()
    ([[1, 2, 3], [1, 4, 0]], [0, 1, 3], [1, 3])
    """
    width = padded_length(max(len(sequence.input_ids) for sequence in sequences), multiple)
    input_ids = torch.tensor([sequence.input_ids + [pad_id] * (width - len(sequence.input_ids))
                              for sequence in sequences], dtype=torch.long)
    row_starts = torch.arange(len(sequences)) * width
    starts = torch.tensor([sequence.start for sequence in sequences]) + row_starts
    ends = torch.tensor([sequence.end for sequence in sequences]) + row_starts
    return Batch(input_ids=input_ids, **summed_positions(starts, ends), sum_targets=completion_targets(sequences),
                 sum_shared=shared_positions(sequences))


def completion_targets(sequences: Sequence[TokenSequence]) -> torch.Tensor:
    """The tokens the summed positions of ``sequences`` predict, in the batch's order (``sum_targets``).

    >>> completion_targets([TokenSequence([1, 2, 3], 0, 2), TokenSequence([1, 4], 0, 1)]).tolist()
    [2, 3, 4]
    """
    return torch.tensor([token for sequence in sequences for token in sequence.completion_ids], dtype=torch.long)


def shared_positions(sequences: Sequence[TokenSequence]) -> torch.Tensor:
    """Whether each summed position of ``sequences`` (in the batch's order) predicts one of its completion's
    first :attr:`~ches.data.tokens.TokenSequence.shared` tokens (``sum_shared``).

    >>> shared_positions([TokenSequence([1, 2, 3], 0, 2, shared=1), TokenSequence([1, 4], 0, 1)]).tolist()
    [True, False, True]
    """
    flags = []
    for sequence in sequences:
        count = sequence.end - sequence.start
        shared = count if sequence.shared is None else min(sequence.shared, count)
        flags += [True] * shared + [False] * (count - shared)
    return torch.tensor(flags, dtype=torch.bool)


def summed_positions(starts: torch.Tensor, ends: torch.Tensor) -> dict[str, torch.Tensor]:
    """A batch's ``sum_positions``/``sum_rows``/``last_positions`` from each sequence's flat ``[start, end)``.

    >>> {name: value.tolist() for name, value in summed_positions(torch.tensor([0, 5]), torch.tensor([2, 6])).items()}
    {'sum_positions': [0, 1, 5], 'sum_rows': [0, 0, 1], 'last_positions': [1, 5]}
    """
    counts = ends - starts
    sum_rows = torch.repeat_interleave(torch.arange(len(counts)), counts)
    first_of_row = torch.cumsum(counts, 0) - counts  # where each sequence's positions begin in the flat list
    sum_positions = torch.arange(int(counts.sum())) - first_of_row[sum_rows] + starts[sum_rows]
    return {"sum_positions": sum_positions, "sum_rows": sum_rows, "last_positions": ends - 1}


def pack(sequences: Sequence[TokenSequence], pad_id: int, row_length: int) -> Batch:
    """Pack ``sequences`` (each at most ``row_length`` long) into rows of ``row_length`` tokens, first fit.

    Sequence ``i`` of the batch keeps index ``i`` in ``sum_rows``/``last_positions``. The unused tail
    of a row is padding with its own restarting positions, after every real token of the row.

    >>> batch = pack([TokenSequence([1, 2, 3], 0, 2), TokenSequence([1, 4], 0, 1)], pad_id=0, row_length=6)
    >>> batch.input_ids.tolist(), batch.position_ids.tolist()
    ([[1, 2, 3, 1, 4, 0]], [[0, 1, 2, 0, 1, 0]])
    >>> batch.sum_positions.tolist(), batch.sum_rows.tolist(), batch.last_positions.tolist()
    ([0, 1, 3], [0, 0, 1], [1, 3])
    """
    return pack_groups([[sequence] for sequence in sequences], pad_id, row_length)


def group_length(group: Sequence[TokenSequence]) -> int:
    """Tokens a group of sequences with one shared prompt takes when the prompt is written once.

    >>> group_length([TokenSequence([1, 2, 3, 4], 1, 3), TokenSequence([1, 2, 5], 1, 2)])
    5
    """
    prompt = group[0].start + 1
    return prompt + sum(len(sequence.input_ids) - prompt for sequence in group)


def pack_groups(groups: Sequence[Sequence[TokenSequence]], pad_id: int, row_length: int) -> Batch:
    """Pack groups of sequences that share a prompt into rows of ``row_length`` tokens, first fit; each
    group is written ``prompt | rest of sequence 1 | rest of sequence 2 | ...`` (the prefix-shared layout).

    The sequences of a group share their first ``start + 1`` tokens (the prompt). Position ids run
    ``0 .. P-1`` over the prompt and restart at ``P`` for the rest of each sequence, so a sequence's
    tokens keep the positions they have alone; :mod:`ches.model.attention` reads the segments back off the
    position ids (a segment starting at ``p > 0`` attends to the first ``p`` tokens of the last segment
    that started at 0, and to itself). The summed positions of a later sequence begin at the prompt's
    last position, whose hidden state predicts its first completion token. A group of one sequence is
    that sequence, as :func:`pack` writes it. Sequence ``j`` of group ``i`` is sequence
    ``sum(len(g) for g in groups[:i]) + j`` of the batch (``sum_rows``/``last_positions``).

    >>> prompt = [1, 2]
    >>> batch = pack_groups([[TokenSequence(prompt + [3, 4], 1, 3), TokenSequence(prompt + [5, 6, 7], 1, 4)]],
    ...                     pad_id=0, row_length=8)
    >>> batch.input_ids.tolist(), batch.position_ids.tolist()
    ([[1, 2, 3, 4, 5, 6, 7, 0]], [[0, 1, 2, 3, 2, 3, 4, 0]])
    >>> batch.sum_positions.tolist(), batch.sum_rows.tolist(), batch.last_positions.tolist()
    ([1, 2, 1, 4, 5], [0, 0, 1, 1, 1], [2, 5])
    """
    rows: list[list[int]] = []  # group indices per row
    used: list[int] = []
    for index, group in enumerate(groups):
        length = group_length(group)
        slot = next((row for row, filled in enumerate(used) if filled + length <= row_length), None)
        if slot is None:
            rows.append([])
            used.append(0)
            slot = len(rows) - 1
        rows[slot].append(index)
        used[slot] += length
    flat_ids: list[int] = []
    flat_positions: list[int] = []
    member_offsets: dict[int, list[int]] = {}  # per group: where each member's rest (after the prompt) begins
    prompt_ends: dict[int, int] = {}  # per group: flat index of the prompt's last token
    for row, members in enumerate(rows):
        for index in members:
            group = groups[index]
            prompt = group[0].start + 1
            flat_ids += group[0].input_ids[:prompt]
            flat_positions += range(prompt)
            prompt_ends[index] = len(flat_ids) - 1
            member_offsets[index] = []
            for sequence in group:
                member_offsets[index].append(len(flat_ids))
                flat_ids += sequence.input_ids[prompt:]
                flat_positions += range(prompt, len(sequence.input_ids))
        tail = (row + 1) * row_length - len(flat_ids)
        flat_ids += [pad_id] * tail
        flat_positions += range(tail)
    sequences = [sequence for group in groups for sequence in group]
    offsets = torch.tensor([offset for index in range(len(groups)) for offset in member_offsets[index]])
    prompt_last = torch.tensor([prompt_ends[index] for index, group in enumerate(groups) for _ in group])
    prompt_length = torch.tensor([sequence.start + 1 for sequence in sequences])
    ends = torch.tensor([sequence.end for sequence in sequences]) - prompt_length + offsets
    positions = summed_positions(offsets - 1, ends)  # as if each rest followed its prompt directly ...
    first_of_sequence = torch.cumsum(ends - offsets + 1, 0) - (ends - offsets + 1)
    positions["sum_positions"][first_of_sequence] = prompt_last  # ... whose last position is shared
    positions["last_positions"] = torch.where(ends == offsets, prompt_last, ends - 1)
    return Batch(input_ids=torch.tensor(flat_ids, dtype=torch.long).reshape(len(rows), row_length),
                 position_ids=torch.tensor(flat_positions, dtype=torch.long).reshape(len(rows), row_length),
                 **positions, sum_targets=completion_targets(sequences), sum_shared=shared_positions(sequences))
