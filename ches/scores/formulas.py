"""Scores: the CHES formulas and the paper's two baselines, as pure functions (no model, no I/O).

Notation (Razin et al., ICLR 2025): for prompt x and completion y, ``h(x, y<k)`` is the last-layer
hidden state (after the final norm) at the position that predicts token k of y, and
``S = sum_k h(x, y<k)`` over all |y| completion tokens. With ``S+``/``S-`` for the preferred and
dispreferred completions:

- ``ches    = <S+, S-> - ||S+||^2``
- ``ln_ches = <S+, S-> / (|y+| |y-|) - ||S+||^2 / |y+|^2``
- ``last_hidden_ip = <h+_last, h-_last>`` (hidden states at the last summed positions)
- ``edit_distance`` = Levenshtein distance of the completions' token ids / the longer length

Higher CHES = more similar embeddings = more likely to cause likelihood displacement. All tensor
functions work in float64 whatever the input dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from rapidfuzz.distance import Levenshtein


def ches(chosen_sum: torch.Tensor, rejected_sum: torch.Tensor) -> torch.Tensor:
    """``<S+, S-> - ||S+||^2`` per row.

    Args:
        chosen_sum: ``[N, H]`` sums of the preferred completion's hidden states (``S+``).
        rejected_sum: ``[N, H]`` the same for the dispreferred completion (``S-``).

    Returns:
        ``[N]`` float64.

    >>> ches(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 0.0]]))
    tensor([-2.], dtype=torch.float64)
    """
    plus, minus = chosen_sum.double(), rejected_sum.double()
    return (plus * minus).sum(-1) - (plus * plus).sum(-1)


def ln_ches(
    chosen_sum: torch.Tensor, rejected_sum: torch.Tensor, chosen_length: torch.Tensor, rejected_length: torch.Tensor
) -> torch.Tensor:
    """Length-normalized CHES ``<S+, S-> / (|y+| |y-|) - ||S+||^2 / |y+|^2`` per row.

    Args:
        chosen_sum, rejected_sum: ``[N, H]`` hidden-state sums ``S+`` and ``S-``.
        chosen_length, rejected_length: ``[N]`` completion token counts ``|y+|`` and ``|y-|``.

    Returns:
        ``[N]`` float64.

    >>> ln_ches(torch.tensor([[2.0, 4.0]]), torch.tensor([[6.0, 0.0]]), torch.tensor([2]), torch.tensor([3]))
    tensor([-3.], dtype=torch.float64)
    """
    plus, minus = chosen_sum.double(), rejected_sum.double()
    n_plus, n_minus = chosen_length.double(), rejected_length.double()
    return (plus * minus).sum(-1) / (n_plus * n_minus) - (plus * plus).sum(-1) / n_plus**2


def last_hidden_ip(chosen_last: torch.Tensor, rejected_last: torch.Tensor) -> torch.Tensor:
    """Inner product of the hidden states at the last summed position of each completion.

    Args:
        chosen_last, rejected_last: ``[N, H]``.

    Returns:
        ``[N]`` float64.

    >>> last_hidden_ip(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 4.0]]))
    tensor([11.], dtype=torch.float64)
    """
    return (chosen_last.double() * rejected_last.double()).sum(-1)


def edit_distance(chosen_ids: Sequence[int], rejected_ids: Sequence[int]) -> float:
    """Token-level Levenshtein distance divided by the longer length (0 = identical, 1 = nothing shared).

    ``edit_distance = Levenshtein(y+, y-) / max(|y+|, |y-|)``, where ``Levenshtein`` counts the fewest
    single-token insertions, deletions and substitutions (each costing 1) that turn one sequence of
    token ids into the other; two empty sequences give 0.0. The distance comes from ``rapidfuzz``
    (C++, bit-parallel), which takes lists of ints fastest (a numpy array is several times slower).

    >>> edit_distance([1, 2, 3, 4], [1, 3, 4])
    0.25
    >>> edit_distance([5, 6], [])
    1.0
    >>> edit_distance([], [])
    0.0
    """
    longer = max(len(chosen_ids), len(rejected_ids))
    if longer == 0:
        return 0.0
    return Levenshtein.distance(chosen_ids, rejected_ids) / longer
