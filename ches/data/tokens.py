"""Token sequences: exactly the ids TRL's ``DPOTrainer`` trains on (behaviour matched: TRL 1.16).

For each :class:`~ches.data.formats.Pair`:

- standard rows: the tokenizer's EOS *string* is appended to each completion unless it already ends
  with it; ``prompt`` and ``prompt + completion`` are each tokenized whole, with the tokenizer's
  default special tokens;
- conversational rows: prompt ids = ``apply_chat_template(prompt, add_generation_prompt=True)``,
  full ids = ``apply_chat_template(prompt + completion)``; no extra EOS; the row's ``tools`` and
  ``chat_template_kwargs`` (see :mod:`ches.data.formats`) are passed to every one of these calls;
- the prompt is cut to the longest common token prefix of its ids with *both* full sequences (when
  tokens merge across the boundary the prompt ids are not a prefix); each completion is the rest of
  its full sequence. ``prompt_cut`` counts the prompt tokens so dropped;
- ``max_length`` keeps the first ``max_length`` tokens of each prompt+completion sequence (TRL's
  ``keep_start``). TRL drops rows whose prompt alone fills ``max_length``; here they are kept with a
  skip reason.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ..errors import ChesError
from .formats import Pair, common_prefix_length

CHUNK_ROWS = 512  # rows tokenized per call of the (Rust, multi-threaded) fast tokenizer


@dataclass(frozen=True)
class TokenizedPair:
    """The TRL token ids of one pair, before truncation."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    prompt_cut: int = 0  # prompt tokens left out because the prompt ids were not a prefix of the full ids


@dataclass(frozen=True)
class TokenSequence:
    """One prompt+completion sequence and the positions whose hidden states are summed.

    The hidden state at position ``t`` predicts token ``t + 1``, so a completion occupying token
    positions ``[P, P + R)`` is summed over positions ``[P - 1, P + R - 1)``: ``[start, end)``.
    ``shared``: how many of the completion's first tokens LD-DPO counts as shared with the pair's other
    completion (``min(|y+|, |y-|)`` after truncation; None: all of them), for the log-prob of that part.
    """

    input_ids: list[int]
    start: int
    end: int
    shared: int | None = None

    @property
    def completion_ids(self) -> list[int]:
        return self.input_ids[self.start + 1 : self.end + 1]


def split_completions(prompt_ids: list[int], chosen_full: list[int], rejected_full: list[int]) -> TokenizedPair:
    """Cut two tokenized ``prompt + completion`` sequences into TRL's prompt/chosen/rejected ids.

    >>> split_completions([5, 6, 7], [5, 6, 7, 8, 2], [5, 6, 9, 2])
    TokenizedPair(prompt_ids=[5, 6], chosen_ids=[7, 8, 2], rejected_ids=[9, 2], prompt_cut=1)
    """
    prompt_length = min(common_prefix_length(prompt_ids, chosen_full), common_prefix_length(prompt_ids, rejected_full))
    return TokenizedPair(
        prompt_ids=list(prompt_ids[:prompt_length]),
        chosen_ids=list(chosen_full[prompt_length:]),
        rejected_ids=list(rejected_full[prompt_length:]),
        prompt_cut=len(prompt_ids) - prompt_length,
    )


def tokenize_pairs(pairs: Sequence[Pair], tokenizer, first_row: int = 0,
                   rows: Sequence[int] | None = None) -> list[TokenizedPair]:
    """Tokenize pairs the way TRL's DPO data preparation does (see the module docstring).

    Args:
        pairs: normalized pairs, all standard or all conversational.
        tokenizer: a Hugging Face tokenizer (fast tokenizers batch the work in Rust threads).
        first_row: the row number of ``pairs[0]`` in the data (errors name rows by it).
        rows: the row number of each pair, when they are not consecutive (replaces ``first_row``).

    Raises:
        ChesError: standard rows with a tokenizer that has no EOS token; conversational rows with a
            tokenizer that has no chat template.
    """
    if pairs and pairs[0].conversational:
        if not getattr(tokenizer, "chat_template", None):
            raise ChesError(
                "the data is conversational but the tokenizer has no chat template; set tokenizer.chat_template "
                "(e.g. from the instruct model you will train) or pass standard string rows."
            )
        return _chunked(pairs, tokenizer, _tokenize_conversational, _row_numbers(rows, first_row, len(pairs)))
    if pairs and not tokenizer.eos_token:
        raise ChesError(
            "the tokenizer has no EOS token, which TRL appends to every standard completion; set "
            "tokenizer.eos_token (e.g. tokenizer.eos_token = '</s>') before scoring."
        )
    return _chunked(pairs, tokenizer, _tokenize_standard, _row_numbers(rows, first_row, len(pairs)))


