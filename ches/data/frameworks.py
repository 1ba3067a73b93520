"""Other frameworks' preference layouts, read as they are: each becomes the TRL pair it means.

Users of axolotl, LLaMA-Factory, OpenRLHF and open-instruct keep their data in those frameworks' own
layouts. Each layout here is one small :class:`Format`: the columns that identify it, and one function that
turns one of its rows into the TRL row it means (``prompt``/``chosen``/``rejected`` as strings, or as message
lists with any system text kept as a system turn; TRL's ``tools``/``chat_template_kwargs`` may come along).
The rest of ches then reads that TRL row exactly as it reads TRL data (:func:`ches.data.formats.to_pairs`),
so a layout's scores equal those of the same pairs written in TRL's conversational format.

The TRL pair a layout means is *conversational* where the framework renders the turns with a chat template
(axolotl's ``chatml.*``/``llama3.*`` types write ChatML or Llama-3 markup around the turns themselves; ches
renders the same turns with the tokenizer's own template, the one the model was trained with), and *standard*
(strings) where the framework concatenates raw strings (OpenRLHF without ``--apply_chat_template``).

``format=`` (``--format NAME``) names a layout; without it the layout is detected from the columns
(:func:`detect_format`), and a row set that fits several is refused naming them. A layout that takes
parameters (role/content key names, role tags) gets them after a colon:
``--format "llamafactory.sharegpt:role_tag=role,content_tag=content,user_tag=user,assistant_tag=assistant"``.
(a value holds no comma). The columns themselves are renamed with ``columns=`` (``--columns``), onto the names a
layout reads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..errors import ChesError

#: TRL's own columns: a table whose read columns are all among these is TRL data, read as it is
TRL_COLUMNS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class Format:
    """One framework's preference layout.

    Attributes:
        name: what ``format=`` / ``--format`` calls it, ``"<framework>.<layout>"`` (``"axolotl.chatml.intel"``),
            with its parameters after a colon when :func:`get_format` was given some.
        reads: the columns a row of this layout has (all of them, the optional ones too).
        to_trl: one row (a dict of its columns) -> the TRL row it means.
        source: where the layout is documented (the framework's doc or loader), for the docs and errors.
        optional: the columns of ``reads`` a row may lack (detection needs every other one).
        kinds: ``(column, kind)`` pairs telling layouts with the same columns apart by one row's values: kind
            ``"text"`` (a string), ``"messages"`` (a list of dicts) or ``"message"`` (a dict).
        detect: False for a layout whose columns are TRL's own (only ``format=`` selects it).
        same_as: for another name of a layout, that layout's name (detection gives that one).
        options: the keyword parameters ``to_trl`` takes, each with its default, as ``(name, default)`` pairs.
    """

    name: str
    reads: tuple[str, ...]
    to_trl: Callable[[Mapping[str, Any]], dict[str, Any]]
    source: str = ""
    optional: tuple[str, ...] = ()
    kinds: tuple[tuple[str, str], ...] = ()
    detect: bool = True
    same_as: str = ""
    options: tuple[tuple[str, str], ...] = ()

    def fits(self, column_names: Sequence[str]) -> bool:
        """Whether a table with ``column_names`` has every column this layout needs (all but the optional ones)."""
        return all(name in column_names for name in self.reads if name not in self.optional)

    def fits_row(self, row: Mapping[str, Any]) -> bool:
        """Whether one row's values are of the kinds this layout reads (columns the row lacks are not checked).

        >>> FORMATS["axolotl.ultra"].fits_row({"prompt": "Hi", "chosen": [{"role": "user", "content": "Hi"}]})
        True
        >>> FORMATS["axolotl.prompt_pairs"].fits_row({"prompt": "Hi", "chosen": [{"role": "user", "content": "Hi"}]})
        False
        """
        return all(column not in row or _is_kind(row[column], kind) for column, kind in self.kinds)


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "text":
        return isinstance(value, str)
    if kind == "message":
        return isinstance(value, Mapping)
    return isinstance(value, list) and all(isinstance(item, Mapping) for item in value)


# ---------------------------------------------------------------------------------------------------------
# reading one row's values (each names the column and what it found; to_trl_columns adds the row)


def _found(value: Any) -> str:
    """A value as error messages show it (its type and its start); no import of ches.data.formats here, which
    reads the TRL rows these layouts become."""
    text = repr(value)
    return f"{type(value).__name__} {text[:40] + '...' if len(text) > 40 else text}"


def _text(row: Mapping[str, Any], column: str) -> str:
    """``row[column]``, which must be a string."""
    value = row[column]
    if not isinstance(value, str):
        raise ValueError(f"column {column!r}: expected a string, found {_found(value)}")
    return value


def _system(row: Mapping[str, Any], column: str = "system") -> str:
    """The optional system text: ``""`` when the column is absent, None or empty (no system turn then)."""
    value = row.get(column)
    if value in (None, ""):
        return ""
    if not isinstance(value, str):
        raise ValueError(f"column {column!r}: expected a string (or nothing), found {_found(value)}")
    return value


def _message_list(row: Mapping[str, Any], column: str) -> list[dict[str, Any]]:
    """``row[column]``, which must be a non-empty list of message dicts."""
    value = row[column]
    if not isinstance(value, list) or not value or not all(isinstance(item, Mapping) for item in value):
        raise ValueError(f"column {column!r}: expected a non-empty list of message dicts, found {_found(value)}")
    return [dict(item) for item in value]


def _content(message: Any, column: str, key: str = "content") -> str:
    if not isinstance(message, Mapping) or not isinstance(message.get(key), str):
        raise ValueError(f"column {column!r}: expected a message dict with a string {key!r}, found {_found(message)}")
    return message[key]


def _messages(system: str | None, user: str) -> list[dict[str, str]]:
    """A prompt as messages: a system turn when there is system text, then the user's turn."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def _answer(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _one_turn(row: Mapping[str, Any], question: str, chosen: str = "chosen", rejected: str = "rejected") -> dict:
    """The conversational pair of a one-turn row: the optional ``system`` text and the ``question`` column as the
    prompt's turns, the ``chosen``/``rejected`` strings as the assistant's answers."""
    return {"prompt": _messages(_system(row), _text(row, question)), "chosen": _answer(_text(row, chosen)),
            "rejected": _answer(_text(row, rejected))}


# ---------------------------------------------------------------------------------------------------------
# axolotl (src/axolotl/prompt_strategies/dpo/, docs/rlhf.qmd)


def axolotl_chatml_intel(row: Mapping[str, Any]) -> dict[str, Any]:
    """axolotl's ``chatml.intel`` / ``llama3.intel`` rows (``system`` optional, ``question``, ``chosen``,
    ``rejected`` strings): the system text and the question are the prompt's turns, each answer the assistant's.

    axolotl (``prompt_strategies/dpo/chatml.py`` and ``llama3.py``, ``intel``) writes a system turn only when
    the system text is non-empty, then the question as the user's turn and the generation prompt, and each
    answer followed by the end-of-turn token: the conversational pair below, rendered by the chat template.

    >>> axolotl_chatml_intel({"system": "Be brief.", "question": "2+2?", "chosen": "4", "rejected": "5"})["prompt"]
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': '2+2?'}]
    >>> axolotl_chatml_intel({"system": "", "question": "Hi", "chosen": "Hello", "rejected": "Go away"})["chosen"]
    [{'role': 'assistant', 'content': 'Hello'}]
    """
    return _one_turn(row, "question")


def axolotl_icr(row: Mapping[str, Any]) -> dict[str, Any]:
    """axolotl's ``chatml.icr`` / ``llama3.icr`` rows (``system`` optional, ``input``, ``chosen``, ``rejected``
    strings; e.g. argilla/distilabel-intel-orca-dpo-pairs): as :func:`axolotl_chatml_intel`, the question in
    ``input`` (``prompt_strategies/dpo/chatml.py``, ``icr``).

    >>> axolotl_icr({"input": "2+2?", "chosen": "4", "rejected": "5"})["prompt"]
    [{'role': 'user', 'content': '2+2?'}]
    >>> axolotl_icr({"system": "Be kind.", "input": "Hi", "chosen": "Hello", "rejected": "No"})["rejected"]
    [{'role': 'assistant', 'content': 'No'}]
    """
    return _one_turn(row, "input")


def axolotl_argilla(row: Mapping[str, Any]) -> dict[str, Any]:
    """axolotl's ``chatml.argilla`` / ``llama3.argilla`` rows (``system`` optional, ``instruction``,
    ``chosen_response``, ``rejected_response`` strings; docs/rlhf.qmd): the system text and the instruction are
    the prompt's turns, each response the assistant's.

    At axolotl's commit 78ce268 the ``argilla`` function became ``chatml.default`` / ``llama3.default`` (the
    plain ``type: chatml``), which reads these columns when there is no ``prompt``/``input``/``question`` and no
    ``chosen``/``rejected`` column; the rendering is that of :func:`axolotl_chatml_intel`.

    >>> axolotl_argilla({"instruction": "2+2?", "chosen_response": "4", "rejected_response": "5"})["chosen"]
    [{'role': 'assistant', 'content': '4'}]
    >>> axolotl_argilla({"system": "Be brief.", "instruction": "Hi", "chosen_response": "Hello",
    ...                  "rejected_response": "No"})["prompt"][0]
    {'role': 'system', 'content': 'Be brief.'}
    """
    return _one_turn(row, "instruction", "chosen_response", "rejected_response")


def axolotl_prompt_pairs(row: Mapping[str, Any]) -> dict[str, Any]:
    """axolotl's ``chatml.prompt_pairs`` / ``llama3.prompt_pairs`` rows (``system`` optional, ``prompt``,
    ``chosen``, ``rejected`` strings): the system text and the prompt are the prompt's turns, each answer the
    assistant's, rendered by a chat template (``prompt_strategies/dpo/chatml.py``, ``prompt_pairs``).

    Without a ``system`` column these are TRL's own standard columns, which ches reads as TRL does (raw
    strings): name this layout (``format="axolotl.prompt_pairs"``) to read them the way axolotl does.

    >>> axolotl_prompt_pairs({"system": "Be brief.", "prompt": "2+2?", "chosen": "4", "rejected": "5"})["prompt"]
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': '2+2?'}]
    >>> axolotl_prompt_pairs({"prompt": "Hi", "chosen": "Hello", "rejected": "No"})["chosen"]
    [{'role': 'assistant', 'content': 'Hello'}]
    """
    return _one_turn(row, "prompt")


def axolotl_ultra(row: Mapping[str, Any]) -> dict[str, Any]:
    """axolotl's ``chatml.ultra`` / ``llama3.ultra`` rows (UltraFeedback binarized: ``system`` optional, a
    ``prompt`` string, ``chosen``/``rejected`` message lists ``[user, assistant]``): the system text and the
    prompt are the prompt's turns; the answers are the *second* message of each list, as axolotl reads them
    (``prompt_strategies/dpo/chatml.py``, ``ultra``: ``sample["chosen"][1]["content"]``; later messages are
    not read).

    >>> row = {"prompt": "2+2?", "chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
    ...        "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}]}
    >>> axolotl_ultra(row)["chosen"], axolotl_ultra(dict(row, system="Be brief."))["prompt"][0]["role"]
    ([{'role': 'assistant', 'content': '4'}], 'system')
    """
    answers = {}
    for column in ("chosen", "rejected"):
        messages = _message_list(row, column)
        if len(messages) < 2:
            raise ValueError(f"column {column!r}: expected [user, assistant] messages, found {_found(messages)}")
        answers[column] = _answer(_content(messages[1], column))
    return {"prompt": _messages(_system(row), _text(row, "prompt")), **answers}


def last_turn_pair(row: Mapping[str, Any]) -> dict[str, Any]:
    """Rows whose ``chosen`` and ``rejected`` each hold the whole conversation (message lists that differ only in
    the last message): the prompt is every message before the last, each answer the last message.

    Serves three layouts, which read these rows alike:

    - axolotl ``chat_template.argilla_chat`` (``prompt_strategies/dpo/chat_template.py``): the prompt is
      ``chosen[:-1]``, the answers ``chosen[-1]``/``rejected[-1]``; its ``chatml.argilla_chat`` /
      ``llama3.argilla_chat`` read ``chosen[0]`` and ``[1]``, the same for the two-message rows they are for
      (argilla/dpo-mix-7k);
    - open-instruct (``open_instruct/dataset_transformation.py``, ``preference_tokenize_v1`` and
      ``preference_tulu_tokenize_and_truncate_v1``): the prompt is ``chosen[:-1]`` under the chat template,
      and only the last turn is trained on;
    - OpenRLHF without ``--prompt_key`` and with ``--apply_chat_template`` (see :func:`openrlhf`).

    A row whose two conversations differ before the last message is refused: those frameworks would silently
    take chosen's history for both answers.

    >>> user, yes, no = ({"role": r, "content": c} for r, c in (("user", "Hi?"), ("assistant", "Yes"), ("assistant", "No")))
    >>> last_turn_pair({"chosen": [user, yes], "rejected": [user, no]})
    {'prompt': [{'role': 'user', 'content': 'Hi?'}], 'chosen': [{'role': 'assistant', 'content': 'Yes'}], \
'rejected': [{'role': 'assistant', 'content': 'No'}]}
    >>> last_turn_pair({"chosen": [{"role": "system", "content": "Be brief."}, user, yes], \
"rejected": [{"role": "system", "content": "Be brief."}, user, no]})["prompt"][0]["role"]
    'system'
    """
    chosen, rejected = _message_list(row, "chosen"), _message_list(row, "rejected")
    if len(chosen) < 2:
        raise ValueError(f"column 'chosen': expected the prompt's turns then the answer, found {_found(chosen)}")
    if chosen[:-1] != rejected[:-1]:
        raise ValueError("columns 'chosen' and 'rejected' differ before their last message; both must hold the "
                         "same conversation up to the answer")
    return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}


