"""Input rows, checked: every row of a table read and validated a block at a time, keeping only its text
length (the key chunks are planned by), then read back a block at a time while scoring.

Before the model loads, :func:`read_rows` checks every row (in blocks of :data:`BLOCK_ROWS`, so memory does
not grow with the table) and raises :class:`~ches.errors.ChesError` for the first bad ones.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import datasets
import numpy as np

from ..errors import ChesError
from .columns import all_types
from .formats import Pair, text_length
from .frameworks import fitting_layouts
from .inputs import Reading, mapped_names, preference_pairs, reading_of, resolve_reading

logger = logging.getLogger("ches")

BLOCK_ROWS = 16384  # rows read (and checked) at a time
#: an implicit prompt (taken from the start the two answers share) shorter than this, in characters, is no prompt
#: but a guess: refused in most rows while the data has text columns ches does not read (:func:`check_implicit_prompts`)
MIN_PROMPT_CHARS = 16


@dataclass(frozen=True)
class RowSource:
    """The rows of one table, checked, read back a block at a time while scoring.

    Attributes:
        dataset: the table (memory-mapped Arrow when it came from files).
        columns: how the rows are read (:class:`~ches.data.inputs.Reading`: the user's column names for ches'
            roles, and the layout, decided).
        lengths: ``[N]`` characters of text per row (prompt and both completions): the length sort key.
        split: the split's name, for messages.
    """

    dataset: datasets.Dataset
    columns: Reading
    lengths: np.ndarray
    split: str | None

    def pairs(self, rows: range | np.ndarray) -> list[Pair]:
        """The normalized pairs of ``rows`` (a range, or row numbers), in one read: the rows were checked by
        :func:`read_rows`, so their format's warnings are not given again."""
        return normalized(self.dataset, rows, self.split, self.columns, warn=False)

    def chunk_pairs(self, chunks: Iterable[np.ndarray]) -> Iterator[list[Pair]]:
        """The normalized pairs of each chunk of rows (each inside one block of :data:`BLOCK_ROWS`, as
        :func:`ches.run.chunks.plan_chunks` cuts them), in the chunk's order, reading each block once.

        >>> source = read_rows(datasets.Dataset.from_list([{"chosen": "Hi a", "rejected": "Hi b"}] * 3))
        >>> [len(pairs) for pairs in source.chunk_pairs([np.array([2, 0]), np.array([1])])]
        [2, 1]
        """
        block, block_pairs = -1, []
        for rows in chunks:
            first = int(rows.min()) // BLOCK_ROWS * BLOCK_ROWS
            if first != block:  # a chunk lies inside one block: read each block once
                block, block_pairs = first, self.pairs(range(first, min(first + BLOCK_ROWS, len(self.lengths))))
            yield [block_pairs[int(row) - first] for row in rows]


def normalized(dataset: datasets.Dataset, rows: range | np.ndarray, split: str | None,
               columns: Reading | Mapping[str, str] | None, *, warn: bool) -> list[Pair]:
    """The one place rows become normalized pairs: ``rows`` of ``dataset`` (a range, numbered from its start in
    errors, or row numbers), checked (:func:`~ches.data.inputs.preference_pairs`), with the format's warnings
    when ``warn``; ``columns`` (a :class:`~ches.data.inputs.Reading`) says how they are read, a layout's rows
    becoming the TRL rows they mean."""
    first_row = rows.start if isinstance(rows, range) else 0
    return preference_pairs(dataset.select(rows), split, columns, first_row=first_row, warn=warn)


def read_rows(dataset: datasets.Dataset, split: str | None = None,
              columns: Reading | Mapping[str, str] | None = None) -> RowSource:
    """Check every row of ``dataset`` (raising :class:`~ches.errors.ChesError` for the first bad ones) and
    note their text lengths, a block at a time: memory does not grow with the table. The layout the rows are
    read in is decided here (named, or detected: :func:`~ches.data.inputs.resolve_reading`) and said in the log,
    with the text columns no role reads; an implicit prompt that is a guess is refused
    (:func:`check_implicit_prompts`)."""
    if len(dataset) == 0:
        preference_pairs(dataset, split, columns)  # raises: no rows
    given = reading_of(columns)
    reading = resolve_reading(dataset.column_names, given)
    read = reading.roles(dataset.column_names)
    unread = unread_text_columns(dataset, read.values())
    _say_reading(reading, given.format is None, unread, split, dataset.column_names)
    lengths = np.zeros(len(dataset), dtype=np.int64)
    short: list[tuple[int, str]] = []
    for begin in range(0, len(dataset), BLOCK_ROWS):
        end = min(begin + BLOCK_ROWS, len(dataset))
        pairs = normalized(dataset, range(begin, end), split, reading, warn=True)
        lengths[begin:end] = [text_length(pair) for pair in pairs]
        if reading.layout is None and "prompt" not in read:
            short += [(row, pair.prompt) for row, pair in enumerate(pairs, begin) if prompt_chars(pair) < MIN_PROMPT_CHARS]
    if short:
        check_implicit_prompts(short, len(dataset), unread, dataset.column_names, reading)
    return RowSource(dataset, reading, lengths, split)


