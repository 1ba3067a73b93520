"""The per-pair pipeline (ches.run.runner): a run in uneven chunks gives, row by row, what each sequence run alone
through the model gives (float32, ``output_hidden_states=True``, the formulas written out here), in every
layout; a pair's two sequences come back on their own side; what a chunk's shard holds is pinned by name."""

from __future__ import annotations

import contextlib

import datasets
import numpy as np
import pytest
import torch
from conftest import hh_rows

from ches.data.formats import to_pairs
from ches.data.inputs import load_data, pair_columns
from ches.data.rows import read_rows
from ches.data.tokens import SequencePair, Skip, TokenSequence
from ches.model.layouts import resolve_layout
from ches.model.logps import LMHead
from ches.model.models import load_model
from ches.run.chunks import plan_pairs
from ches.run.runner import ChunkNumbers, PairSequences, compute_chunk, run_chunk, score_rows


def alone(model, sequence: TokenSequence) -> dict[str, torch.Tensor]:
    """One sequence through the model on its own: the summed and last hidden states (the model's output layer
    input, ``hidden_states[-1]``) and the completion's log-probability, in float64 from float32."""
    with torch.inference_mode():
        output = model(input_ids=torch.tensor([sequence.input_ids]), output_hidden_states=True)
    hidden, logits = output.hidden_states[-1][0].double(), output.logits[0].double()
    positions = range(sequence.start, sequence.end)  # the state at t predicts token t + 1
    logp = sum(float(torch.log_softmax(logits[t], -1)[sequence.input_ids[t + 1]]) for t in positions)
    return {"sum": hidden[sequence.start : sequence.end].sum(0), "last": hidden[sequence.end - 1], "logp": logp,
            "n": sequence.end - sequence.start}


def reference(model, plans) -> dict[str, list[float]]:
    """Each pair's numbers from :func:`alone`, written out: NaN for a skipped row."""
    out = {name: [] for name in ("ches", "ln_ches", "last_hidden_ip", "chosen_logps", "rejected_logps")}
    for plan in plans:
        if isinstance(plan, Skip):
            for values in out.values():
                values.append(float("nan"))
            continue
        c, r = alone(model, plan.chosen), alone(model, plan.rejected)
        out["ches"].append(float(c["sum"] @ r["sum"] - c["sum"] @ c["sum"]))
        out["ln_ches"].append(float(c["sum"] @ r["sum"] / (c["n"] * r["n"]) - c["sum"] @ c["sum"] / c["n"] ** 2))
        out["last_hidden_ip"].append(float(c["last"] @ r["last"]))
        out["chosen_logps"].append(c["logp"])
        out["rejected_logps"].append(r["logp"])
    return out


ROWS = hh_rows(13, start=40)


@contextlib.contextmanager
def set_up(layout: str, loaded):
    """``layout`` probed and set up on the model until the block ends (what ``ches.run.runs.prepared`` does)."""
    with contextlib.ExitStack() as scope:
        choice = resolve_layout(layout, loaded, [], 512, scope, asked="requested")
        assert choice.layout == layout
        yield choice


@pytest.mark.parametrize("layout", ["padded", "packed", "prefix_shared"])
def test_a_run_in_uneven_chunks_equals_each_pair_alone(layout, tiny_model, tokenizer):
    model = tiny_model("llama")
    loaded = load_model(model, tokenizer)
    source = read_rows(datasets.Dataset.from_list(ROWS))
    with set_up(layout, loaded) as choice:
        scored = score_rows(source, loaded, layout=choice, batch_tokens=512, max_length=200, logps=True, chunk_pairs=5)
    plans = plan_pairs(to_pairs(pair_columns(load_data(ROWS))), loaded, max_length=200)
    assert any(isinstance(plan, Skip) for plan in plans), "the rows should exercise a skipped row inside a chunk"
    expected = reference(model, plans)
    for name, values in expected.items():
        np.testing.assert_allclose(scored.columns[name], values, rtol=1e-4, atol=1e-6, err_msg=name)
    assert [reason is not None for reason in scored.columns["ches_skip"]] == [isinstance(p, Skip) for p in plans]


def test_each_pair_gets_its_own_two_sequences_back(tiny_model, tokenizer):
    """The engine runs every chosen sequence, then every rejected one; the sums come back on their pair's sides."""
    model = tiny_model("llama")
    loaded = load_model(model, tokenizer)
    prompt = [5, 6, 7]
    pairs = [SequencePair(TokenSequence(prompt + [10 + i] * (i + 1), 2, 3 + i), TokenSequence(prompt + [40 + i] * 2, 2, 4))
             for i in range(4)]
    with set_up("padded", loaded) as choice:
        sides = run_chunk(pairs, loaded, layout=choice, batch_tokens=512, head=LMHead.of(model))
    for index, pair in enumerate(pairs):
        for side, sequence in ((sides.chosen, pair.chosen), (sides.rejected, pair.rejected)):
            expected = alone(model, sequence)
            torch.testing.assert_close(side.sums[index].double(), expected["sum"], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(side.last[index].double(), expected["last"], rtol=1e-4, atol=1e-5)
            assert float(side.logps[index]) == pytest.approx(expected["logp"], rel=1e-5)


def test_pair_sequences_lay_out_the_chosen_then_the_rejected():
    one, two = (SequencePair(TokenSequence([1, n], 0, 1), TokenSequence([1, n, n], 0, 2)) for n in (2, 3))
    halves = PairSequences([one, two])
    assert halves.sequences == [one.chosen, two.chosen, one.rejected, two.rejected]
    assert halves.groups == [(0, 2), (1, 3)]
    assert [halves.pair_of(position) for position in range(4)] == [0, 1, 0, 1]


def test_a_chunks_shard_holds_these_tensors_by_name():
    """The names are the cache format: shards written before stay readable only while they do not change."""
    numbers = ("ches", "ln_ches", "last_hidden_ip")
    logps = ("chosen_logps", "rejected_logps", "chosen_shared_logps", "rejected_shared_logps")
    sums = ("chosen_sum", "rejected_sum", "chosen_last", "rejected_last")
    assert ChunkNumbers.names(logps=False, sums=False) == numbers
    assert ChunkNumbers.names(logps=True, sums=True) == numbers + logps + sums
    empty = ChunkNumbers.empty(8, logps=True, sums=True).tensors()
    assert sorted(empty) == sorted(numbers + logps + sums)
    assert empty["chosen_sum"].shape == (0, 8) and empty["ches"].dtype == torch.float64
    back = ChunkNumbers.from_tensors(empty)
    assert back.sums is not None and back.sums.rejected.last.shape == (0, 8) and sorted(back.columns()) == sorted(numbers + logps)
    assert ChunkNumbers.from_tensors(ChunkNumbers.empty(8, logps=False, sums=False).tensors()).logps is None


def test_a_chunk_with_no_pair_to_run_gives_empty_numbers(tiny_model, tokenizer):
    loaded = load_model(tiny_model("llama"), tokenizer)
    with set_up("padded", loaded) as choice:
        computed = compute_chunk([], loaded, layout=choice, batch_tokens=512, keep_sums=True)
    assert computed.ches.shape == (0,) and computed.sums.chosen.sums.shape == (0, loaded.hidden_size)
