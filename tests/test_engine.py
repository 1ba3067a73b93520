"""The engine backs off on out-of-memory errors instead of crashing, and says so."""

import logging

import pytest
import torch

from ches import ChesError
from ches.data.tokens import TokenSequence
from ches.model.engine import PackedRows, PaddedRows, hidden_sums


class SmallMemory(torch.nn.Module):
    """A body whose 'device' holds at most `capacity` token slots per forward."""

    def __init__(self, body, capacity):
        super().__init__()
        self.body, self.capacity, self.calls = body, capacity, []

    def forward(self, input_ids, **kwargs):
        self.calls.append(input_ids.numel())
        if input_ids.numel() > self.capacity:
            raise torch.OutOfMemoryError("fake: out of memory")
        return self.body(input_ids=input_ids, **kwargs)


def sequences(count=12):
    generator = torch.Generator().manual_seed(0)
    return [TokenSequence(torch.randint(5, 4000, (20 + 7 * i,), generator=generator).tolist(), 3, 19 + 7 * i)
            for i in range(count)]


@pytest.mark.parametrize("batching", [PaddedRows, PackedRows])
def test_out_of_memory_halves_the_batch_and_gives_the_same_sums(batching, tiny_model, caplog):
    body = tiny_model("llama").base_model
    seqs = sequences()
    expected = hidden_sums(body, seqs, hidden_size=32, batch_tokens=100_000, device=torch.device("cpu"), pad_id=0)
    small = SmallMemory(body, capacity=300)
    with caplog.at_level(logging.WARNING, logger="ches"):
        got = hidden_sums(small, seqs, hidden_size=32, batch_tokens=100_000, device=torch.device("cpu"), pad_id=0,
                          batching=batching())
    assert "out of memory" in caplog.text
    assert any(n > 300 for n in small.calls) and small.calls[-1] <= 300  # failed big batches, then smaller ones ran
    torch.testing.assert_close(got.sums, expected.sums, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got.last, expected.last, rtol=1e-5, atol=1e-4)


def test_a_single_sequence_that_does_not_fit_is_an_error(tiny_model):
    small = SmallMemory(tiny_model("llama").base_model, capacity=10)
    with pytest.raises(ChesError, match=r"a single sequence of \d+ tokens does not fit in device memory; pass max_length="):
        hidden_sums(small, sequences(2), hidden_size=32, batch_tokens=1000, device=torch.device("cpu"), pad_id=0)


def test_masked_packed_batches_stay_within_the_token_budget(tiny_model):
    body = SmallMemory(tiny_model("llama").base_model, capacity=10**9)  # records every batch's token slots
    seqs = sequences(20)  # 20 to 153 tokens: rows as long as the longest sequence of the batch
    hidden_sums(body, seqs, hidden_size=32, batch_tokens=400, device=torch.device("cpu"), pad_id=0, batching=PackedRows())
    assert body.calls and max(body.calls) <= 400
