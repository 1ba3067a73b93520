"""The model pass of ches.pairs (ches.builder.passes): whole prompts per chunk; every sequence's sums and
log-probability equal the sequence run alone (float32, ``output_hidden_states=True``) in every layout and
chunk size, in order; a second run reads every chunk from the cache and runs nothing; two processes (simulated
by threads that really exchange) each return every sequence, with the counts summed over both."""

from __future__ import annotations

import pytest
import torch
from test_chunk_loop import on_ranks
from test_runner import alone, set_up

from ches.builder.passes import chunk_groups, run_groups
from ches.data.tokens import TokenSequence
from ches.model.logps import LMHead
from ches.model.models import load_model
from ches.run.cache import ShardCache


def groups_of(sizes: list[int]) -> list[list[TokenSequence]]:
    """Prompts of different lengths, each with ``sizes[i]`` responses of different lengths."""
    groups = []
    for index, size in enumerate(sizes):
        prompt = [3 + index] * (2 + index % 3)
        groups.append([TokenSequence(prompt + [20 + index + k] * (1 + k), len(prompt) - 1, len(prompt) + k)
                       for k in range(size)])
    return groups


SIZES = [3, 1, 4, 2, 2, 5, 1]


def test_chunks_hold_whole_prompts_of_at_least_the_limit():
    one = TokenSequence([1, 2], 0, 1)
    groups = [[one] * size for size in SIZES]
    assert chunk_groups(groups, limit=4) == [[0, 1], [2], [3, 4], [5], [6]]
    assert chunk_groups(groups, limit=100) == [list(range(7))]
    assert chunk_groups(groups, limit=1) == [[index] for index in range(7)]


@pytest.mark.parametrize("layout, chunk_sequences", [("padded", 4), ("packed", 1), ("prefix_shared", 3),
                                                     ("prefix_shared", 512)])
def test_every_sequence_equals_the_sequence_alone(layout, chunk_sequences, tiny_model, tokenizer):
    model = tiny_model("llama")
    loaded = load_model(model, tokenizer)
    groups = groups_of(SIZES)
    with set_up(layout, loaded) as choice:
        ran = run_groups(groups, loaded, layout=choice, batch_tokens=512, head=LMHead.of(model),
                         chunk_sequences=chunk_sequences)
    flat = [sequence for group in groups for sequence in group]
    assert ran.sums.sums.shape == (len(flat), loaded.hidden_size) and ran.chunks_reused == 0 and ran.tokens_run > 0
    for index, sequence in enumerate(flat):
        expected = alone(model, sequence)
        torch.testing.assert_close(ran.sums.sums[index].double(), expected["sum"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ran.sums.last[index].double(), expected["last"], rtol=1e-4, atol=1e-5)
        assert float(ran.sums.logps[index]) == pytest.approx(expected["logp"], rel=1e-5)


def test_a_second_run_reads_every_chunk_from_the_cache(tiny_model, tokenizer, tmp_path):
    loaded = load_model(tiny_model("llama"), tokenizer)
    groups, cache = groups_of(SIZES), ShardCache(tmp_path, "settings")
    with set_up("padded", loaded) as choice:
        first = run_groups(groups, loaded, layout=choice, batch_tokens=512, cache=cache, chunk_sequences=4)
        again = run_groups(groups, loaded, layout=choice, batch_tokens=512, cache=cache, chunk_sequences=4)
    assert len(list((tmp_path / "settings").glob("chunk-*.safetensors"))) == 5  # chunk_groups(limit=4) above
    assert again.chunks_reused == 5 and again.tokens_run == 0 and first.tokens_run > 0
    torch.testing.assert_close(again.sums.sums, first.sums.sums, rtol=0, atol=0)
    assert again.sums.logps is None  # none asked for


def test_two_processes_each_return_every_sequence(tiny_model, tokenizer):
    model = tiny_model("llama")
    loaded = load_model(model, tokenizer)
    groups = groups_of(SIZES)
    with set_up("padded", loaded) as choice:
        single = run_groups(groups, loaded, layout=choice, batch_tokens=512, head=LMHead.of(model), chunk_sequences=4)
        ranks = on_ranks(2, lambda process: run_groups(groups, loaded, layout=choice, batch_tokens=512,
                                                       head=LMHead.of(model), process=process, chunk_sequences=4))
    for ran in ranks:
        assert not isinstance(ran, Exception), ran
        torch.testing.assert_close(ran.sums.sums, single.sums.sums, rtol=0, atol=0)
        torch.testing.assert_close(ran.sums.logps, single.sums.logps, rtol=0, atol=0)
        assert ran.tokens_run == single.tokens_run  # summed over the two
