"""``ches.pairs`` and ``ches pairs``: DPO pairs built from multi-response data, chosen by CHES.

Data path: candidate rows -> :mod:`ches.candidates` (``prompt, [responses], [ratings]``) -> TRL token
sequences (:mod:`ches.tokens`, each response tokenized as ``ches.score`` tokenizes a pair containing it)
-> one decoder pass with all responses of a prompt in one group, the prompt written once
(:func:`ches.runner.run_sequences`, prefix-shared layout where the model's probe allows it) -> every
pair's scores in closed form (:func:`ches.pairing.pair_matrices`) -> a rule (:func:`ches.pairing.select`)
-> a TRL-ready dataset. Each response runs once: the cost grows with the number of responses, not pairs.

The scoring options are :class:`~ches.options.ScoreOptions` (the subset
:data:`~ches.options.PAIR_SCORE_OPTIONS`); the pairing rule is :class:`~ches.options.PairOptions`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import datasets
import numpy as np
import torch

from .candidates import (CANDIDATE_COLUMNS, ULTRAFEEDBACK_COLUMNS, ULTRAFEEDBACK_RATING, Candidates, from_generic,
                         from_ultrafeedback, schema, to_candidates)
from .columns import DEFAULT_MEASURE
from .errors import ChesError
from .formats import Pair, pair_problem
from .inputs import Data, check_distinct_roles, load_data
from .layouts import LayoutChoice
from .models import max_positions
from .options import PAIR_SCORE_OPTIONS, PairOptions, ScoreOptions, pair_score_options, signature_with_options
from .pairing import allowed_pairs, no_pair_reason, pair_matrices, select
from .quiet import library_bars_off
from .runner import nonfinite_reason, progress_bar, run_sequences
from .runs import PairsInfo, now, prepared
from .scores import edit_distance
from .threads import torch_threads
from .tokens import Skip, TokenizedPair, TokenSequence, tokenize_pairs

logger = logging.getLogger("ches")


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


@dataclass
class PairsResult:
    """What :func:`pairs` returns.

    Attributes:
        dataset: one row per selected pair (TRL-ready ``prompt``/``chosen``/``rejected`` + scores).
        skipped: every prompt that gave no pair, with the reason; nothing is dropped silently.
        info: how the pairs were made (:class:`~ches.runs.PairsInfo`: model, layout, options, counts); the CLI
            writes it to the sidecar.
        unscored: every response that could not be scored, with the reason (also in each pair's
            ``unscored_responses`` column).
    """

    dataset: datasets.Dataset
    skipped: list[Skipped]
    info: PairsInfo
    unscored: list[Unscored] = field(default_factory=list)


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
        unscored: the row's responses that cannot run, by index, with the reason.
    """

    row: int
    responses: list[int]
    sequences: list[TokenSequence]
    prefix: list[int]
    corrections: list[TokenSequence]
    correction_of: list[int]
    unscored: dict[int, str] = field(default_factory=dict)


