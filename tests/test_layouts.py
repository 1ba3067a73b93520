"""Every layout gives the padded layout's scores: packed rows (several sequences per row, restarting
position ids) and shared prompts (the rejected completion run on the chosen pass's cut-back KV cache).
A model that would let packed sequences see each other is detected and scored with padding."""

import contextlib
import functools
import logging

import numpy as np
import pytest
import torch
from conftest import ARCHITECTURES, hh_rows

import ches
import ches.model.layouts
from ches.model.layouts import Packed

MEASURES = ("ches", "ln_ches", "last_hidden_ip", "edit_distance")


@contextlib.contextmanager
def no_varlen(model):
    yield False


def assert_same(first, second, rtol=1e-5):
    assert list(first["ches_skip"]) == list(second["ches_skip"])
    for measure in MEASURES:
        left, right = np.array(first[measure]), np.array(second[measure])
        scale = np.nanmax(np.abs(left))
        np.testing.assert_allclose(left, right, rtol=0, atol=rtol * scale, err_msg=measure)  # NaNs must match too


@pytest.mark.parametrize("layout", ["prefix_shared", "packed", "packed-masked", "shared_prompt"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_layout_equals_padded(architecture, layout, tokenizer, tiny_model, caplog, monkeypatch):
    # packed: the padding-free kernel of ches.model.attention; packed-masked: the model's own SDPA with the
    # block-diagonal mask transformers builds from restarting position ids
    if layout == "packed-masked":
        monkeypatch.setattr(ches.model.layouts, "packed_attention", no_varlen)
        layout = "packed"
    rows = hh_rows(16, start=200)
    model = tiny_model(architecture)
    with caplog.at_level(logging.WARNING, logger="ches"):
        for max_length in (None, 300):
            padded = ches.score(rows, model, tokenizer, layout="padded", max_length=max_length, progress=False)
            other = ches.score(rows, model, tokenizer, layout=layout, batch_tokens=2048, max_length=max_length,
                               progress=False)
            assert_same(padded, other)
    assert "instead" not in caplog.text  # the layout really ran


def test_unknown_layout(tokenizer, tiny_model):
    with pytest.raises(ches.ChesError, match=r"layout='ragged' is not one of \['packed', 'padded', 'prefix_shared', 'shared_prompt'\]"):
        ches.score(hh_rows(2), tiny_model("llama"), tokenizer, layout="ragged", progress=False)


class AllOnesMask(torch.nn.Module):
    """A body that passes an all-ones attention mask: transformers then ignores restarting positions."""

    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, input_ids, **kwargs):
        return self.body(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)


def test_probe_detects_attention_leaking_across_packed_sequences(tokenizer, tiny_model):
    body = tiny_model("llama").base_model
    assert Packed().exact(body, torch.device("cpu"), len(tokenizer))
    assert not Packed().exact(AllOnesMask(body), torch.device("cpu"), len(tokenizer))


def test_leaking_model_falls_back_to_padding(tokenizer, tiny_model, caplog, monkeypatch):
    import ches.model.models

    model = tiny_model("llama")
    original = ches.model.models.decoder_body
    monkeypatch.setattr(ches.model.models, "decoder_body", lambda m: AllOnesMask(original(m)))
    monkeypatch.setattr(ches.model.layouts, "packed_attention", no_varlen)  # only the model's own (masked) kernel
    rows = hh_rows(8)
    with caplog.at_level(logging.WARNING, logger="ches"):
        fallback = ches.score(rows, model, tokenizer, layout="packed", progress=False)
    assert "does not give the same hidden states with layout 'packed'; scoring with 'padded' instead" in caplog.text
    monkeypatch.setattr(ches.model.models, "decoder_body", original)
    assert_same(ches.score(rows, model, tokenizer, layout="padded", progress=False), fallback)


def test_packed_rows_run_on_the_padding_free_kernel_and_restore_the_model(tokenizer, tiny_model, monkeypatch):
    import ches.model.attention

    calls = []
    kernel = ches.model.attention.varlen_attention
    monkeypatch.setattr(ches.model.attention, "varlen_attention", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    rows = hh_rows(12, start=500)
    model = tiny_model("llama")
    packed, info = ches.api.score_run(rows, model, tokenizer, layout="packed", batch_tokens=2048, progress=False)
    assert info.layout == "packed" and info.attention == ches.model.attention.VARLEN and calls
    assert model.config._attn_implementation == "sdpa"  # the caller's model is given back as it came
    assert_same(ches.score(rows, model, tokenizer, layout="padded", progress=False), packed)


def test_padding_free_kernel_refuses_what_it_cannot_compute():
    from ches.model.attention import varlen_attention

    query = torch.randn(1, 2, 6, 4)
    positions = torch.tensor([[0, 1, 2, 0, 1, 2]])
    window = torch.nn.Module()
    window.sliding_window = 4
    with pytest.raises(ValueError, match="sliding-window attention"):
        varlen_attention(window, query, query, query, None, position_ids=positions)
    with pytest.raises(ValueError, match="a KV cache is in use"):
        varlen_attention(torch.nn.Module(), query, torch.randn(1, 2, 9, 4), torch.randn(1, 2, 9, 4), None,
                         position_ids=positions)
    with pytest.raises(ValueError, match="no position ids reach the attention"):
        varlen_attention(torch.nn.Module(), query, query, query, None)


@pytest.mark.parametrize("layout", ["padded", "packed", "shared_prompt"])
def test_eager_attention_kernel_gives_the_same_scores(layout, tokenizer, tiny_model, caplog):
    import copy

    rows = hh_rows(12, start=300)
    model = tiny_model("llama")
    reference = ches.score(rows, model, tokenizer, layout="padded", progress=False)  # SDPA
    eager = copy.deepcopy(model)
    with caplog.at_level(logging.WARNING, logger="ches"):
        scored, info = ches.api.score_run(rows, eager, tokenizer, layout=layout, attn_implementation="eager",
                                          batch_tokens=2048, progress=False)
    assert info.attention == ("ches_varlen" if layout == "packed" else "eager")
    assert eager.config._attn_implementation == "eager"
    assert "scoring with 'padded' instead" not in caplog.text
    assert_same(reference, scored)


def test_unavailable_attention_kernel_is_a_clear_error(tokenizer, tiny_model):
    import copy

    with pytest.raises(ches.ChesError, match=r"attn_implementation='no_such_kernel'"):
        ches.score(hh_rows(2), copy.deepcopy(tiny_model("llama")), tokenizer, attn_implementation="no_such_kernel",
                   progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["padded", "packed", "prefix_shared"])
def test_compiled_body_gives_the_same_scores(layout, tokenizer, tiny_model):
    rows = hh_rows(10, start=400)
    model = tiny_model("llama")
    eager = ches.score(rows, model, tokenizer, layout="padded", progress=False)
    compiled, info = ches.api.score_run(rows, model, tokenizer, layout=layout, compile=True, progress=False)
    assert info.options["compile"] and info.layout == layout
    assert_same(eager, compiled)


def flash_varlen_stand_in(signature: str):
    """A CPU stand-in for torch.nn.attention.varlen.varlen_attn with the argument contract of a torch
    version (``"window"``: torch >= 2.11 with scale/enable_gqa; ``"is_causal"``: torch 2.10), checking
    what it is given and computing, per segment, causal attention aligned to the bottom-right corner
    (FlashAttention's rule when a segment has more keys than queries) with SDPA and an explicit mask."""

    def check(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k):
        assert query.dim() == key.dim() == value.dim() == 3 and cu_seq_q.dtype == cu_seq_k.dtype == torch.int32
        assert max_q == int((cu_seq_q[1:] - cu_seq_q[:-1]).max()) and max_k == int((cu_seq_k[1:] - cu_seq_k[:-1]).max())
        assert int(cu_seq_q[0]) == int(cu_seq_k[0]) == 0 and int(cu_seq_q[-1]) == query.shape[0]
        assert int(cu_seq_k[-1]) == key.shape[0] == value.shape[0] and len(cu_seq_q) == len(cu_seq_k)

    def attend(query, key, value, cu_seq_q, cu_seq_k, scale, enable_gqa):
        output = torch.empty_like(query)
        for (begin, end), (key_begin, key_end) in zip(zip(cu_seq_q.tolist(), cu_seq_q.tolist()[1:]),
                                                      zip(cu_seq_k.tolist(), cu_seq_k.tolist()[1:])):
            q = query[begin:end].transpose(0, 1)[None]
            k, v = (t[key_begin:key_end].transpose(0, 1)[None] for t in (key, value))
            rows, columns = torch.meshgrid(torch.arange(end - begin), torch.arange(key_end - key_begin), indexing="ij")
            allowed = columns <= rows + (key_end - key_begin) - (end - begin)
            output[begin:end] = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, scale=scale, enable_gqa=enable_gqa)[0].transpose(0, 1)
        return output

    def newer(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
              window_size=(-1, -1), enable_gqa=False):
        check(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k)
        assert tuple(window_size) == (-1, 0)
        return attend(query, key, value, cu_seq_q, cu_seq_k, scale, enable_gqa)

    def older(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
        check(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k)
        assert is_causal and key.shape[1] == query.shape[1]  # no GQA support: heads must come repeated
        return attend(query, key, value, cu_seq_q, cu_seq_k, None, False)

    return newer if signature == "window" else older


@pytest.mark.parametrize("layout", ["packed", "prefix_shared"])
@pytest.mark.parametrize("signature", ["window", "is_causal"])
@pytest.mark.parametrize("architecture", ["llama", "olmo2"])  # grouped (4 query, 2 key/value heads) and not
def test_fused_varlen_branch_passes_what_the_kernel_expects(layout, signature, architecture, tokenizer, tiny_model,
                                                           monkeypatch):
    import torch.nn.attention.varlen

    import ches.model.attention

    calls = []
    stand_in = flash_varlen_stand_in(signature)
    monkeypatch.setattr(torch.nn.attention.varlen, "varlen_attn",
                        functools.wraps(stand_in)(lambda *a, **k: calls.append(1) or stand_in(*a, **k)))
    monkeypatch.setattr(ches.model.attention, "fused_kernel_applies", lambda query: True)
    rows = hh_rows(10, start=600)
    model = tiny_model(architecture)
    scored, info = ches.api.score_run(rows, model, tokenizer, layout=layout, batch_tokens=2048, progress=False)
    assert info.layout == layout and info.attention == ches.model.attention.VARLEN and calls  # the kernel ran the scoring
    assert_same(ches.score(rows, model, tokenizer, layout="padded", progress=False), scored)
