"""Checked rows (ches.data.rows): every row checked before any model work, a bad one named by its row number in
the whole table (also past the first block), its length the characters counted here by hand; rows read back
give the pairs written out here, chunk by chunk, each block read once."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from conftest import hh_rows, standard_rows

import ches.data.rows
from ches import ChesError
from ches.data.rows import BLOCK_ROWS, read_rows


def test_lengths_are_the_characters_of_prompt_and_completions():
    rows = standard_rows(hh_rows(5))
    source = read_rows(datasets.Dataset.from_list(rows), "test")
    assert source.lengths.tolist() == [len(row["prompt"]) + len(row["chosen"]) + len(row["rejected"]) for row in rows]
    assert source.split == "test"


def test_an_implicit_prompt_is_split_off_when_the_rows_are_read_back():
    from trl.data_utils import extract_prompt

    rows = hh_rows(4, start=7)
    source = read_rows(datasets.Dataset.from_list(rows))
    expected = [extract_prompt(row) for row in rows]  # TRL's own split: the longest common prefix
    for pair, row in zip(source.pairs(np.array([3, 1])), [expected[3], expected[1]]):
        assert (pair.prompt, pair.chosen, pair.rejected) == (row["prompt"], row["chosen"], row["rejected"])
    assert [pair.chosen for pair in source.pairs(range(1, 3))] == [row["chosen"] for row in expected[1:3]]


def test_the_users_column_names_are_read():
    rows = [{"question": "2+2=", "good": "4", "bad": "5"}]
    source = read_rows(datasets.Dataset.from_list(rows), None, {"prompt": "question", "chosen": "good", "rejected": "bad"})
    pair = source.pairs(range(1))[0]
    assert (pair.prompt, pair.chosen, pair.rejected) == ("2+2=", "4", "5") and source.lengths.tolist() == [6]


def many_rows(count: int) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"prompt": [f"p{row}" for row in range(count)], "chosen": ["c"] * count,
                                       "rejected": ["r"] * count})


def test_a_bad_row_past_the_first_block_is_named_by_its_row_in_the_table():
    table = many_rows(BLOCK_ROWS + 6)
    bad = BLOCK_ROWS + 3
    table = table.map(lambda row, index: {"chosen": None if index == bad else row["chosen"]}, with_indices=True)
    with pytest.raises(ChesError, match=rf"^split 'train': column 'chosen' must hold a string .* row {bad}: found None\."):
        read_rows(table, "train")
    with pytest.raises(ChesError, match=r"^the data \(split 'train'\) has no rows\.$"):
        read_rows(table.select([]), "train")


def test_chunks_are_read_back_a_block_at_a_time(monkeypatch):
    source = read_rows(many_rows(BLOCK_ROWS + 6))
    reads = []
    real = ches.data.rows.normalized
    monkeypatch.setattr(ches.data.rows, "normalized", lambda dataset, rows, *a, **k: reads.append(rows) or real(dataset, rows, *a, **k))
    chunks = [np.array([5, 2]), np.array([BLOCK_ROWS - 1]), np.array([BLOCK_ROWS + 4, BLOCK_ROWS])]
    got = [[pair.prompt for pair in pairs] for pairs in source.chunk_pairs(chunks)]
    assert got == [["p5", "p2"], [f"p{BLOCK_ROWS - 1}"], [f"p{BLOCK_ROWS + 4}", f"p{BLOCK_ROWS}"]]
    assert reads == [range(0, BLOCK_ROWS), range(BLOCK_ROWS, BLOCK_ROWS + 6)]  # each block once