def _chunked(pairs: Sequence[Pair], tokenizer, tokenize_chunk, rows: Sequence[int]) -> list[TokenizedPair]:
    out: list[TokenizedPair] = []
    for begin in range(0, len(pairs), CHUNK_ROWS):
        out += tokenize_chunk(pairs[begin : begin + CHUNK_ROWS], tokenizer, rows[begin : begin + CHUNK_ROWS])
    return out


def _with_eos(text: str, eos: str) -> str:
    return text if text.endswith(eos) else text + eos


def _tokenize_standard(pairs: Sequence[Pair], tokenizer, rows: Sequence[int]) -> list[TokenizedPair]:
    eos = tokenizer.eos_token
    prompts = [pair.prompt for pair in pairs]
    prompt_ids = tokenizer(prompts)["input_ids"]
    chosen_full = tokenizer([pair.prompt + _with_eos(pair.chosen, eos) for pair in pairs])["input_ids"]
    rejected_full = tokenizer([pair.prompt + _with_eos(pair.rejected, eos) for pair in pairs])["input_ids"]
    return [split_completions(*ids) for ids in zip(prompt_ids, chosen_full, rejected_full)]


def _chat_ids(tokenizer, conversations: list, rows: list[int], **options) -> list[list[int]]:
    """Token ids of each conversation under the chat template; ``rows`` name them in errors."""
    try:
        encoded = tokenizer.apply_chat_template(conversations, tokenize=True, return_dict=True, **options)
    except Exception:  # find the row the template refuses, and say so
        for row, conversation in zip(rows, conversations):
            try:
                tokenizer.apply_chat_template([conversation], tokenize=True, return_dict=True, **options)
            except Exception as error:
                raise ChesError(
                    f"row {row}: the chat template cannot render the conversation "
                    f"({type(error).__name__}: {error}); its roles are {[message['role'] for message in conversation]}."
                ) from None
        raise
    return [list(ids) for ids in encoded["input_ids"]]


def _tokenize_conversational(pairs: Sequence[Pair], tokenizer, rows: Sequence[int]) -> list[TokenizedPair]:
    """Rows with the same template options (usually all of them) are rendered in one batched call."""
    groups: dict[str, list[int]] = {}
    for position, pair in enumerate(pairs):
        groups.setdefault(json.dumps(pair.template_options, sort_keys=True, default=repr), []).append(position)
    out: list[TokenizedPair | None] = [None] * len(pairs)
    for positions in groups.values():
        group = [pairs[position] for position in positions]
        options, names = group[0].template_options, [rows[position] for position in positions]
        prompt_ids = _chat_ids(tokenizer, [pair.prompt for pair in group], names, add_generation_prompt=True, **options)
        chosen_full = _chat_ids(tokenizer, [pair.prompt + pair.chosen for pair in group], names, **options)
        rejected_full = _chat_ids(tokenizer, [pair.prompt + pair.rejected for pair in group], names, **options)
        for position, ids in zip(positions, zip(prompt_ids, chosen_full, rejected_full)):
            out[position] = split_completions(*ids)
    return out