def pairs(
    data: Data,
    model,
    tokenizer=None,
    *,
    rule: str = "min_ches",
    measure: str = DEFAULT_MEASURE,
    min_margin: float = 0.0,
    per_prompt: int = 1,
    seed: int = 0,
    columns: Mapping[str, str] | None = None,
    rating_field: str | None = None,
    options: ScoreOptions | None = None,
    **kwargs: Any,
) -> PairsResult:
    """Build DPO pairs from several rated responses per prompt, choosing the pair by CHES.

    Every (prompt, response) sequence runs through the model once (the prompt once per prompt where
    the layout allows); every candidate pair's ``ches``/``ln_ches`` then follows in closed form, equal
    to ``ches.score`` on that pair. The rule picks the pair(s) (:mod:`ches.pairing`): ``min_ches``
    (default) pairs the top-rated response with the allowed one of lowest ``measure``.

    A response that cannot be scored (no completion tokens, longer than the model's context without
    ``max_length``, hidden states that are not finite) is never a candidate and never dropped silently:
    it is listed in ``.unscored`` and in each of its prompt's pairs' ``unscored_responses``. When it is
    the one the rule needs (every top-rated response; for ``max_margin`` also every lowest-rated one),
    the prompt is skipped with that reason instead, since the pair would not be what the rule states.

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
        columns: your column names for ``prompt``, ``responses``, ``ratings`` (generic rows only).
        rating_field: the UltraFeedback completion field used as the rating (default ``overall_score``;
            raw UltraFeedback rows only).
        options, **kwargs: a :class:`~ches.options.ScoreOptions` and/or its fields as keywords, as for
            ``ches.score``: ``split``, ``max_length``, ``dtype``, ``device``, ``batch_tokens``,
            ``num_threads``, ``progress``, ``model_kwargs`` (and ``from_pretrained`` keywords such as
            ``trust_remote_code=``), and ``layout``: ``"prefix_shared"`` (default: each prompt written
            once, all its responses after it), ``"packed"`` or ``"padded"``; a layout the model's probe
            refuses falls back (logged). The other options of ``ches.score`` are refused.

    Returns:
        :class:`PairsResult`: ``.dataset`` has ``prompt``, ``chosen``, ``rejected`` (the input's format),
        ``chosen_rating``, ``rejected_rating``, the ``ches.score`` columns (``ches``, ``ln_ches``,
        ``edit_distance``, ``last_hidden_ip``, token counts, ``ches_skip``), ``candidates`` (responses
        in the row), ``chosen_index``, ``rejected_index``, ``source_row`` and ``unscored_responses``
        (indices of the row's responses that could not be scored); ``.skipped`` lists the prompts with no
        pair and why, ``.unscored`` the responses that could not be scored and why; ``.info`` how it was made.

    Raises:
        ChesError: bad rows, columns or options, before the model is loaded.

    >>> built = pairs([{"prompt": "\\n\\nHuman: Is the sky blue?\\n\\nAssistant:",
    ...                 "responses": [" Yes, it is.", " No.", " Yes."], "ratings": [2, 0, 1]},
    ...                {"prompt": "\\n\\nHuman: Hi\\n\\nAssistant:", "responses": [" Hello!"], "ratings": [1]}],
    ...                "examples/tiny-hh-model", progress=False)
    >>> built.dataset.num_rows, built.dataset[0]["chosen"], built.skipped[0].reason
    (1, ' Yes, it is.', 'fewer than two responses')
    """
    rules = PairOptions(rule=rule, measure=measure, min_margin=min_margin, per_prompt=per_prompt, seed=seed)
    scoring = pair_score_options(options, **kwargs)
    with torch_threads(scoring.num_threads), library_bars_off():  # one bar, ches' own, or none
        return _pairs(data, model, tokenizer, rules, scoring, columns, rating_field)


def _pairs(data: Data, model, tokenizer, rules: PairOptions, scoring: ScoreOptions,
           columns: Mapping[str, str] | None, rating_field: str) -> PairsResult:
    started = now()
    dataset = load_data(data, scoring.split)
    if isinstance(dataset, datasets.DatasetDict):
        raise ChesError(f"the data has splits {sorted(dataset)}; pass split= (--split).")
    rows = candidate_rows(dataset, columns, rating_field)
    with prepared(model, tokenizer, scoring, default_layout="prefix_shared", started=started,
                  estimate="ches.pairs runs each prompt's responses as one group") as setup:
        loaded = setup.loaded
        plans, skipped = plan_prompts(rows, loaded, scoring.max_length)
        sums, tokens_run = run_plans(plans, loaded, layout=setup.layout, batch_tokens=setup.batch_tokens,
                                     progress=scoring.progress)
    built, more, unscored = select_pairs(rows, plans, sums, rules, scoring.max_length, dtype=loaded.dtype)
    skipped = sorted(skipped + more, key=lambda item: item.source_row)
    reasons = Counter(item.reason for item in skipped)
    given = scoring.as_dict()
    info = PairsInfo(**setup.record(), options={**{name: given[name] for name in PAIR_SCORE_OPTIONS}, **asdict(rules)},
                     schema=schema(dataset.column_names, columns), columns=dict(columns or {}),
                     rating_field=rating_field, rows=len(rows), pairs=len(built["source_row"]),
                     prompts_paired=len(set(built["source_row"])), skipped=dict(reasons),
                     responses_unscored=dict(Counter(item.reason for item in unscored)),
                     responses_scored=sum(len(plan.responses) for plan in plans), tokens_run=tokens_run,
                     finished=now())
    logger.info("ches.pairs: %d pairs from %d of %d prompts (rule %s, %s); %d prompts skipped%s; %d responses could "
                "not be scored%s", info.pairs, info.prompts_paired, len(rows), rules.rule, rules.measure,
                len(skipped), "".join(f"; {count} {reason}" for reason, count in reasons.most_common()), len(unscored),
                "".join(f"; {count} {reason}" for reason, count in Counter(item.reason for item in unscored).most_common()))
    return PairsResult(output_dataset(built), skipped, info, unscored)


pairs.__signature__ = signature_with_options(pairs, PAIR_SCORE_OPTIONS)


