"""The prefix-shared layout (``prompt | chosen | rejected``, the prompt computed once) and the layout chosen by
estimated cost: same hidden sums as each sequence run alone, the tokens the estimate counts are the
tokens that reach the model, and the choice is recorded (architectures: tests/test_layouts.py)."""

import contextlib
import logging

import numpy as np
import pytest
import torch
from conftest import hh_rows

import ches
import ches.model.attention
import ches.model.engine
import ches.model.layouts
import ches.run.runner
from ches.data.tokens import TokenSequence
from ches.model.attention import packed_attention, varlen_attention
from ches.model.batches import group_length, pack_groups
from ches.model.engine import OneRow, hidden_sums


def random_pairs(count: int, seed: int = 0) -> list[tuple[TokenSequence, TokenSequence]]:
    """Pairs with a shared prompt and completions of 1 to 12 tokens (1: only the prompt's last position is summed)."""
    generator = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(5, 4000, (n,), generator=generator).tolist()

    pairs = []
    for index in range(count):
        prompt = ids(1 + 3 * index % 17)
        chosen, rejected = prompt + ids(1 + index % 12), prompt + ids(1 + 5 * index % 12)
        pairs.append((TokenSequence(chosen, len(prompt) - 1, len(chosen) - 1),
                      TokenSequence(rejected, len(prompt) - 1, len(rejected) - 1)))
    return pairs


def test_prefix_shared_sums_equal_each_sequence_alone(tiny_model):
    model = tiny_model("llama")
    pairs = random_pairs(20)
    sequences = [sequence for pair in pairs for sequence in pair]
    with torch.inference_mode():  # reference: one sequence at a time, no batching code involved
        alone = [model.base_model(input_ids=torch.tensor([s.input_ids])).last_hidden_state[0] for s in sequences]
    expected_sums = torch.stack([hidden[s.start : s.end].sum(0) for hidden, s in zip(alone, sequences)])
    expected_last = torch.stack([hidden[s.end - 1] for hidden, s in zip(alone, sequences)])
    with packed_attention(model) as switched:
        assert switched
        got = hidden_sums(model.base_model, sequences, hidden_size=32, batch_tokens=60, device=torch.device("cpu"),
                          pad_id=0, batching=OneRow(),
                          groups=[(index, index + 1) for index in range(0, len(sequences), 2)])
    torch.testing.assert_close(got.sums, expected_sums, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got.last, expected_last, rtol=1e-5, atol=1e-4)


def reference_attention(query, key, value, allowed):
    """Softmax attention in float64 under a boolean mask, written out (no SDPA)."""
    scores = (query.double() @ key.double().transpose(-1, -2)) / query.shape[-1] ** 0.5
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, -1) @ value.double()


def test_rejected_tokens_attend_to_the_prompt_and_themselves_only():
    pairs = random_pairs(3, seed=4)
    batch = pack_groups([list(pair) for pair in pairs], pad_id=0, row_length=80)
    length = batch.input_ids.shape[1]
    generator = torch.Generator().manual_seed(1)
    query, key, value = (torch.randn(1, 2, length, 8, generator=generator) for _ in range(3))
    output, _ = varlen_attention(torch.nn.Module(), query, key, value, None, position_ids=batch.position_ids)
    # which flat positions each token may see, from the pairs alone: its prompt, and its own sequence so far
    positions, owner = batch.position_ids[0].tolist(), []
    for pair_index, (chosen, rejected) in enumerate(pairs):
        prompt = chosen.start + 1
        owner += [(pair_index, "prompt")] * prompt + [(pair_index, "chosen")] * (len(chosen.input_ids) - prompt)
        owner += [(pair_index, "rejected")] * (len(rejected.input_ids) - prompt)
    owner += [(None, "padding")] * (length - len(owner))
    allowed = torch.zeros(length, length, dtype=torch.bool)
    for q in range(length):
        for k in range(q + 1):
            same_pair = owner[q][0] == owner[k][0]
            visible = owner[k][1] in ("prompt", owner[q][1]) if owner[q][1] != "padding" else owner[k][1] == "padding"
            allowed[q, k] = same_pair and visible and positions[k] <= positions[q]
    expected = reference_attention(query, key, value, allowed)
    torch.testing.assert_close(output.transpose(1, 2).double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_segments_are_read_once_per_batch_not_once_per_layer(architecture, tokenizer, tiny_model, monkeypatch):
    import ches.model.attention
    import ches.model.batches

    read_by_batch, read_by_kernel, kernel_calls, scoring = [], [], [], []  # counted while scoring, not probing

    def counted(calls, function):
        return lambda *a, **k: (calls.append(1) if scoring else None) or function(*a, **k)

    run_chunk = ches.run.runner.run_chunk
    monkeypatch.setattr(ches.run.runner, "run_chunk", lambda *a, **k: scoring.append(1) or run_chunk(*a, **k))
    monkeypatch.setattr(ches.model.batches, "segments", counted(read_by_batch, ches.model.attention.segments))
    monkeypatch.setattr(ches.model.attention, "segments", counted(read_by_kernel, ches.model.attention.segments))
    monkeypatch.setattr(ches.model.attention, "varlen_attention", counted(kernel_calls, ches.model.attention.varlen_attention))
    rows = hh_rows(16, start=300)
    model = tiny_model(architecture)
    scored, info = ches.api.score_run(rows, model, tokenizer, layout="prefix_shared", batch_tokens=512, progress=False)
    assert info.layout == "prefix_shared"
    assert read_by_batch and not read_by_kernel  # every layer of every batch was handed its batch's segments
    assert len(kernel_calls) == model.config.num_hidden_layers * len(read_by_batch)
    np.testing.assert_allclose(scored["ches"], one_at_a_time_ches(model, tokenizer, rows), rtol=1e-4)


def test_the_kernel_reads_the_segments_itself_when_the_model_does_not_hand_them_on(tiny_model):
    model = tiny_model("llama")
    pairs = random_pairs(6, seed=3)
    batch = pack_groups([list(pair) for pair in pairs], pad_id=0, row_length=120).with_segments()
    with packed_attention(model), torch.inference_mode():
        handed = model.base_model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False,
                                  **{ches.model.attention.SEGMENTS_KEYWORD: batch.segments}).last_hidden_state
        read = model.base_model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                                use_cache=False).last_hidden_state
        stale = pack_groups([list(pair) for pair in pairs[:2]], pad_id=0, row_length=60).with_segments()
        with pytest.raises(ValueError, match="the segments cover 60 tokens but the rows hold 120"):
            model.base_model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False,
                             **{ches.model.attention.SEGMENTS_KEYWORD: stale.segments})
    torch.testing.assert_close(handed, read, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["padded", "packed", "prefix_shared"])
