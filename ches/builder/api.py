"""``ches.pairs`` and ``ches pairs``: DPO pairs built from multi-response data, chosen by CHES.

Data path: candidate rows -> :mod:`ches.builder.candidates` (``prompt, [responses], [ratings]``) -> TRL token
sequences (:mod:`ches.data.tokens`, each response tokenized as ``ches.score`` tokenizes a pair containing it)
-> one decoder pass with all responses of a prompt in one group, the prompt written once
(:func:`ches.run.runner.run_sequences`, prefix-shared layout where the model's probe allows it) -> every
pair's scores in closed form (:func:`ches.scores.pairing.pair_matrices`) -> a rule (:func:`ches.scores.pairing.select`)
-> a TRL-ready dataset. Each response runs once: the cost grows with the number of responses, not pairs.

The scoring options are :class:`~ches.options.ScoreOptions` (the subset
:data:`~ches.options.PAIR_SCORE_OPTIONS`); the pairing rule is :class:`~ches.options.PairOptions`.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import asdict
from typing import Any

import datasets

from ..data.columns import with_reference
from ..data.export import check_apart_from_inputs
from ..data.inputs import Data, load_data
from ..data.paths import model_paths
from ..errors import ChesError
from ..model.logps import LMHead
from ..model.models import tokenizer_fingerprint
from ..model.threads import torch_threads
from ..options import (
    PAIR_KEYWORDS,
    PAIR_LAYOUT_DEFAULT,
    PAIR_SCORE_OPTIONS,
    PairInputOptions,
    PairOptions,
    ScoreOptions,
    pairs_options,
    signature_with_options,
)
from ..run.cache import model_fingerprint, open_cache
from ..run.chunk_loop import ChunkSizes
from ..run.quiet import library_bars_off
from ..run.runs import now, prepared
from ..scores.stats import counted
from .candidates import candidate_rows, schema
from .choice import select_pairs
from .output import carried_columns, output_columns, output_dataset
from .passes import run_groups
from .plan import PairsInfo, plan_prompts

logger = logging.getLogger("ches")


def pairs(data: Data, model, tokenizer=None, *, options: ScoreOptions | None = None, **kwargs: Any) -> datasets.Dataset:
    """Build DPO pairs from several rated responses per prompt, choosing the pair by CHES.

    Every (prompt, response) sequence runs through the model once (the prompt once per prompt where
    the layout allows); every candidate pair's ``ches``/``ln_ches`` then follows in closed form, equal
    to ``ches.score`` on that pair. The rule picks the pair(s) (:mod:`ches.scores.pairing`): ``min_ches``
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
        options, **kwargs: the keywords above (:class:`~ches.options.PairOptions`,
            :class:`~ches.options.PairInputOptions`) and a :class:`~ches.options.ScoreOptions` and/or its fields as
            keywords, as for ``ches.score``: ``split``, ``max_length``, ``dtype``, ``device``, ``batch_tokens``,
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
    return pairs_run(data, model, tokenizer, options=options, **kwargs)[0]


def pairs_run(data: Data, model, tokenizer=None, *, options: ScoreOptions | None = None,
              chunk_sizes: ChunkSizes | None = None, **kwargs: Any) -> tuple[datasets.Dataset, PairsInfo]:
    """:func:`pairs`, also returning the record of the run (:class:`~ches.PairsInfo`): the model,
    layout and options, the counts, every prompt that gave no pair (``skipped_prompts``: :class:`Skipped`)
    and every response that could not be scored (``unscored_responses``: :class:`Unscored`); ``chunk_sizes``: how
    many sequences a chunk holds (the unit of work, caching and resuming; default
    :class:`~ches.run.chunk_loop.ChunkSizes`), for tests and benchmarks.

    >>> built, info = pairs_run([{"prompt": "\\n\\nHuman: Hi\\n\\nAssistant:", "responses": [" Hello!"], "ratings": [1]}],
    ...                         "examples/tiny-hh-model", progress=False)
    >>> built.num_rows, info.skipped_prompts[0].reason
    (0, 'fewer than two responses')
    """
    rules, reading, scoring = pairs_options(options, **kwargs)
    with torch_threads(scoring.num_threads), library_bars_off():  # one bar, ches' own, or none
        return _pairs_run(data, model, tokenizer, rules, reading, scoring, chunk_sizes or ChunkSizes())


def _pairs_run(data: Data, model, tokenizer, rules: PairOptions, reading: PairInputOptions,
               scoring: ScoreOptions, chunk_sizes: ChunkSizes) -> tuple[datasets.Dataset, PairsInfo]:
    started = now()
    columns, rating_field = reading.columns, reading.rating_field
    dataset = load_data(data, scoring.split)
    if isinstance(dataset, datasets.DatasetDict):
        raise ChesError(f"the data has splits {sorted(dataset)}; pass split= (--split).")
    rows = candidate_rows(dataset, columns, rating_field, reading.format)
    carried = carried_columns(dataset.column_names, columns, output_columns(scoring.logps), reading.format)
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
                         cache=cache, process=setup.process, progress=scoring.progress,
                         chunk_sequences=chunk_sizes.sequences)
    built, more, unscored = select_pairs(rows, plans, ran.sums, rules, scoring.max_length, dtype=loaded.dtype)
    skipped = sorted(skipped + more, key=lambda item: item.source_row)
    given = scoring.as_dict()
    info = PairsInfo(**setup.record(), options={**{name: given[name] for name in PAIR_SCORE_OPTIONS}, **asdict(rules)},
                     schema=schema(dataset.column_names, columns, reading.format), columns=dict(columns or {}),
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


pairs.__signature__ = signature_with_options(pairs, PAIR_KEYWORDS)
pairs_run.__signature__ = signature_with_options(pairs_run, PAIR_KEYWORDS)


def describe_run(info: PairsInfo, *, reasons: bool = True) -> str:
    """One line: pairs made, prompts skipped and responses not scored (each only when there are any, with
    their reasons when ``reasons``), chunks reused from the cache.

    >>> from ches.builder.plan import PairsInfo
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