def candidate_rows(dataset: datasets.Dataset, columns: Mapping[str, str] | None,
                   rating_field: str | None = None) -> list[Candidates]:
    """The rows of ``dataset`` as validated :class:`~ches.candidates.Candidates` (schema detected, see there)."""
    if len(dataset) == 0:
        raise ChesError("the data has no rows.")
    ultrafeedback = all(name in dataset.column_names for name in ULTRAFEEDBACK_COLUMNS) \
        and "responses" not in dataset.column_names
    if columns is not None:
        unknown = sorted(set(columns) - set(CANDIDATE_COLUMNS))
        if unknown:
            raise ChesError(f"columns= names {unknown}, but ches.pairs reads only {list(CANDIDATE_COLUMNS)}.")
        if ultrafeedback:
            raise ChesError(f"these are raw UltraFeedback rows ({', '.join(ULTRAFEEDBACK_COLUMNS)}), which ches.pairs "
                            "reads by their own names; columns= is for generic rows: drop columns= (--columns), and "
                            "pick the rating with rating_field= (--rating-field).")
    if schema(dataset.column_names, columns) == "ultrafeedback":
        rating_field = rating_field or ULTRAFEEDBACK_RATING
        return to_candidates([from_ultrafeedback(row, rating_field) for row in dataset],
                             {"prompt": "instruction", "responses": "completions",
                              "ratings": f"completions[*].{rating_field}"})
    if rating_field is not None:
        raise ChesError(f"rating_field={rating_field!r} picks the rating field of raw UltraFeedback rows, but these rows "
                        f"are generic ({', '.join(dataset.column_names[:6])}); drop it, and map your ratings column "
                        "with columns={'ratings': ...} (--columns ratings=...).")
    where = {name: (columns or {}).get(name, name) for name in CANDIDATE_COLUMNS}
    check_distinct_roles({name: column for name, column in where.items() if column in dataset.column_names})
    missing = [name for name in where.values() if name not in dataset.column_names]
    if missing:
        raise ChesError(f"missing column(s) {missing}; the data has {dataset.column_names}. ches.pairs needs a prompt, "
                        "a list of responses and a list of ratings per row: map yours with columns={'prompt': ..., "
                        "'responses': ..., 'ratings': ...} (--columns), or pass raw UltraFeedback rows.")
    return to_candidates([from_generic(row, where) for row in dataset], where)


def plan_prompts(rows: list[Candidates], loaded, max_length: int | None) -> tuple[list[PromptPlan], list[Skipped]]:
    """Tokenize every (prompt, response) as ``ches.score`` would in a pair, and plan each prompt's sequences."""
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
            unscored[index] = "no completion tokens"
        elif context is not None and len(ids) > context:
            unscored[index] = f"{len(ids)} tokens, longer than the model's context ({context}); pass max_length"
        else:
            keep.append(index)
    if len(keep) < 2:
        detail = "; ".join(f"response {index}: {reason}" for index, reason in unscored.items())
        return Skip(f"fewer than two scorable responses ({detail})")
    base = min(prefix[index] for index in keep)
    if base == 0:
        return Skip("empty prompt: no position predicts the first completion token (tokenizer adds no BOS)")
    if max_length is not None and base >= max_length:
        return Skip(f"prompt fills max_length ({base} prompt tokens, max_length={max_length})")
    sequences = [TokenSequence(full[index], base - 1, len(full[index]) - 1) for index in keep]
    boundaries = sorted({prefix[index] for index in keep if prefix[index] > base
                         and (max_length is None or prefix[index] < max_length)})
    corrections = []
    for boundary in boundaries:
        source = next(index for index in keep if prefix[index] == boundary)
        corrections.append(TokenSequence(tokenized[source].prompt_ids[:boundary], base - 1, boundary - 1))
    correction_of = [boundaries.index(prefix[index]) if prefix[index] in boundaries else -1 for index in keep]
    return PromptPlan(row, keep, sequences, [prefix[index] for index in keep], corrections, correction_of, unscored)


def run_plans(plans: list[PromptPlan], loaded, *, layout: LayoutChoice, batch_tokens: int, progress: bool = False):
    """Hidden sums of every planned sequence (responses then corrections, prompt by prompt), and the
    number of token slots that reached the model."""
    sequences, groups = [], []
    for plan in plans:
        members = plan.sequences + plan.corrections
        groups.append(list(range(len(sequences), len(sequences) + len(members))))
        sequences += members
    if not sequences:
        return None, 0
    bar = progress_bar(len(sequences), progress, unit="sequence")
    result = run_sequences(sequences, groups, loaded, layout=layout, batch_tokens=batch_tokens,
                           on_done=None if bar is None else (lambda members: bar.update(len(members))))
    if bar is not None:
        bar.close()
    return result, layout.strategy.token_slots(sequences, groups)