def test_the_estimate_counts_the_token_slots_that_reach_the_model(layout, tokenizer, tiny_model, monkeypatch):
    slots, scoring = [], []  # token slots of each forward pass while scoring (not while probing the layout)
    run_body, run_chunk = ches.model.engine.run_body, ches.run.runner.run_chunk
    monkeypatch.setattr(ches.model.engine, "run_body", lambda body, batch, head=None: (
        slots.append(batch.input_ids.numel()) if scoring else None) or run_body(body, batch, head))
    monkeypatch.setattr(ches.run.runner, "run_chunk", lambda *a, **k: scoring.append(1) or run_chunk(*a, **k))
    rows = hh_rows(40, start=100)
    model = tiny_model("llama")
    loaded = ches.model.models.load_model(model, tokenizer)
    planned = ches.run.runner.plan_pairs(ches.data.formats.to_pairs(ches.data.inputs.pair_columns(ches.data.inputs.load_data(rows))),
                                     loaded, max_length=None)
    estimate = ches.model.layouts.layout_work(planned, device_type="cpu", batch_tokens=512)
    scored, info = ches.api.score_run(rows, model, tokenizer, layout=layout, batch_tokens=512, progress=False)
    assert info.layout == layout
    assert sum(slots) == estimate[layout].token_slots
    if layout == "prefix_shared":  # each prompt once: the packed rows' tokens less one prompt per pair
        assert sum(slots) == estimate["packed"].token_slots - sum(scored["prompt_tokens"])


def test_default_layout_is_the_cheapest_and_says_why(tokenizer, tiny_model):
    rows = hh_rows(24, start=700)
    model = tiny_model("llama")
    scored, info = ches.api.score_run(rows, model, tokenizer, progress=False)
    assert info.layout == "prefix_shared"
    assert info.layout_reason.startswith("chosen by estimated cost") and "prefix_shared 1.00" in info.layout_reason
    padded = ches.score(rows, model, tokenizer, layout="padded", progress=False)
    for measure in ("ches", "ln_ches", "last_hidden_ip"):
        np.testing.assert_allclose(scored[measure], padded[measure], rtol=1e-5, atol=1e-6 * np.abs(padded[measure]).max())


@contextlib.contextmanager
def no_switch(model):
    yield False


def test_default_layout_falls_back_to_the_next_cheapest_when_the_model_cannot_share(tokenizer, tiny_model,
                                                                                    monkeypatch, caplog):
    monkeypatch.setattr(ches.model.layouts, "packed_attention", no_switch)  # only the model's own masked kernel
    rows = hh_rows(12, start=900)
    with caplog.at_level(logging.INFO, logger="ches"):
        _, info = ches.api.score_run(rows, tiny_model("llama"), tokenizer, progress=False)
    ranked = [part.rsplit(" ", 1)[0] for part in info.layout_reason.split("cheapest: ")[1].split(" (")[0].split(", ")]
    assert ranked[0] == "prefix_shared" and info.layout == ranked[1]  # the next cheapest by the recorded estimate
    assert "layout 'prefix_shared' does not give this model the same hidden states" in caplog.text