def _role_map(spec: Mapping[str, str], column: str) -> Callable[[Any], str]:
    """Source role names -> chat-template roles; ``spec`` maps each target role to ``|``-separated sources."""
    table = {source: target for target, sources in spec.items() for source in sources.split("|") if source}

    def role(name: Any) -> str:
        if name not in table:
            raise ValueError(f"column {column!r}: role {name!r} is not one of {sorted(table)} (map it with the "
                             "format's role parameters)")
        return table[name]

    return role


def axolotl_chat_template(row: Mapping[str, Any], role: str = "role", content: str = "content", user: str = "user",
                          assistant: str = "assistant", system: str = "system", tool: str = "tool") -> dict[str, Any]:
    """axolotl's ``chat_template.default`` rows: ``messages`` (the prompt's turns, or one string: the user's
    turn), ``chosen`` and ``rejected`` (each a message dict, a string: the assistant's answer, or a message
    list: its last message) (``prompt_strategies/dpo/chat_template.py``, ``default``).

    axolotl's dataset config renames the columns (``field_messages``/``field_chosen``/``field_rejected``: in
    ches ``columns=``) and the message keys and roles (``message_property_mappings``, ``roles``: here the
    parameters ``role``/``content`` and ``user``/``assistant``/``system``/``tool``, each ``|``-separated source
    role names, e.g. ``--format "axolotl.chat_template.default:role=from,content=value,user=human,assistant=gpt"``).
    axolotl renders the prompt with the chat template and its generation prompt, and each answer as the
    template writes it after the prompt: the conversational pair below.

    >>> row = {"messages": [{"role": "user", "content": "2+2?"}], "chosen": {"role": "assistant", "content": "4"},
    ...        "rejected": {"role": "assistant", "content": "5"}}
    >>> axolotl_chat_template(row)["rejected"]
    [{'role': 'assistant', 'content': '5'}]
    >>> axolotl_chat_template({"messages": [{"from": "human", "value": "Hi"}], "chosen": "Hello", "rejected": "No"},
    ...                       role="from", content="value", user="human")["prompt"]
    [{'role': 'user', 'content': 'Hi'}]
    """
    roles = {"user": user, "assistant": assistant, "system": system, "tool": tool}

    def turn(message: Any, column: str) -> dict[str, str]:
        if not isinstance(message, Mapping) or role not in message:
            raise ValueError(f"column {column!r}: expected a message dict with a {role!r} key, found {_found(message)}")
        return {"role": _role_map(roles, column)(message[role]), "content": _content(message, column, content)}

    messages = row["messages"]
    prompt = ([{"role": "user", "content": messages}] if isinstance(messages, str)
              else [turn(message, "messages") for message in _message_list(row, "messages")])
    answers = {}
    for column in ("chosen", "rejected"):
        value = row[column]
        if isinstance(value, str):
            answers[column] = _answer(value)
        else:
            answers[column] = [turn(value[-1] if isinstance(value, list) and value else value, column)]
    return {"prompt": prompt, **answers}


