"""The pairing rules of ``ches.pairs`` (ches.scores.pairing) against plain-Python references: each rule's picks
against a loop over the allowed pairs, the responses each rule needs scored, and every pair's CHES from one sum
per response against the pair's own sums taken directly."""

import numpy as np
import pytest
import torch

from ches.builder.choice import rule_needs_unscored
from ches.options import RULES
from ches.scores.pairing import PAIRING_RULES, allowed_pairs, pair_logps, pair_matrices, pairing_rule, select


def allowed_by_hand(ratings, measure, same, min_margin):
    """(i, j) pairs a rule may pick, one at a time."""
    count = len(ratings)
    return {(i, j) for i in range(count) for j in range(count)
            if ratings[i] > ratings[j] and ratings[i] - ratings[j] >= min_margin and np.isfinite(measure[i][j])
            and not same[i][j]}


def chosen_by_hand(ratings, allowed):
    """The first-listed top-rated response with an allowed rejected one, or None."""
    top = max(ratings)
    return next((i for i in range(len(ratings)) if ratings[i] == top and any(a == i for a, _ in allowed)), None)


def picks_by_hand(rule, ratings, measure, allowed, per_prompt):
    """What the module docstring says each rule picks, by sorting Python tuples."""
    if rule == "all_min_ches":
        return sorted(allowed, key=lambda pair: (measure[pair[0]][pair[1]], pair[1], pair[0]))[:per_prompt]
    chosen = chosen_by_hand(ratings, allowed)
    if chosen is None:
        return []
    rejected = [j for i, j in allowed if i == chosen]
    key = (lambda j: (measure[chosen][j], j)) if rule == "min_ches" else (lambda j: (ratings[j], j))
    return [(chosen, j) for j in sorted(rejected, key=key)[:per_prompt]]


def random_prompt(rng, count):
    """Ratings and a measure with ties (small integer sets), some unscorable pairs (NaN), some duplicates."""
    ratings = rng.integers(0, 4, size=count).astype(float)
    measure = rng.integers(-3, 4, size=(count, count)).astype(float)
    measure[rng.random((count, count)) < 0.15] = np.nan
    texts = rng.integers(0, count + 2, size=count)  # equal numbers: identical responses
    same = texts[:, None] == texts[None, :]
    return ratings, measure, same


def test_the_registry_names_every_rule_of_the_options():
    assert tuple(PAIRING_RULES) == RULES
    assert [pairing_rule(name).name for name in RULES] == list(RULES)
    with pytest.raises(ValueError, match=r"unknown rule 'best'; use one of \['min_ches', 'all_min_ches'"):
        pairing_rule("best")


@pytest.mark.parametrize("rule", ["min_ches", "all_min_ches", "max_margin"])
def test_each_rule_picks_what_a_loop_over_the_allowed_pairs_picks(rule):
    rng = np.random.default_rng(29)
    nonempty = 0
    for _ in range(300):
        count = int(rng.integers(2, 7))
        ratings, measure, same = random_prompt(rng, count)
        min_margin = float(rng.choice([0.0, 1.0, 2.0]))
        per_prompt = int(rng.integers(1, 4))
        allowed = allowed_pairs(ratings, measure, min_margin=min_margin, same=same)
        by_hand = allowed_by_hand(ratings.tolist(), measure.tolist(), same.tolist(), min_margin)
        assert {(int(i), int(j)) for i, j in zip(*np.nonzero(allowed))} == by_hand
        expected = picks_by_hand(rule, ratings.tolist(), measure.tolist(), by_hand, per_prompt)
        assert pairing_rule(rule).select(measure, ratings, allowed, per_prompt=per_prompt) == expected
        assert select(rule, measure, ratings, allowed, per_prompt=per_prompt) == expected
        nonempty += bool(expected)
    assert nonempty > 100  # the loop saw real choices, not only prompts without a pair


def test_min_ches_takes_the_argmin_of_the_chosen_row_and_all_min_ches_the_argmin_of_every_pair():
    measure = np.array([[0.0, 4.0, 2.0, 9.0], [1.0, 0.0, 7.0, -5.0], [3.0, 3.0, 0.0, 6.0], [0.0, 0.0, 0.0, 0.0]])
    ratings = np.array([5.0, 4.0, 4.0, 1.0])
    allowed = allowed_pairs(ratings, measure)
    assert select("min_ches", measure, ratings, allowed) == [(0, 2)]  # row 0: 4, 2, 9 over columns 1, 2, 3
    assert select("all_min_ches", measure, ratings, allowed) == [(1, 3)]  # -5: the lowest allowed anywhere
    assert select("max_margin", measure, ratings, allowed) == [(0, 3)]  # the top against the bottom (rating 1)


