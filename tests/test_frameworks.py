"""Other frameworks' preference layouts (ches.data.frameworks): real hh-rlhf pairs converted by hand into each
layout, read back as TRL rows, compared with the same pairs written by hand in TRL's format, and scored alike."""

from __future__ import annotations

import pytest
from conftest import as_messages, hh_rows

import ches
from ches.data.frameworks import FORMATS, detect_format, get_format, to_trl_columns
from ches.errors import ChesError

SYSTEM = "You are a helpful and harmless assistant."
SCORE_COLUMNS = ["ches", "ln_ches", "edit_distance", "last_hidden_ip", "prompt_tokens", "chosen_tokens",
                 "rejected_tokens", "ches_skip", "ches_flags", "ches_token_digest"]


def hh_pairs(turns: str, count: int = 6) -> list[dict]:
    """Real hh-rlhf pairs as (system, prompt messages, chosen text, rejected text); ``turns`` "one" keeps the
    pairs whose prompt is one user turn, "many" those with earlier turns. Every other pair has system text."""
    out = []
    for row in hh_rows(80):
        chosen, rejected = as_messages(row["chosen"]), as_messages(row["rejected"])
        if chosen[:-1] != rejected[:-1] or (len(chosen) == 2) != (turns == "one"):
            continue
        out.append({"system": SYSTEM if len(out) % 2 == 0 else "", "prompt": chosen[:-1],
                    "chosen": chosen[-1]["content"], "rejected": rejected[-1]["content"]})
    return out[:count]


def reference(pairs: list[dict], system: bool = True) -> list[dict]:
    """The pairs in TRL's conversational format, written by hand: a system turn when there is system text."""
    return [{"prompt": ([{"role": "system", "content": pair["system"]}] if system and pair["system"] else [])
             + pair["prompt"], "chosen": [{"role": "assistant", "content": pair["chosen"]}],
             "rejected": [{"role": "assistant", "content": pair["rejected"]}]} for pair in pairs]


def user(pair: dict) -> str:
    return pair["prompt"][-1]["content"]


def sharegpt(messages: list[dict], role: str = "from", content: str = "value", tags=None) -> list[dict]:
    tags = tags or {"user": "human", "assistant": "gpt", "system": "system"}
    return [{role: tags[message["role"]], content: message["content"]} for message in messages]