# ---------------------------------------------------------------------------------------------------------
# LLaMA-Factory (data/README.md, "ranking": true; src/llamafactory/data/converter.py)


def llamafactory_alpaca(row: Mapping[str, Any]) -> dict[str, Any]:
    """LLaMA-Factory's alpaca preference rows (``"ranking": true``): ``instruction``, ``input`` (optional),
    ``system`` (optional), ``history`` (optional: ``[[question, answer], ...]`` earlier turns), ``chosen`` and
    ``rejected`` strings.

    As LLaMA-Factory's ``AlpacaDatasetConverter`` (``src/llamafactory/data/converter.py``): the user's turn is
    the non-empty ones of ``instruction`` and ``input`` joined by one newline, after the history's turns; the
    system text is the system turn; the answers are the assistant's turns, rendered by the chat template.

    >>> llamafactory_alpaca({"instruction": "Translate:", "input": "bonjour", "chosen": "hello", "rejected": "bye"})
    {'prompt': [{'role': 'user', 'content': 'Translate:\\nbonjour'}], 'chosen': [{'role': 'assistant', 'content': \
'hello'}], 'rejected': [{'role': 'assistant', 'content': 'bye'}]}
    >>> llamafactory_alpaca({"system": "Be brief.", "instruction": "2+2?", "input": "", "history": [["Hi", "Hello"]],
    ...                      "chosen": "4", "rejected": "5"})["prompt"][1:]
    [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello'}, {'role': 'user', 'content': '2+2?'}]
    """
    history = row.get("history") or []
    if not isinstance(history, list) or not all(isinstance(turn, (list, tuple)) and len(turn) == 2 for turn in history):
        raise ValueError(f"column 'history': expected [[question, answer], ...], found {_found(history)}")
    earlier = [{"role": who, "content": text} for question, answer in history
               for who, text in (("user", question), ("assistant", answer))]
    query = "\n".join(part for part in (_text(row, "instruction"), row.get("input") or "") if part)
    system = _system(row)
    prompt = ([{"role": "system", "content": system}] if system else []) + earlier + [{"role": "user", "content": query}]
    return {"prompt": prompt, "chosen": _answer(_text(row, "chosen")), "rejected": _answer(_text(row, "rejected"))}


