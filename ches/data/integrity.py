"""Integrity flags: what is wrong with a pair as TRL's ``DPOTrainer`` would train on it, read from the token ids
ches already has (the TRL ids of :func:`ches.data.tokens.tokenize_pairs`; nothing is tokenized again).

Practitioners filter these by hand today (OpenRLHF PR #1313, EasyLM PR #7). Every scored row gets a
``ches_flags`` column: a list of the names below that apply to it, empty when the row is clean. The flags
describe the data under TRL 1.16's preparation (``keep_start`` truncation at ``max_length``):

- ``identical_after_truncation``: the chosen and rejected completion tokens TRL keeps are equal (the same
  ids, or the same first ids up to ``max_length``). Both log-ratios of DPO's loss are then equal, so the loss
  is the constant ``-log sigmoid(0) = log 2`` and its gradient is zero: the row teaches nothing. Not set on
  a row TRL drops (``prompt_fills_max_length``).
- ``chosen_truncated`` / ``rejected_truncated``: ``prompt + completion`` is longer than ``max_length``, so
  TRL's truncation cuts tokens of that completion (its end, often the EOS). Not set on a row TRL drops.
- ``prompt_fills_max_length``: the prompt alone has at least ``max_length`` tokens; TRL drops the row
  (ches skips it too, with a ``ches_skip`` reason).
- ``empty_chosen`` / ``empty_rejected``: the completion has no text of its own: its tokens, before any
  truncation, decode (special tokens left out) to nothing but whitespace. A standard response ``""`` or
  ``" "`` becomes just TRL's appended EOS (or a space and EOS); an empty assistant message becomes just the
  chat template's end-of-turn tokens.

Rows skipped for other reasons (``ches_skip``) get the flags their token ids show.

``ches.score`` and ``ches.pairs`` both set them with :func:`pair_flags`, and both call a completion empty by
:func:`empty_texts`.

>>> pair_flags(2, ([7], [7]), (2, 2), max_length=3, empty=(False, False))
['identical_after_truncation', 'chosen_truncated', 'rejected_truncated']
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence

from ..errors import ChesError
from .tokens import TokenizedPair

logger = logging.getLogger("ches")

#: the column ches writes the flags to
FLAGS_COLUMN = "ches_flags"

#: every integrity flag, in the order a row's list holds them, with when it is set (see the module docstring)
FLAGS = {
    "identical_after_truncation": "the chosen and rejected token ids TRL trains on are equal after its truncation "
                                  "(DPO's loss is a constant log 2 there, its gradient zero)",
    "chosen_truncated": "TRL's max_length truncation cuts tokens of the chosen completion",
    "rejected_truncated": "TRL's max_length truncation cuts tokens of the rejected completion",
    "prompt_fills_max_length": "the prompt alone fills max_length, so TRL drops the row (ches skips it)",
    "empty_chosen": "the chosen completion has no text of its own (only whitespace, EOS or end-of-turn tokens)",
    "empty_rejected": "the rejected completion has no text of its own (only whitespace, EOS or end-of-turn tokens)",
}
FLAG_NAMES = tuple(FLAGS)


def pair_flags(prompt_tokens: int, kept: tuple[Sequence[int], Sequence[int]], lengths: tuple[int, int],
               max_length: int | None, empty: tuple[bool, bool]) -> list[str]:
    """The flags of one pair: the one definition, for a row of ``ches.score`` (:func:`tokenized_flags`) and a pair
    of ``ches.pairs`` alike.

    Args:
        prompt_tokens: the pair's prompt length in TRL tokens (the common prefix of both sequences).
        kept: ``(chosen, rejected)``: the completion ids TRL keeps, after its ``keep_start`` truncation at
            ``max_length`` (all of them without it); lists or arrays.
        lengths: ``(chosen, rejected)``: each completion's number of tokens before truncation.
        max_length: TRL's ``max_length``, or None.
        empty: ``(chosen, rejected)``: whether each completion has no text of its own (:func:`empty_texts`).

    >>> pair_flags(3, ([], []), (1, 2), max_length=3, empty=(True, False))
    ['prompt_fills_max_length', 'empty_chosen']
    >>> pair_flags(2, ([7], [7]), (2, 2), max_length=3, empty=(False, False))
    ['identical_after_truncation', 'chosen_truncated', 'rejected_truncated']
    """
    found = {name for name, empty_side in zip(("empty_chosen", "empty_rejected"), empty) if empty_side}
    if max_length is not None and prompt_tokens >= max_length:
        found.add("prompt_fills_max_length")
    else:
        if list(kept[0]) == list(kept[1]):
            found.add("identical_after_truncation")
        if max_length is not None:
            room = max_length - prompt_tokens  # completion tokens TRL keeps
            found |= {name for name, length in zip(("chosen_truncated", "rejected_truncated"), lengths) if length > room}
    return [name for name in FLAG_NAMES if name in found]


def tokenized_flags(tokenized: TokenizedPair, max_length: int | None, empty: tuple[bool, bool]) -> list[str]:
    """:func:`pair_flags` of a pair from its TRL token ids (:func:`ches.data.tokens.tokenize_pairs`, before
    truncation).

    >>> from ches.data.tokens import TokenizedPair
    >>> tokenized_flags(TokenizedPair([1, 5], [7, 8, 2], [7, 9, 2]), max_length=3, empty=(False, False))
    ['identical_after_truncation', 'chosen_truncated', 'rejected_truncated']
    """
    prompt = len(tokenized.prompt_ids)
    room = None if max_length is None else max(0, max_length - prompt)
    completions = (tokenized.chosen_ids, tokenized.rejected_ids)
    return pair_flags(prompt, tuple(ids[:room] for ids in completions), tuple(len(ids) for ids in completions),
                      max_length, empty)


def empty_texts(completions: Sequence[Sequence[int]], tokenizer) -> list[bool]:
    """Whether each completion has no text of its own: its token ids (before any truncation) decode, special
    tokens left out, to nothing but whitespace (one batched decode). The one definition of ``empty_chosen`` /
    ``empty_rejected``: what TRL trains on is the tokens, so a response written as the EOS string is empty and
    a lone space whose tokens merged with the prompt's last word is not."""
    texts = tokenizer.batch_decode([list(ids) for ids in completions], skip_special_tokens=True) if completions else []
    return [not text.strip() for text in texts]