def select_pairs(rows: list[Candidates], plans: list[PromptPlan], sums, options: PairOptions,
                 max_length: int | None, dtype=None) -> tuple[dict[str, list], list[Skipped], list[Unscored]]:
    """Score every pair of each planned prompt, apply the rule, and return the output columns, the
    prompts with no pair and the responses that could not be scored (``dtype``: the model's, for the
    reason given for hidden states that are not finite)."""
    out: dict[str, list] = {name: [] for name in OUTPUT_COLUMNS}
    skipped, unscored_all, at = [], [], 0
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
        last = sums.last[block]
        finite = (torch.isfinite(sums.sums[block]).all(-1) & torch.isfinite(last).all(-1)).numpy()
        measure[~finite, :] = measure[:, ~finite] = np.nan  # never a candidate: listed as unscored below
        candidates = rows[plan.row]
        unscored = {**plan.unscored, **{plan.responses[k]: nonfinite_reason(dtype) for k in np.flatnonzero(~finite)}}
        unscored_all += [Unscored(plan.row, index, reason) for index, reason in sorted(unscored.items())]
        needed = rule_needs_unscored(options.rule, candidates.ratings, unscored)
        if needed:
            skipped.append(Skipped(plan.row, needed, len(candidates.responses)))
            continue
        responses = [candidates.responses[index] for index in plan.responses]
        ratings = np.array([candidates.ratings[index] for index in plan.responses])
        same = np.array([[a == b for b in responses] for a in responses])
        allowed = allowed_pairs(ratings, measure, min_margin=options.min_margin, same=same)
        rng = np.random.default_rng([options.seed, plan.row])
        picked = select(options.rule, measure, ratings, allowed, per_prompt=options.per_prompt, rng=rng)
        if not picked:
            skipped.append(Skipped(plan.row, "no allowed pair: " + no_pair_reason(
                ratings, measure, same, min_margin=options.min_margin), len(candidates.responses)))
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
                   "rejected_index": plan.responses[j], "source_row": plan.row,
                   "unscored_responses": sorted(unscored)}
            for name, value in row.items():
                out[name].append(value)
    return out, skipped, unscored_all


def rule_needs_unscored(rule: str, ratings: list[float], unscored: dict[int, str]) -> str | None:
    """Why a prompt is skipped because the response its rule must pick could not be scored, or None.

    Every rule but ``all_min_ches`` takes a top-rated response as chosen (any of several tied ones);
    ``max_margin`` also takes a lowest-rated one as rejected. Without one of them scored, the pair would
    not be the one the rule states, so there is none.

    >>> rule_needs_unscored("min_ches", [3.0, 1.0, 2.0], {0: "no completion tokens"})
    'the top-rated response 0 (rating 3) could not be scored: no completion tokens'
    >>> rule_needs_unscored("all_min_ches", [3.0, 1.0, 2.0], {0: "no completion tokens"}) is None
    True
    """
    ratings = np.asarray(ratings, dtype=np.float64)
    needs = [] if rule == "all_min_ches" else [("top-rated", ratings.max())]
    if rule == "max_margin":
        needs.append(("lowest-rated", ratings.min()))
    for what, rating in needs:
        holders = np.flatnonzero(ratings == rating).tolist()
        if all(index in unscored for index in holders):
            named = ", ".join(f"{index} ({unscored[index]})" for index in holders[1:])
            also = f"; so could none of the tied {named}" if named else ""
            return (f"the {what} response {holders[0]} (rating {rating:g}) could not be scored: "
                    f"{unscored[holders[0]]}{also}")
    return None


OUTPUT_COLUMNS = ("prompt", "chosen", "rejected", "chosen_rating", "rejected_rating", "ches", "ln_ches",
                  "edit_distance", "last_hidden_ip", "prompt_tokens", "chosen_tokens", "rejected_tokens", "ches_skip",
                  "candidates", "chosen_index", "rejected_index", "source_row", "unscored_responses")


def output_dataset(columns: dict[str, list]) -> datasets.Dataset:
    """The pairs as a dataset; ``unscored_responses`` typed as lists of ints even when every list is empty."""
    dataset = datasets.Dataset.from_dict(columns)
    if len(dataset):
        dataset = dataset.cast_column("unscored_responses", datasets.List(datasets.Value("int64")))
    return dataset