def llamafactory_sharegpt(row: Mapping[str, Any], role_tag: str = "from", content_tag: str = "value",
                          user_tag: str = "human", assistant_tag: str = "gpt", observation_tag: str = "observation",
                          function_tag: str = "function_call", system_tag: str = "system") -> dict[str, Any]:
    """LLaMA-Factory's ShareGPT preference rows (``"formatting": "sharegpt", "ranking": true``):
    ``conversations`` (``{from, value}`` turns ending with the user's), ``chosen`` and ``rejected`` (one
    ``{from, value}`` message each), ``system`` (optional); the ``tags`` of ``dataset_info.json`` are this
    layout's parameters (same names, same defaults).

    As LLaMA-Factory's ``SharegptDatasetConverter`` (``src/llamafactory/data/converter.py``): a first turn tagged
    ``system_tag`` is the system text (over the ``system`` column); the turns must alternate user (or
    observation) and assistant (or function call), an odd number of them; the answers must be assistant (or
    function call) messages. Tags become chat-template roles: user, assistant, system; observation -> ``tool``,
    function call -> ``assistant``. LLaMA-Factory skips a row that breaks these rules; ches refuses it.

    >>> row = {"conversations": [{"from": "human", "value": "2+2?"}], "chosen": {"from": "gpt", "value": "4"},
    ...        "rejected": {"from": "gpt", "value": "5"}, "system": "Be brief."}
    >>> llamafactory_sharegpt(row)["prompt"]
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': '2+2?'}]
    >>> llamafactory_sharegpt({"conversations": [{"role": "user", "content": "Hi"}], "chosen": {"role": "assistant",
    ...     "content": "Hello"}, "rejected": {"role": "assistant", "content": "No"}}, role_tag="role",
    ...     content_tag="content", user_tag="user", assistant_tag="assistant")["chosen"]
    [{'role': 'assistant', 'content': 'Hello'}]
    """
    roles = {user_tag: "user", observation_tag: "tool", assistant_tag: "assistant", function_tag: "assistant"}
    odd, even = (user_tag, observation_tag), (assistant_tag, function_tag)

    def turn(message: Any, column: str, allowed: tuple[str, ...]) -> dict[str, str]:
        tag = message.get(role_tag) if isinstance(message, Mapping) else None
        if tag not in allowed:
            raise ValueError(f"column {column!r}: expected a message whose {role_tag!r} is one of {list(allowed)}, "
                             f"found {_found(message)} (set the tags with the format's parameters)")
        return {"role": roles[tag], "content": _content(message, column, content_tag)}

    messages = _message_list(row, "conversations")
    system = _system(row)
    if system_tag and messages[0].get(role_tag) == system_tag:
        system, messages = _content(messages[0], "conversations", content_tag), messages[1:]
    if len(messages) % 2 == 0:
        raise ValueError(f"column 'conversations': expected an odd number of turns ending with the user's, found "
                         f"{len(messages)}")
    prompt = [turn(message, "conversations", (odd, even)[index % 2]) for index, message in enumerate(messages)]
    return {"prompt": ([{"role": "system", "content": system}] if system else []) + prompt,
            "chosen": [turn(row["chosen"], "chosen", even)], "rejected": [turn(row["rejected"], "rejected", even)]}