def test_a_requested_prefix_shared_layout_falls_back_with_a_warning(tokenizer, tiny_model, monkeypatch, caplog):
    monkeypatch.setattr(ches.model.layouts, "packed_attention", no_switch)
    with caplog.at_level(logging.WARNING, logger="ches"):
        _, info = ches.api.score_run(hh_rows(6), tiny_model("llama"), tokenizer, layout="prefix_shared", progress=False)
    assert info.layout == "packed" and info.layout_reason.startswith("fallback for 'prefix_shared'")
    assert "layout 'prefix_shared'; scoring with 'packed' instead" in caplog.text


def test_costs_put_prefix_sharing_first_and_batch_one_passes_last_on_cuda():
    pairs = random_pairs(30)
    cpu = ches.model.layouts.layout_costs(pairs, hidden_size=64, intermediate_size=256, device_type="cpu", batch_tokens=256)
    cuda = ches.model.layouts.layout_costs(pairs, hidden_size=64, intermediate_size=256, device_type="cuda", batch_tokens=256)
    assert ches.model.layouts.by_cost(cpu)[0] == "prefix_shared"
    assert ches.model.layouts.by_cost(cuda) == ["prefix_shared", "packed", "padded", "shared_prompt"]
    work = ches.model.layouts.layout_work(pairs, device_type="cpu", batch_tokens=256)
    assert work["shared_prompt"].passes == 2 * len(pairs)
    assert work["packed"].token_slots - work["prefix_shared"].token_slots == sum(c.start + 1 for c, _ in pairs)


def test_a_sliding_window_model_is_not_run_prefix_shared_and_keeps_its_scores(tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("mistral", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  sliding_window=24, max_position_embeddings=4096,
                                  pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    rows = hh_rows(8, start=40)
    scored, info = ches.api.score_run(rows, model, tokenizer, progress=False)
    assert info.layout != "prefix_shared"  # ches' kernel refuses sliding windows; the probe sees it
    np.testing.assert_allclose(scored["ches"], one_at_a_time_ches(model, tokenizer, rows), rtol=1e-4)


def test_an_alibi_model_is_not_run_prefix_shared_and_keeps_its_scores(tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("bloom", vocab_size=len(tokenizer), hidden_size=32, n_layer=2, n_head=4,
                                  pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    rows = hh_rows(6, start=60)
    scored, info = ches.api.score_run(rows, model, tokenizer, progress=False)
    assert info.layout not in ("prefix_shared", "packed")  # ALiBi takes no position ids: segments cannot be read
    np.testing.assert_allclose(scored["ches"], one_at_a_time_ches(model, tokenizer, rows), rtol=1e-4)


def one_at_a_time_ches(model, tokenizer, rows) -> list[float]:
    """Reference ches: each TRL sequence alone through the model's own attention, summed in float32."""
    planned = ches.run.runner.plan_pairs(ches.data.formats.to_pairs(ches.data.inputs.pair_columns(ches.data.inputs.load_data(rows))),
                                     ches.model.models.load_model(model, tokenizer), max_length=None)
    expected = []
    with torch.inference_mode():
        for chosen, rejected in planned:
            sums = [model.base_model(input_ids=torch.tensor([s.input_ids])).last_hidden_state[0, s.start : s.end].sum(0)
                    for s in (chosen, rejected)]
            expected.append(float(sums[0] @ sums[1] - sums[0] @ sums[0]))
    return expected


def test_a_compiled_body_runs_the_padding_free_kernel_inside_one_graph(tiny_model):
    """The kernel is an opaque operator to torch.compile: no graph break per layer (a break inside the model's
    loop over its layers made dynamo run that loop eagerly), and new batch shapes reuse the graph."""
    torch._dynamo.reset()
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    model = tiny_model("llama")
    compiled = torch.compile(model.base_model, backend=counting_backend, dynamic=True)
    pairs = random_pairs(12, seed=5)
    with packed_attention(model), torch.inference_mode():
        for members, padding in ((pairs[:5], 3), (pairs[5:], 0)):  # one row each, as the engine packs them
            groups = [list(pair) for pair in members]
            batch = pack_groups(groups, pad_id=0, row_length=sum(map(group_length, groups)) + padding).with_segments()
            got = ches.model.engine.run_body(compiled, batch)
            expected = ches.model.engine.run_body(model.base_model, batch)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert len(graphs) == 1
    calls = [node.target for node in graphs[0].graph.nodes if node.op == "call_function"]
    assert calls.count(torch.ops.ches.segment_attention.default) == model.config.num_hidden_layers
    torch._dynamo.reset()
