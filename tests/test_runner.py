"""The per-pair pipeline (ches.run.runner): a run in uneven chunks gives, row by row, what each sequence run alone
through the model gives (float32, ``output_hidden_states=True``, the formulas written out here), in every
layout; a pair's two sequences come back on their own side; what a chunk's shard holds is pinned by name."""

from __future__ import annotations

import contextlib
import json
import math

import datasets
import numpy as np
import pytest
import torch
from conftest import hh_rows
from edges import ROWS as SAMPLE_ROWS
from edges import assert_one_line_error, digest, edit_weights, run_cli

import ches
from ches.cli import main
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


def test_hidden_states_that_are_not_finite_are_marked_only_where_they_are(workdir, caplog):
    import logging

    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(workdir / "model")
    counts = {}
    for row in SAMPLE_ROWS:
        for token in set(tokenizer(row["chosen"])["input_ids"]):
            counts[token] = counts.get(token, 0) + 1
    rare = min((token for token, count in counts.items() if count == 1 and token > 10))
    affected = [index for index, row in enumerate(SAMPLE_ROWS) if rare in tokenizer(row["chosen"])["input_ids"]]
    edit_weights(workdir / "model", lambda w: {**w, "model.embed_tokens.weight": torch.where(
        torch.arange(4096)[:, None] == rare, w["model.embed_tokens.weight"] * 1e6, w["model.embed_tokens.weight"])})
    fine = ches.score(SAMPLE_ROWS, "model", progress=False, dtype="float32")  # 1e6 is a float32 number: all scored
    assert all(reason is None for reason in fine["ches_skip"])
    with caplog.at_level(logging.INFO, logger="ches"):
        assert main(["score", "pairs.jsonl", "-m", "model", "--dtype", "float16", "-o", "half.parquet", "--no-progress"]) == 0
    err = caplog.text
    half = ches.data.inputs.load_data("half.parquet")
    marked = [index for index, reason in enumerate(half["ches_skip"]) if reason]
    assert marked == affected and all(math.isnan(half["ln_ches"][index]) for index in marked)
    assert half["ches_skip"][marked[0]].startswith("hidden states are not finite (NaN or inf) in float16, whose largest "
                                                   "number is 65504: try dtype='bfloat16' or 'float32'")
    assert all(math.isfinite(half["ln_ches"][index]) for index in range(len(SAMPLE_ROWS)) if index not in marked)
    assert f"scored {len(SAMPLE_ROWS) - len(marked)} of {len(SAMPLE_ROWS)} rows" in err and "hidden states are not finite" in err
    run = json.loads((workdir / "half.parquet.meta.json").read_text())["run"]
    assert run["skipped"] == {"data": len(marked)} and run["dtype"] == "float16"
    assert list(run["skip_reasons"]["data"].values()) == [len(marked)]
    for layout in ("prefix_shared", "packed", "padded", "shared_prompt"):  # an overflow never spreads to other rows
        again = ches.score(SAMPLE_ROWS, "model", dtype="float16", layout=layout, progress=False)
        assert [index for index, reason in enumerate(again["ches_skip"]) if reason] == marked, layout


def test_a_run_with_no_finite_hidden_state_fails_in_one_line(workdir, capsys):
    import torch

    edit_weights(workdir / "model", lambda w: {**w, "model.layers.1.mlp.down_proj.weight":
                                               w["model.layers.1.mlp.down_proj.weight"].index_fill(0, torch.tensor([0]), float("nan"))})
    before = digest(workdir)
    assert_one_line_error(*run_cli(["score", "pairs.jsonl", "-m", "model", "-o", "s.parquet", "--save-embeddings",
                                    "e.safetensors", "--no-progress"], capsys),
                          r"nothing was scored: for every row that ran \(6\), hidden states are not finite \(NaN or inf\) "
                          r"in float32: the model's weights or computation give NaN or inf")
    assert digest(workdir) == before