# ---------------------------------------------------------------------------------------------------------
# OpenRLHF (openrlhf/datasets/reward_dataset.py, preprocess_data) and open-instruct


def openrlhf(row: Mapping[str, Any], input_template: str = "") -> dict[str, Any]:
    """OpenRLHF's preference rows (``--prompt_key``/``--chosen_key``/``--rejected_key``, now ``--data.prompt_key``
    etc. in ``openrlhf/cli/train_dpo.py``; defaults none/``chosen``/``rejected``; in ches ``columns=``
    onto ``prompt``/``chosen``/``rejected``; an optional ``margin`` number, carried along).

    As OpenRLHF's ``preprocess_data`` (``openrlhf/datasets/reward_dataset.py``):

    - message lists (``--apply_chat_template``) with a prompt column: the conversational pair as it is;
      without one: the prompt is ``chosen[:-1]``, the answers the last messages (:func:`last_turn_pair`);
    - strings (no chat template): the standard pair, the prompt written into ``input_template`` (this layout's
      parameter, OpenRLHF's ``--input_template``, ``{}`` where the prompt goes) when one is given; without a
      prompt column the prompt is empty and each answer the whole text.

    >>> openrlhf({"prompt": "2+2?", "chosen": " 4", "rejected": " 5", "margin": 1.5}, input_template="Q: {} A:")
    {'prompt': 'Q: 2+2? A:', 'chosen': ' 4', 'rejected': ' 5', 'margin': 1.5}
    >>> openrlhf({"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes"}],
    ...           "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "No"}]})["prompt"]
    [{'role': 'user', 'content': 'Hi'}]
    """
    margin = {"margin": row["margin"]} if "margin" in row else {}
    if isinstance(row.get("chosen"), list):
        if "prompt" not in row:
            return {**last_turn_pair(row), **margin}
        return {"prompt": _message_list(row, "prompt"), "chosen": _message_list(row, "chosen"),
                "rejected": _message_list(row, "rejected"), **margin}
    prompt = _text(row, "prompt") if "prompt" in row else ""
    if input_template and "prompt" in row:
        prompt = input_template.format(prompt)
    return {"prompt": prompt, "chosen": _text(row, "chosen"), "rejected": _text(row, "rejected"), **margin}


