"""The score formulas on hand-computed tensors, and edit distance against a brute-force Levenshtein."""

import math
import random

import torch
from conftest import levenshtein

from ches import scores


def test_ches_by_hand():
    plus, minus = torch.tensor([[1.0, 2.0], [0.5, -1.0]]), torch.tensor([[3.0, 1.0], [0.5, -1.0]])
    # <S+,S-> - |S+|^2: (3 + 2) - (1 + 4) = 0 ; (0.25 + 1) - 1.25 = 0
    assert scores.ches(plus, minus).tolist() == [0.0, 0.0]
    assert scores.ches(torch.tensor([[2.0, 0.0]]), torch.tensor([[-1.0, 5.0]])).tolist() == [-6.0]


def test_ln_ches_by_hand():
    plus, minus = torch.tensor([[2.0, 4.0]]), torch.tensor([[6.0, 3.0]])
    # <S+,S-> = 12 + 12 = 24 ; /(2*3) = 4 ; |S+|^2 = 20 ; /2^2 = 5 ; 4 - 5 = -1
    assert scores.ln_ches(plus, minus, torch.tensor([2]), torch.tensor([3])).tolist() == [-1.0]


def test_scores_are_float64_for_half_inputs():
    big = torch.full((1, 4), 300.0, dtype=torch.float16)
    result = scores.ches(big, big * 2)
    assert result.dtype == torch.float64 and math.isfinite(result.item())
    assert result.item() == 4 * 300 * 600 - 4 * 300 * 300


def test_last_hidden_ip_by_hand():
    assert scores.last_hidden_ip(torch.tensor([[1.0, -2.0, 3.0]]), torch.tensor([[4.0, 5.0, 6.0]])).tolist() == [12.0]


def normalized_levenshtein(first: list[int], second: list[int]) -> float:
    """The reference: textbook O(n * m) Levenshtein / the longer length, 0.0 for two empty sequences."""
    return levenshtein(first, second) / max(len(first), len(second), 1)


def test_edit_distance_matches_brute_force():
    # lengths 0..60 over vocabularies of 2..20 tokens, so that matches, runs and ties between edits happen
    rng = random.Random(0)
    for _ in range(400):
        vocab = rng.choice((2, 3, 5, 20))
        a = [rng.randrange(vocab) for _ in range(rng.randrange(0, 61))]
        b = [rng.randrange(vocab) for _ in range(rng.randrange(0, 61))]
        assert scores.edit_distance(a, b) == normalized_levenshtein(a, b), (a, b)


def test_edit_distance_matches_brute_force_on_long_sequences():
    # ~500 tokens (past rapidfuzz's 64-token single-word case), token ids of a real vocabulary
    rng = random.Random(2)
    for _ in range(4):
        a = [rng.randrange(32000) for _ in range(rng.randrange(450, 550))]
        b = [token if rng.random() < 0.8 else rng.randrange(32000) for token in a if rng.random() < 0.9]
        b += [rng.randrange(32000) for _ in range(rng.randrange(0, 40))]
        for first, second in ((a, b), (b, a)):
            assert scores.edit_distance(first, second) == normalized_levenshtein(first, second)
    a, b = [rng.randrange(3) for _ in range(500)], [rng.randrange(3) for _ in range(480)]
    assert scores.edit_distance(a, b) == normalized_levenshtein(a, b)


def test_edit_distance_matches_brute_force_past_machine_words():
    # lengths around 30/60/64-bit boundaries, shared stretches and edits, a large vocabulary
    rng = random.Random(1)
    for _ in range(60):
        a = [rng.randrange(50) for _ in range(rng.randrange(25, 140))]
        b = list(a)
        for _ in range(rng.randrange(0, 40)):
            where = rng.randrange(len(b) + 1)
            edit = rng.choice(("insert", "delete", "replace"))
            if edit == "insert" or not b:
                b.insert(where, rng.randrange(50))
            elif edit == "delete":
                del b[min(where, len(b) - 1)]
            else:
                b[min(where, len(b) - 1)] = rng.randrange(50)
        for first, second in ((a, b), (b, a)):
            assert scores.edit_distance(first, second) == normalized_levenshtein(first, second)


def test_edit_distance_edge_cases():
    assert scores.edit_distance([], []) == 0.0 and isinstance(scores.edit_distance([], []), float)
    assert scores.edit_distance([7, 8, 9], []) == 1.0 and scores.edit_distance([], [7]) == 1.0
    assert scores.edit_distance([1, 2, 3], [1, 2, 3]) == 0.0
    assert scores.edit_distance([1, 2, 3], [4, 5]) == 1.0  # disjoint: every token of the longer one is edited
    assert scores.edit_distance([4, 5], [1, 2, 3]) == 1.0
    assert scores.edit_distance([1, 2, 3], [3, 2, 1]) == 2 / 3
    assert scores.edit_distance((1, 2, 3, 4), [1, 3, 4]) == 0.25  # any sequence of ints
    assert scores.edit_distance([0, 50_000, 2**40], [0, 50_000, 2**40 + 1]) == 1 / 3  # large ids stay distinct
