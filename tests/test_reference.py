"""The key test: ches.score equals a one-sequence-at-a-time float32 reference on the full causal LM.

The reference takes its token ids from TRL's own DPOTrainer, runs ``AutoModelForCausalLM`` on each
sequence alone with ``output_hidden_states=True``, sums ``hidden_states[-1]`` over the positions that
predict the completion tokens, and computes every score in float64 by the paper's formulas.
"""

import copy
import math

import datasets
import pytest
import torch
from conftest import ARCHITECTURES, conversational_rows, hh_rows, levenshtein, standard_rows

import ches

pytest.importorskip("trl")
ROWS = 20


def trl_ids(rows, tokenizer, model, tmp_path):
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp_path), report_to="none", bf16=False, use_cpu=True)
    trainer = DPOTrainer(model=copy.deepcopy(model), ref_model=copy.deepcopy(model), args=args,
                         train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer)
    return [trainer.train_dataset[i] for i in range(len(rows))]


def reference_scores(model, prepared):
    """Per-sample float32 forward, float64 formulas; returns {measure: [value per row]}."""
    output = {"ches": [], "ln_ches": [], "last_hidden_ip": [], "edit_distance": []}
    head = model.get_output_embeddings()
    for example in prepared:
        prompt = example["prompt_ids"]
        sums, lasts, lengths = [], [], []
        for completion in (example["chosen_ids"], example["rejected_ids"]):
            ids = torch.tensor([prompt + completion])
            with torch.no_grad():
                out = model(input_ids=ids, output_hidden_states=True)
            hidden = out.hidden_states[-1][0]
            # hidden_states[-1] is what the unembedding sees: after the final norm
            torch.testing.assert_close(out.logits[0], head(hidden), rtol=1e-4, atol=1e-4)
            start, end = len(prompt) - 1, len(prompt) + len(completion) - 1
            sums.append(hidden[start:end].double().sum(0))
            lasts.append(hidden[end - 1].double())
            lengths.append(len(completion))
        plus, minus = sums
        output["ches"].append(float(plus @ minus - plus @ plus))
        output["ln_ches"].append(float(plus @ minus / (lengths[0] * lengths[1]) - plus @ plus / lengths[0] ** 2))
        output["last_hidden_ip"].append(float(lasts[0] @ lasts[1]))
        longer = max(len(example["chosen_ids"]), len(example["rejected_ids"]))
        output["edit_distance"].append(levenshtein(example["chosen_ids"], example["rejected_ids"]) / longer)
    return output


def assert_scores_match(scored, reference, prepared):
    for measure, expected in reference.items():
        scale = max(abs(value) for value in expected)
        for row, (ours, theirs) in enumerate(zip(scored[measure], expected)):
            assert math.isfinite(ours)
            assert abs(ours - theirs) <= 1e-4 * scale, (measure, row, ours, theirs, scale)
    assert scored["chosen_tokens"] == [len(example["chosen_ids"]) for example in prepared]
    assert scored["rejected_tokens"] == [len(example["rejected_ids"]) for example in prepared]
    assert scored["prompt_tokens"] == [len(example["prompt_ids"]) for example in prepared]
    assert scored["ches_skip"] == [None] * len(prepared)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_scores_equal_reference_per_architecture(architecture, tokenizer, tiny_model, tmp_path):
    rows = standard_rows(hh_rows(ROWS))
    model = tiny_model(architecture)
    prepared = trl_ids(rows, tokenizer, model, tmp_path)
    reference = reference_scores(model, prepared)
    for layout in ("padded", "packed", "shared_prompt"):
        # a small batch budget forces several batches of mixed lengths
        scored = ches.score(rows, model, tokenizer, batch_tokens=1500, layout=layout, progress=False)
        assert_scores_match(scored, reference, prepared)


@pytest.mark.parametrize("make_rows", [lambda rows: rows, conversational_rows], ids=["implicit", "conversational"])
def test_scores_equal_reference_other_formats(make_rows, tokenizer, tiny_model, tmp_path):
    rows = make_rows(hh_rows(ROWS, start=100))
    model = tiny_model("llama")
    prepared = trl_ids(rows, tokenizer, model, tmp_path)
    scored = ches.score(rows, model, tokenizer, batch_tokens=2000, progress=False)
    assert_scores_match(scored, reference_scores(model, prepared), prepared)