# ---------------------------------------------------------------------------------------------------------
# the registry

_AXOLOTL_DOC = "axolotl docs/rlhf.qmd; src/axolotl/prompt_strategies/dpo/"
_TEXT_ANSWERS = (("chosen", "text"), ("rejected", "text"))


def _named(canonical: Format, *aliases: str) -> tuple[Format, ...]:
    """A layout and its other names (each a :class:`Format` of its own, ``same_as`` the layout's name)."""
    return (canonical, *(replace(canonical, name=alias, same_as=canonical.name) for alias in aliases))


def _formats() -> dict[str, Format]:
    items = (
        *_named(Format("axolotl.chatml.intel", ("system", "question", "chosen", "rejected"), axolotl_chatml_intel,
                       _AXOLOTL_DOC + "chatml.py, llama3.py (intel)", ("system",), _TEXT_ANSWERS),
                "axolotl.llama3.intel", "axolotl.intel"),
        *_named(Format("axolotl.icr", ("system", "input", "chosen", "rejected"), axolotl_icr,
                       _AXOLOTL_DOC + "chatml.py, llama3.py (icr)", ("system",), _TEXT_ANSWERS),
                "axolotl.chatml.icr", "axolotl.llama3.icr"),
        *_named(Format("axolotl.argilla", ("system", "instruction", "chosen_response", "rejected_response"),
                       axolotl_argilla, _AXOLOTL_DOC + "chatml.py, llama3.py (default, formerly argilla)",
                       ("system",)),
                "axolotl.chatml.argilla", "axolotl.llama3.argilla"),
        *_named(Format("axolotl.prompt_pairs", ("system", "prompt", "chosen", "rejected"), axolotl_prompt_pairs,
                       _AXOLOTL_DOC + "chatml.py, llama3.py (prompt_pairs)", ("system",),
                       (("prompt", "text"), *_TEXT_ANSWERS)),
                "axolotl.chatml.prompt_pairs", "axolotl.llama3.prompt_pairs"),
        *_named(Format("axolotl.ultra", ("system", "prompt", "chosen", "rejected"), axolotl_ultra,
                       _AXOLOTL_DOC + "chatml.py, llama3.py (ultra)", ("system",),
                       (("prompt", "text"), ("chosen", "messages"), ("rejected", "messages"))),
                "axolotl.chatml.ultra", "axolotl.llama3.ultra"),
        *_named(Format("axolotl.argilla_chat", ("chosen", "rejected"), last_turn_pair,
                       _AXOLOTL_DOC + "chat_template.py, chatml.py, llama3.py (argilla_chat)",
                       kinds=(("chosen", "messages"), ("rejected", "messages")), detect=False),
                "axolotl.chatml.argilla_chat", "axolotl.llama3.argilla_chat", "axolotl.chat_template.argilla_chat"),
        Format("axolotl.chat_template.default", ("messages", "chosen", "rejected"), axolotl_chat_template,
               _AXOLOTL_DOC + "chat_template.py (default)", kinds=(("messages", "messages"),),
               options=(("role", "role"), ("content", "content"), ("user", "user"), ("assistant", "assistant"),
                        ("system", "system"), ("tool", "tool"))),
        Format("llamafactory.alpaca", ("system", "history", "instruction", "input", "chosen", "rejected"),
               llamafactory_alpaca, "LLaMA-Factory data/README.md (alpaca, ranking); src/llamafactory/data/converter.py",
               ("system", "history", "input"), (("instruction", "text"), *_TEXT_ANSWERS)),
        Format("llamafactory.sharegpt", ("system", "conversations", "chosen", "rejected"), llamafactory_sharegpt,
               "LLaMA-Factory data/README.md (sharegpt, ranking); src/llamafactory/data/converter.py", ("system",),
               (("conversations", "messages"), ("chosen", "message"), ("rejected", "message")),
               options=(("role_tag", "from"), ("content_tag", "value"), ("user_tag", "human"),
                        ("assistant_tag", "gpt"), ("observation_tag", "observation"),
                        ("function_tag", "function_call"), ("system_tag", "system"))),
        Format("openrlhf", ("prompt", "chosen", "rejected", "margin"), openrlhf,
               "OpenRLHF openrlhf/datasets/reward_dataset.py (preprocess_data)", ("prompt", "margin"), detect=False,
               options=(("input_template", ""),)),
        Format("open_instruct", ("chosen", "rejected"), last_turn_pair,
               "open-instruct open_instruct/dataset_transformation.py (preference_tulu_tokenize_and_truncate_v1)",
               kinds=(("chosen", "messages"), ("rejected", "messages")), detect=False),
    )
    return {item.name: item for item in items}


