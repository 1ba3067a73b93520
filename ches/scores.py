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

    Bit-parallel (Myers 1999, in Hyyro's form for whole-string distance): one column of the
    dynamic-programming table is held as two bit vectors of vertical steps, ``up`` (+1) and ``down``
    (-1), over the longer sequence; each token of the shorter one updates the whole column with a
    dozen integer operations. Python's integers are as wide as the longer sequence, so a pair costs
    ``O(len(shorter) * len(longer) / 30)`` machine steps instead of a table of cells.

    >>> edit_distance([1, 2, 3, 4], [1, 3, 4])
    0.25
    >>> edit_distance([], [])
    0.0
    """
    longer_ids, shorter_ids = sorted((chosen_ids, rejected_ids), key=len, reverse=True)
    length = len(longer_ids)
    if length == 0:
        return 0.0
    matches: dict[int, int] = {}  # token -> bit i set where longer_ids[i] == token
    for position, token in enumerate(longer_ids):
        matches[token] = matches.get(token, 0) | (1 << position)
    column_mask, bottom = (1 << length) - 1, 1 << (length - 1)
    up, down, distance = column_mask, 0, length  # first column: distance i at row i
    for token in shorter_ids:
        match = matches.get(token, 0)
        vertical = match | down
        horizontal = (((match & up) + up) ^ up) | match
        step_up = down | (column_mask & ~(horizontal | up))
        step_down = up & horizontal
        if step_up & bottom:
            distance += 1
        elif step_down & bottom:
            distance -= 1
        step_up = ((step_up << 1) | 1) & column_mask  # row 0 grows by one per column
        step_down = (step_down << 1) & column_mask
        up = step_down | (column_mask & ~(vertical | step_up))
        down = step_up & vertical
    return distance / length
