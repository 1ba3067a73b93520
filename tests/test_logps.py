"""Completion log-probabilities (``logps=True``): TRL's own precomputed reference log-probs, an independent
per-sequence float32 reference, every layout, skipped rows, and the columns' way through filter and cache."""

from __future__ import annotations

import copy
import json
import math

import datasets
import pytest
import torch
from conftest import ROOT, conversational_rows, hh_rows, standard_rows

import ches
from ches.cli import main
from ches.data.formats import to_pairs
from ches.data.inputs import load_data, pair_columns
from ches.model import logps as logps_module
from ches.model.models import load_model
from ches.run.chunks import plan_pairs

trl = pytest.importorskip("trl")  # in the test extras, so CI always has it
LAYOUTS = ["prefix_shared", "packed", "padded", "shared_prompt"]


def reference_logps(rows, model, tokenizer, max_length=None):
    """Per pair ``(chosen, rejected)`` log pi(completion | prompt): one sequence at a time, the full model's
    logits in float64, summed over the completion's tokens (independent of ches' engine and head)."""
    loaded = load_model(model, tokenizer)
    plans = plan_pairs(to_pairs(pair_columns(load_data(rows))), loaded, max_length=max_length)
    out = []
    with torch.no_grad():
        for plan in plans:
            if not hasattr(plan, "chosen"):
                out.append((math.nan, math.nan))
                continue
            pair = []
            for sequence in plan:
                logits = model(input_ids=torch.tensor([sequence.input_ids])).logits[0].double()
                table = torch.log_softmax(logits, -1)
                pair.append(sum(table[t, sequence.input_ids[t + 1]].item() for t in range(sequence.start, sequence.end)))
            out.append(tuple(pair))
    return out


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("architecture", ["llama", "gpt2", "gemma"])
def test_logps_equal_a_one_sequence_reference(layout, architecture, tiny_model, tokenizer):
    model = tiny_model(architecture)
    rows = standard_rows(hh_rows(6))
    scored = ches.score(rows, model, tokenizer, logps=True, layout=layout, max_length=96, progress=False)
    for (chosen, rejected), got_chosen, got_rejected in zip(reference_logps(rows, model, tokenizer, 96),
                                                            scored["chosen_logps"], scored["rejected_logps"]):
        assert got_chosen == pytest.approx(chosen, rel=1e-5, abs=1e-4, nan_ok=True)
        assert got_rejected == pytest.approx(rejected, rel=1e-5, abs=1e-4, nan_ok=True)


def trl_reference_logps(rows, model, tokenizer, max_length, tmp_path):
    """TRL 1.16's own precompute (``precompute_ref_log_probs=True``): its reference log-probs per kept row."""
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp_path), max_length=max_length, report_to="none", bf16=False, use_cpu=True,
                     precompute_ref_log_probs=True, per_device_train_batch_size=4, dataset_num_proc=None)
    trainer = DPOTrainer(model=copy.deepcopy(model), args=args, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=tokenizer)
    return list(trainer.train_dataset["ref_chosen_logps"]), list(trainer.train_dataset["ref_rejected_logps"])


@pytest.mark.parametrize("fmt", ["standard", "conversational", "implicit"])
def test_logps_equal_trls_precomputed_reference(fmt, tiny_model, tokenizer, tmp_path):
    model = tiny_model("llama")
    rows = {"standard": standard_rows, "conversational": conversational_rows, "implicit": lambda r: r}[fmt](hh_rows(24))
    chosen, rejected = trl_reference_logps(rows, model, tokenizer, 160, tmp_path)
    scored = ches.score(rows, model, tokenizer, logps=True, max_length=160, progress=False)
    kept = [index for index, reason in enumerate(scored["ches_skip"]) if reason is None]  # TRL drops the others
    assert len(kept) == len(chosen) and len(kept) < len(rows)  # max_length makes TRL drop rows: compare the rest
    exact = reference_logps(rows, model, tokenizer, 160)
    for side, (ours, theirs) in enumerate(((scored["chosen_logps"], chosen), (scored["rejected_logps"], rejected))):
        for index, value in zip(kept, theirs):
            # TRL sums its per-token log-probs in float32: its own values lie up to ~1e-4 nats from the float64
            # reference here; ches' lie within 2e-5 of it
            assert abs(ours[index] - value) <= 1e-4 + 2.4e-7 * abs(value)
            assert abs(ours[index] - exact[index][side]) <= 2e-5