def test_random_draws_distinct_allowed_rejected_ones_for_the_top_rated_response():
    measure = np.zeros((5, 5))
    ratings = np.array([1.0, 3.0, 2.0, 2.0, 0.0])
    allowed = allowed_pairs(ratings, measure)
    seen = set()
    for seed in range(60):
        picks = select("random", measure, ratings, allowed, per_prompt=2, rng=np.random.default_rng(seed))
        assert len(picks) == 2 and len(set(picks)) == 2
        assert all(chosen == 1 and allowed[chosen, rejected] for chosen, rejected in picks)
        seen |= {rejected for _, rejected in picks}
    assert seen == {0, 2, 3, 4}  # every allowed rejected response is drawn at some seed
    assert len(select("random", measure, ratings, allowed, per_prompt=9, rng=np.random.default_rng(0))) == 4


@pytest.mark.parametrize("rule, top, bottom", [("min_ches", True, False), ("random", True, False),
                                               ("max_margin", True, True), ("all_min_ches", False, False)])
def test_a_rule_refuses_a_prompt_only_when_a_response_it_must_pick_is_unscored(rule, top, bottom):
    ratings = [3.0, 1.0, 2.0, 3.0, 1.0]  # tops: 0 and 3; bottoms: 1 and 4
    reason = "no completion tokens"
    one_top = rule_needs_unscored(pairing_rule(rule), ratings, {0: reason})
    both_tops = rule_needs_unscored(pairing_rule(rule), ratings, {0: reason, 3: reason})
    both_bottoms = rule_needs_unscored(pairing_rule(rule), ratings, {1: reason, 4: reason})
    middle = rule_needs_unscored(pairing_rule(rule), ratings, {2: reason})
    assert one_top is None and middle is None  # a tied top (or bottom) response is still scored
    assert (both_tops == "the top-rated response 0 (rating 3) could not be scored: no completion tokens; so could "
                         "none of the tied 3 (no completion tokens)") == top
    assert (both_bottoms is not None and both_bottoms.startswith("the lowest-rated response 1 (rating 1)")) == bottom


def pair_by_hand(rows, prefix, i, j):
    """The pair (i, j)'s scores from its own sums: response ``r``'s rows are its hidden states from the smallest
    prompt boundary on; the pair's sums start at the pair's boundary ``min(p_i, p_j)``."""
    boundary = min(prefix[i], prefix[j])
    drop = boundary - min(prefix)
    chosen, rejected = rows[i][drop:], rows[j][drop:]
    plus, minus = chosen.sum(0), rejected.sum(0)
    ches = float(plus @ minus - plus @ plus)
    ln_ches = float(plus @ minus / (len(chosen) * len(rejected)) - plus @ plus / len(chosen) ** 2)
    return ches, ln_ches, boundary, len(chosen)


def test_pair_matrices_equal_each_pairs_own_sums():
    rng = np.random.default_rng(7)
    for _ in range(20):
        count, hidden = int(rng.integers(2, 6)), 5
        prefix = rng.integers(4, 8, size=count)
        first = prefix.min()
        prompt = rng.normal(size=(prefix.max(), hidden))  # the prompt's hidden states: the same in every response
        rows = [np.concatenate([prompt[first - 1 : p - 1], rng.normal(size=(int(rng.integers(1, 6)), hidden))])
                for p in prefix]  # from position P0 - 1: the prompt's own positions past P0, then the completion
        corrections = np.stack([prompt[first - 1 : p - 1].sum(0) for p in prefix])
        matrices = pair_matrices(torch.tensor(np.stack([r.sum(0) for r in rows])), torch.tensor([len(r) for r in rows]),
                                 torch.tensor(prefix), torch.tensor(corrections))
        for i in range(count):
            for j in range(count):
                if i == j:
                    assert matrices.ches[i, j] == 0 and matrices.ln_ches[i, j] == 0
                    continue
                ches, ln_ches, boundary, tokens = pair_by_hand(rows, prefix.tolist(), i, j)
                assert matrices.ches[i, j].item() == pytest.approx(ches, rel=1e-9, abs=1e-9)
                assert matrices.ln_ches[i, j].item() == pytest.approx(ln_ches, rel=1e-9, abs=1e-9)
                assert matrices.prompt_tokens[i, j] == boundary and matrices.chosen_tokens[i, j] == tokens
                assert matrices.rejected_tokens[i, j] == pair_by_hand(rows, prefix.tolist(), j, i)[3]


def test_pair_logps_equal_each_pairs_own_sums():
    rng = np.random.default_rng(3)
    prefix = np.array([5, 7, 5, 6])
    prompt = rng.normal(size=8)  # per-token log-probabilities of the prompt's tokens, shared
    tokens = [np.concatenate([prompt[5:p], rng.normal(size=3)]) for p in prefix]  # from P0 = 5 on
    logps = pair_logps(torch.tensor([t.sum() for t in tokens]), torch.tensor(prefix),
                       torch.tensor([prompt[5:p].sum() for p in prefix]))
    for i in range(4):
        for j in range(4):
            drop = min(prefix[i], prefix[j]) - 5
            assert logps[i, j].item() == pytest.approx(tokens[i][drop:].sum(), abs=1e-12)