def empty_completions(tokenized: Sequence[TokenizedPair], tokenizer) -> list[tuple[bool, bool]]:
    """Per pair, whether its chosen and its rejected completion are empty (:func:`empty_texts`)."""
    empty = empty_texts([ids for pair in tokenized for ids in (pair.chosen_ids, pair.rejected_ids)], tokenizer)
    return list(zip(empty[::2], empty[1::2]))


def chunk_flags(tokenized: Sequence[TokenizedPair], tokenizer, max_length: int | None) -> list[list[str]]:
    """The flags of every pair of a chunk (:func:`tokenized_flags`)."""
    empty = empty_completions(tokenized, tokenizer)
    return [tokenized_flags(pair, max_length, sides) for pair, sides in zip(tokenized, empty)]


def to_bits(flags: Iterable[str]) -> int:
    """The flags as one integer (bit ``i``: :data:`FLAG_NAMES` ``[i]``), how processes exchange them.

    >>> to_bits(["chosen_truncated", "empty_rejected"]), from_bits(34)
    (34, ['chosen_truncated', 'empty_rejected'])
    """
    return sum(1 << FLAG_NAMES.index(name) for name in set(flags))


def from_bits(bits: int) -> list[str]:
    """The flags of :func:`to_bits`' integer, in :data:`FLAG_NAMES` order."""
    return [name for index, name in enumerate(FLAG_NAMES) if int(bits) >> index & 1]


def parse_flags(text: str | None) -> list[str]:
    """A ``ches_flags`` cell read back from text (a CSV file), as pandas writes a list (``['a' 'b']``) or
    comma-separated.

    >>> parse_flags("['identical_after_truncation' 'empty_chosen']"), parse_flags(""), parse_flags("empty_chosen")
    (['identical_after_truncation', 'empty_chosen'], [], ['empty_chosen'])
    """
    return re.findall(r"[A-Za-z_]\w*", text or "")