# Each case: format name (with its parameters) -> ("one"/"many" turns, pair -> the layout's row, written by hand, whether the
# reference keeps the system text).
CASES = {
    "axolotl.chatml.intel": ("one", lambda p: {"system": p["system"], "question": user(p), "chosen": p["chosen"],
                                                  "rejected": p["rejected"]}, True),
    "axolotl.llama3.intel": ("one", lambda p: {"question": user(p), "chosen": p["chosen"],
                                                  "rejected": p["rejected"]}, False),
    "axolotl.icr": ("one", lambda p: {"system": p["system"], "input": user(p), "chosen": p["chosen"],
                                         "rejected": p["rejected"]}, True),
    "axolotl.argilla": ("one", lambda p: {"system": p["system"], "instruction": user(p),
                                             "chosen_response": p["chosen"], "rejected_response": p["rejected"]}, True),
    "axolotl.chatml.argilla": ("one", lambda p: {"instruction": user(p), "chosen_response": p["chosen"],
                                                    "rejected_response": p["rejected"]}, False),
    "axolotl.prompt_pairs": ("one", lambda p: {"system": p["system"], "prompt": user(p), "chosen": p["chosen"],
                                                  "rejected": p["rejected"]}, True),
    "axolotl.ultra": ("one", lambda p: {
        "system": p["system"], "prompt": user(p),
        "chosen": p["prompt"] + [{"role": "assistant", "content": p["chosen"]}],
        "rejected": p["prompt"] + [{"role": "assistant", "content": p["rejected"]}]}, True),
    "axolotl.argilla_chat": ("many", lambda p: {
        "chosen": p["prompt"] + [{"role": "assistant", "content": p["chosen"]}],
        "rejected": p["prompt"] + [{"role": "assistant", "content": p["rejected"]}]}, False),
    "axolotl.chat_template.default": ("many", lambda p: {
        "messages": ([{"role": "system", "content": p["system"]}] if p["system"] else []) + p["prompt"],
        "chosen": {"role": "assistant", "content": p["chosen"]},
        "rejected": {"role": "assistant", "content": p["rejected"]}}, True),
    "axolotl.chat_template.default:role=from,content=value,user=human,assistant=gpt": ("many", lambda p: {
        "messages": sharegpt(p["prompt"]), "chosen": {"from": "gpt", "value": p["chosen"]},
        "rejected": {"from": "gpt", "value": p["rejected"]}}, False),
    "llamafactory.alpaca": ("many", lambda p: {
        "system": p["system"], "instruction": user(p), "input": "", "chosen": p["chosen"], "rejected": p["rejected"],
        "history": [[first["content"], second["content"]] for first, second in zip(p["prompt"][:-1:2],
                                                                                   p["prompt"][1:-1:2])]}, True),
    "llamafactory.sharegpt": ("many", lambda p: {
        "system": p["system"],
        "conversations": sharegpt(p["prompt"]), "chosen": {"from": "gpt", "value": p["chosen"]},
        "rejected": {"from": "gpt", "value": p["rejected"]}}, True),
    "llamafactory.sharegpt:role_tag=role,content_tag=content,user_tag=user,assistant_tag=assistant": ("many", lambda p: {
        "conversations": ([{"role": "system", "content": p["system"]}] if p["system"] else []) + p["prompt"],
        "chosen": {"role": "assistant", "content": p["chosen"]},
        "rejected": {"role": "assistant", "content": p["rejected"]}}, True),
    "openrlhf": ("many", lambda p: {
        "prompt": ([{"role": "system", "content": p["system"]}] if p["system"] else []) + p["prompt"],
        "chosen": [{"role": "assistant", "content": p["chosen"]}],
        "rejected": [{"role": "assistant", "content": p["rejected"]}], "margin": 0.5}, True),
    "open_instruct": ("many", lambda p: {
        "chosen": p["prompt"] + [{"role": "assistant", "content": p["chosen"]}],
        "rejected": p["prompt"] + [{"role": "assistant", "content": p["rejected"]}]}, False),
}


def columns_of(rows: list[dict]) -> dict[str, list]:
    return {name: [row[name] for row in rows] for name in rows[0]}


def rows_of(columns: dict[str, list]) -> list[dict]:
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


def trl_rows(name: str, rows: list[dict]) -> list[dict]:
    return rows_of(to_trl_columns(columns_of(rows), get_format(name)))


@pytest.mark.parametrize("name", list(CASES))
def test_each_layout_reads_as_the_trl_pair_written_by_hand(name):
    turns, layout_row, system = CASES[name]
    pairs = hh_pairs(turns)
    got = trl_rows(name, [layout_row(pair) for pair in pairs])
    expected = reference(pairs, system)
    if name == "openrlhf":
        expected = [dict(row, margin=0.5) for row in expected]
    assert got == expected


def test_sharegpt_reads_system_text_from_a_first_tagged_turn_too():
    pairs = hh_pairs("many")
    rows = [{"conversations": ([{"from": "system", "value": pair["system"]}] if pair["system"] else [])
             + sharegpt(pair["prompt"]), "chosen": {"from": "gpt", "value": pair["chosen"]},
             "rejected": {"from": "gpt", "value": pair["rejected"]}, "system": "ignored: the first turn wins"
             if pair["system"] else ""} for pair in pairs]
    assert trl_rows("llamafactory.sharegpt", rows) == reference(pairs)


def test_alpaca_joins_instruction_and_input_with_a_newline():
    pairs = hh_pairs("one")
    rows = [{"instruction": "Reply to the message below.", "input": user(pair), "chosen": pair["chosen"],
             "rejected": pair["rejected"]} for pair in pairs]
    expected = [dict(row, prompt=[{"role": "user", "content": "Reply to the message below.\n" + user(pair)}])
                for row, pair in zip(reference(pairs, system=False), pairs)]
    assert trl_rows("llamafactory.alpaca", rows) == expected


