"""The chunk plan and the reader thread (ches.run.chunks): every row in exactly one chunk, each block's rows
longest first, as a hand-written sort gives them; the stream yields a process's chunks in order with each
row's sequences, raises what its thread raised, and stops its thread when left early; the layout's sample
takes rows spread evenly over the splits; row digests equal those a scoring run records."""

from __future__ import annotations

import threading

import datasets
import numpy as np
import pytest
from conftest import hh_rows, standard_rows

import ches
from ches.data.columns import DIGEST_COLUMN
from ches.data.rows import read_rows
from ches.data.tokens import SequencePair
from ches.model.models import load_model
from ches.run.chunks import plan_chunks, row_digests, sample_work, stream_chunks


def hand_plan(lengths: list[int], chunk_pairs: int, block_rows: int) -> list[list[int]]:
    """The plan written out: per block, its rows by decreasing length (ties: lower row first), cut every
    ``chunk_pairs``."""
    chunks = []
    for begin in range(0, len(lengths), block_rows):
        block = sorted(range(begin, min(begin + block_rows, len(lengths))), key=lambda row: (-lengths[row], row))
        chunks += [block[start : start + chunk_pairs] for start in range(0, len(block), chunk_pairs)]
    return chunks


@pytest.mark.parametrize("chunk_pairs, block_rows", [(3, 7), (4, 4), (10, 5), (1, 100)])
def test_the_plan_is_each_blocks_rows_longest_first(chunk_pairs, block_rows):
    lengths = np.random.default_rng(chunk_pairs).integers(1, 6, size=23)  # many ties
    plan = plan_chunks(lengths, chunk_pairs, block_rows)
    assert [chunk.tolist() for chunk in plan] == hand_plan(lengths.tolist(), chunk_pairs, block_rows)
    assert sorted(row for chunk in plan for row in chunk.tolist()) == list(range(23))


def test_the_stream_gives_a_process_its_chunks_in_order_with_each_rows_sequences(tiny_model, tokenizer):
    rows = standard_rows(hh_rows(9, start=10))
    source = read_rows(datasets.Dataset.from_list(rows))
    loaded = load_model(tiny_model("llama"), tokenizer)
    chunks = plan_chunks(source.lengths, 2)
    mine = [0, 2, 4]
    got = list(stream_chunks(source, chunks, mine, loaded, max_length=None))
    assert [planned.chunk_id for planned in got] == mine
    for planned in got:
        assert planned.rows.tolist() == chunks[planned.chunk_id].tolist()
        for row, plan in zip(planned.rows, planned.plans):  # TRL's prompt + completion, tokenized by hand
            prompt = tokenizer(rows[row]["prompt"])["input_ids"]
            assert isinstance(plan, SequencePair)
            assert plan.chosen.input_ids[: len(prompt)] == prompt and plan.chosen.input_ids[-1] == tokenizer.eos_token_id
            assert plan.chosen.start == len(prompt) - 1 and plan.chosen.end == len(plan.chosen.input_ids) - 1


class Refusing:
    """A tokenizer that refuses its third call (of the reader thread)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.calls = tokenizer, 0

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("the tokenizer gave up")
        return self.tokenizer(*args, **kwargs)


def test_an_error_in_the_reader_thread_is_raised_to_the_caller(tiny_model, tokenizer):
    import dataclasses

    source = read_rows(datasets.Dataset.from_list(standard_rows(hh_rows(8))))
    loaded = dataclasses.replace(load_model(tiny_model("llama"), tokenizer), tokenizer=Refusing(tokenizer))
    chunks = plan_chunks(source.lengths, 1)
    with pytest.raises(RuntimeError, match="the tokenizer gave up"):
        list(stream_chunks(source, chunks, list(range(len(chunks))), loaded, max_length=None))
    assert not [thread for thread in threading.enumerate() if thread.name == "ches-tokenize"]


def test_leaving_the_stream_early_stops_its_thread(tiny_model, tokenizer):
    source = read_rows(datasets.Dataset.from_list(standard_rows(hh_rows(30))))
    loaded = load_model(tiny_model("llama"), tokenizer)
    chunks = plan_chunks(source.lengths, 1)
    stream = stream_chunks(source, chunks, list(range(len(chunks))), loaded, max_length=None)
    next(stream)
    assert [thread for thread in threading.enumerate() if thread.name == "ches-tokenize"]
    stream.close()
    assert not [thread for thread in threading.enumerate() if thread.name == "ches-tokenize"]


def test_the_layout_sample_spreads_its_rows_over_the_splits(tiny_model, tokenizer):
    """30 and 10 rows, 8 sampled: 6 and 2, at evenly spaced rows (0, 6, 12, 17, 23, 29 by hand; 0 and 9)."""
    first, second = (read_rows(datasets.Dataset.from_list(standard_rows(hh_rows(count, start=start))))
                     for count, start in ((30, 0), (10, 100)))
    loaded = load_model(tiny_model("llama"), tokenizer)
    work = sample_work([first, second], loaded, max_length=None, rows=8)
    picked = [(first, row) for row in (0, 6, 12, 17, 23, 29)] + [(second, row) for row in (0, 9)]
    expected = [tokenizer(source.pairs(range(row, row + 1))[0].prompt)["input_ids"] for source, row in picked]
    assert len(work) == 8
    for pair, prompt in zip(work, expected):
        assert pair.chosen.input_ids[: len(prompt)] == prompt


def test_row_digests_are_what_a_scoring_run_records(tiny_model, tokenizer):
    rows = hh_rows(6, start=200)
    scored = ches.score(rows, tiny_model("llama"), tokenizer, max_length=120, progress=False, num_threads=1)
    digests = row_digests(read_rows(datasets.Dataset.from_list(rows)), tokenizer, max_length=120)
    assert digests == list(scored[DIGEST_COLUMN])
