"""One run's setup (ches.run.runs): the options given are what the setup and its record hold; the layout
estimate sees the sample of the loaded model; an attention kernel switched for packed rows is the model's own
again after the block; the record is the run's fields, as JSON-ready values."""

from __future__ import annotations

import json
import re

from conftest import MODEL_DIR

from ches.data.tokens import SequencePair, TokenSequence
from ches.options import ScoreOptions
from ches.run.runs import ModelRun, RunInfo, now, prepared


def test_the_setup_holds_the_options_given(tiny_model, tokenizer):
    model = tiny_model("llama")
    options = ScoreOptions(layout="padded", num_threads=1, batch_tokens=77, dtype="float32")
    with prepared(model, tokenizer, options, started="2026-01-02T03:04:05+0000") as setup:
        record = setup.record()
    assert setup.loaded.model is model and setup.batch_tokens == 77 and setup.threads.count == 1
    assert {name: record[name] for name in ("batch_tokens", "layout", "processes", "threads", "dtype", "device",
                                            "started")} == {
        "batch_tokens": 77, "layout": "padded", "processes": 1, "threads": 1, "dtype": "float32", "device": "cpu",
        "started": "2026-01-02T03:04:05+0000"}
    assert record["layout_reason"].startswith("requested")


def test_the_layout_estimate_sees_the_sample_of_the_loaded_model(tokenizer):
    seen = []
    pair = SequencePair(TokenSequence([1, 5, 6, 7], 1, 3), TokenSequence([1, 5, 8], 1, 2))

    def sample(loaded):
        seen.append(loaded)
        return [pair] * 4

    with prepared(str(MODEL_DIR), None, ScoreOptions(num_threads=1), work=sample) as setup:
        assert seen == [setup.loaded]
        reason = setup.record()["layout_reason"]
    assert reason.startswith("chosen by estimated cost")  # of the sample: 2 + 2 prompt tokens of 4 + 3 per pair
    assert reason.endswith("(prompts are 57% of the tokens of padded/packed rows)")


def test_a_kernel_switched_for_packed_rows_is_switched_back(tiny_model, tokenizer):
    model = tiny_model("llama")
    before = model.config._attn_implementation
    with prepared(model, tokenizer, ScoreOptions(layout="packed", num_threads=1)) as setup:
        assert setup.layout.layout == "packed"
    assert model.config._attn_implementation == before


def test_the_record_is_every_field_as_json():
    fields = dict(model="m", model_revision=None, tokenizer="t", dtype="float32", device="cpu", attention="sdpa",
                  batch_tokens=64, layout="padded", layout_reason="requested", processes=1, threads=2,
                  threads_reason="given", options={"max_length": 8})
    info = RunInfo(**fields, rows={"data": 3})
    written = json.loads(json.dumps(info.as_dict()))
    assert {name: written[name] for name in fields} == fields and written["rows"] == {"data": 3}
    assert set(ModelRun(**fields).as_dict()) < set(written)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", now())
