"""Scores do not depend on batch size or input order beyond float noise; half precision stays finite."""

import copy
import math
import random

import numpy as np
import torch
from conftest import hh_rows

import ches

MEASURES = ("ches", "ln_ches", "last_hidden_ip", "edit_distance")


def close(first, second, rtol=1e-5):
    for measure in MEASURES:
        scale = max(abs(value) for value in first[measure])
        np.testing.assert_allclose(first[measure], second[measure], rtol=0, atol=rtol * scale, err_msg=measure)


def test_batch_size_does_not_change_scores(tokenizer, tiny_model):
    rows = hh_rows(24)
    model = tiny_model("qwen2")
    one_at_a_time = ches.score(rows, model, tokenizer, batch_tokens=1, progress=False)
    large = ches.score(rows, model, tokenizer, batch_tokens=100_000, progress=False)
    close(one_at_a_time, large)


def test_input_order_does_not_change_scores(tokenizer, tiny_model):
    rows = hh_rows(24)
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    model = tiny_model("llama")
    straight = ches.score(rows, model, tokenizer, batch_tokens=3000, progress=False)
    shuffled = ches.score([rows[i] for i in order], model, tokenizer, batch_tokens=3000, progress=False)
    unshuffled = {measure: [None] * len(rows) for measure in MEASURES}
    for position, original in enumerate(order):
        for measure in MEASURES:
            unshuffled[measure][original] = shuffled[measure][position]
    close(straight, unshuffled)


def test_half_precision_long_completions_stay_finite(tokenizer, tiny_model):
    # 2,000-token completions: summing in fp16 would overflow (||S||^2 alone exceeds 65,504)
    row = hh_rows(1)[0]
    long_row = {"prompt": "\n\nHuman: Tell me a story.\n\nAssistant:", "chosen": " " + row["chosen"] * 8,
                "rejected": " " + row["rejected"] * 8}
    model = copy.deepcopy(tiny_model("llama"))
    full = ches.score([long_row], model, tokenizer, progress=False)
    assert full["chosen_tokens"][0] > 1500
    for dtype in (torch.float16, torch.bfloat16):
        half = ches.score([long_row], model, tokenizer, dtype=dtype, progress=False)
        assert all(math.isfinite(half[measure][0]) for measure in MEASURES)
        # half-precision hidden states, float32 sums: the CHES value stays within a few percent
        assert abs(half["ches"][0] - full["ches"][0]) <= 0.05 * abs(full["ches"][0])


def ranks(values):
    return np.argsort(np.argsort(values))


def test_bfloat16_ranks_like_float32(tokenizer, tiny_model):
    rows = hh_rows(40)
    model = copy.deepcopy(tiny_model("llama"))
    full = ches.score(rows, model, tokenizer, progress=False)
    half = ches.score(rows, model, tokenizer, dtype="bfloat16", progress=False)
    for measure in ("ches", "ln_ches"):
        rho = np.corrcoef(ranks(full[measure]), ranks(half[measure]))[0, 1]
        assert rho > 0.98, (measure, rho)
