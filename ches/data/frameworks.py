"""Other frameworks' preference layouts, read as they are: each becomes the TRL pair it means.

Users of axolotl, LLaMA-Factory, OpenRLHF and open-instruct keep their data in those frameworks' own
layouts. Each layout here is one small :class:`Format`: the columns that identify it, and one function that
turns one of its rows into the TRL row it means (``prompt``/``chosen``/``rejected`` as strings, or as message
lists with any system text kept as a system turn; TRL's ``tools``/``chat_template_kwargs`` may come along).
The rest of ches then reads that TRL row exactly as it reads TRL data (:func:`ches.data.formats.to_pairs`),
so a layout's scores equal those of the same pairs written in TRL's conversational format.

``format=`` (``--format NAME``) names a layout; without it the layout is detected from the columns
(:func:`detect_format`), and a row set that fits several is refused naming them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ChesError


@dataclass(frozen=True)
class Format:
    """One framework's preference layout.

    Attributes:
        name: what ``format=`` / ``--format`` calls it, ``"<framework>.<layout>"`` (``"axolotl.chatml.intel"``).
        reads: the columns a row of this layout has (all of them: detection needs every one).
        to_trl: one row (a dict of its columns) -> the TRL row it means.
        source: where the layout is documented (the framework's doc or loader), for the docs and errors.
    """

    name: str
    reads: tuple[str, ...]
    to_trl: Callable[[Mapping[str, Any]], dict[str, Any]]
    source: str = ""

    def fits(self, column_names: Sequence[str]) -> bool:
        """Whether a table with ``column_names`` has every column this layout reads."""
        return all(name in column_names for name in self.reads)


def _messages(system: str | None, user: str) -> list[dict[str, str]]:
    """A prompt as messages: a system turn when there is system text, then the user's turn."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def _answer(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def axolotl_chatml_intel(row: Mapping[str, Any]) -> dict[str, Any]:
    """axolotl's ``chatml.intel`` / ``llama3.intel`` rows (``system``, ``question``, ``chosen``, ``rejected``
    strings): the system text and the question are the prompt's turns, each answer the assistant's.

    >>> axolotl_chatml_intel({"system": "Be brief.", "question": "2+2?", "chosen": "4", "rejected": "5"})["prompt"]
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': '2+2?'}]
    >>> axolotl_chatml_intel({"system": "", "question": "Hi", "chosen": "Hello", "rejected": "Go away"})["chosen"]
    [{'role': 'assistant', 'content': 'Hello'}]
    """
    return {"prompt": _messages(row.get("system"), row["question"]), "chosen": _answer(row["chosen"]),
            "rejected": _answer(row["rejected"])}


#: every layout by its ``format=`` name
FORMATS: dict[str, Format] = {
    item.name: item for item in (
        Format("axolotl.chatml.intel", ("system", "question", "chosen", "rejected"), axolotl_chatml_intel,
               "axolotl docs/rlhf.qmd; src/axolotl/prompt_strategies/dpo/chatml.py (intel)"),
    )
}


def get_format(name: str) -> Format:
    """The layout called ``name``, or a :class:`ChesError` listing the names there are."""
    if name not in FORMATS:
        raise ChesError(f"format={name!r} (--format) is not a layout ches reads; use one of {sorted(FORMATS)}.")
    return FORMATS[name]


def detect_format(column_names: Sequence[str]) -> Format | None:
    """The one layout whose columns the table has, None when none fits (TRL's own columns are read as they
    are), or a :class:`ChesError` naming every layout that fits when several do.

    >>> detect_format(["system", "question", "chosen", "rejected"]).name
    'axolotl.chatml.intel'
    >>> detect_format(["prompt", "chosen", "rejected"]) is None
    True
    """
    fitting = [item for item in FORMATS.values() if item.fits(column_names)]
    # a layout whose columns include another's is the more specific one: keep only the most specific
    fitting = [item for item in fitting if not any(set(item.reads) < set(other.reads) for other in fitting)]
    if len(fitting) > 1:
        raise ChesError(f"the columns {list(column_names)} fit several layouts ({', '.join(f.name for f in fitting)}); "
                        "name yours with format= (--format).")
    return fitting[0] if fitting else None


def to_trl_columns(columns: Mapping[str, list], layout: Format, first_row: int = 0) -> dict[str, list]:
    """A block of rows of ``layout`` (column name -> values) as TRL's columns; an error names the row."""
    names = list(columns)
    count = len(next(iter(columns.values()))) if columns else 0
    out: dict[str, list] = {}
    for offset in range(count):
        row = {name: columns[name][offset] for name in names}
        try:
            converted = layout.to_trl(row)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ChesError(f"row {first_row + offset} is not a {layout.name} row ({type(error).__name__}: {error}); "
                            f"its columns are {names}.") from None
        for name, value in converted.items():
            out.setdefault(name, []).append(value)
    return out
