"""Hostile and messy input: each case gets a clear error before model work, or a ches_skip reason on the
row; never a crash deep inside a batch, never silent loss."""

import copy
import json
import math

import datasets
import pytest
from conftest import MODEL_DIR, hh_rows, standard_rows

import ches
from ches import ChesError

PROMPT = "\n\nHuman: Is this fine?\n\nAssistant:"


def score(rows, tokenizer, tiny_model, **kwargs):
    return ches.score(rows, tiny_model("llama"), tokenizer, progress=False, **kwargs)


def test_empty_and_whitespace_completions_are_scored(tokenizer, tiny_model):
    rows = [{"prompt": PROMPT, "chosen": "", "rejected": " No."}, {"prompt": PROMPT, "chosen": "   ", "rejected": "\n\t"},
            {"prompt": "", "chosen": "Yes", "rejected": "No"}]
    scored = score(rows, tokenizer, tiny_model)
    assert list(scored["ches_skip"]) == [None, None, None]  # EOS is appended, BOS starts the prompt
    assert list(scored["chosen_tokens"])[0] == 1 and all(math.isfinite(v) for v in scored["ln_ches"])


def test_empty_prompt_without_bos_is_a_skip_reason(tokenizer, tiny_model):
    no_bos = copy.deepcopy(tokenizer)
    no_bos._tokenizer.post_processor = None
    scored = score([{"prompt": "", "chosen": "Yes", "rejected": "No"}, {"prompt": "Q:", "chosen": " a", "rejected": " b"}],
                   no_bos, tiny_model)
    assert scored["ches_skip"][0].startswith("empty prompt") and scored["ches_skip"][1] is None


def test_identical_and_duplicated_pairs(tokenizer, tiny_model):
    row = {"prompt": PROMPT, "chosen": " Sure.", "rejected": " Sure."}
    other = standard_rows(hh_rows(1, start=5))[0]
    scored = score([row, other, row, other], tokenizer, tiny_model)
    # ches = <S, S> - |S|^2 = 0 up to float noise (the rejected side runs through the shared-prompt cache)
    assert scored["ches"][0] == pytest.approx(0.0, abs=1e-3) and scored["ln_ches"][0] == pytest.approx(0.0, abs=1e-5)
    assert scored["edit_distance"][0] == 0.0
    assert scored[1]["ches"] == scored[3]["ches"]  # duplicates score the same, both kept


def test_unicode_nul_and_huge_responses(tokenizer, tiny_model):
    rows = [{"prompt": PROMPT, "chosen": " 好的 👍 مرحبا \x00 done", "rejected": " \u202eRTL\u202c no"},
            {"prompt": PROMPT, "chosen": " word" * 20_000, "rejected": " short"}]
    scored = score(rows, tokenizer, tiny_model)
    assert scored["ches_skip"][0] is None and math.isfinite(scored["ches"][0])
    assert "exceeds the model's context" in scored["ches_skip"][1]  # 100k characters, 4096-position model
    truncated = score(rows, tokenizer, tiny_model, max_length=512)
    assert truncated["ches_skip"][1] is None and truncated["chosen_tokens"][1] == 512 - truncated["prompt_tokens"][1]


def test_unknown_role_and_assistant_ending_prompt(tokenizer, tiny_model):
    user, bot = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}
    bad = [{"prompt": [{"role": "human", "content": "Hi"}], "chosen": [bot], "rejected": [bot]}]
    with pytest.raises(ChesError, match=r"row 0: message 0 has the unknown role 'human'"):
        score(bad, tokenizer, tiny_model)
    rows = [{"prompt": [user, bot], "chosen": [user], "rejected": [bot]}, {"prompt": [user], "chosen": [bot], "rejected": [bot]}]
    scored = score(rows, tokenizer, tiny_model)
    assert scored["ches_skip"][0].startswith("conversational prompt ends with an assistant turn")
    assert scored["ches_skip"][1] is None


def test_template_errors_name_the_row(tokenizer, tiny_model):
    strict = copy.deepcopy(tokenizer)
    strict.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}"
                            "{% endif %}{{ m['content'] }}{% endfor %}")
    user, bot = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}
    rows = [{"prompt": [user], "chosen": [bot], "rejected": [bot]},
            {"prompt": [{"role": "system", "content": "s"}, user], "chosen": [bot], "rejected": [bot]}]
    with pytest.raises(ChesError, match=r"row 1: the chat template cannot render the conversation .*no system"):
        score(rows, strict, tiny_model)


def test_tokenizer_without_pad_token(tokenizer, tiny_model):
    no_pad = copy.deepcopy(tokenizer)
    no_pad.pad_token = None
    rows = hh_rows(4)
    assert list(score(rows, no_pad, tiny_model, layout="padded")["ches"]) == pytest.approx(
        list(score(rows, tokenizer, tiny_model, layout="padded")["ches"]), rel=1e-6)


def test_parquet_with_wrong_column_types(tmp_path):
    path = tmp_path / "typed.parquet"
    datasets.Dataset.from_dict({"prompt": ["a", "b"], "chosen": [1, 2], "rejected": ["x", "y"]}).to_parquet(str(path))
    with pytest.raises(ChesError, match=r"column 'chosen' must hold a string in every row.*rows 0, 1: found int \(e.g. 1\)"):
        ches.score(str(path), str(MODEL_DIR), progress=False)


def test_jsonl_with_a_row_of_other_types(tmp_path):
    path = tmp_path / "mixed.jsonl"
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": ["a"], "rejected": "b"}]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    with pytest.raises(ChesError, match=r"mixed.jsonl: rows do not share one schema"):
        ches.score(str(path), str(MODEL_DIR), progress=False)


def test_trust_remote_code_is_off_by_default(tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "not-a-real-model", "auto_map": {
        "AutoModelForCausalLM": "modeling_evil.EvilModel"}}))
    (folder / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ChesError, match=r"could not load model"):
        ches.score(hh_rows(1), str(folder), progress=False)
