"""Normalized pairs: validate preference rows and bring every format to ``(prompt, chosen, rejected)``.

Three formats are accepted, as in TRL's DPO pipeline (behaviour matched: TRL 1.16):

- **standard**: ``prompt``, ``chosen``, ``rejected`` are strings.
- **conversational**: each is a list of ``{"role": str, "content": str}`` messages.
- **implicit prompt**: only ``chosen`` and ``rejected`` (strings or message lists); the prompt is their
  longest common prefix, found by :func:`split_prompt`.

Conversational rows may also carry TRL's two per-row chat-template columns: ``tools`` (a list of
tool schemas, or that list as a JSON string) and ``chat_template_kwargs`` (a dict of extra template
variables, e.g. ``{"enable_thinking": False}``). They reach the chat template exactly as in TRL's DPO
tokenization; standard string rows have no template, so there they are ignored (as TRL does).

The format is decided from the first row (as TRL does); every other row must have the same shape, or
a :class:`~ches.errors.ChesError` names the offending rows before any model work.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from ..errors import ChesError, describe_rows

logger = logging.getLogger("ches")

Messages = list[dict[str, str]]
PAIR_COLUMNS = ("prompt", "chosen", "rejected")
TEMPLATE_COLUMNS = ("tools", "chat_template_kwargs")  # TRL's per-row chat-template inputs
ROLES = ("system", "developer", "user", "assistant", "tool", "function", "ipython")
Text = Union[str, Messages]


@dataclass(frozen=True)
class Pair:
    """One preference pair, prompt made explicit.

    ``conversational`` pairs hold message lists; standard pairs hold strings. ``template_options``
    holds the keyword arguments the chat template gets for this row (``tools`` and the contents of
    ``chat_template_kwargs``), empty when the row has none.
    """

    prompt: Text
    chosen: Text
    rejected: Text
    template_options: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def conversational(self) -> bool:
        return isinstance(self.chosen, list)


def extract_prompt(example: dict[str, Text]) -> dict[str, Text]:
    """TRL's ``extract_prompt`` contract: a row with implicit-prompt ``chosen``/``rejected`` in, the row's
    ``{"prompt", "chosen", "rejected"}`` out, split as :func:`split_prompt` does (for ``Dataset.map``).

    >>> extract_prompt({"chosen": "Q: sky? A: blue", "rejected": "Q: sky? A: green"})
    {'prompt': 'Q: sky? A:', 'chosen': ' blue', 'rejected': ' green'}
    """
    prompt, chosen, rejected = split_prompt(example["chosen"], example["rejected"])
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def split_prompt(chosen: Text, rejected: Text) -> tuple[Text, Text, Text]:
    """Split two full transcripts into ``(prompt, chosen, rejected)`` at their longest common prefix.

    Strings are compared character by character, message lists message by message. As in TRL's
    ``extract_prompt``: when the character before the divergence is a space, the space goes to the
    completions; when one transcript is a prefix of the other (no divergence), the last shared
    element is left to the completions. Where the two differ from the very first element the
    prompt is empty (TRL would wrap around to the last character; such a row is skipped later, as
    TRL cannot train on it: see :func:`pair_problem`).

    >>> split_prompt("Q: sky? A: blue", "Q: sky? A: green")
    ('Q: sky? A:', ' blue', ' green')
    >>> split_prompt([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}],
    ...                [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away"}])[0]
    [{'role': 'user', 'content': 'Hi'}]
    """
    shared = common_prefix_length(chosen, rejected)
    if shared == min(len(chosen), len(rejected)):  # one is a prefix of the other: no divergence
        cut = shared - 1
    else:
        cut = shared - 1 if shared > 0 and chosen[shared - 1] == " " else shared
    cut = max(cut, 0)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def text_length(pair: Pair) -> int:
    """Characters of text in a pair (prompt and both completions; message contents for conversations):
    a length known before tokenizing, by which rows are grouped into chunks of similar length.

    >>> text_length(Pair("2+2=", "4", "5")), text_length(Pair([{"role": "user", "content": "Hi"}], [], []))
    (6, 2)
    """
    def size(text) -> int:
        return len(text) if isinstance(text, str) else sum(len(message.get("content") or "") for message in text)

    return size(pair.prompt) + size(pair.chosen) + size(pair.rejected)


def common_prefix_length(first: Sequence, second: Sequence) -> int:
    """Number of leading elements (characters, messages, token ids) two sequences of one type share.

    Found by bisection on slice equality, which Python compares in C: ``O(n log n)`` element
    comparisons at C speed instead of a Python loop over every element.

    >>> common_prefix_length([1, 2, 3], [1, 2, 4, 5]), common_prefix_length("abc", "abd"), common_prefix_length("", "a")
    (2, 2, 0)
    """
    shorter = min(len(first), len(second))
    if first[:shorter] == second[:shorter]:
        return shorter
    equal, different = 0, shorter  # first[:equal] == second[:equal], first[:different] != second[:different]
    while different - equal > 1:
        middle = (equal + different) // 2
        if first[:middle] == second[:middle]:
            equal = middle
        else:
            different = middle
    return equal


def to_pairs(columns: dict[str, list[Any]], first_row: int = 0, *, warn: bool = True) -> list[Pair]:
    """Validate the ``prompt``/``chosen``/``rejected`` columns of a table and return one :class:`Pair` per row.

    Args:
        columns: column name -> list of row values; ``prompt`` may be absent (implicit prompt);
            ``tools`` and ``chat_template_kwargs`` are optional (see the module docstring).
        first_row: the row number of the columns' first value in the data (errors name rows by it).
        warn: say (once, for the block starting at row 0) that chat-template columns of standard rows are
            ignored; off when rows already checked are read again.

    Raises:
        ChesError: a column is missing, or rows hold ``None``, non-strings, or malformed messages;
            the message names the column and the first offending rows.

    >>> to_pairs({"prompt": ["2+2="], "chosen": ["4"], "rejected": ["5"]})
    [Pair(prompt='2+2=', chosen='4', rejected='5')]
    >>> to_pairs({"chosen": ["Q: A: yes"], "rejected": ["Q: A: no"]})
    [Pair(prompt='Q: A:', chosen=' yes', rejected=' no')]
    """
    missing = [name for name in ("chosen", "rejected") if name not in columns]
    if missing:
        raise ChesError(
            f"missing column(s) {missing}; found {sorted(columns)}. A preference data set needs 'chosen' and "
            "'rejected' (and optionally 'prompt'); rename your columns, e.g. dataset.rename_column('response_a', 'chosen')."
        )
    names = [name for name in PAIR_COLUMNS if name in columns]
    conversational = _first_is_messages(columns)
    for name in names:
        _check_column(name, columns[name], conversational, first_row)
    options = _template_options(columns, conversational, first_row, warn)
    if "prompt" in columns:
        texts = zip(columns["prompt"], columns["chosen"], columns["rejected"])
    else:
        texts = (split_prompt(chosen, rejected) for chosen, rejected in zip(columns["chosen"], columns["rejected"]))
    return [Pair(*text, template_options=row_options) for text, row_options in zip(texts, options)]


def _template_options(columns: dict[str, list[Any]], conversational: bool, first_row: int,
                      warn: bool = True) -> list[dict[str, Any]]:
    """Per row, the chat-template keyword arguments TRL's DPO tokenization would pass (``{}`` when none)."""
    rows = len(columns["chosen"])
    present = [name for name in TEMPLATE_COLUMNS if name in columns]
    if not present:
        return [{} for _ in range(rows)]
    if not conversational:
        if warn and first_row == 0:  # once, not once per block of rows
            logger.warning("column(s) %s ignored: they are chat-template inputs and these rows are standard strings "
                           "(TRL ignores them too)", present)
        return [{} for _ in range(rows)]
    tools = [_tools(value, row) for row, value in enumerate(columns.get("tools", [None] * rows), first_row)]
    extra = columns.get("chat_template_kwargs", [None] * rows)
    bad = [row for row, value in enumerate(extra, first_row) if value is not None and not isinstance(value, dict)]
    if bad:
        raise ChesError(
            f"column 'chat_template_kwargs' must hold a dict (or None) in every row; {describe_rows(bad)}: found "
            f"{_kind(extra[bad[0] - first_row])}. It is passed to the chat template as keyword arguments, e.g. "
            "{'enable_thinking': False}."
        )
    if "tools" not in columns:  # TRL passes tools=None when the column is absent: the template's default
        return [dict(value or {}) for value in extra]
    return [{"tools": row_tools, **(value or {})} for row_tools, value in zip(tools, extra)]


def _tools(value: Any, row: int) -> list | None:
    """A row's ``tools``: a list of schemas, its JSON text (decoded, as TRL does), or None."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ChesError(f"row {row}: column 'tools' holds a string that is not valid JSON ({error}); "
                            "store the list of tool schemas, or its json.dumps text.") from None
    if value is not None and not isinstance(value, list):
        raise ChesError(f"row {row}: column 'tools' must hold a list of tool schemas (or its JSON text, or None); "
                        f"found {_kind(value)}.")
    return value


def _first_is_messages(columns: dict[str, list[Any]]) -> bool:
    first = columns["chosen"][0] if columns["chosen"] else None
    return isinstance(first, list)


def _check_column(name: str, values: Sequence[Any], conversational: bool, first_row: int = 0) -> None:
    expected = "a list of {'role', 'content'} messages" if conversational else "a string"
    problems: dict[str, list[int]] = {}
    examples: dict[str, Any] = {}
    for row, value in enumerate(values, first_row):
        problem = _message_list_problem(value) if conversational else _string_problem(value)
        if problem:
            problems.setdefault(problem, []).append(row)
            examples.setdefault(problem, value)
    if problems:
        found = "; ".join(f"{describe_rows(rows)}: {problem}{_example(examples[problem])}"
                          for problem, rows in problems.items())
        fmt = "conversational" if conversational else "standard"
        raise ChesError(
            f"column {name!r} must hold {expected} in every row ({fmt} format, decided from row 0 of 'chosen'); "
            f"{found}. Fix or drop these rows, e.g. dataset.filter(lambda row: row[{name!r}] is not None)."
        )


def _string_problem(value: Any) -> str | None:
    if isinstance(value, str):
        return None
    return "found None" if value is None else f"found {type(value).__name__}"


def _example(value: Any) -> str:
    if value is None or isinstance(value, list):
        return ""
    text = repr(value)
    return f" (e.g. {text[:40] + '...' if len(text) > 40 else text})"


def _message_list_problem(value: Any) -> str | None:
    if not isinstance(value, list):
        return f"found {_kind(value)}"
    for position, message in enumerate(value):
        if not isinstance(message, dict):
            return f"message {position} is {_kind(message)}, not a dict"
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                return f"message {position} has {key!r} = {_kind(message.get(key))}, expected a string"
        if message["role"] not in ROLES:
            return f"message {position} has the unknown role {message['role']!r} (chat templates know {', '.join(ROLES)})"
    return None


def pair_problem(pair: Pair) -> str | None:
    """Why a well-formed pair still cannot be scored as DPO would train on it, or None.

    >>> pair_problem(Pair([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}],
    ...                   [{"role": "user", "content": "?"}], [{"role": "user", "content": "!"}]))
    'conversational prompt ends with an assistant turn (the completion would follow a second assistant header)'
    """
    if pair.conversational and not pair.prompt:
        return EMPTY_CONVERSATION
    if pair.conversational and pair.prompt[-1]["role"] == "assistant":
        return "conversational prompt ends with an assistant turn (the completion would follow a second assistant header)"
    return None


#: the skip reason of a conversational pair with no prompt messages: TRL 1.16 cannot tokenize it (transformers
#: refuses to apply a chat template to an empty conversation), whatever the template would add (BOS, a system turn)
EMPTY_CONVERSATION = ("conversational prompt has no messages (implicit prompt: the two conversations differ from the "
                      "first message); a chat template cannot be applied to an empty conversation, so TRL cannot train "
                      "on it")


def _kind(value: Any) -> str:
    if value is None:
        return "None"
    text = repr(value)
    return f"{type(value).__name__} {text[:40] + '...' if len(text) > 40 else text}"
