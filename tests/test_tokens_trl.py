"""Our token sequences equal the ones TRL's own DPOTrainer builds, for all three formats and max_length."""

import copy
import json
import math

import datasets
import pytest
from conftest import conversational_rows, hh_rows, standard_rows

import ches
from ches.data.formats import to_pairs
from ches.data.tokens import Skip, to_sequences, tokenize_pairs

trl = pytest.importorskip("trl")  # trl is in the test extras, so CI always has it

FORMATS = {
    "implicit": lambda rows: rows,
    "standard": standard_rows,
    "conversational": conversational_rows,
}


def trl_sequences(rows, tokenizer, model, max_length, tmp_path):
    """(input_ids, completion_mask) per sequence, chosen then rejected, as TRL's trainer + collator give them."""
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp_path), max_length=max_length, report_to="none", dataset_num_proc=None,
                     bf16=False, use_cpu=True)
    trainer = DPOTrainer(model=copy.deepcopy(model), ref_model=copy.deepcopy(model), args=args,
                          train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer)
    prepared = trainer.train_dataset
    out = {}
    for index in range(len(prepared)):
        example = {key: prepared[index][key] for key in ("prompt_ids", "chosen_ids", "rejected_ids")}
        batch = trainer.data_collator([example])
        for side in (0, 1):
            mask = batch["attention_mask"][side].bool()
            out[(index, side)] = (batch["input_ids"][side][mask].tolist(), batch["completion_mask"][side][mask].tolist())
    return prepared, out


@pytest.mark.parametrize("max_length", [None, 160])
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_sequences_equal_trl(fmt, max_length, tokenizer, tiny_model, tmp_path):
    rows = FORMATS[fmt](hh_rows(40))
    prepared, expected = trl_sequences(rows, tokenizer, tiny_model("llama"), max_length, tmp_path)
    tokenized = tokenize_pairs(to_pairs({k: [row[k] for row in rows] for k in rows[0]}), tokenizer)
    planned = [to_sequences(pair, max_length) for pair in tokenized]
    kept = [plan for plan in planned if not isinstance(plan, Skip)]
    # TRL drops rows whose prompt fills max_length; we keep them with a reason, so compare the rest in order
    assert len(kept) == len(prepared)
    if max_length is not None:
        assert any(isinstance(plan, Skip) for plan in planned), "the test data should exercise the max_length skip"
    for index, sequences in enumerate(kept):
        for side, sequence in enumerate(sequences):
            input_ids, completion_mask = expected[(index, side)]
            assert sequence.input_ids == input_ids
            # TRL's loss uses the tokens where completion_mask is 1; the hidden states predicting them are ours
            positions = [t - 1 for t, flag in enumerate(completion_mask) if flag]
            assert list(range(sequence.start, sequence.end)) == positions


def test_prompt_cut_matches_trl_when_tokens_merge(tokenizer, tiny_model, tmp_path):
    # a prompt that ends mid-word makes its ids no prefix of prompt+completion ids: TRL cuts the prompt
    rows = [{"prompt": "\n\nHuman: Is it safe?\n\nAssistant: Abso", "chosen": "lutely not.", "rejected": "lutely."}]
    prepared, expected = trl_sequences(rows, tokenizer, tiny_model("llama"), None, tmp_path)
    tokenized = tokenize_pairs(to_pairs({k: [row[k] for row in rows] for k in rows[0]}), tokenizer)
    assert tokenized[0].prompt_cut > 0
    assert tokenized[0].prompt_ids == prepared[0]["prompt_ids"]
    chosen, rejected = to_sequences(tokenized[0])
    assert chosen.input_ids == expected[(0, 0)][0] and rejected.input_ids == expected[(0, 1)][0]


TOOL_TEMPLATE = (
    "{{ bos_token }}{% if tools %}<|im_start|>system\nTools:{% for tool in tools %} {{ tool['function']['name'] }}"
    "{% endfor %}<|im_end|>\n{% endif %}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' and not enable_thinking %}<think></think>{% endif %}"
    "{{ message['content'] + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if not enable_thinking %}<think></think>{% endif %}{% endif %}"
)


def test_tools_and_template_kwargs_reach_the_template_as_in_trl(tokenizer, tiny_model, tmp_path):
    # TRL reads a JSON `tools` column and a `chat_template_kwargs` dict per row; rows differ in both

    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = TOOL_TEMPLATE
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}
    rows = conversational_rows(hh_rows(12))
    for index, row in enumerate(rows):
        row["tools"] = json.dumps([tool] if index % 3 else [])
        row["chat_template_kwargs"] = {"enable_thinking": index % 2 == 0}
    prepared, expected = trl_sequences(rows, tokenizer, tiny_model("llama"), None, tmp_path)
    tokenized = tokenize_pairs(to_pairs({k: [row[k] for row in rows] for k in rows[0]}), tokenizer)
    rendered = [tokenizer.decode(pair.prompt_ids) for pair in tokenized]
    assert any("get_weather" in text for text in rendered) and any("<think></think>" in text for text in rendered)
    assert any("get_weather" not in text for text in rendered) and any("<think></think>" not in text for text in rendered)
    for index, pair in enumerate(tokenized):
        chosen, rejected = to_sequences(pair)
        assert chosen.input_ids == expected[(index, 0)][0] and rejected.input_ids == expected[(index, 1)][0]


def test_an_empty_conversational_prompt_is_skipped_as_trl_refuses_it(workdir, tokenizer):
    import copy

    differ = {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
              "rejected": [{"role": "user", "content": "Yo"}, {"role": "assistant", "content": "Go"}]}
    shared = {"chosen": differ["chosen"], "rejected": [differ["chosen"][0], {"role": "assistant", "content": "Go"}]}
    explicit = {"prompt": [], "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}
    system = copy.deepcopy(tokenizer)  # a template that adds a system turn to every conversation
    system.chat_template = ("{{ bos_token }}<|im_start|>system\nBe kind.<|im_end|>\n" + tokenizer.chat_template
                            .removeprefix("{{ bos_token }}"))
    for template in (tokenizer, system):
        scored = ches.score([differ, shared], "model", template, progress=False)
        assert scored["ches_skip"][0].startswith("conversational prompt has no messages") and scored["ches_skip"][1] is None
        assert "TRL cannot train on it" in scored["ches_skip"][0] and math.isnan(scored["ches"][0])
        assert ches.score([explicit], "model", template, progress=False)["ches_skip"][0].startswith(
            "conversational prompt has no messages")
    from transformers import AutoTokenizer  # the reason is TRL's: transformers refuses the empty conversation

    with pytest.raises(ValueError, match="empty conversation"):
        AutoTokenizer.from_pretrained(workdir / "model").apply_chat_template([], tokenize=True)