class SequencePair(NamedTuple):
    """The two sequences of a pair that DPO trains on (unpacks as ``chosen, rejected``)."""

    chosen: TokenSequence
    rejected: TokenSequence

    @property
    def prompt_tokens(self) -> int:
        return self.chosen.start + 1

    @property
    def completion_tokens(self) -> tuple[int, int]:
        """``(|y+|, |y-|)``: the summed positions of each side."""
        return self.chosen.end - self.chosen.start, self.rejected.end - self.rejected.start


@dataclass(frozen=True)
class Skip:
    """Why a row cannot be scored (its scores are NaN and ``ches_skip`` holds ``reason``)."""

    reason: str


#: why a pair whose prompt has no tokens is skipped (the one wording of ``ches.score`` and ``ches.pairs``)
EMPTY_PROMPT = "empty prompt: no position predicts the first completion token (tokenizer adds no BOS)"


def prompt_fills_reason(prompt_tokens: int, max_length: int) -> str:
    """Why a pair whose prompt alone fills ``max_length`` is skipped (TRL drops it).

    >>> prompt_fills_reason(9, 8)
    'prompt fills max_length (9 prompt tokens, max_length=8)'
    """
    return f"prompt fills max_length ({prompt_tokens} prompt tokens, max_length={max_length})"


def no_tokens_reason(side: str | None = None) -> str:
    """Why a completion (``side``: ``"chosen"``/``"rejected"`` of a pair, None: a ``ches.pairs`` response) that
    tokenizes to nothing cannot be scored.

    >>> no_tokens_reason("chosen"), no_tokens_reason()
    ('chosen completion has no tokens', 'completion has no tokens')
    """
    return f"{side} completion has no tokens" if side else "completion has no tokens"


def too_long_reason(tokens: int, context: int) -> str:
    """Why a sequence longer than the model's context (``max_position_embeddings``) cannot be scored.

    >>> too_long_reason(5000, 4096)
    "sequence of 5000 tokens exceeds the model's context (4096); pass max_length"
    """
    return f"sequence of {tokens} tokens exceeds the model's context ({context}); pass max_length"


def to_sequences(tokenized: TokenizedPair, max_length: int | None = None) -> SequencePair | Skip:
    """The two sequences DPO trains on, truncated like TRL's collator; or why none can be scored.

    >>> chosen, rejected = to_sequences(TokenizedPair([1, 5], [7, 8, 2], [9, 2]), max_length=4)
    >>> chosen
    TokenSequence(input_ids=[1, 5, 7, 8], start=1, end=3, shared=2)
    >>> to_sequences(TokenizedPair([1, 5, 6], [7, 2], [9, 2]), max_length=3)
    Skip(reason='prompt fills max_length (3 prompt tokens, max_length=3)')
    """
    prompt_length = len(tokenized.prompt_ids)
    if prompt_length == 0:
        return Skip(EMPTY_PROMPT)
    if max_length is not None and prompt_length >= max_length:
        return Skip(prompt_fills_reason(prompt_length, max_length))
    cut = []
    for side, completion in (("chosen", tokenized.chosen_ids), ("rejected", tokenized.rejected_ids)):
        if not completion:
            return Skip(no_tokens_reason(side))
        cut.append((tokenized.prompt_ids + completion)[:max_length])
    shared = min(len(input_ids) for input_ids in cut) - prompt_length  # LD-DPO: the shorter completion's length
    return SequencePair(*(TokenSequence(input_ids=input_ids, start=prompt_length - 1, end=len(input_ids) - 1,
                                        shared=shared) for input_ids in cut))


