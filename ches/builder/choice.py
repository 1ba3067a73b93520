"""From the summed sequences of each prompt to its pairs: the pairing rule applied to every pair's scores,
the pairs' integrity flags, and the responses a rule could not rank."""

from __future__ import annotations

import numpy as np
import torch

from ..data.columns import DIGEST_COLUMN
from ..data.integrity import FLAGS_COLUMN, pair_flags
from ..data.tokens import token_digest
from ..options import RULES, PairOptions
from ..run.runner import nonfinite_logps_reason, nonfinite_reason
from ..scores.formulas import edit_distance
from ..scores.pairing import (
    PAIRING_RULES,
    PairingRule,
    allowed_pairs,
    no_pair_reason,
    pair_logps,
    pair_matrices,
    pairing_rule,
)
from .candidates import Candidates
from .output import output_columns
from .plan import PromptPlan, Skipped, Unscored

assert tuple(PAIRING_RULES) == RULES


def select_pairs(rows: list[Candidates], plans: list[PromptPlan], sums, options: PairOptions,
                 max_length: int | None, dtype=None) -> tuple[dict[str, list], list[Skipped], list[Unscored]]:
    """Score every pair of each planned prompt, apply the rule, and return the output columns, the
    prompts with no pair and the responses that could not be scored (``dtype``: the model's, for the
    reason given for hidden states that are not finite)."""
    out: dict[str, list] = {name: [] for name in output_columns(sums.logps is not None)}
    skipped, unscored_all, at = [], [], 0
    rule = pairing_rule(options.rule)
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
        needed = rule_needs_unscored(rule, candidates.ratings, unscored)
        if needed:
            skipped.append(Skipped(plan.row, needed, len(candidates.responses)))
            continue
        responses = [candidates.responses[index] for index in plan.responses]
        ratings = np.array([candidates.ratings[index] for index in plan.responses])
        same = np.array([[a == b for b in responses] for a in responses])
        allowed = allowed_pairs(ratings, measure, min_margin=options.min_margin, same=same)
        rng = np.random.default_rng([options.seed, plan.row])
        picked = rule.select(measure, ratings, allowed, per_prompt=options.per_prompt, rng=rng)
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
                   FLAGS_COLUMN: response_pair_flags(plan, i, j, boundary, max_length),
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


def rule_needs_unscored(rule: PairingRule, ratings: list[float], unscored: dict[int, str]) -> str | None:
    """Why a prompt is skipped because a response its rule must pick (:meth:`PairingRule.needs`: every rule but
    ``all_min_ches`` takes a top-rated one as chosen, any of several tied ones; ``max_margin`` also a
    lowest-rated one as rejected) could not be scored, or None: without it the pair would not be the one the
    rule states, so there is none.

    >>> rule_needs_unscored(pairing_rule("min_ches"), [3.0, 1.0, 2.0], {0: "completion has no tokens"})
    'the top-rated response 0 (rating 3) could not be scored: completion has no tokens'
    >>> rule_needs_unscored(pairing_rule("all_min_ches"), [3.0, 1.0, 2.0], {0: "completion has no tokens"}) is None
    True
    """
    ratings = np.asarray(ratings, dtype=np.float64)
    for what, rating in rule.needs(ratings):
        holders = np.flatnonzero(ratings == rating).tolist()
        if all(index in unscored for index in holders):
            named = ", ".join(f"{index} ({unscored[index]})" for index in holders[1:])
            also = f"; so could none of the tied {named}" if named else ""
            return (f"the {what} response {holders[0]} (rating {rating:g}) could not be scored: "
                    f"{unscored[holders[0]]}{also}")
    return None


def response_pair_flags(plan: PromptPlan, chosen: int, rejected: int, boundary: int, max_length: int | None) -> list[str]:
    """The integrity flags (:func:`ches.data.integrity.pair_flags`, as ``ches.score`` sets them) of the pair of a
    prompt's scored responses ``chosen`` and ``rejected`` (positions in ``plan``), whose prompt is their first
    ``boundary`` tokens: the sequences are already cut to ``max_length``, ``plan.lengths`` are the untruncated
    lengths and ``plan.empty`` says which completion has no text of its own from that boundary."""
    sides = (chosen, rejected)
    return pair_flags(boundary, tuple(plan.sequences[side].input_ids[boundary:] for side in sides),
                      tuple(plan.lengths[side] - boundary for side in sides), max_length,
                      tuple(plan.empty[side, boundary] for side in sides))