def test_openrlhf_strings_are_the_standard_pair_in_its_input_template():
    pairs = hh_pairs("one")
    rows = [{"prompt": user(pair), "chosen": " " + pair["chosen"], "rejected": " " + pair["rejected"]}
            for pair in pairs]
    expected = [{"prompt": f"\n\nHuman: {user(pair)}\n\nAssistant:", "chosen": " " + pair["chosen"],
                 "rejected": " " + pair["rejected"]} for pair in pairs]
    assert trl_rows("openrlhf:input_template=\n\nHuman: {}\n\nAssistant:", rows) == expected
    # no prompt column, message lists: the prompt is chosen's history (as open-instruct)
    chats = [CASES["open_instruct"][1](pair) for pair in hh_pairs("many")]
    assert trl_rows("openrlhf", chats) == reference(hh_pairs("many"), system=False)


@pytest.mark.parametrize("name", [name for name in CASES if name not in ("openrlhf",)])
def test_each_layout_scores_as_the_trl_pair_written_by_hand(name, tokenizer, tiny_model):
    turns, layout_row, system = CASES[name]
    pairs = hh_pairs(turns, 4)
    model = tiny_model("llama")
    ours = ches.score(trl_rows(name, [layout_row(pair) for pair in pairs]), model, tokenizer, progress=False)
    theirs = ches.score(reference(pairs, system), model, tokenizer, progress=False)
    for column in SCORE_COLUMNS:
        assert ours[column] == theirs[column], column
    assert theirs["ches_skip"] == [None] * len(pairs)


def test_openrlhf_scores_with_its_margin_carried(tokenizer, tiny_model):
    pairs = hh_pairs("many", 4)
    model = tiny_model("llama")
    converted = trl_rows("openrlhf", [CASES["openrlhf"][1](pair) for pair in pairs])
    assert [row["margin"] for row in converted] == [0.5] * len(pairs)
    ours = ches.score(converted, model, tokenizer, progress=False)
    theirs = ches.score(reference(pairs), model, tokenizer, progress=False)
    for column in SCORE_COLUMNS:
        assert ours[column] == theirs[column], column


# --- detection --------------------------------------------------------------------------------------------