def test_skipped_rows_get_nan_and_the_head_runs_in_pieces(tiny_model, tokenizer, monkeypatch):
    model = tiny_model("llama")
    rows = standard_rows(hh_rows(5))
    whole = ches.score(rows, model, tokenizer, logps=True, max_length=40, progress=False)
    skipped = [index for index, reason in enumerate(whole["ches_skip"]) if reason]
    assert skipped and all(math.isnan(whole["chosen_logps"][index]) for index in skipped)
    monkeypatch.setattr(logps_module, "PIECE_LOGITS", 3 * len(tokenizer))  # three positions at a time
    pieces = ches.score(rows, model, tokenizer, logps=True, max_length=40, progress=False)
    scored = [index for index in range(len(rows)) if index not in skipped]
    assert [pieces["chosen_logps"][i] for i in scored] == pytest.approx([whole["chosen_logps"][i] for i in scored],
                                                                         rel=1e-7)


def test_the_head_applies_the_models_own_logit_processing():
    head = logps_module.LMHead(torch.nn.Linear(2, 3, bias=False), softcap=2.0, scale=0.5)
    hidden = torch.randn(4, 2)
    expected = torch.tanh(head.module(hidden) * 0.5 / 2.0) * 2.0
    assert torch.allclose(head.logits(hidden), expected)
    table = torch.log_softmax(expected.double(), -1)
    targets = torch.tensor([0, 2, 1, 1])
    assert torch.allclose(logps_module.token_logps(head, hidden, targets).double(), table[torch.arange(4), targets],
                          atol=1e-6)


def test_logps_travel_through_the_cli_filter_and_the_cache(tmp_path, capsys):
    rows = standard_rows(hh_rows(8))
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    model = str(ROOT / "examples" / "tiny-hh-model")
    scores = tmp_path / "scores.parquet"
    assert main(["score", str(data), "-m", model, "--logps", "--cache-dir", str(tmp_path / "cache"), "-o", str(scores),
                 "--no-progress"]) == 0
    written = load_data(str(scores))
    assert written.column_names[-4:] == ["chosen_logps", "rejected_logps", "chosen_shared_logps", "rejected_shared_logps"]
    assert json.loads((tmp_path / "scores.parquet.meta.json").read_text())["run"]["options"]["logps"] is True
    kept = tmp_path / "kept.jsonl"
    assert main(["filter", str(scores), "--keep", "4", "--no-scores", "-o", str(kept)]) == 0
    first = json.loads(kept.read_text().splitlines()[0])
    assert set(first) == {"prompt", "chosen", "rejected", "chosen_logps", "rejected_logps",  # CHES' own columns dropped,
                          "chosen_shared_logps", "rejected_shared_logps",  # not the reference (LD-DPO's parts too)
                          "ches_token_digest"}  # nor the digest of the tokens the log-probs belong to
    again = ches.score(str(data), model, logps=True, cache_dir=str(tmp_path / "cache"), progress=False)
    assert list(again["chosen_logps"]) == list(written["chosen_logps"])  # from the cache shards
    plain = ches.score(str(data), model, cache_dir=str(tmp_path / "cache"), progress=False)
    assert "chosen_logps" not in plain.column_names and list(plain["ches"]) == list(written["ches"])
    with pytest.raises(ches.ChesError, match=r"has column\(s\) \['chosen_logps'\]"):
        ches.score([dict(row, chosen_logps=0.0) for row in rows], model, logps=True, progress=False)


def test_log_probs_that_overflow_where_hidden_states_do_not_skip_those_rows_saying_so(tokenizer):
    """An LM head scaled to the edge of float32: its logits overflow for one row's positions, the hidden
    states (the body's) stay finite. That row is skipped for its log-probabilities; the others are scored."""
    from conftest import tiny_config
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", len(tokenizer), tokenizer)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(1e38).mul_(4.0)
    rows = standard_rows(hh_rows(12))
    scored = ches.score(rows, model, tokenizer, logps=True, progress=False, layout="padded")
    reason = ("log-probabilities are not finite (NaN or inf) in float32, though the hidden states are: the LM head's "
              "logits overflow (check the output layer's weights)")
    skipped = [row for row, why in enumerate(scored["ches_skip"]) if why is not None]
    assert skipped and len(skipped) < len(rows) and all(scored["ches_skip"][row] == reason for row in skipped)
    assert all(math.isnan(scored[name][row]) for row in skipped for name in ("ches", "chosen_logps", "rejected_logps"))
    assert all(math.isfinite(scored["chosen_logps"][row]) for row in range(len(rows)) if row not in skipped)
    with torch.no_grad():
        model.lm_head.weight.mul_(2.0)  # now every row's logits overflow
    with pytest.raises(ches.ChesError, match=r"^nothing was scored: for every row that ran \(12\), log-probabilities are "
                                             r"not finite \(NaN or inf\) in float32, though the hidden states are"):
        ches.score(rows, model, tokenizer, logps=True, progress=False, layout="padded")