def token_digest(prompt_ids: Sequence[int], chosen_ids: Sequence[int], rejected_ids: Sequence[int],
                 max_length: int | None = None) -> str:
    """The identity of the two sequences DPO trains on for a pair: a 128-bit BLAKE2b digest (hex) of the
    prompt ids and each completion's ids after TRL's ``keep_start`` truncation at ``max_length``, and
    where the completions begin. Two rows have the same digest exactly when TRL would feed the model the
    same tokens, with the same positions summed into their log-probabilities; so a digest stored beside a
    row's scores or log-probs tells, later, whether they still belong to the tokens a trainer or an audit
    makes of that row (``ches_token_digest``, :mod:`ches.trl`, :mod:`ches.evaluate.auditing`).

    >>> token_digest([1, 5], [7, 8, 2], [9, 2]) == token_digest([1, 5], [7, 8, 2], [9, 2], max_length=5)
    True
    >>> token_digest([1, 5], [7, 8, 2], [9, 2]) == token_digest([1, 5], [7, 8, 2], [9, 2], max_length=4)
    False
    >>> token_digest([1], [5, 7], [9]) == token_digest([1, 5], [7], [9])  # where the prompt ends matters
    False
    """
    room = None if max_length is None else max(0, max_length - len(prompt_ids))
    chosen, rejected = list(chosen_ids)[:room], list(rejected_ids)[:room]
    digest = hashlib.blake2b(digest_size=16)
    for values in ((len(prompt_ids), len(chosen), len(rejected)), prompt_ids, chosen, rejected):
        digest.update(_int64_bytes(values))
    return digest.hexdigest()


def _int64_bytes(values: Sequence[int]) -> bytes:
    """``values`` as little-endian 64-bit integers (``array`` is 3x faster than numpy for short lists)."""
    import array
    import sys

    packed = array.array("q", values)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def sequence_digest(pair: SequencePair) -> str:
    """:func:`token_digest` of a pair's two planned sequences (already cut to ``max_length``).

    >>> chosen, rejected = TokenSequence([1, 5, 7, 8], 1, 3), TokenSequence([1, 5, 9, 2], 1, 3)
    >>> sequence_digest(SequencePair(chosen, rejected)) == token_digest([1, 5], [7, 8, 2], [9, 2], max_length=4)
    True
    """
    prompt = pair.prompt_tokens
    return token_digest(pair.chosen.input_ids[:prompt], pair.chosen.input_ids[prompt:], pair.rejected.input_ids[prompt:])


def check_ids(rows: Sequence[int], sequences: Sequence[Sequence[TokenSequence]], tokenizer,
              embedding_rows: int | None, split: str | None = None) -> None:
    """Refuse the first row whose sequences would feed the model an id it has no embedding for (ids
    ``>= embedding_rows``): a token of the tokenizer's that the model was never given. ``sequences[i]``
    are what row ``rows[i]`` runs (none for a skipped row); only their largest id is looked at.

    >>> check_ids([7], [[TokenSequence([1, 5, 9], 0, 2)]], None, embedding_rows=10)
    >>> check_ids([7], [[TokenSequence([1, 5, 12], 0, 2)]], None, embedding_rows=10)
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: row 7: token id 12 ('?') has no embedding in the model (ids 0..9): ...

    Raises:
        ChesError: one line naming the row, the id and its token.
    """
    if embedding_rows is None:
        return
    for row, runs in zip(rows, sequences):
        largest = max((max(sequence.input_ids) for sequence in runs if len(sequence.input_ids)), default=-1)
        if largest >= embedding_rows:
            where = f"row {int(row)}" + (f" of split {split!r}" if split is not None else "")
            raise ChesError(
                f"{where}: token id {int(largest)} ({token_text(tokenizer, largest)!r}) has no embedding in the model "
                f"(ids 0..{embedding_rows - 1}): the tokenizer has tokens the model was not given (added without "
                "model.resize_token_embeddings(len(tokenizer))); remove that token from the row, or pass the model's "
                "own tokenizer.")


def token_text(tokenizer, token_id: int) -> str:
    """The token of ``token_id`` as the tokenizer writes it (``convert_ids_to_tokens``), or ``"?"``."""
    try:
        token = tokenizer.convert_ids_to_tokens(int(token_id))
    except Exception:  # no tokenizer, or a slow one without that id
        return "?"
    return "?" if token is None else str(token)


def _row_numbers(rows: Sequence[int] | None, first_row: int, count: int) -> Sequence[int]:
    return list(range(first_row, first_row + count)) if rows is None else [int(row) for row in rows]