#: every layout by its ``format=`` name (other names of a layout included, ``same_as`` it)
FORMATS: dict[str, Format] = _formats()


def get_format(name: str) -> Format:
    """The layout called ``name``, with its parameters after a colon (``"name:key=value,key=value"``), or a
    :class:`ChesError` listing the names there are (or the parameters the layout takes).

    >>> get_format("llamafactory.sharegpt:user_tag=user").to_trl({"conversations": [{"from": "user", "value": "Hi"}],
    ...     "chosen": {"from": "gpt", "value": "Yes"}, "rejected": {"from": "gpt", "value": "No"}})["prompt"]
    [{'role': 'user', 'content': 'Hi'}]
    >>> get_format("axolotl.llama3.intel").same_as
    'axolotl.chatml.intel'
    """
    base, _, spec = name.partition(":")
    if base not in FORMATS:
        raise ChesError(f"format={name!r} (--format) is not a layout ches reads; use one of {sorted(FORMATS)}.")
    layout = FORMATS[base]
    if not spec:
        return layout
    allowed = dict(layout.options)
    given = {}
    for item in spec.split(","):
        key, equals, value = item.partition("=")
        if not equals or key.strip() not in allowed:
            takes = f"takes {sorted(allowed)}" if allowed else "takes no parameters"
            raise ChesError(f"format={name!r} (--format): {item!r} is not a parameter of {base}, which {takes} "
                            "(written name:key=value,key=value).")
        given[key.strip()] = value
    return replace(layout, name=name, to_trl=functools.partial(layout.to_trl, **given))


