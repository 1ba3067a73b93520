"""``ches.pairs`` and ``ches pairs``: DPO pairs built from multi-response data, chosen by CHES.

Data path: candidate rows -> :mod:`ches.candidates` (``prompt, [responses], [ratings]``) -> TRL token
sequences (:mod:`ches.tokens`, each response tokenized as ``ches.score`` tokenizes a pair containing it)
-> one decoder pass with all responses of a prompt in one group, the prompt written once
(:func:`ches.engine.hidden_sums`, prefix-shared layout where the model's probe allows it) -> every pair's
scores in closed form (:func:`ches.pairing.pair_matrices`) -> a rule (:func:`ches.pairing.select`) ->
a TRL-ready dataset. Each response runs once: the cost grows with the number of responses, not pairs.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import datasets
import numpy as np
import torch

from .candidates import CANDIDATE_COLUMNS, Candidates, from_generic, from_ultrafeedback, schema, to_candidates
from .errors import ChesError
from .formats import Pair, pair_problem
from .inputs import Data, load_data
from .pairing import RULES, allowed_pairs, no_pair_reason, pair_matrices, select
from .scores import edit_distance
from .tokens import ScoredSequence, TokenizedPair, tokenize_pairs

logger = logging.getLogger("ches")

PAIR_LAYOUTS = ("prefix_shared", "packed", "padded")
PAIR_MEASURES = ("ln_ches", "ches")


@dataclass(frozen=True)
class PairOptions:
    """How pairs are chosen (see :mod:`ches.pairing` for the rules); checked on construction.

    >>> PairOptions(rule="max_margin").per_prompt
    1
    >>> PairOptions(rule="best")
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: rule='best' is not one of ['min_ches', 'all_min_ches', 'max_margin', 'random'].
    """

    rule: str = "min_ches"
    measure: str = "ln_ches"
    min_margin: float = 0.0
    per_prompt: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.rule not in RULES:
            raise ChesError(f"rule={self.rule!r} is not one of {list(RULES)}.")
        if self.measure not in PAIR_MEASURES:
            raise ChesError(f"measure={self.measure!r} is not one of {list(PAIR_MEASURES)}.")
        if isinstance(self.min_margin, bool) or not isinstance(self.min_margin, (int, float)) \
                or not np.isfinite(self.min_margin) or self.min_margin < 0:
            raise ChesError(f"min_margin={self.min_margin!r} must be a finite number >= 0.")
        if isinstance(self.per_prompt, bool) or not isinstance(self.per_prompt, int) or self.per_prompt < 1:
            raise ChesError(f"per_prompt={self.per_prompt!r} must be a positive integer.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ChesError(f"seed={self.seed!r} must be an integer >= 0.")


@dataclass(frozen=True)
class Skipped:
    """A prompt that gave no pair, and why."""

    source_row: int
    reason: str
    candidates: int


@dataclass
class PairsResult:
    """What :func:`pairs` returns.

    Attributes:
        dataset: one row per selected pair (TRL-ready ``prompt``/``chosen``/``rejected`` + scores).
        skipped: every prompt that gave no pair, with the reason; nothing is dropped silently.
        info: how the pairs were made (model, layout, options, counts); the CLI writes it to the sidecar.
    """

    dataset: datasets.Dataset
    skipped: list[Skipped]
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PromptPlan:
    """The sequences one prompt runs (see :mod:`ches.pairing` for the prompt boundaries).

    Attributes:
        row: source row.
        responses: the scored responses' indices in the row.
        sequences: per scored response, its sequence summed from the smallest boundary ``P0``.
        prefix: per scored response, ``p_i``.
        corrections: sequences whose sums are the ``C`` of :func:`ches.pairing.pair_matrices`.
        correction_of: per scored response, its index in ``corrections`` (or -1: ``C_i = 0``).
    """

    row: int
    responses: list[int]
    sequences: list[ScoredSequence]
    prefix: list[int]
    corrections: list[ScoredSequence]
    correction_of: list[int]


def pairs(
    data: Data,
    model,
    tokenizer=None,
    *,
    rule: str = "min_ches",
    measure: str = "ln_ches",
    min_margin: float = 0.0,
    per_prompt: int = 1,
    seed: int = 0,
    columns: Mapping[str, str] | None = None,
    rating_field: str = "overall_score",
    split: str | None = None,
    max_length: int | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    batch_tokens: int | None = None,
    layout: str | None = None,
    trust_remote_code: bool = False,
) -> PairsResult:
    """Build DPO pairs from several rated responses per prompt, choosing the pair by CHES.

    Every (prompt, response) sequence runs through the model once (the prompt once per prompt where
    the layout allows); every candidate pair's ``ches``/``ln_ches`` then follows in closed form, equal
    to ``ches.score`` on that pair. The rule picks the pair(s) (:mod:`ches.pairing`): ``min_ches``
    (default) pairs the top-rated response with the allowed one of lowest ``measure``.

    Args:
        data: rows with a prompt, a list of responses and one rating per response, in any form
            ``ches.score`` reads (list of dicts, ``Dataset``, file, Hub id): the generic schema
            (``prompt``, ``responses``, ``ratings``; rename with ``columns``), or raw UltraFeedback
            (``instruction``, ``completions``). Responses are strings, or message lists with a
            message-list prompt (chat template applied as in ``ches.score``).
        model: local folder, Hub id, or loaded causal LM; ``tokenizer`` defaults to the model's.
        rule: ``"min_ches"``, ``"all_min_ches"``, ``"max_margin"`` (best vs worst) or ``"random"``
            (top-rated vs a random lower one, seeded).
        measure: ``"ln_ches"`` or ``"ches"``: what ``min_ches``/``all_min_ches`` minimize.
        min_margin: allowed pairs differ in rating by at least this (and always strictly).
        per_prompt: keep up to this many pairs per prompt (the first ones in the rule's order).
        seed: seeds the ``random`` rule (per row: ``(seed, source row)``).
        columns: your column names for ``prompt``, ``responses``, ``ratings``.
        rating_field: the UltraFeedback completion field used as the rating.
        split, max_length, dtype, device, batch_tokens, trust_remote_code: as for ``ches.score``.
        layout: ``"prefix_shared"`` (default: each prompt written once, all its responses after it),
            ``"packed"`` or ``"padded"``; a layout the model's probe refuses falls back (logged).

    Returns:
        :class:`PairsResult`: ``.dataset`` has ``prompt``, ``chosen``, ``rejected`` (the input's format),
        ``chosen_rating``, ``rejected_rating``, the ``ches.score`` columns (``ches``, ``ln_ches``,
        ``edit_distance``, ``last_hidden_ip``, token counts, ``ches_skip``), ``candidates`` (responses
        in the row), ``chosen_index``, ``rejected_index`` and ``source_row``; ``.skipped`` lists the
        prompts with no pair and why; ``.info`` how it was made.

    Raises:
        ChesError: bad rows, columns or options, before the model is loaded.

    >>> built = pairs([{"prompt": "\\n\\nHuman: Is the sky blue?\\n\\nAssistant:",
    ...                 "responses": [" Yes, it is.", " No.", " Yes."], "ratings": [2, 0, 1]},
    ...                {"prompt": "\\n\\nHuman: Hi\\n\\nAssistant:", "responses": [" Hello!"], "ratings": [1]}],
    ...                "examples/tiny-hh-model")
    >>> built.dataset.num_rows, built.dataset[0]["chosen"], built.skipped[0].reason
    (1, ' Yes, it is.', 'fewer than two responses')
    """
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    options = PairOptions(rule=rule, measure=measure, min_margin=min_margin, per_prompt=per_prompt, seed=seed)
    if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
        raise ChesError(f"max_length={max_length!r} must be an integer >= 2 (or None for no truncation).")
    if layout is not None and layout not in PAIR_LAYOUTS:
        raise ChesError(f"layout={layout!r} is not one of {list(PAIR_LAYOUTS)} for ches.pairs.")
    dataset = load_data(data, split)
    if isinstance(dataset, datasets.DatasetDict):
        raise ChesError(f"the data has splits {sorted(dataset)}; pass split= (--split).")
    rows = candidate_rows(dataset, columns, rating_field)
    from .api import default_batch_tokens
    from .models import load_model

    loaded = load_model(model, tokenizer, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    plans, skipped = plan_prompts(rows, loaded, max_length)
    budget = batch_tokens or default_batch_tokens(loaded)
    with contextlib.ExitStack() as scope:
        choice = _layout(layout, loaded, budget, scope)
        sums, tokens_run = run_plans(plans, loaded, layout=choice.layout, batch_tokens=budget)
    built, more = select_pairs(rows, plans, sums, options, max_length)
    skipped = sorted(skipped + more, key=lambda item: item.source_row)
    info = {"model": loaded.name, "tokenizer": getattr(loaded.tokenizer, "name_or_path", ""),
            "dtype": str(loaded.dtype).removeprefix("torch."), "device": str(loaded.device),
            "max_length": max_length, "batch_tokens": budget, "layout": choice.layout, "layout_reason": choice.reason,
            "options": asdict(options), "schema": schema(dataset.column_names, columns), "columns": dict(columns or {}),
            "rating_field": rating_field, "rows": len(rows), "pairs": len(built["source_row"]),
            "prompts_paired": len(set(built["source_row"])), "skipped": dict(Counter(s.reason for s in skipped)),
            "responses_scored": sum(len(plan.responses) for plan in plans), "tokens_run": tokens_run,
            "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    logger.info("ches.pairs: %d pairs from %d of %d prompts (rule %s, %s); %d prompts skipped%s", info["pairs"],
                info["prompts_paired"], len(rows), options.rule, options.measure, len(skipped),
                "".join(f"; {count} {reason}" for reason, count in Counter(s.reason for s in skipped).most_common()))
    return PairsResult(datasets.Dataset.from_dict(built), skipped, info)


def candidate_rows(dataset: datasets.Dataset, columns: Mapping[str, str] | None,
                   rating_field: str = "overall_score") -> list[Candidates]:
    """The rows of ``dataset`` as validated :class:`~ches.candidates.Candidates` (schema detected, see there)."""
    if len(dataset) == 0:
        raise ChesError("the data has no rows.")
    if columns is not None:
        unknown = sorted(set(columns) - set(CANDIDATE_COLUMNS))
        if unknown:
            raise ChesError(f"columns= names {unknown}, but ches.pairs reads only {list(CANDIDATE_COLUMNS)}.")
    if schema(dataset.column_names, columns) == "ultrafeedback":
        return to_candidates([from_ultrafeedback(row, rating_field) for row in dataset],
                             {"prompt": "instruction", "responses": "completions",
                              "ratings": f"completions[*].{rating_field}"})
    where = {name: (columns or {}).get(name, name) for name in CANDIDATE_COLUMNS}
    missing = [name for name in where.values() if name not in dataset.column_names]
    if missing:
        raise ChesError(f"missing column(s) {missing}; the data has {dataset.column_names}. ches.pairs needs a prompt, "
                        "a list of responses and a list of ratings per row: map yours with columns={'prompt': ..., "
                        "'responses': ..., 'ratings': ...} (--columns), or pass raw UltraFeedback rows.")
    return to_candidates([from_generic(row, where) for row in dataset], where)


def plan_prompts(rows: list[Candidates], loaded, max_length: int | None) -> tuple[list[PromptPlan], list[Skipped]]:
    """Tokenize every (prompt, response) as ``ches.score`` would in a pair, and plan each prompt's sequences."""
    from .models import max_positions

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
        if isinstance(plan, str):
            skipped.append(Skipped(row, plan, len(candidates.responses)))
        else:
            plans.append(plan)
    return plans, skipped


def _tokenize(flat: list[Pair], owners: list[int], tokenizer) -> list[TokenizedPair]:
    """:func:`~ches.tokens.tokenize_pairs` of every (prompt, response); an error names the source row."""
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
          context: int | None) -> PromptPlan | str:
    """One prompt's :class:`PromptPlan`, or why it gives no pair."""
    if len(candidates.responses) < 2:
        return "fewer than two responses"
    problem = pair_problem(Pair(candidates.prompt, candidates.responses[0], candidates.responses[0]))
    if problem:
        return problem
    full = [(tokens.prompt_ids + tokens.chosen_ids)[:max_length] for tokens in tokenized]
    prefix = [len(tokens.prompt_ids) for tokens in tokenized]
    unusable = Counter()
    keep = []
    for index, ids in enumerate(full):
        if not tokenized[index].chosen_ids:
            unusable["no completion tokens"] += 1
        elif context is not None and len(ids) > context:
            unusable[f"longer than the model's context ({context}); pass max_length"] += 1
        else:
            keep.append(index)
    if len(keep) < 2:
        detail = "; ".join(f"{count} {reason}" for reason, count in unusable.items())
        return f"fewer than two scorable responses ({detail})"
    base = min(prefix[index] for index in keep)
    if base == 0:
        return "empty prompt: no position predicts the first completion token (tokenizer adds no BOS)"
    if max_length is not None and base >= max_length:
        return f"prompt fills max_length ({base} prompt tokens, max_length={max_length})"
    sequences = [ScoredSequence(full[index], base - 1, len(full[index]) - 1) for index in keep]
    boundaries = sorted({prefix[index] for index in keep if prefix[index] > base
                         and (max_length is None or prefix[index] < max_length)})
    corrections = []
    for boundary in boundaries:
        source = next(index for index in keep if prefix[index] == boundary)
        corrections.append(ScoredSequence(tokenized[source].prompt_ids[:boundary], base - 1, boundary - 1))
    correction_of = [boundaries.index(prefix[index]) if prefix[index] in boundaries else -1 for index in keep]
    return PromptPlan(row, keep, sequences, [prefix[index] for index in keep], corrections, correction_of)


def _layout(requested: str | None, loaded, batch_tokens: int, scope: contextlib.ExitStack):
    """The layout to run (``prefix_shared`` unless asked otherwise), probed on the model (:mod:`ches.layouts`)."""
    from .layouts import LayoutChoice, resolve_layout

    choice = resolve_layout(requested or "prefix_shared", loaded, [], batch_tokens, scope)
    how = choice.reason.split(";")[0]
    return LayoutChoice(choice.layout, f"{how}; ches.pairs runs each prompt's responses as one group")


def run_plans(plans: list[PromptPlan], loaded, *, layout: str, batch_tokens: int):
    """Hidden sums of every planned sequence (responses then corrections, prompt by prompt), and the
    number of token slots that reached the model."""
    from .attention import VARLEN
    from .batches import group_length
    from .engine import hidden_sums
    from .models import attention_kernel

    sequences, groups = [], []
    for plan in plans:
        members = plan.sequences + plan.corrections
        groups.append(list(range(len(sequences), len(sequences) + len(members))))
        sequences += members
    if not sequences:
        return None, 0
    shared = layout == "prefix_shared"
    varlen = attention_kernel(loaded.model) == VARLEN
    pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    result = hidden_sums(loaded.body, sequences, hidden_size=loaded.hidden_size, batch_tokens=batch_tokens,
                         device=loaded.device, pad_id=pad_id, pad_multiple=64 if loaded.device.type == "cuda" else 1,
                         packing=layout in ("packed", "prefix_shared"), one_row=varlen,
                         groups=groups if shared else None)
    tokens = sum(group_length([sequences[i] for i in group]) for group in groups) if shared \
        else sum(len(sequence.input_ids) for sequence in sequences)
    return result, tokens


def select_pairs(rows: list[Candidates], plans: list[PromptPlan], sums, options: PairOptions,
                 max_length: int | None) -> tuple[dict[str, list], list[Skipped]]:
    """Score every pair of each planned prompt, apply the rule, and return the output columns and the
    prompts with no allowed pair."""
    out: dict[str, list] = {name: [] for name in OUTPUT_COLUMNS}
    skipped, at = [], 0
    for plan in plans:
        count = len(plan.sequences)
        block = slice(at, at + count)
        fixes = sums.sums[at + count : at + count + len(plan.corrections)]
        at += count + len(plan.corrections)
        corrections = torch.zeros(count, sums.sums.shape[1])
        for position, index in enumerate(plan.correction_of):
            if index >= 0:
                corrections[position] = fixes[index]
        lengths = torch.tensor([s.end - s.start for s in plan.sequences])
        matrices = pair_matrices(sums.sums[block], lengths, torch.tensor(plan.prefix), corrections)
        measure = getattr(matrices, options.measure).numpy().copy()
        if max_length is not None:
            measure[matrices.prompt_tokens.numpy() >= max_length] = np.nan  # ches.score skips these pairs
        candidates = rows[plan.row]
        responses = [candidates.responses[index] for index in plan.responses]
        ratings = np.array([candidates.ratings[index] for index in plan.responses])
        same = np.array([[a == b for b in responses] for a in responses])
        allowed = allowed_pairs(ratings, measure, min_margin=options.min_margin, same=same)
        rng = np.random.default_rng([options.seed, plan.row])
        picked = select(options.rule, measure, ratings, allowed, per_prompt=options.per_prompt, rng=rng)
        if not picked:
            skipped.append(Skipped(plan.row, "no allowed pair: " + no_pair_reason(
                ratings, measure, same, min_margin=options.min_margin), len(candidates.responses)))
        last = sums.last[block]
        for i, j in picked:
            boundary = int(matrices.prompt_tokens[i, j])
            row = {"prompt": candidates.prompt, "chosen": responses[i], "rejected": responses[j],
                   "chosen_rating": float(ratings[i]), "rejected_rating": float(ratings[j]),
                   "ches": float(matrices.ches[i, j]), "ln_ches": float(matrices.ln_ches[i, j]),
                   "edit_distance": edit_distance(plan.sequences[i].input_ids[boundary:],
                                                  plan.sequences[j].input_ids[boundary:]),
                   "last_hidden_ip": float(last[i].double() @ last[j].double()),
                   "prompt_tokens": boundary, "chosen_tokens": int(matrices.chosen_tokens[i, j]),
                   "rejected_tokens": int(matrices.rejected_tokens[i, j]), "ches_skip": None,
                   "candidates": len(candidates.responses), "chosen_index": plan.responses[i],
                   "rejected_index": plan.responses[j], "source_row": plan.row}
            for name, value in row.items():
                out[name].append(value)
    return out, skipped


OUTPUT_COLUMNS = ("prompt", "chosen", "rejected", "chosen_rating", "rejected_rating", "ches", "ln_ches",
                  "edit_distance", "last_hidden_ip", "prompt_tokens", "chosen_tokens", "rejected_tokens", "ches_skip",
                  "candidates", "chosen_index", "rejected_index", "source_row")
