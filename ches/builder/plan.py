"""The plan of a ``ches.pairs`` run: which sequences each prompt runs, and what could not run.

Every (prompt, response) is tokenized as ``ches.score`` tokenizes a pair containing it; a prompt's
responses share its smallest prompt boundary, so one decoder pass sums them all (see
:mod:`ches.scores.pairing`). :class:`PairsInfo` is the record of a whole run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..data.formats import Pair, pair_problem
from ..data.integrity import empty_texts
from ..data.tokens import (
    EMPTY_PROMPT,
    Skip,
    TokenizedPair,
    TokenSequence,
    check_ids,
    no_tokens_reason,
    prompt_fills_reason,
    tokenize_pairs,
    too_long_reason,
)
from ..errors import ChesError
from ..model.models import max_positions
from ..run.runs import ModelRun
from .candidates import Candidates


@dataclass(frozen=True)
class Skipped:
    """A prompt that gave no pair, and why."""

    source_row: int
    reason: str
    candidates: int


@dataclass(frozen=True)
class Unscored:
    """A response that could not be scored (so was no candidate for any pair), and why."""

    source_row: int
    response: int
    reason: str


@dataclass(kw_only=True)
class PairsInfo(ModelRun):
    """A ``ches.pairs`` run (:class:`ModelRun`; ``options`` holds the scoring options taken and the pairing
    rule) and what came out: the input's schema, column mapping and the columns carried into the pairs;
    rows, pairs, prompts paired, prompts skipped and responses unscored by reason, responses scored,
    token slots that reached the model, chunks reused from the cache; and every prompt skipped
    (``skipped_prompts``: :class:`Skipped`) and response unscored
    (``unscored_responses``: :class:`Unscored`), with the reason. Also readable as a
    mapping (``info["pairs"]``)."""

    schema: str
    columns: dict[str, str]
    rating_field: str | None
    rows: int
    pairs: int
    prompts_paired: int
    skipped: dict[str, int]
    responses_unscored: dict[str, int]
    responses_scored: int
    tokens_run: int
    carried_columns: list[str] = field(default_factory=list)
    chunks_reused: int = 0
    skipped_prompts: list[Skipped] = field(default_factory=list)
    unscored_responses: list[Unscored] = field(default_factory=list)

    def __getitem__(self, name: str):
        try:
            return getattr(self, name)
        except AttributeError:
            raise KeyError(name) from None


@dataclass(frozen=True)
class PromptPlan:
    """The sequences one prompt runs (see :mod:`ches.scores.pairing` for the prompt boundaries).

    Attributes:
        row: source row.
        responses: the scored responses' indices in the row.
        sequences: per scored response, its sequence summed from the smallest boundary ``P0``.
        prefix: per scored response, ``p_i``.
        corrections: sequences whose sums are the ``C`` of :func:`ches.scores.pairing.pair_matrices`.
        correction_of: per scored response, its index in ``corrections`` (or -1: ``C_i = 0``).
        unscored: the row's responses that cannot run, by index, with the reason.
        lengths: per scored response, its prompt + completion tokens before ``max_length`` truncation.
        empty: per (scored response, prompt boundary of a pair it can be in), whether its completion from that
            boundary has no text of its own (:func:`ches.data.integrity.empty_texts`; the boundary is a pair's, so
            the tokens of the prompt a merge takes into the completion count, as in ``ches.score``).
    """

    row: int
    responses: list[int]
    sequences: list[TokenSequence]
    prefix: list[int]
    corrections: list[TokenSequence]
    correction_of: list[int]
    unscored: dict[int, str] = field(default_factory=dict)
    lengths: list[int] = field(default_factory=list)
    empty: dict[tuple[int, int], bool] = field(default_factory=dict)


def plan_prompts(rows: list[Candidates], loaded, max_length: int | None) -> tuple[list[PromptPlan], list[Skipped]]:
    """Tokenize every (prompt, response) as ``ches.score`` would in a pair, and plan each prompt's sequences.

    Raises:
        ChesError: a row whose sequences hold an id the model has no embedding for
            (:func:`ches.data.tokens.check_ids`), before the model runs.
    """
    context = max_positions(loaded.model)
    owners, flat = [], []
    for row, candidates in enumerate(rows):
        for response in candidates.responses:
            owners.append(row)
            flat.append(Pair(candidates.prompt, response, response))
    tokenized = _tokenize(flat, owners, loaded.tokenizer)
    per_row: dict[int, list[TokenizedPair]] = {}
    for row, tokens in zip(owners, tokenized):
        per_row.setdefault(row, []).append(tokens)
    plans, skipped = [], []
    for row, candidates in enumerate(rows):
        plan = _plan(row, candidates, per_row.get(row, []), max_length, context)
        if isinstance(plan, Skip):
            skipped.append(Skipped(row, plan.reason, len(candidates.responses)))
        else:
            plans.append(plan)
    check_ids([plan.row for plan in plans], [plan.sequences for plan in plans], loaded.tokenizer, loaded.embedding_rows)
    return _with_empty(plans, per_row, loaded.tokenizer), skipped


def _with_empty(plans: list[PromptPlan], per_row: dict[int, list[TokenizedPair]], tokenizer) -> list[PromptPlan]:
    """``plans`` with :attr:`PromptPlan.empty` filled: each scored response's untruncated completion from each
    prompt boundary ``b <= p_i`` a pair of it can have (``min(p_i, p_j)``), decoded in one batch."""
    keys, completions = [], []
    for at, plan in enumerate(plans):
        for position, (index, own) in enumerate(zip(plan.responses, plan.prefix)):
            tokens = per_row[plan.row][index]
            for boundary in sorted({prefix for prefix in plan.prefix if prefix <= own}):
                keys.append((at, position, boundary))
                completions.append(tokens.prompt_ids[boundary:] + tokens.chosen_ids)
    empty: list[dict[tuple[int, int], bool]] = [{} for _ in plans]
    for (at, position, boundary), value in zip(keys, empty_texts(completions, tokenizer)):
        empty[at][position, boundary] = value
    return [replace(plan, empty=found) for plan, found in zip(plans, empty)]


def _tokenize(flat: list[Pair], owners: list[int], tokenizer) -> list[TokenizedPair]:
    """:func:`~ches.data.tokens.tokenize_pairs` of every (prompt, response); an error names the source row."""
    try:
        return tokenize_pairs(flat, tokenizer)
    except ChesError as error:
        position = next((at for at in range(len(flat)) if _fails(flat[at], tokenizer)), None)
        if position is None:
            raise
        raise ChesError(f"row {owners[position]}: {str(error).split(': ', 1)[-1]}") from None


def _fails(pair: Pair, tokenizer) -> bool:
    try:
        tokenize_pairs([pair], tokenizer)
    except ChesError:
        return True
    return False


def _plan(row: int, candidates: Candidates, tokenized: list[TokenizedPair], max_length: int | None,
          context: int | None) -> PromptPlan | Skip:
    """One prompt's :class:`PromptPlan`, or why it gives no pair. Token ids are used as sequences only
    (length, slices, ``+``), so they may be lists or compact arrays."""
    if len(candidates.responses) < 2:
        return Skip("fewer than two responses")
    problem = pair_problem(Pair(candidates.prompt, candidates.responses[0], candidates.responses[0]))
    if problem:
        return Skip(problem)
    full = [(tokens.prompt_ids + tokens.chosen_ids)[:max_length] for tokens in tokenized]
    prefix = [len(tokens.prompt_ids) for tokens in tokenized]
    unscored, keep = {}, []
    for index, ids in enumerate(full):
        if len(tokenized[index].chosen_ids) == 0:
            unscored[index] = no_tokens_reason()
        elif context is not None and len(ids) > context:
            unscored[index] = too_long_reason(len(ids), context)
        else:
            keep.append(index)
    if len(keep) < 2:
        detail = "; ".join(f"response {index}: {reason}" for index, reason in unscored.items())
        return Skip(f"fewer than two scorable responses ({detail})")
    base = min(prefix[index] for index in keep)
    if base == 0:
        return Skip(EMPTY_PROMPT)
    if max_length is not None and base >= max_length:
        return Skip(prompt_fills_reason(base, max_length))
    sequences = [TokenSequence(full[index], base - 1, len(full[index]) - 1) for index in keep]
    boundaries = sorted({prefix[index] for index in keep if prefix[index] > base
                         and (max_length is None or prefix[index] < max_length)})
    corrections = []
    for boundary in boundaries:
        source = next(index for index in keep if prefix[index] == boundary)
        corrections.append(TokenSequence(tokenized[source].prompt_ids[:boundary], base - 1, boundary - 1))
    correction_of = [boundaries.index(prefix[index]) if prefix[index] in boundaries else -1 for index in keep]
    lengths = [len(tokenized[index].prompt_ids) + len(tokenized[index].chosen_ids) for index in keep]
    return PromptPlan(row, keep, sequences, [prefix[index] for index in keep], corrections, correction_of, unscored,
                      lengths)