#: the columns of the layouts with several rated responses per prompt, which ``ches.pairs`` reads (not pairs)
RANKED_COLUMNS = {"generic": ("prompt", "responses", "ratings"), "ultrafeedback": ("instruction", "completions"),
                  "nectar": ("prompt", "answers")}


def ranked_layout(column_names: Sequence[str]) -> str | None:
    """The layout with several rated responses per prompt whose columns a table has, if any.

    >>> ranked_layout(["prompt", "answers", "source"]), ranked_layout(["prompt", "chosen", "rejected"])
    ('nectar', None)
    """
    return next((name for name, read in RANKED_COLUMNS.items() if all(c in column_names for c in read)), None)


def fitting_layouts(column_names: Sequence[str]) -> list[str]:
    """The layouts (by their own names, aliases left out) a table with ``column_names`` fits and that read one of its
    columns TRL does not: what a message suggesting ``--format`` names.

    >>> fitting_layouts(["system", "question", "chosen", "rejected"])
    ['axolotl.chatml.intel']
    """
    return [item.name for item in FORMATS.values() if not item.same_as and item.fits(column_names)
            and (set(item.reads) & set(column_names)) - set(TRL_COLUMNS)]


def detect_format(column_names: Sequence[str], row: Mapping[str, Any] | None = None) -> Format | None:
    """The one layout whose columns the table has, None when none fits, or a :class:`ChesError` naming every
    layout that fits when several do.

    TRL's own columns are never a layout: a layout is detected only when the table has a column it reads other
    than ``prompt``/``chosen``/``rejected`` (TRL data is read as it is), and layouts whose columns are TRL's own
    (``detect=False``) only by name. ``row`` (one row of the table, optional) tells layouts with the same columns
    apart by its values (``axolotl.prompt_pairs``: strings, ``axolotl.ultra``: message-list answers); of the
    rest, a layout that reads more of the table's columns than another wins over it.

    >>> detect_format(["system", "question", "chosen", "rejected"]).name
    'axolotl.chatml.intel'
    >>> detect_format(["prompt", "chosen", "rejected"]) is None
    True
    """
    present = set(column_names)

    def reads_here(item: Format) -> set[str]:
        return set(item.reads) & present

    fitting = [item for item in FORMATS.values()
               if item.detect and not item.same_as and item.fits(column_names)
               and reads_here(item) - set(TRL_COLUMNS) and (row is None or item.fits_row(row))]
    fitting = [item for item in fitting if not any(reads_here(item) < reads_here(other) for other in fitting)]
    if len(fitting) > 1:
        hint = "" if row is not None else " (one row's values may tell them apart)"
        raise ChesError(f"the columns {list(column_names)} fit several layouts ({', '.join(f.name for f in fitting)})"
                        f"{hint}; name yours with format= (--format).")
    return fitting[0] if fitting else None


def to_trl_columns(columns: Mapping[str, list], layout: Format, first_row: int = 0) -> dict[str, list]:
    """A block of rows of ``layout`` (column name -> values) as TRL's columns; an error names the row and column.

    >>> to_trl_columns({"question": ["2+2?"], "chosen": ["4"], "rejected": ["5"]}, FORMATS["axolotl.intel"])["prompt"]
    [[{'role': 'user', 'content': '2+2?'}]]
    >>> to_trl_columns({"question": [7], "chosen": ["4"], "rejected": ["5"]}, FORMATS["axolotl.intel"], 40)
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: row 40 does not fit axolotl.intel: column 'question': expected a string, found int 7.
    """
    names = list(columns)
    count = len(next(iter(columns.values()))) if columns else 0
    out: dict[str, list] = {}
    for offset in range(count):
        row = {name: columns[name][offset] for name in names}
        try:
            converted = layout.to_trl(row)
        except KeyError as error:
            raise ChesError(f"row {first_row + offset} does not fit {layout.name}: it has no column {error}; its "
                            f"columns are {names} (map yours with columns=, --columns).") from None
        except (TypeError, ValueError, AttributeError, IndexError) as error:
            raise ChesError(f"row {first_row + offset} does not fit {layout.name}: {error}.") from None
        for name, value in converted.items():
            out.setdefault(name, []).append(value)
    return out
