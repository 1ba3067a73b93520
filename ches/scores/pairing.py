"""Pairing: every candidate pair's CHES in closed form from per-response sums, and the selection rules.

Pure functions (torch/numpy only; no model, no I/O). For one prompt with ``N`` responses, each
response ``i`` has run once; ``S_i`` is the sum of its last hidden states from the shared prompt
boundary on. Every pair ``(i, j)`` — ``i`` preferred, ``j`` dispreferred — then costs an inner product:

- ``ches[i, j]    = <S_i, S_j> - ||S_i||^2``
- ``ln_ches[i, j] = <S_i, S_j> / (n_i n_j) - ||S_i||^2 / n_i^2``

(``n`` = completion tokens summed). Diagonals are 0 (a response paired with itself).

**Prompt boundaries.** ``ches.score`` cuts a pair's prompt to the common token prefix of the prompt
ids with *both* full sequences (:mod:`ches.data.tokens`). With ``N`` responses, response ``i`` keeps
``p_i`` prompt tokens on its own; the pair ``(i, j)`` has ``P = min(p_i, p_j)``. The sums are taken
from the smallest boundary ``P0 = min_i p_i``, and ``C_i`` is the sum of the prompt's hidden states
at positions ``[P0 - 1, p_i - 1)`` (zero when ``p_i = P0``, which is the usual case: no token merges
across the prompt boundary). With ``k`` the response of the pair with the smaller ``p`` (the first
one on a tie), the pair's sums are ``S_i - C_k`` and ``S_j - C_k`` and its lengths ``n - (p_k - P0)``:
exactly what ``ches.score`` computes for that pair alone. Only Gram matrices are formed:
``<S_i - C_k, S_j - C_k> - ||S_i - C_k||^2 = G[i, j] - G[i, i] + X[i, k] - X[j, k]`` with ``G = S S^T``
and ``X = S C^T``.

**Selection rules** (higher measure = more displacement-prone; see :mod:`ches.scores.select`). A pair
``(i, j)`` is *allowed* when ``rating_i > rating_j``, ``rating_i - rating_j >= min_margin``, the two
responses differ, and the pair can be scored (finite measure). The *chosen* response of the
single-chosen rules is the top-rated one; among several, the first listed that has an allowed
rejected response (so a duplicate of the top answer, rated lower, does not leave the prompt unpaired).

- ``min_ches``: chosen = top-rated; rejected = the allowed one with the lowest measure;
- ``all_min_ches``: the allowed pair with the lowest measure over every chosen/rejected combination;
- ``max_margin``: chosen = top-rated; rejected = the lowest-rated allowed one (best vs worst);
- ``random``: chosen = top-rated; rejected drawn uniformly from the allowed ones (UltraFeedback
  binarized), from a generator seeded by ``(seed, source row)``, so a row's draw does not depend on
  the other rows.

``per_prompt = k`` keeps the first ``k`` pairs in each rule's order (``random``: ``k`` distinct draws).
Ties are broken by the lower index: the lower rejected index, then (``all_min_ches``) the lower chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch


@dataclass(frozen=True)
class PairMatrices:
    """Scores of every ordered pair of one prompt's responses (row = chosen, column = rejected).

    Attributes:
        ches, ln_ches: ``[N, N]`` float64.
        prompt_tokens: ``[N, N]`` the pair's prompt length ``P = min(p_i, p_j)``.
        chosen_tokens: ``[N, N]`` completion tokens of the row's response in that pair (``n_i - (P - P0)``).
    """

    ches: torch.Tensor
    ln_ches: torch.Tensor
    prompt_tokens: torch.Tensor
    chosen_tokens: torch.Tensor

    @property
    def rejected_tokens(self) -> torch.Tensor:
        return self.chosen_tokens.T


def pair_matrices(sums: torch.Tensor, lengths: torch.Tensor, prefix: torch.Tensor | None = None,
                  corrections: torch.Tensor | None = None) -> PairMatrices:
    """CHES and length-normalized CHES of every ordered pair, from one sum per response (module docstring).

    Args:
        sums: ``[N, H]`` ``S_i``, summed from the smallest prompt boundary ``P0``.
        lengths: ``[N]`` tokens in each sum.
        prefix: ``[N]`` prompt tokens ``p_i`` each response shares with the prompt ids (default: all equal).
        corrections: ``[N, H]`` ``C_i``, the prompt's hidden states summed over ``[P0 - 1, p_i - 1)``
            (default: zeros).

    Returns:
        :class:`PairMatrices`.

    >>> m = pair_matrices(torch.tensor([[1.0, 2.0], [3.0, 0.0]]), torch.tensor([1, 3]))
    >>> m.ches.tolist(), m.ln_ches[0, 1].item()
    ([[0.0, -2.0], [-6.0, 0.0]], -4.0)
    """
    count = len(sums)
    if prefix is None:
        prefix = torch.zeros(count, dtype=torch.long)
    if corrections is None:
        corrections = torch.zeros_like(sums)
    plus, shift = sums.double(), corrections.double()
    gram, cross = plus @ plus.T, plus @ shift.T  # G[i, j] = <S_i, S_j>, X[i, k] = <S_i, C_k>
    rows = torch.arange(count)[:, None].expand(count, count)
    columns = rows.T
    first = torch.where(prefix[:, None] <= prefix[None, :], rows, columns)  # k: the shorter boundary of the pair
    own = (shift * shift).sum(-1)[first]  # ||C_k||^2
    inner = gram - cross[rows, first] - cross[columns, first] + own  # <S_i - C_k, S_j - C_k>
    norm = torch.diagonal(gram)[:, None] - 2 * cross[rows, first] + own  # ||S_i - C_k||^2
    boundary = torch.minimum(prefix[:, None], prefix[None, :])
    tokens = lengths[:, None] - (boundary - prefix.min())
    n_plus, n_minus = tokens.double(), tokens.T.double()
    ln = inner / (n_plus * n_minus) - norm / n_plus**2
    return PairMatrices(ches=(inner - norm).fill_diagonal_(0.0), ln_ches=ln.fill_diagonal_(0.0),
                        prompt_tokens=boundary, chosen_tokens=tokens)


def pair_logps(logps: torch.Tensor, prefix: torch.Tensor | None = None,
               corrections: torch.Tensor | None = None) -> torch.Tensor:
    """Each response's completion log-probability in every pair, from one sum per response: the
    ``chosen_logps`` of the pair ``(i, j)`` is ``[i, j]``, its ``rejected_logps`` is ``[j, i]``.

    The log-probabilities add up over tokens as the hidden states do, so the prompt boundary is handled
    as in :func:`pair_matrices`: ``L_i - c_k``, with ``k`` the response of the pair with the smaller ``p``.

    Args:
        logps: ``[N]`` float64, each response's log-probability summed from the smallest boundary ``P0``.
        prefix: ``[N]`` prompt tokens ``p_i`` (default: all equal).
        corrections: ``[N]`` ``c_i``, the log-probability of the prompt's tokens ``[P0, p_i)`` (default: zeros).

    Returns:
        ``[N, N]`` float64.

    >>> pair_logps(torch.tensor([-3.0, -5.0]), torch.tensor([4, 5]), torch.tensor([0.0, -1.0])).tolist()
    [[-3.0, -3.0], [-5.0, -4.0]]
    """
    count = len(logps)
    if prefix is None:
        prefix = torch.zeros(count, dtype=torch.long)
    if corrections is None:
        corrections = torch.zeros(count, dtype=torch.float64)
    rows = torch.arange(count)[:, None].expand(count, count)
    first = torch.where(prefix[:, None] <= prefix[None, :], rows, rows.T)  # k: the shorter boundary of the pair
    return logps.double()[:, None] - corrections.double()[first]


def allowed_pairs(ratings: np.ndarray, measure: np.ndarray, *, min_margin: float = 0.0,
                  same: np.ndarray | None = None) -> np.ndarray:
    """``[N, N]`` bool: may ``(i, j)`` be a (chosen, rejected) pair?

    Allowed: ``i`` rated strictly higher than ``j`` and by at least ``min_margin``, the pair scored
    (finite ``measure[i, j]``), and the two responses not identical (``same[i, j]`` False).

    >>> allowed_pairs(np.array([2.0, 1.0, 1.0]), np.zeros((3, 3)), min_margin=0.5).astype(int).tolist()
    [[0, 1, 1], [0, 0, 0], [0, 0, 0]]
    """
    ratings = np.asarray(ratings, dtype=np.float64)
    margin = ratings[:, None] - ratings[None, :]
    allowed = (margin > 0) & (margin >= min_margin) & np.isfinite(measure)
    return allowed & ~same if same is not None else allowed


def top_rated(ratings: np.ndarray, allowed: np.ndarray) -> int | None:
    """Index of the chosen response of the single-chosen rules: the highest rating, on a tie the first
    listed that has an allowed rejected response; None when no top-rated response has one.

    >>> allowed = allowed_pairs(np.array([1.0, 3.0, 3.0]), np.zeros((3, 3)))
    >>> top_rated(np.array([1.0, 3.0, 3.0]), allowed)
    1
    >>> allowed[1, 0] = False  # e.g. response 1 repeats response 0
    >>> top_rated(np.array([1.0, 3.0, 3.0]), allowed)
    2
    """
    ratings = np.asarray(ratings, dtype=np.float64)
    tops = np.flatnonzero(ratings == ratings.max())
    return next((int(index) for index in tops if allowed[index].any()), None)


class PairingRule:
    """One way to choose a prompt's (chosen, rejected) pairs (module docstring); one subclass per rule, the
    registry :data:`PAIRING_RULES` names them (:data:`ches.options.RULES`).

    The single-chosen rules take :func:`top_rated` as chosen and differ in the order of its allowed rejected
    responses (:meth:`order`); :class:`AllMinChes` searches every pair instead. :meth:`needs` says which
    responses a rule must have scored to pick the pair it states.
    """

    name: ClassVar[str]

    def select(self, measure: np.ndarray, ratings: np.ndarray, allowed: np.ndarray, *, per_prompt: int = 1,
               rng: np.random.Generator | None = None) -> list[tuple[int, int]]:
        """The (chosen, rejected) index pairs this rule picks for one prompt; empty when none is allowed.

        Args:
            measure: ``[N, N]`` the measure (``ches`` or ``ln_ches``), row = chosen.
            ratings: ``[N]``.
            allowed: ``[N, N]`` from :func:`allowed_pairs`.
            per_prompt: pairs kept per prompt, at most.
            rng: the generator of the ``random`` rule.
        """
        chosen = top_rated(ratings, allowed)
        if chosen is None:
            return []
        rejected = np.flatnonzero(allowed[chosen])
        ordered = self.order(rejected, np.asarray(measure, dtype=np.float64)[chosen],
                             np.asarray(ratings, dtype=np.float64), rng)
        return [(chosen, int(j)) for j in ordered[:per_prompt]]

    def order(self, rejected: np.ndarray, measure: np.ndarray, ratings: np.ndarray,
              rng: np.random.Generator | None) -> np.ndarray:
        """The allowed ``rejected`` indices in the order this rule takes them (``measure``: the chosen's row)."""
        raise NotImplementedError

    def needs(self, ratings: np.ndarray) -> list[tuple[str, float]]:
        """The responses the rule must pick, as ``(what, rating)``: one of the responses with that rating must
        be scored, or the pair would not be the one the rule states."""
        return [("top-rated", float(np.max(ratings)))]


class MinChes(PairingRule):
    """Chosen = top-rated; rejected = the allowed one with the lowest measure (ties: the lower index)."""

    name: ClassVar[str] = "min_ches"

    def order(self, rejected, measure, ratings, rng):
        return rejected[np.argsort(measure[rejected], kind="stable")]


class MaxMargin(PairingRule):
    """Chosen = top-rated; rejected = the lowest-rated allowed one (best vs worst)."""

    name: ClassVar[str] = "max_margin"

    def order(self, rejected, measure, ratings, rng):
        return rejected[np.argsort(ratings[rejected], kind="stable")]

    def needs(self, ratings):
        return [*super().needs(ratings), ("lowest-rated", float(np.min(ratings)))]


class RandomRejected(PairingRule):
    """Chosen = top-rated; rejected drawn uniformly from the allowed ones (``per_prompt``: distinct draws)."""

    name: ClassVar[str] = "random"

    def order(self, rejected, measure, ratings, rng):
        return rng.permutation(rejected) if len(rejected) else rejected


class AllMinChes(PairingRule):
    """The allowed pair with the lowest measure over every chosen/rejected combination (ties: the lower
    rejected index, then the lower chosen); needs no particular response scored."""

    name: ClassVar[str] = "all_min_ches"

    def select(self, measure, ratings, allowed, *, per_prompt=1, rng=None):
        measure = np.asarray(measure, dtype=np.float64)
        candidates = [(int(i), int(j)) for i, j in zip(*np.nonzero(allowed))]
        return sorted(candidates, key=lambda pair: (measure[pair], pair[1], pair[0]))[:per_prompt]

    def needs(self, ratings):
        return []


#: the pairing rules by name, in the order of :data:`ches.options.RULES`
PAIRING_RULES: dict[str, type[PairingRule]] = {cls.name: cls for cls in (MinChes, AllMinChes, MaxMargin, RandomRejected)}


def pairing_rule(name: str) -> PairingRule:
    """The rule called ``name``.

    >>> pairing_rule("max_margin").needs(np.array([3.0, 1.0]))
    [('top-rated', 3.0), ('lowest-rated', 1.0)]
    """
    if name not in PAIRING_RULES:
        raise ValueError(f"unknown rule {name!r}; use one of {list(PAIRING_RULES)}")
    return PAIRING_RULES[name]()


def select(rule: str, measure: np.ndarray, ratings: np.ndarray, allowed: np.ndarray, *, per_prompt: int = 1,
           rng: np.random.Generator | None = None) -> list[tuple[int, int]]:
    """The (chosen, rejected) index pairs the rule called ``rule`` picks for one prompt
    (:meth:`PairingRule.select`); empty when none is allowed.

    >>> measure = np.array([[0.0, 5.0, -1.0], [2.0, 0.0, 3.0], [1.0, 1.0, 0.0]])
    >>> ratings = np.array([3.0, 2.0, 1.0])
    >>> allowed = allowed_pairs(ratings, measure)
    >>> select("min_ches", measure, ratings, allowed), select("max_margin", measure, ratings, allowed)
    ([(0, 2)], [(0, 2)])
    >>> select("all_min_ches", measure, ratings, allowed, per_prompt=2)
    [(0, 2), (1, 2)]
    """
    return pairing_rule(rule).select(measure, ratings, allowed, per_prompt=per_prompt, rng=rng)


def no_pair_reason(ratings: np.ndarray, measure: np.ndarray, same: np.ndarray, *, min_margin: float) -> str:
    """Why a rule found no pair for a prompt with at least two responses (for the skipped list).

    >>> no_pair_reason(np.array([1.0, 1.0]), np.zeros((2, 2)), np.zeros((2, 2), bool), min_margin=0.0)
    'all ratings equal (1)'
    """
    ratings = np.asarray(ratings, dtype=np.float64)
    if np.all(ratings == ratings[0]):
        return f"all ratings equal ({ratings[0]:g})"
    margin = ratings[:, None] - ratings[None, :]
    lower = margin > 0
    if not (lower & (margin >= min_margin)).any():
        return f"no two ratings differ by at least min_margin={min_margin:g} (largest gap {margin.max():g})"
    if not (lower & (margin >= min_margin) & ~same).any():
        return "the only pairs with different ratings are identical responses"
    if not allowed_pairs(ratings, measure, min_margin=min_margin, same=same).any():
        return "no pair with different ratings could be scored (the prompt fills max_length)"
    return "no top-rated response has an allowed rejected one (rule all_min_ches searches every pair)"