DETECTED = {  # the layout's rows (the first case of each) -> the name detection gives
    "axolotl.chatml.intel": "axolotl.chatml.intel", "axolotl.llama3.intel": "axolotl.chatml.intel",
    "axolotl.icr": "axolotl.icr", "axolotl.argilla": "axolotl.argilla", "axolotl.chatml.argilla": "axolotl.argilla",
    "axolotl.prompt_pairs": "axolotl.prompt_pairs", "axolotl.ultra": "axolotl.ultra",
    "axolotl.chat_template.default": "axolotl.chat_template.default",
    "axolotl.chat_template.default:role=from,content=value,user=human,assistant=gpt": "axolotl.chat_template.default",
    "llamafactory.alpaca": "llamafactory.alpaca", "llamafactory.sharegpt": "llamafactory.sharegpt",
    "llamafactory.sharegpt:role_tag=role,content_tag=content,user_tag=user,assistant_tag=assistant":
        "llamafactory.sharegpt",
    # TRL's own columns: read as TRL data; these layouts are selected by name only
    "axolotl.argilla_chat": None, "openrlhf": None, "open_instruct": None,
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_layout_is_detected_from_its_columns_and_one_row(name):
    turns, layout_row, _ = CASES[name]
    row = layout_row(hh_pairs(turns)[0])
    found = detect_format(list(row), row)
    assert (found.name if found else None) == DETECTED[name]


@pytest.mark.parametrize("columns, name", [
    (["question", "chosen", "rejected"], "axolotl.chatml.intel"),  # system is optional
    (["system", "question", "chosen", "rejected", "id"], "axolotl.chatml.intel"),
    (["system", "input", "chosen", "rejected"], "axolotl.icr"),
    (["instruction", "input", "chosen", "rejected"], "llamafactory.alpaca"),  # reads more than icr does
    (["instruction", "chosen", "rejected"], "llamafactory.alpaca"),
    (["instruction", "chosen_response", "rejected_response"], "axolotl.argilla"),
    (["conversations", "chosen", "rejected", "system"], "llamafactory.sharegpt"),
    (["messages", "chosen", "rejected"], "axolotl.chat_template.default"),
])
def test_detection_from_column_names_alone(columns, name):
    assert detect_format(columns).name == name


@pytest.mark.parametrize("columns", [["prompt", "chosen", "rejected"], ["chosen", "rejected"],
                                     ["prompt", "chosen", "rejected", "id", "margin"], ["chosen", "rejected", "score"],
                                     ["prompt", "completion", "label"]])
def test_trl_columns_are_no_layout(columns):
    assert detect_format(columns) is None


def test_trl_rows_are_no_layout_with_their_values_too():
    for rows in (hh_rows(1), reference(hh_pairs("many", 1)), reference(hh_pairs("one", 1), system=False)):
        assert detect_format(list(rows[0]), rows[0]) is None
    # a stray system column beside TRL's conversational columns: no axolotl layout reads a message-list prompt
    row = dict(reference(hh_pairs("many", 1), system=False)[0], system=SYSTEM)
    assert detect_format(list(row), row) is None


def test_same_columns_without_a_row_are_refused_naming_the_candidates():
    with pytest.raises(ChesError, match=r"axolotl\.prompt_pairs, axolotl\.ultra.*format="):
        detect_format(["system", "prompt", "chosen", "rejected"])


def test_every_name_is_a_layout_or_another_name_of_one():
    for name, layout in FORMATS.items():
        assert layout.name == name and get_format(name) is layout
        assert not layout.same_as or not FORMATS[layout.same_as].same_as
        assert layout.to_trl is FORMATS[layout.same_as or name].to_trl


# --- errors -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, break_row, message", [
    ("axolotl.chatml.intel", lambda row: dict(row, question=None), r"row 2 .*column 'question': expected a string"),
    ("axolotl.argilla", lambda row: dict(row, chosen_response=["x"]), r"row 2 .*column 'chosen_response'"),
    ("axolotl.ultra", lambda row: dict(row, rejected=row["rejected"][:1]), r"row 2 .*column 'rejected'"),
    ("axolotl.argilla_chat", lambda row: dict(row, rejected=[{"role": "user", "content": "other"}] + row["rejected"][1:]),
     r"row 2 .*differ before their last message"),
    ("axolotl.chat_template.default", lambda row: dict(row, chosen={"role": "bot", "content": "x"}),
     r"row 2 .*column 'chosen': role 'bot'"),
    ("llamafactory.sharegpt", lambda row: dict(row, conversations=row["conversations"][:-1]),
     r"row 2 .*column 'conversations': expected an odd number of turns"),
    ("llamafactory.sharegpt", lambda row: dict(row, chosen={"from": "human", "value": "x"}),
     r"row 2 .*column 'chosen': expected a message whose 'from'"),
    ("llamafactory.alpaca", lambda row: dict(row, history="Hi"), r"row 2 .*column 'history'"),
    ("open_instruct", lambda row: dict(row, chosen="text"), r"row 2 .*column 'chosen': expected a non-empty list"),
])
def test_a_malformed_row_is_refused_naming_the_row_and_column(name, break_row, message):
    turns, layout_row, _ = CASES[name]
    rows = [layout_row(pair) for pair in hh_pairs(turns, 4)]
    rows[2] = break_row(rows[2])
    with pytest.raises(ChesError, match=message):
        to_trl_columns(columns_of(rows), get_format(name))


def test_a_missing_column_is_named():
    rows = [{"system": pair["system"], "chosen": pair["chosen"], "rejected": pair["rejected"]} for pair in hh_pairs("one")]
    with pytest.raises(ChesError, match=r"row 5 does not fit axolotl\.chatml\.intel: it has no column 'question'.*columns="):
        to_trl_columns(columns_of(rows), get_format("axolotl.chatml.intel"), first_row=5)


def test_names_and_parameters_are_checked():
    with pytest.raises(ChesError, match=r"not a layout ches reads.*axolotl\.chatml\.intel"):
        get_format("axolotl.chatml.nope")
    with pytest.raises(ChesError, match=r"'speaker=from' is not a parameter of llamafactory\.sharegpt.*role_tag"):
        get_format("llamafactory.sharegpt:speaker=from")
    with pytest.raises(ChesError, match=r"takes no parameters"):
        get_format("axolotl.chatml.intel:role=from")
