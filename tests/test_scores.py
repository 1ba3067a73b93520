"""The score formulas on hand-computed tensors, and edit distance against a brute-force Levenshtein."""

import math
import random

import torch

from ches import scores
from conftest import levenshtein


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


def test_edit_distance_matches_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.randrange(4) for _ in range(rng.randrange(0, 12))]
        b = [rng.randrange(4) for _ in range(rng.randrange(0, 12))]
        expected = levenshtein(a, b) / max(len(a), len(b), 1)
        assert scores.edit_distance(a, b) == expected, (a, b)


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
            expected = levenshtein(first, second) / max(len(first), len(second), 1)
            assert scores.edit_distance(first, second) == expected


def test_edit_distance_bounds():
    assert scores.edit_distance([1, 2, 3], [1, 2, 3]) == 0.0
    assert scores.edit_distance([1, 2, 3], [4, 5]) == 1.0
