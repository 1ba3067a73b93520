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

import difflib
import logging
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import datasets
import numpy as np
import torch

from .cache import model_fingerprint, open_cache
from .candidates import (CANDIDATE_COLUMNS, ULTRAFEEDBACK_COLUMNS, ULTRAFEEDBACK_RATING, Candidates, from_generic,
                         from_ultrafeedback, schema, to_candidates)
from .columns import (DEFAULT_MEASURE, DIGEST_COLUMN, LOGPS_COLUMNS, LOGPS_TYPES, SCORE_COLUMNS, SCORE_TYPES, column_feature,
                      with_reference)
from .integrity import FLAG_NAMES, FLAGS_COLUMN
from .errors import ChesError
from .export import check_apart_from_inputs
from .formats import Pair, pair_problem
from .inputs import Data, check_distinct_roles, load_data
from .logps import LMHead
from .models import max_positions, tokenizer_fingerprint
from .paths import model_paths
from .options import PAIR_LAYOUT_DEFAULT, PAIR_SCORE_OPTIONS, PairOptions, ScoreOptions, pair_score_options, signature_with_options
from .pair_passes import run_groups
from .pairing import allowed_pairs, no_pair_reason, pair_logps, pair_matrices, select
from .quiet import library_bars_off
from .runner import nonfinite_logps_reason, nonfinite_reason
from .runs import PairsInfo, now, prepared
from .scores import edit_distance
from .stats import counted
from .threads import torch_threads
from .tokens import Skip, TokenizedPair, TokenSequence, check_ids, token_digest, tokenize_pairs

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
        lengths: per scored response, its prompt + completion tokens before ``max_length`` truncation.
    """

    row: int
    responses: list[int]
    sequences: list[TokenSequence]
    prefix: list[int]
    corrections: list[TokenSequence]
    correction_of: list[int]
    unscored: dict[int, str] = field(default_factory=dict)
    lengths: list[int] = field(default_factory=list)


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
) -> datasets.Dataset:
    """Build DPO pairs from several rated responses per prompt, choosing the pair by CHES.

    Every (prompt, response) sequence runs through the model once (the prompt once per prompt where
    the layout allows); every candidate pair's ``ches``/``ln_ches`` then follows in closed form, equal
    to ``ches.score`` on that pair. The rule picks the pair(s) (:mod:`ches.pairing`): ``min_ches``
    (default) pairs the top-rated response with the allowed one of lowest ``measure``.

    A response that cannot be scored (no completion tokens, longer than the model's context without
    ``max_length``, hidden states that are not finite) is never a candidate and never dropped silently:
    it is listed in the record's ``unscored_responses`` (:func:`pairs_run`) and in each of its prompt's
    pairs' ``unscored_responses`` column. When it is the one the rule needs (every top-rated response;
    for ``max_margin`` also every lowest-rated one), the prompt is skipped with that reason instead,
    since the pair would not be what the rule states.

    Under ``torchrun`` / ``accelerate launch`` each process runs a share of the prompts and every
    process returns the full result, the same as a single process's.

    Args:
        data: rows with a prompt, a list of responses and one rating per response, in any form
            ``ches.score`` reads (list of dicts, ``Dataset``, file, Hub id): the generic schema
            (``prompt``, ``responses``, ``ratings``; rename with ``columns``), or raw UltraFeedback
            (``instruction``, ``completions``). Responses are strings, or message lists with a
            message-list prompt (chat template applied as in ``ches.score``). The rows' other columns
            (e.g. ``prompt_id``, ``source``) are copied into each of their pairs.
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
            ``num_threads``, ``cache_dir`` (finished prompts kept there: a second run, or one after a
            crash, runs only the rest), ``logps`` (``chosen_logps``/``rejected_logps``, as ``ches.score``
            adds them, for ``ches.trl`` and ``ches.audit``), ``progress``, ``model_kwargs`` (and
            ``from_pretrained`` keywords such as ``trust_remote_code=``), and ``layout``:
            ``"prefix_shared"`` (default: each prompt written once, all its responses after it),
            ``"packed"`` or ``"padded"``; a layout the model's probe refuses falls back (logged). The
            other options of ``ches.score`` are refused.

    Returns:
        One row per selected pair: ``prompt``, ``chosen``, ``rejected`` (the input's format),
        ``chosen_rating``, ``rejected_rating``, the ``ches.score`` columns (``ches``, ``ln_ches``,
        ``edit_distance``, ``last_hidden_ip``, token counts, ``ches_skip``, ``ches_flags``; with ``logps`` also
        ``chosen_logps``, ``rejected_logps``), ``candidates`` (responses in the row), ``chosen_index``,
        ``rejected_index``, ``source_row``, ``unscored_responses`` (indices of the row's responses that
        could not be scored), then the row's other columns. :func:`pairs_run` also returns the record
        of the run: the prompts with no pair and why, the responses that could not be scored and why.

    Raises:
        ChesError: bad rows, columns or options, a column of the rows that has an output column's name,
            before the model is loaded.

    >>> built = pairs([{"prompt": "\\n\\nHuman: Is the sky blue?\\n\\nAssistant:", "id": "sky",
    ...                 "responses": [" Yes, it is.", " No.", " Yes."], "ratings": [2, 0, 1]},
    ...                {"prompt": "\\n\\nHuman: Hi\\n\\nAssistant:", "id": "hi", "responses": [" Hello!"], "ratings": [1]}],
    ...                "examples/tiny-hh-model", progress=False)
    >>> built.num_rows, built[0]["chosen"], built[0]["id"]
    (1, ' Yes, it is.', 'sky')
    """
    return pairs_run(data, model, tokenizer, rule=rule, measure=measure, min_margin=min_margin, per_prompt=per_prompt,
                     seed=seed, columns=columns, rating_field=rating_field, options=options, **kwargs)[0]


def pairs_run(
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
) -> tuple[datasets.Dataset, PairsInfo]:
    """:func:`pairs`, also returning the record of the run (:class:`~ches.runs.PairsInfo`): the model,
    layout and options, the counts, every prompt that gave no pair (``skipped_prompts``: :class:`Skipped`)
    and every response that could not be scored (``unscored_responses``: :class:`Unscored`).

    >>> built, info = pairs_run([{"prompt": "\\n\\nHuman: Hi\\n\\nAssistant:", "responses": [" Hello!"], "ratings": [1]}],
    ...                         "examples/tiny-hh-model", progress=False)
    >>> built.num_rows, info.skipped_prompts[0].reason
    (0, 'fewer than two responses')
    """
    rules = PairOptions(rule=rule, measure=measure, min_margin=min_margin, per_prompt=per_prompt, seed=seed)
    scoring = pair_score_options(options, **kwargs)
    with torch_threads(scoring.num_threads), library_bars_off():  # one bar, ches' own, or none
        return _pairs_run(data, model, tokenizer, rules, scoring, columns, rating_field)


def _pairs_run(data: Data, model, tokenizer, rules: PairOptions, scoring: ScoreOptions,
               columns: Mapping[str, str] | None, rating_field: str) -> tuple[datasets.Dataset, PairsInfo]:
    started = now()
    dataset = load_data(data, scoring.split)
    if isinstance(dataset, datasets.DatasetDict):
        raise ChesError(f"the data has splits {sorted(dataset)}; pass split= (--split).")
    rows = candidate_rows(dataset, columns, rating_field)
    carried = carried_columns(dataset.column_names, columns, output_columns(scoring.logps))
    if scoring.cache_dir is not None:
        check_apart_from_inputs(scoring.cache_dir, (data if isinstance(data, (str, os.PathLike)) else None,
                                                    *model_paths(model, tokenizer)), may_hold_inputs=True)
    with prepared(model, tokenizer, scoring, default_layout="prefix_shared", started=started,
                  estimate=PAIR_LAYOUT_DEFAULT) as setup:
        loaded = setup.loaded
        plans, skipped = plan_prompts(rows, loaded, scoring.max_length)
        cache = open_cache(scoring.cache_dir, loaded, setup.layout.layout, work="pairs") if scoring.cache_dir else None
        ran = run_groups([plan.sequences + plan.corrections for plan in plans], loaded, layout=setup.layout,
                         batch_tokens=setup.batch_tokens, head=LMHead.of(loaded.model) if scoring.logps else None,
                         cache=cache, process=setup.process, progress=scoring.progress)
    built, more, unscored = select_pairs(rows, plans, ran.sums, rules, scoring.max_length, dtype=loaded.dtype)
    skipped = sorted(skipped + more, key=lambda item: item.source_row)
    given = scoring.as_dict()
    info = PairsInfo(**setup.record(), options={**{name: given[name] for name in PAIR_SCORE_OPTIONS}, **asdict(rules)},
                     schema=schema(dataset.column_names, columns), columns=dict(columns or {}),
                     rating_field=rating_field, carried_columns=carried, rows=len(rows), pairs=len(built["source_row"]),
                     prompts_paired=len(set(built["source_row"])),
                     skipped=dict(Counter(item.reason for item in skipped).most_common()),
                     responses_unscored=dict(Counter(item.reason for item in unscored).most_common()),
                     responses_scored=sum(len(plan.responses) for plan in plans), tokens_run=ran.tokens_run,
                     chunks_reused=ran.chunks_reused, skipped_prompts=skipped, unscored_responses=unscored)
    output = output_dataset(built, dataset.select(built["source_row"]).select_columns(carried))
    if scoring.logps:  # what a trainer taking these log-probs as its reference must match (ches.trl)
        info.model_fingerprint = model_fingerprint(loaded.model)
        info.tokenizer_fingerprint = tokenizer_fingerprint(loaded.tokenizer)
    info.finished = now()
    if setup.process.is_main:
        logger.info(describe_run(info))
    return (with_reference(output, info) if scoring.logps else output), info


pairs.__signature__ = signature_with_options(pairs, PAIR_SCORE_OPTIONS)
pairs_run.__signature__ = signature_with_options(pairs_run, PAIR_SCORE_OPTIONS)


def describe_run(info: PairsInfo, *, reasons: bool = True) -> str:
    """One line: pairs made, prompts skipped and responses not scored (each only when there are any, with
    their reasons when ``reasons``), chunks reused from the cache.

    >>> from ches.runs import PairsInfo
    >>> info = PairsInfo(model="m", model_revision=None, tokenizer="m", dtype="float32", device="cpu", attention=None,
    ...                  batch_tokens=1024, layout="padded", layout_reason="", processes=1, threads=1, threads_reason="",
    ...                  options={"rule": "min_ches", "measure": "ln_ches"}, schema="generic", columns={},
    ...                  rating_field=None, rows=3, pairs=2, prompts_paired=2, skipped={"fewer than two responses": 1},
    ...                  responses_unscored={}, responses_scored=6, tokens_run=40)
    >>> describe_run(info)
    'ches.pairs: 2 pairs from 2 of 3 prompts (rule min_ches, ln_ches); 1 prompt skipped (1 fewer than two responses)'
    """
    line = (f"ches.pairs: {counted(info.pairs, 'pair')} from {info.prompts_paired} of {counted(info.rows, 'prompt')} "
            f"(rule {info.options['rule']}, {info.options['measure']})")
    for counts, what in ((info.skipped, "skipped"), (info.responses_unscored, "could not be scored")):
        total = sum(counts.values())
        if total:
            noun = "prompt" if counts is info.skipped else "response"
            detail = "; ".join(f"{count} {reason}" for reason, count in counts.items())
            line += f"; {counted(total, noun)} {what}" + (f" ({detail})" if reasons else "")
    if info.chunks_reused:
        line += f"; {counted(info.chunks_reused, 'finished chunk')} reused from the cache"
    return line


def _check_rating_field(dataset: datasets.Dataset, rating_field: str) -> None:
    """Refuse a ``rating_field`` that no completion of raw UltraFeedback rows has, naming the fields they have
    (a misspelt name would otherwise leave every rating missing)."""
    fields: set[str] = set()
    for completions in dataset["completions"]:
        for completion in completions if isinstance(completions, list) else ():
            if isinstance(completion, dict):
                fields.update(completion)
    if fields and rating_field not in fields:
        close = difflib.get_close_matches(rating_field, sorted(fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ChesError(f"rating_field={rating_field!r} (--rating-field) is not a field of the completions{hint}; they "
                        f"have {', '.join(sorted(fields))}.")


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
        if rating_field is not None:  # a name given (the default's absence is reported row by row)
            _check_rating_field(dataset, rating_field)
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
    """Tokenize every (prompt, response) as ``ches.score`` would in a pair, and plan each prompt's sequences.

    Raises:
        ChesError: a row whose sequences hold an id the model has no embedding for
            (:func:`ches.tokens.check_ids`), before the model runs.
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
    lengths = [len(tokenized[index].prompt_ids) + len(tokenized[index].chosen_ids) for index in keep]
    return PromptPlan(row, keep, sequences, [prefix[index] for index in keep], corrections, correction_of, unscored,
                      lengths)


def select_pairs(rows: list[Candidates], plans: list[PromptPlan], sums, options: PairOptions,
                 max_length: int | None, dtype=None) -> tuple[dict[str, list], list[Skipped], list[Unscored]]:
    """Score every pair of each planned prompt, apply the rule, and return the output columns, the
    prompts with no pair and the responses that could not be scored (``dtype``: the model's, for the
    reason given for hidden states that are not finite)."""
    out: dict[str, list] = {name: [] for name in output_columns(sums.logps is not None)}
    skipped, unscored_all, at = [], [], 0
    for plan in plans:
        count = len(plan.sequences)
        block = slice(at, at + count)
        fixes = sums.sums[at + count : at + count + len(plan.corrections)]
        at += count + len(plan.corrections)
        corrections = torch.zeros(count, sums.sums.shape[1])
        logp_fixes = torch.zeros(count, dtype=torch.float64)
        for position, index in enumerate(plan.correction_of):
            if index >= 0:
                corrections[position] = fixes[index]
                if sums.logps is not None:
                    logp_fixes[position] = sums.logps[at - len(plan.corrections) + index]
        lengths = torch.tensor([s.end - s.start for s in plan.sequences])
        matrices = pair_matrices(sums.sums[block], lengths, torch.tensor(plan.prefix), corrections)
        logps = None if sums.logps is None else pair_logps(sums.logps[block], torch.tensor(plan.prefix), logp_fixes)
        measure = getattr(matrices, options.measure).numpy().copy()
        if max_length is not None:
            measure[matrices.prompt_tokens.numpy() >= max_length] = np.nan  # ches.score skips these pairs
        last = sums.last[block]
        hidden_finite = (torch.isfinite(sums.sums[block]).all(-1) & torch.isfinite(last).all(-1)).numpy()
        finite = hidden_finite & (torch.isfinite(sums.logps[block]).numpy() if logps is not None else True)
        measure[~finite, :] = measure[:, ~finite] = np.nan  # never a candidate: listed as unscored below
        candidates = rows[plan.row]
        unscored = {**plan.unscored, **{plan.responses[k]: nonfinite_reason(dtype) if not hidden_finite[k]
                                        else nonfinite_logps_reason(dtype) for k in np.flatnonzero(~finite)}}
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
                   FLAGS_COLUMN: response_pair_flags(plan, i, j, boundary, max_length, (responses[i], responses[j])),
                   DIGEST_COLUMN: token_digest(plan.sequences[i].input_ids[:boundary],
                                               plan.sequences[i].input_ids[boundary:],
                                               plan.sequences[j].input_ids[boundary:]),
                   **({} if logps is None else {"chosen_logps": float(logps[i, j]), "rejected_logps": float(logps[j, i])}),
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


def response_pair_flags(plan: PromptPlan, chosen: int, rejected: int, boundary: int, max_length: int | None,
                        texts: tuple) -> list[str]:
    """The integrity flags (:mod:`ches.integrity`) of the pair of a prompt's scored responses ``chosen`` and
    ``rejected`` (positions in ``plan``), whose prompt is their first ``boundary`` tokens: the same flags
    :func:`ches.integrity.pair_flags` gives a row of ``ches.score`` (the completions' untruncated lengths come
    from ``plan.lengths``; a completion is empty when its text is only whitespace)."""
    ids = (plan.sequences[chosen].input_ids, plan.sequences[rejected].input_ids)
    found = {name for name, text in zip(("empty_chosen", "empty_rejected"), texts) if is_empty_text(text)}
    if max_length is not None and boundary >= max_length:
        found.add("prompt_fills_max_length")
    else:
        if list(ids[0][boundary:]) == list(ids[1][boundary:]):  # both already cut to max_length, as TRL cuts
            found.add("identical_after_truncation")
        if max_length is not None:
            found |= {name for name, index in (("chosen_truncated", chosen), ("rejected_truncated", rejected))
                      if plan.lengths[index] > max_length}
    return [name for name in FLAG_NAMES if name in found]


def is_empty_text(response) -> bool:
    """Whether a response (text, or chat messages) holds nothing but whitespace.

    >>> is_empty_text("  "), is_empty_text([{"role": "assistant", "content": ""}]), is_empty_text("ok")
    (True, True, False)
    """
    if isinstance(response, str):
        return not response.strip()
    return all(not str(message.get("content") or "").strip() for message in response)


#: the columns of every pair, before the row's carried columns (with ``logps``: :data:`~ches.columns.LOGPS_COLUMNS`
#: after the score columns, as ``ches.score`` adds them)
PAIR_COLUMNS = ("prompt", "chosen", "rejected", "chosen_rating", "rejected_rating")
ROW_COLUMNS = ("candidates", "chosen_index", "rejected_index", "source_row", "unscored_responses")


def output_columns(logps: bool = False) -> tuple[str, ...]:
    """The columns ches.pairs writes, in order (the row's carried columns follow them).

    >>> output_columns()[:6], output_columns(logps=True)[15:17]
    (('prompt', 'chosen', 'rejected', 'chosen_rating', 'rejected_rating', 'ches'), ('chosen_logps', 'rejected_logps'))
    """
    return PAIR_COLUMNS + SCORE_COLUMNS + (LOGPS_COLUMNS if logps else ()) + ROW_COLUMNS


def carried_columns(column_names: list[str], columns: Mapping[str, str] | None, written: tuple[str, ...]) -> list[str]:
    """The rows' columns that each of their pairs carries: all but those read as the prompt, responses and
    ratings; one named like an output column (``written``) is refused, since it would be overwritten.

    >>> carried_columns(["prompt_id", "prompt", "responses", "ratings", "source"], None, output_columns())
    ['prompt_id', 'source']
    >>> carried_columns(["q", "responses", "ratings", "prompt"], {"prompt": "q"}, output_columns())
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: column 'prompt' would be carried into each pair (ches.pairs reads 'q', 'responses', 'ratings'), but ches.pairs writes its output column 'prompt' there; rename it first (dataset.rename_column('prompt', ...)) or drop it (dataset.remove_columns('prompt')).
    """
    if schema(column_names, columns) == "ultrafeedback":
        read = list(ULTRAFEEDBACK_COLUMNS)
    else:
        read = [(columns or {}).get(name, name) for name in CANDIDATE_COLUMNS]
    carried = [name for name in column_names if name not in read]
    clash = next((name for name in carried if name in written), None)
    if clash is not None:
        raise ChesError(f"column {clash!r} would be carried into each pair (ches.pairs reads "
                        f"{', '.join(repr(name) for name in read)}), but ches.pairs writes its output column {clash!r} "
                        f"there; rename it first (dataset.rename_column({clash!r}, ...)) or drop it "
                        f"(dataset.remove_columns({clash!r})).")
    return carried


#: the types of the columns of every pair (those not here are the input's texts)
PAIR_TYPES = {"chosen_rating": "float64", "rejected_rating": "float64", **SCORE_TYPES, **LOGPS_TYPES, "candidates": "int64",
              "chosen_index": "int64", "rejected_index": "int64", "source_row": "int64"}


def output_dataset(columns: dict[str, list], carried: datasets.Dataset) -> datasets.Dataset:
    """The pairs as a dataset: the score columns typed as ``ches.score`` types them, ``unscored_responses``
    as lists of ints, then the ``carried`` columns (one row per pair, their types kept). With no pair, every
    column is still there, typed (the texts as strings)."""
    features = {name: column_feature(name) if name in SCORE_TYPES or name in LOGPS_TYPES
                else datasets.Value(PAIR_TYPES[name]) for name in columns if name in PAIR_TYPES}
    features["unscored_responses"] = datasets.List(datasets.Value("int64"))
    if not columns["source_row"]:
        features = {**{name: datasets.Value("string") for name in PAIR_COLUMNS[:3]}, **features, **carried.features}
        return datasets.Dataset.from_dict({name: [] for name in features}, features=datasets.Features(features))
    dataset = datasets.Dataset.from_dict(columns)
    dataset = dataset.cast(datasets.Features({name: features.get(name, feature) for name, feature in dataset.features.items()}))
    return datasets.concatenate_datasets([dataset, carried.flatten_indices()], axis=1) if carried.column_names else dataset