def count_flags(column: Iterable[Sequence[str] | None]) -> dict[str, int]:
    """Rows per flag (the flags no row has left out), in :data:`FLAG_NAMES` order, then any other names.

    >>> count_flags([["empty_chosen"], [], ["chosen_truncated", "empty_chosen"], None])
    {'chosen_truncated': 1, 'empty_chosen': 2}
    """
    counts = Counter(name for flags in column for name in (flags or ()))
    order = [name for name in FLAG_NAMES if name in counts] + sorted(set(counts) - set(FLAG_NAMES))
    return {name: counts[name] for name in order}


def flagged_rows(column: Iterable[Sequence[str] | None]) -> int:
    """How many rows have at least one flag."""
    return sum(bool(flags) for flags in column)


def describe_flags(column: Sequence[Sequence[str] | None]) -> str | None:
    """One phrase counting the flagged rows and each flag, or None when no row is flagged.

    >>> describe_flags([["identical_after_truncation"], ["chosen_truncated"], ["chosen_truncated"], []])
    '3 rows flagged: identical_after_truncation 1, chosen_truncated 2'
    >>> describe_flags([[], []]) is None
    True
    """
    counts = count_flags(column)
    if not counts:
        return None
    rows = flagged_rows(column)
    detail = ", ".join(f"{name} {count}" for name, count in counts.items())
    return f"{rows} row{'s' if rows != 1 else ''} flagged: {detail}"


def check_flag_names(names: Iterable[str], option: str = "drop_flags") -> tuple[str, ...]:
    """``names`` as a tuple, each one a known flag (a string is read as comma-separated names).

    >>> check_flag_names("empty_chosen, chosen_truncated")
    ('empty_chosen', 'chosen_truncated')
    >>> check_flag_names(["identical"])
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: drop_flags: unknown integrity flag 'identical'; the flags are identical_after_truncation, chosen_truncated, rejected_truncated, prompt_fills_max_length, empty_chosen, empty_rejected.
    """
    if isinstance(names, str):
        names = [name.strip() for name in names.split(",") if name.strip()]
    names = tuple(names)
    for name in names:
        if name not in FLAGS:
            raise ChesError(f"{option}: unknown integrity flag {name!r}; the flags are {', '.join(FLAG_NAMES)}.")
    return tuple(dict.fromkeys(names))


def drop_flagged(dataset, names: Sequence[str], label: str = "the data", split: str | None = None):
    """``dataset`` (a ``datasets.Dataset``) without the rows flagged with any of ``names``; logs how many rows
    each flag dropped (the line starts with the ``split``'s name when there is one, as the filter's cut does).

    Raises:
        ChesError: the data has no ``ches_flags`` column (scored before ches wrote flags).

    >>> import datasets
    >>> rows = datasets.Dataset.from_dict({"x": [1, 2, 3], "ches_flags": [["empty_chosen"], [], ["chosen_truncated"]]})
    >>> drop_flagged(rows, ["empty_chosen"])["x"][:]
    [2, 3]
    """
    if not names:
        return dataset
    if FLAGS_COLUMN not in dataset.column_names:
        raise ChesError(f"{label} has no {FLAGS_COLUMN!r} column, so rows cannot be dropped by flag: it was scored by "
                        "an older ches, before integrity flags; score it again with ches score / ches.score (or build "
                        "the pairs again with ches pairs) to get them.")
    flags = list(dataset[FLAGS_COLUMN][:])
    wanted = set(names)
    keep = [index for index, row in enumerate(flags) if not wanted.intersection(row or ())]
    where = f"{split}: " if split else ""
    for name in names:
        logger.info("%sdropped %d rows flagged %s", where, sum(name in (row or ()) for row in flags), name)
    if len(names) > 1:
        logger.info("%sdropped %d flagged rows in all (%s)", where, len(flags) - len(keep), ", ".join(names))
    return dataset if len(keep) == len(flags) else dataset.select(keep)
