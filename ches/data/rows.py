"""Input rows, checked: every row of a table read and validated a block at a time, keeping only its text
length (the key chunks are planned by), then read back a block at a time while scoring.

Before the model loads, :func:`read_rows` checks every row (in blocks of :data:`BLOCK_ROWS`, so memory does
not grow with the table) and raises :class:`~ches.errors.ChesError` for the first bad ones.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
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

    def pairs(self, begin: int, end: int) -> list[Pair]:
        """The normalized pairs of rows ``[begin, end)``."""
        return preference_pairs(self.dataset.select(range(begin, end)), self.split, self.columns, first_row=begin,
                                warn=False)

    def pairs_at(self, rows: np.ndarray) -> list[Pair]:
        """The normalized pairs of the given rows (already checked by :func:`read_rows`), in one read."""
        return preference_pairs(self.dataset.select(rows), self.split, self.columns, warn=False)


def read_rows(dataset: datasets.Dataset, split: str | None = None, columns: Mapping[str, str] | None = None) -> RowSource:
    """Check every row of ``dataset`` (raising :class:`~ches.errors.ChesError` for the first bad ones) and
    note their text lengths, a block at a time: memory does not grow with the table."""
    if len(dataset) == 0:
        preference_pairs(dataset, split, columns)  # raises: no rows
    lengths = np.zeros(len(dataset), dtype=np.int64)
    for begin in range(0, len(dataset), BLOCK_ROWS):
        end = min(begin + BLOCK_ROWS, len(dataset))
        lengths[begin:end] = [text_length(pair) for pair in
                              preference_pairs(dataset.select(range(begin, end)), split, columns, first_row=begin)]
    return RowSource(dataset, columns, lengths, split)
