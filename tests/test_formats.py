"""The format layer: prompt extraction equals TRL's, every row is validated, errors name rows and columns."""

import pytest
from conftest import as_messages, hh_rows

from ches import ChesError
from ches.data.formats import Pair, extract_prompt, split_prompt, to_pairs


def columns(rows):
    return {key: [row[key] for row in rows] for key in rows[0]}


def test_extract_prompt_equals_trl_on_real_rows():
    trl_data_utils = pytest.importorskip("trl.data_utils")
    for row in hh_rows(300):
        expected = trl_data_utils.extract_prompt(dict(row))
        assert extract_prompt(dict(row)) == expected  # TRL's contract: a row in, a row out
        assert split_prompt(row["chosen"], row["rejected"]) == (expected["prompt"], expected["chosen"], expected["rejected"])


def test_extract_prompt_equals_trl_on_conversations_and_edge_cases():
    trl_data_utils = pytest.importorskip("trl.data_utils")
    cases = [(as_messages(row["chosen"]), as_messages(row["rejected"])) for row in hh_rows(50)]
    cases += [("same text", "same text"), ("abc", "abcdef"), ("Q: x A: yes", "Q: x A: no"), ("Q: a", "Q:  b")]
    for chosen, rejected in cases:
        expected = trl_data_utils.extract_prompt({"chosen": chosen, "rejected": rejected})
        assert extract_prompt({"chosen": chosen, "rejected": rejected}) == expected
        assert split_prompt(chosen, rejected) == (expected["prompt"], expected["chosen"], expected["rejected"])


def test_space_before_divergence_moves_to_completions():
    assert split_prompt("Human: hi Assistant: yes", "Human: hi Assistant: no") == (
        "Human: hi Assistant:", " yes", " no")


def test_no_common_prefix_gives_empty_prompt():
    # TRL wraps around to index -1 here; we return an empty prompt, which the scorer skips with a reason
    assert split_prompt("yes ", "no") == ("", "yes ", "no")


def test_standard_conversational_and_implicit_rows():
    messages = [{"role": "user", "content": "Hi"}]
    assert to_pairs(columns([{"prompt": "P", "chosen": "a", "rejected": "b"}])) == [Pair("P", "a", "b")]
    pair = to_pairs(columns([{"prompt": messages, "chosen": [{"role": "assistant", "content": "a"}],
                              "rejected": [{"role": "assistant", "content": "b"}]}]))[0]
    assert pair.conversational and pair.prompt == messages
    implicit = to_pairs(columns([{"chosen": messages + [{"role": "assistant", "content": "a"}],
                                  "rejected": messages + [{"role": "assistant", "content": "b"}]}]))[0]
    assert implicit.prompt == messages and implicit.chosen == [{"role": "assistant", "content": "a"}]


def test_missing_column_is_named():
    with pytest.raises(ChesError, match=r"missing column\(s\) \['rejected'\]; found \['chosen', 'prompt'\]"):
        to_pairs({"prompt": ["p"], "chosen": ["a"]})


def test_none_and_non_string_rows_are_named():
    data = {"prompt": ["p", "p", "p", "p"], "chosen": ["a", None, "c", 7], "rejected": ["x", "y", "z", "w"]}
    with pytest.raises(ChesError) as error:
        to_pairs(data)
    message = str(error.value)
    assert "column 'chosen' must hold a string in every row" in message
    assert "row 1: found None" in message and "row 3: found int (e.g. 7)" in message


def test_many_bad_rows_are_abbreviated():
    data = {"prompt": [None] * 9, "chosen": ["a"] * 9, "rejected": ["b"] * 9}
    with pytest.raises(ChesError, match=r"rows 0, 1, 2, 3, 4 and 4 more: found None"):
        to_pairs(data)


def test_malformed_messages_are_named():
    good = [{"role": "assistant", "content": "a"}]
    data = {"prompt": [[{"role": "user", "content": "q"}], [{"content": "q"}], ["q"]],
            "chosen": [good, good, good], "rejected": [good, good, good]}
    with pytest.raises(ChesError) as error:
        to_pairs(data)
    message = str(error.value)
    assert "column 'prompt' must hold a list of {'role', 'content'} messages" in message
    assert "row 1: message 0 has 'role' = None, expected a string" in message
    assert "row 2: message 0 is str 'q', not a dict" in message


def test_mixed_formats_are_rejected():
    good = [{"role": "assistant", "content": "a"}]
    with pytest.raises(ChesError, match=r"row 1: found str 'plain'"):  # a message-list column holding a string
        to_pairs({"chosen": [good, "plain"], "rejected": [good, good]})


def test_template_columns_are_checked_before_any_model_work():
    messages = [{"role": "user", "content": "Hi"}]
    base = {"prompt": [messages] * 3, "chosen": [[{"role": "assistant", "content": "a"}]] * 3,
            "rejected": [[{"role": "assistant", "content": "b"}]] * 3}
    with pytest.raises(ChesError, match=r"row 1: column 'tools' holds a string that is not valid JSON"):
        to_pairs({**base, "tools": ["[]", "[{", None]})
    with pytest.raises(ChesError, match=r"row 2: column 'tools' must hold a list of tool schemas .* found int 7"):
        to_pairs({**base, "tools": [None, [], 7]})
    with pytest.raises(ChesError, match=r"column 'chat_template_kwargs' must hold a dict .*row 0: found str 'x'"):
        to_pairs({**base, "chat_template_kwargs": ["x", None, {}]})
    pairs = to_pairs({**base, "tools": ['[{"name": "f"}]', None, []], "chat_template_kwargs": [{"a": 1}, None, {}]})
    assert [pair.template_options for pair in pairs] == [{"tools": [{"name": "f"}], "a": 1}, {"tools": None},
                                                          {"tools": []}]


def test_template_columns_on_string_rows_are_ignored_with_a_warning(caplog):
    with caplog.at_level("WARNING", logger="ches"):
        pairs = to_pairs({"prompt": ["P"], "chosen": ["a"], "rejected": ["b"], "tools": ["[]"]})
    assert pairs == [Pair("P", "a", "b")] and "['tools'] ignored" in caplog.text
