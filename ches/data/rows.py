"""Input rows, checked: every row of a table read and validated a block at a time, keeping only its text
length (the key chunks are planned by), then read back a block at a time while scoring.

Before the model loads, :func:`read_rows` checks every row (in blocks of :data:`BLOCK_ROWS`, so memory does
not grow with the table) and raises :class:`~ches.errors.ChesError` for the first bad ones.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import datasets
import numpy as np

from .formats import Pair, text_length
from .inputs import preference_pairs

logger = logging.getLogger("ches")

BLOCK_ROWS = 16384  # rows read (and checked) at a time


@dataclass(frozen=True)
class RowSource:
    """The rows of one table, checked, read back a block at a time while scoring.

    Attributes:
        dataset: the table (memory-mapped Arrow when it came from files).
        columns: the user's column names for ches' roles.
        lengths: ``[N]`` characters of text per row (prompt and both completions): the length sort key.
        split: the split's name, for messages.
    """

    dataset: datasets.Dataset
    columns: Mapping[str, str] | None
    lengths: np.ndarray
    split: str | None

    def pairs(self, rows: range | np.ndarray) -> list[Pair]:
        """The normalized pairs of ``rows`` (a range, or row numbers), in one read: the rows were checked by
        :func:`read_rows`, so their format's warnings are not given again."""
        return normalized(self.dataset, rows, self.split, self.columns, warn=False)

    def chunk_pairs(self, chunks: Iterable[np.ndarray]) -> Iterator[list[Pair]]:
        """The normalized pairs of each chunk of rows (each inside one block of :data:`BLOCK_ROWS`, as
        :func:`ches.run.chunks.plan_chunks` cuts them), in the chunk's order, reading each block once.

        >>> source = read_rows(datasets.Dataset.from_list([{"chosen": "Hi a", "rejected": "Hi b"}] * 3))
        >>> [len(pairs) for pairs in source.chunk_pairs([np.array([2, 0]), np.array([1])])]
        [2, 1]
        """
        block, block_pairs = -1, []
        for rows in chunks:
            first = int(rows.min()) // BLOCK_ROWS * BLOCK_ROWS
            if first != block:  # a chunk lies inside one block: read each block once
                block, block_pairs = first, self.pairs(range(first, min(first + BLOCK_ROWS, len(self.lengths))))
            yield [block_pairs[int(row) - first] for row in rows]


def normalized(dataset: datasets.Dataset, rows: range | np.ndarray, split: str | None,
               columns: Mapping[str, str] | None, *, warn: bool) -> list[Pair]:
    """The one place rows become normalized pairs: ``rows`` of ``dataset`` (a range, numbered from its start in
    errors, or row numbers), checked (:func:`~ches.data.inputs.preference_pairs`), with the format's warnings
    when ``warn``."""
    first_row = rows.start if isinstance(rows, range) else 0
    return preference_pairs(dataset.select(rows), split, columns, first_row=first_row, warn=warn)


def read_rows(dataset: datasets.Dataset, split: str | None = None, columns: Mapping[str, str] | None = None) -> RowSource:
    """Check every row of ``dataset`` (raising :class:`~ches.errors.ChesError` for the first bad ones) and
    note their text lengths, a block at a time: memory does not grow with the table."""
    if len(dataset) == 0:
        preference_pairs(dataset, split, columns)  # raises: no rows
    lengths = np.zeros(len(dataset), dtype=np.int64)
    for begin in range(0, len(dataset), BLOCK_ROWS):
        end = min(begin + BLOCK_ROWS, len(dataset))
        lengths[begin:end] = [text_length(pair) for pair in normalized(dataset, range(begin, end), split, columns, warn=True)]
    return RowSource(dataset, columns, lengths, split)