def _say_reading(reading: Reading, detected: bool, unread: list[str], split: str | None, column_names) -> None:
    """One line for the layout the rows are read in (a layout's; TRL's when a layout fits too), one for the text
    columns no role reads."""
    where = f" (split {split!r})" if split else ""
    fitting = fitting_layouts(mapped_names(reading.columns, column_names))
    if reading.layout is None and detected and fitting:
        logger.info("rows%s read as TRL's columns, as always for TRL's prompt/chosen/rejected (they also fit %s: "
                    "--format/format= reads them so)", where, ", ".join(fitting))
    if reading.layout is not None:
        logger.info("rows%s read as %s (%s); their scores are those of the TRL rows it means", where, reading.format,
                    "detected from the columns; --format/format= names another" if detected else "format=")
    if unread:
        logger.info("column(s) %s%s not read: text ches does not score (a layout reading them: --format/format=; a "
                    "role: --columns/columns=)", unread, where)


def unread_text_columns(dataset: datasets.Dataset, read) -> list[str]:
    """The columns of ``dataset`` holding text (strings, or lists of strings or messages) that no role reads and
    ches did not write.

    >>> unread_text_columns(datasets.Dataset.from_list([{"question": "Hi", "chosen": "a", "n": 1, "ches_skip": None}]),
    ...                     ["chosen"])
    ['question']
    """
    def textual(feature) -> bool:
        if isinstance(feature, datasets.Value):
            return feature.dtype in ("string", "large_string")
        inner = getattr(feature, "feature", None)
        if isinstance(feature, dict):
            return any(textual(value) for value in feature.values())
        return inner is not None and textual(inner)

    ours, taken = set(all_types()), set(read)
    return [name for name, feature in dataset.features.items()
            if name not in taken and name not in ours and textual(feature)]


def prompt_chars(pair: Pair) -> int:
    """Characters of a pair's prompt (its messages' contents for a conversation), spaces left out.

    >>> prompt_chars(Pair("  Hi ", "a", "b")), prompt_chars(Pair([], [], []))
    (2, 0)
    """
    texts = [pair.prompt] if isinstance(pair.prompt, str) else [message.get("content") or "" for message in pair.prompt]
    return sum(len(text.strip()) for text in texts)


def check_implicit_prompts(short: list[tuple[int, object]], rows: int, unread: list[str], column_names,
                           reading: Reading) -> None:
    """Refuse implicit-prompt rows (no prompt column, no layout) whose prompt, the start the two answers share,
    is under :data:`MIN_PROMPT_CHARS` characters in at least half of the ``rows`` (``short``: those rows and
    prompts), while the data has text columns no role reads (``unread``): the prompt is most likely in them, and
    the scores would be of the answers' shared first characters. Measured in characters, not tokens: it runs on
    every row before a tokenizer or model is loaded, and means the same under every tokenizer (16 characters
    are about 3 to 5 tokens of English text).

    >>> check_implicit_prompts([(0, "")], 1, ["question"], ["question", "chosen", "rejected"], Reading())
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: the rows have no prompt column, and in 1 of 1 rows the prompt ches would take from the start 'chosen' and 'rejected' share is under 16 characters (row 0: ''), while the text column(s) ['question'] are not read: map the prompt with --columns prompt=question (columns=), or name the rows' layout with --format axolotl.chatml.intel (format=); scoring them so would score the answers' first characters.
    """
    if not unread or 2 * len(short) < rows:
        return
    mapping = dict(reading.columns or {}) if isinstance(reading.columns, Mapping) else {}
    likely = fitting_layouts(mapped_names(reading.columns, column_names))
    layouts = f"--format {' or --format '.join(likely)}" if likely else "--format NAME"
    row, prompt = short[0]
    question = next((name for name in unread if name != "system"), unread[0])  # a system text is not the prompt
    raise ChesError(f"the rows have no prompt column, and in {len(short)} of {rows} rows the prompt ches would take "
                    f"from the start {mapping.get('chosen', 'chosen')!r} and {mapping.get('rejected', 'rejected')!r} "
                    f"share is under {MIN_PROMPT_CHARS} characters (row {row}: {str(prompt)[:40]!r}), while the text "
                    f"column(s) {unread} are not read: map the prompt with --columns prompt={question} (columns=), "
                    f"or name the rows' layout with {layouts} (format=); scoring them so would score the answers' "
                    "first characters.")



def one_format(sources: Mapping[str | None, RowSource]) -> str:
    """The layout every split's rows are read in (``"trl"`` or a layout's name), or a :class:`ChesError` naming
    each split's when they differ (one run, one record, one way to read its rows again).

    >>> one_format({None: read_rows(datasets.Dataset.from_list([{"prompt": "Hi", "chosen": " a", "rejected": " b"}]))})
    'trl'
    """
    found = {split: source.columns.format for split, source in sources.items()}
    if len(set(found.values())) > 1:
        raise ChesError(f"the splits are in different layouts ({', '.join(f'{k}: {v}' for k, v in found.items())}); "
                        "name one with format= (--format), or score each split on its own.")
    return next(iter(found.values()))
