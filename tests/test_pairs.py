"""ches.pairs: multi-response rows -> DPO pairs chosen by CHES, checked against ches.score pair by pair."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import MODEL_DIR, ROOT, hh_rows, standard_rows
from edges import LONG, edit_weights, short_context_model

import ches
from ches.builder.candidates import from_generic, from_ultrafeedback, to_candidates
from ches.cli import main
from ches.options import PAIR_LAYOUT_DEFAULT
from ches.run.chunk_loop import ChunkSizes
from ches.scores.pairing import allowed_pairs, pair_matrices, select

PERSONA = ROOT / "examples" / "data" / "persona-ends-justify-means.jsonl"
ANSWERS = [" No", " Never", " Yes", " Sure", " No, I would not say that.", " Yes, I would."]
RATINGS = [3.0, 2.0, 0.0, 0.0, 3.0, 1.0]


def persona_rows(count: int) -> list[dict]:
    """The paper's setting: a Persona statement with several candidate answers, rated."""
    rows = [json.loads(line) for line in PERSONA.read_text(encoding="utf-8").splitlines()[:count]]
    return [{"prompt": f"\n\nHuman: {row['question']}\n\nAssistant:", "responses": list(ANSWERS),
             "ratings": list(RATINGS)} for row in rows]


def hh_candidate_rows(count: int) -> list[dict]:
    """Real hh-rlhf text: each prompt's chosen and rejected answers plus a cut-down chosen answer."""
    rows = standard_rows(hh_rows(count))
    return [{"prompt": row["prompt"], "responses": [row["chosen"], row["rejected"], row["chosen"][:40]],
             "ratings": [2.0, 0.0, 1.0]} for row in rows]


MERGING = {"prompt": "Say th", "responses": ["ink", " no", "out", "e"], "ratings": [3.0, 2.0, 1.0, 0.0]}


def all_pairs(rows, model, tokenizer, **options):
    """Every allowed pair of every row (all_min_ches with a per_prompt larger than any row's pair count), and the
    run's record."""
    return ches.pairs_run(rows, model, tokenizer, rule="all_min_ches", per_prompt=100, **options)


def assert_equal_to_score(built, model, tokenizer, **score_options):
    """Each built pair's scores equal ches.score on that pair alone (fp32, the core tests' tolerance)."""
    rows = [{"prompt": p, "chosen": c, "rejected": r}
            for p, c, r in zip(built["prompt"], built["chosen"], built["rejected"])]
    scored = ches.score(rows, model, tokenizer, layout="padded", progress=False, **score_options)
    for measure in ("ches", "ln_ches", "last_hidden_ip", "edit_distance"):
        scale = max(abs(value) for value in scored[measure]) or 1.0
        for ours, theirs in zip(built[measure], scored[measure]):
            assert math.isfinite(ours) and abs(ours - theirs) <= 1e-4 * scale, (measure, ours, theirs)
    for name in ("prompt_tokens", "chosen_tokens", "rejected_tokens"):
        assert built[name] == scored[name], name
    assert scored["ches_skip"] == [None] * len(rows)
    assert built["ches_flags"] == scored["ches_flags"]  # integrity flags as ches.score sets them on that pair
    if score_options.get("logps"):
        for name in ("chosen_logps", "rejected_logps"):
            for ours, theirs in zip(built[name], scored[name]):
                assert math.isfinite(ours) and abs(ours - theirs) <= 1e-4 * max(1.0, abs(theirs)), (name, ours, theirs)


# --- format layer -----------------------------------------------------------------------------------------

def test_generic_and_ultrafeedback_rows_normalize():
    assert from_generic({"prompt": "p", "responses": ["a"], "ratings": [1], "id": 7}) == \
        {"prompt": "p", "responses": ["a"], "ratings": [1]}
    row = {"instruction": "Q", "completions": [{"response": "a", "overall_score": 7, "fine-grained_score": 3.5},
                                              {"response": "b", "overall_score": 2, "fine-grained_score": 4.0}]}
    assert from_ultrafeedback(row)["ratings"] == [7, 2]
    assert from_ultrafeedback(row, "fine-grained_score")["ratings"] == [3.5, 4.0]


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "responses": ["a", "b"], "ratings": [1.0]},
     "row 1, column 'ratings': 1 ratings for 2 responses; give one rating per response, in the same order."),
    ({"prompt": "p", "responses": ["a", "b"], "ratings": None},
     "row 1, column 'ratings': expected a list of numbers (one per response), found None"),
    ({"prompt": "p", "responses": ["a", "b"], "ratings": [1.0, None]},
     "row 1, column 'ratings', response 1: expected a number, found None"),
    ({"prompt": "p", "responses": ["a", "b"], "ratings": [1.0, float("nan")]},
     "row 1, column 'ratings', response 1: the rating is nan; ratings must be finite"),
    ({"prompt": "p", "responses": ["a", "b"], "ratings": [1.0, "N/A"]},
     "row 1, column 'ratings', response 1: expected a number, found str 'N/A'"),
    ({"prompt": "p", "responses": "a", "ratings": [1.0]},
     "row 1, column 'responses': expected a list of responses, found str 'a'"),
    ({"prompt": "p", "responses": ["a", 3], "ratings": [1.0, 0.0]},
     "row 1, column 'responses', response 1: expected a string, found int 3"),
    ({"prompt": None, "responses": ["a", "b"], "ratings": [1.0, 0.0]},
     "row 1, column 'prompt': expected a string, found None"),
])
def test_bad_rows_raise_naming_row_and_column(row, message):
    good = {"prompt": "q", "responses": ["x", "y"], "ratings": [1, 0]}
    with pytest.raises(ches.ChesError) as error:
        to_candidates([good, row])
    assert str(error.value).startswith(message)


def test_bad_input_and_options_fail_before_the_model_loads():
    missing_model = "no/such-model-folder"
    with pytest.raises(ches.ChesError, match="row 0, column 'scores': 1 ratings for 2 responses"):
        ches.pairs([{"q": "p", "outs": ["a", "b"], "scores": [1]}], missing_model,
                   columns={"prompt": "q", "responses": "outs", "ratings": "scores"})
    with pytest.raises(ches.ChesError, match=r"missing column\(s\) \['ratings'\]"):
        ches.pairs([{"prompt": "p", "responses": ["a", "b"]}], missing_model)
    with pytest.raises(ches.ChesError, match="completions\\[\\*\\].overall_score', response 0: expected a number"):
        ches.pairs([{"instruction": "p", "completions": [{"response": "a"}, {"response": "b"}]}], missing_model)
    for options, message in [({"rule": "best"}, "rule='best' is not one of"), ({"measure": "edit_distance"}, "measure="),
                             ({"min_margin": -1}, "min_margin=-1"), ({"per_prompt": 0}, "per_prompt=0"),
                             ({"layout": "shared_prompt"}, "layout='shared_prompt'")]:
        with pytest.raises(ches.ChesError, match=message):
            ches.pairs([{"prompt": "p", "responses": ["a", "b"], "ratings": [1, 0]}], missing_model, **options)


def test_scoring_options_are_score_options():
    """ches.pairs takes ches.score's options (a ScoreOptions and/or keywords), checked the same way."""
    from ches.data.columns import DEFAULT_MEASURE, MEASURES
    from ches.options import PAIR_MEASURES, PairOptions, ScoreOptions, pair_score_options
    from ches.scores.pairing import PairMatrices

    assert set(PAIR_MEASURES) == set(MEASURES) & set(PairMatrices.__dataclass_fields__)
    assert PairOptions().measure == DEFAULT_MEASURE in PAIR_MEASURES
    given = pair_score_options(ScoreOptions(max_length=64), device_map="auto", dtype="float32")
    assert (given.max_length, given.dtype, given.model_kwargs) == (64, "float32", {"device_map": "auto"})
    row = [{"prompt": "p", "responses": ["a", "b"], "ratings": [1, 0]}]
    for options, message in [({"max_lenght": 8}, "unknown option 'max_lenght' \\(did you mean 'max_length'\\?\\)"),
                             ({"max_length": 1}, "max_length=1 must be an integer >= 2"),
                             ({"save_embeddings": "sums.safetensors"}, "save_embeddings= applies to ches.score only"),
                             ({"options": ScoreOptions(compile=True)}, "compile= applies to ches.score only"),
                             ({"options": ScoreOptions(columns={"chosen": "x"})}, "columns= applies to ches.score only")]:
        with pytest.raises(ches.ChesError, match=message):
            ches.pairs(row, "no/such-model-folder", **options)


def test_token_ids_may_be_compact_arrays(tokenizer, monkeypatch):
    """The pairs layer uses token ids as sequences only: array('i') ids give the same plans as lists."""
    import dataclasses
    from array import array
    from types import SimpleNamespace

    import ches.builder.plan as builder
    from ches.builder.choice import select_pairs

    loaded = SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace(max_position_embeddings=1024)),
                             tokenizer=tokenizer, embedding_rows=len(tokenizer))
    rows = to_candidates(persona_rows(1) + [MERGING] + hh_candidate_rows(2))
    lists, skipped = builder.plan_prompts(rows, loaded, max_length=48)
    real = builder.tokenize_pairs

    def as_arrays(pairs, tokenizer, first_row=0):
        return [dataclasses.replace(tokens, **{name: array("i", getattr(tokens, name))
                                               for name in ("prompt_ids", "chosen_ids", "rejected_ids")})
                for tokens in real(pairs, tokenizer, first_row)]

    monkeypatch.setattr(builder, "tokenize_pairs", as_arrays)
    arrays, skipped_too = builder.plan_prompts(rows, loaded, max_length=48)
    assert skipped == skipped_too and len(arrays) == len(lists) > 0
    for mine, theirs in zip(arrays, lists):
        assert isinstance(mine.sequences[0].input_ids, array)
        for ours, reference in zip(mine.sequences + mine.corrections, theirs.sequences + theirs.corrections):
            assert (list(ours.input_ids), ours.start, ours.end) == (reference.input_ids, reference.start, reference.end)
        assert (mine.responses, mine.prefix, mine.correction_of) == (theirs.responses, theirs.prefix, theirs.correction_of)
    from ches.model.engine import HiddenSums
    from ches.options import PairOptions

    count = sum(len(plan.sequences) + len(plan.corrections) for plan in lists)
    sums = HiddenSums(torch.randn(count, 8, generator=torch.Generator().manual_seed(0)), torch.randn(count, 8))
    rules = PairOptions(rule="all_min_ches", per_prompt=100)
    assert select_pairs(rows, arrays, sums, rules, 48) == select_pairs(rows, lists, sums, rules, 48)


# --- pure math and selection ---------------------------------------------------------------------------------

def test_pair_matrices_match_the_formulas_with_prompt_corrections():
    torch.manual_seed(0)
    sums, corrections = torch.randn(4, 6), torch.randn(4, 6)
    lengths, prefix = torch.tensor([5, 7, 4, 6]), torch.tensor([3, 5, 3, 4])
    corrections[prefix == prefix.min()] = 0.0
    matrices = pair_matrices(sums, lengths, prefix, corrections)
    for i in range(4):
        for j in range(4):
            if i == j:
                continue
            k = i if prefix[i] <= prefix[j] else j
            plus, minus = (sums[i] - corrections[k]).double(), (sums[j] - corrections[k]).double()
            n_plus = lengths[i] - (prefix[k] - 3)
            n_minus = lengths[j] - (prefix[k] - 3)
            assert torch.isclose(matrices.ches[i, j], plus @ minus - plus @ plus)
            assert torch.isclose(matrices.ln_ches[i, j], plus @ minus / (n_plus * n_minus) - plus @ plus / n_plus**2)
            assert matrices.chosen_tokens[i, j] == n_plus and matrices.rejected_tokens[i, j] == n_minus


def test_baselines_by_definition_and_ties():
    ratings = np.array([1.0, 3.0, 3.0, 0.0, 0.0, 2.0])
    measure = np.array([[0, 1, 1, 1, 1, 1], [4, 0, 9, 2, 2, 7], [0, 0, 0, 0, 0, 0]] + [[0] * 6] * 3, dtype=float)
    allowed = allowed_pairs(ratings, measure)
    assert select("max_margin", measure, ratings, allowed) == [(1, 3)]  # first-listed top and bottom
    assert select("min_ches", measure, ratings, allowed) == [(1, 3)]  # 2 = 2: the lower index
    assert select("min_ches", measure, ratings, allowed, per_prompt=3) == [(1, 3), (1, 4), (1, 0)]
    assert select("all_min_ches", measure, ratings, allowed)[0] == (2, 0)  # 0 beats row 1's minimum
    draws = {select("random", measure, ratings, allowed, rng=np.random.default_rng(seed))[0] for seed in range(40)}
    assert draws == {(1, 0), (1, 3), (1, 4), (1, 5)}  # uniform over the lower-rated ones
    assert not allowed_pairs(np.array([1.0, 0.5]), np.zeros((2, 2)), min_margin=0.6).any()


# --- against ches.score -----------------------------------------------------------------------------------

def test_every_pair_equals_ches_score_on_that_pair(tiny_model, tokenizer):
    model = tiny_model("llama")
    rows = persona_rows(3) + hh_candidate_rows(4) + [MERGING]
    built, info = all_pairs(rows, model, tokenizer, layout="prefix_shared")
    assert info["layout"] == "prefix_shared" and not info.skipped_prompts
    boundaries = {tokens for tokens, row in zip(built["prompt_tokens"], built["source_row"]) if row == 7}
    assert boundaries == {3, 4}  # tokens merge across "Say th|ink" but not "Say th| no": two prompt boundaries
    assert_equal_to_score(built, model, tokenizer)


def test_logps_equal_ches_score_logps_on_each_pair(tiny_model, tokenizer):
    """With logps, each pair's chosen_logps/rejected_logps are what ches.score(..., logps=True) gives that pair,
    where tokens merge across the prompt boundary too (the prompt's log-probs between boundaries subtracted)."""
    model = tiny_model("llama")
    built, info = all_pairs(persona_rows(1) + hh_candidate_rows(2) + [MERGING], model, tokenizer, logps=True)
    assert {3, 4} <= set(built["prompt_tokens"])
    assert_equal_to_score(built, model, tokenizer, logps=True)
    assert info.model_fingerprint and info.tokenizer_fingerprint


def test_max_length_pairs_equal_ches_score_truncated(tiny_model, tokenizer):
    model = tiny_model("llama")
    rows = hh_candidate_rows(6) + [MERGING]
    built, info = all_pairs(rows, model, tokenizer, max_length=64)
    skipped = [item.reason for item in info.skipped_prompts]
    assert all(reason.startswith("prompt fills max_length") for reason in skipped)
    assert_equal_to_score(built, model, tokenizer, max_length=64)


def test_pairs_carry_the_integrity_flags_ches_score_gives_them(tiny_model, tokenizer):
    model = tiny_model("llama")
    rows = [dict(row, prompt="\n\nHuman: Can you help me?\n\nAssistant:") for row in hh_candidate_rows(4)]
    rows[0] = dict(rows[0], responses=[*rows[0]["responses"][:2], " "], ratings=[*rows[0]["ratings"][:2], 9.0])
    rows[1] = dict(rows[1], responses=[*rows[1]["responses"][:2], ""], ratings=[*rows[1]["ratings"][:2], -1.0])
    built, _ = all_pairs(rows, model, tokenizer, max_length=40)
    assert_equal_to_score(built, model, tokenizer, max_length=40)
    seen = {flag for flags in built["ches_flags"] for flag in flags}
    assert {"empty_chosen", "empty_rejected", "chosen_truncated", "rejected_truncated"} <= seen


def test_layouts_agree(tiny_model, tokenizer):
    model = tiny_model("llama")
    rows = persona_rows(2) + [MERGING]
    shared = all_pairs(rows, model, tokenizer, layout="prefix_shared")[0]
    padded = all_pairs(rows, model, tokenizer, layout="padded")[0]
    assert shared["chosen_index"] == padded["chosen_index"]
    np.testing.assert_allclose(shared["ln_ches"], padded["ln_ches"], rtol=1e-4)


def test_min_ches_is_the_brute_force_minimum(tiny_model, tokenizer):
    model = tiny_model("llama")
    rows = persona_rows(4) + hh_candidate_rows(3)
    for measure in ("ln_ches", "ches"):
        every = all_pairs(rows, model, tokenizer, measure=measure)[0]
        best = ches.pairs(rows, model, tokenizer, measure=measure)
        global_best = ches.pairs(rows, model, tokenizer, rule="all_min_ches", measure=measure)
        for row in range(len(rows)):
            mine = [k for k, source in enumerate(every["source_row"]) if source == row]
            top = int(np.argmax(rows[row]["ratings"]))
            from_top = [k for k in mine if every["chosen_index"][k] == top]
            assert best[measure][row] == min(every[measure][k] for k in from_top)
            assert best["chosen_index"][row] == top
            assert global_best[measure][row] == min(every[measure][k] for k in mine)


def test_baselines_and_seeded_random_on_data(tiny_model, tokenizer):
    """The rules are pure functions tested on their own (test_baselines_by_definition_and_ties); here, that ches.pairs wires
    them to the data: which rule, the seed per source row, min_margin. Four runs of the model."""
    model = tiny_model("llama")
    rows = persona_rows(6)
    worst = ches.pairs(rows, model, tokenizer, rule="max_margin")
    assert set(worst["rejected"]) == {" Yes"}  # the first-listed of the lowest-rated answers
    assert set(worst["chosen"]) == {" No"}
    changed = [dict(rows[0], ratings=[0.0, 3.0, 2.0, 1.0, 0.0, 0.0])] + rows[1:]  # another row's draw
    for data in (rows, changed):
        drawn = ches.pairs(data, model, tokenizer, rule="random", seed=3)
        for row, (chosen, rejected) in enumerate(zip(drawn["chosen_index"], drawn["rejected_index"])):
            ratings = np.array(data[row]["ratings"])  # the pure rule, with the generator of (seed, source row)
            allowed = allowed_pairs(ratings, np.zeros((6, 6)), same=np.eye(6, dtype=bool))
            expected = select("random", np.zeros((6, 6)), ratings, allowed, rng=np.random.default_rng([3, row]))
            assert [(chosen, rejected)] == expected
    margin = ches.pairs(rows, model, tokenizer, min_margin=2.5)
    assert set(margin["rejected_rating"]) == {0.0}


def test_per_row_reasons_nothing_dropped(tiny_model, tokenizer):
    model = tiny_model("llama")
    rows = [persona_rows(1)[0],
            {"prompt": "p", "responses": [" a"], "ratings": [1.0]},
            {"prompt": "p", "responses": [], "ratings": []},
            {"prompt": "p", "responses": [" a", " b"], "ratings": [2.0, 2.0]},
            {"prompt": "p", "responses": [" a", " a"], "ratings": [2.0, 1.0]},
            {"prompt": "p", "responses": [" a", " b", " a"], "ratings": [2.0, 2.0, 1.0]}]
    built, info = ches.pairs_run(rows, model, tokenizer, per_prompt=2)
    reasons = {item.source_row: item.reason for item in info.skipped_prompts}
    assert reasons == {1: "fewer than two responses", 2: "fewer than two responses",
                       3: "no allowed pair: all ratings equal (2)",
                       4: "no allowed pair: the only pairs with different ratings are identical responses"}
    assert built["source_row"] == [0, 0, 5]  # the duplicate " a" is never paired with itself:
    assert (built["chosen"][2], built["rejected"][2]) == (" b", " a")  # the next top-rated is chosen
    assert info["skipped"] == {"fewer than two responses": 2, "no allowed pair: all ratings equal (2)": 1,
                                     "no allowed pair: the only pairs with different ratings are identical responses": 1}


def test_each_response_runs_once(tiny_model, tokenizer, monkeypatch):
    """The tokens that reach the model: each prompt once, then each response once (not once per pair)."""
    model = tiny_model("llama")
    rows = persona_rows(3) + hh_candidate_rows(2)
    counted = []
    original_forward = model.model.forward
    import ches.model.layouts as layouts  # the layouts run the engine through ches.model.layouts.hidden_sums: patch it there

    real = layouts.hidden_sums

    def counting(body, sequences, **kwargs):
        def forward(*args, **inner):
            counted.append(int(inner["input_ids"].numel()))
            return original_forward(*args, **inner)

        monkeypatch.setattr(model.model, "forward", forward)
        try:
            return real(body, sequences, **kwargs)
        finally:
            monkeypatch.setattr(model.model, "forward", original_forward)

    monkeypatch.setattr(layouts, "hidden_sums", counting)
    built, info = all_pairs(rows, model, tokenizer, layout="prefix_shared")
    expected = 0
    for row in rows:
        prompt = len(tokenizer(row["prompt"])["input_ids"])
        full = [len(tokenizer(row["prompt"] + response + tokenizer.eos_token)["input_ids"])
                for response in row["responses"]]
        expected += prompt + sum(length - prompt for length in full)
    assert sum(counted) == expected == info["tokens_run"]
    per_pair = sum(2 * row_prompt for row_prompt in built["prompt_tokens"]) + \
        sum(built["chosen_tokens"]) + sum(built["rejected_tokens"])
    assert expected < per_pair / 2  # 15 pairs per Persona prompt: far fewer tokens than scoring every pair


# --- input schemas -----------------------------------------------------------------------------------------

def test_ultrafeedback_file(tiny_model, tokenizer, tmp_path):
    model = tiny_model("llama")
    path = tmp_path / "ultrafeedback.jsonl"
    rows = [{"source": "test", "instruction": row["prompt"].split("Human: ")[-1].split("\n\nAssistant:")[0],
             "models": ["a", "b", "c"],
             "completions": [{"model": m, "response": text, "overall_score": overall, "fine-grained_score": fine,
                              "annotations": {"helpfulness": {"Rating": "4"}}}
                             for m, text, overall, fine in zip("abc", row["responses"], [8.0, 3.0, 5.0], [2.0, 4.5, 3.0])]}
            for row in hh_candidate_rows(3)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    overall, info = ches.pairs_run(path, model, tokenizer, rule="max_margin")
    fine = ches.pairs(path, model, tokenizer, rule="max_margin", rating_field="fine-grained_score")
    assert info["schema"] == "ultrafeedback"
    assert overall["chosen_index"] == [0, 0, 0] and overall["rejected_index"] == [1, 1, 1]
    assert fine["chosen_index"] == [1, 1, 1] and fine["rejected_index"] == [0, 0, 0]
    assert fine["prompt"][0] == rows[0]["instruction"]
    assert info.carried_columns == ["source", "models"]  # all but instruction and completions, into each pair
    assert fine["source"] == [row["source"] for row in rows] and fine["models"] == [row["models"] for row in rows]
    assert_equal_to_score(overall, model, tokenizer)
    with pytest.raises(ches.ChesError, match=r"^rating_field='fine_grained_score' \(--rating-field\) is not a field of "
                                             r"the completions \(did you mean 'fine-grained_score'\?\); they have "
                                             r"annotations, fine-grained_score, model, overall_score, response.$"):
        ches.pairs(path, model, tokenizer, rating_field="fine_grained_score")


def test_conversational_rows(tiny_model, tokenizer):
    model = tiny_model("llama")
    rows = []
    for row in persona_rows(2):
        question = row["prompt"].split("Human: ")[1].split("\n\nAssistant:")[0]
        rows.append({"prompt": [{"role": "user", "content": question}],
                     "responses": [[{"role": "assistant", "content": answer.strip()}] for answer in ANSWERS],
                     "ratings": RATINGS})
    built, info = all_pairs(rows, model, tokenizer)
    assert isinstance(built["chosen"][0], list) and built["chosen"][0][0]["role"] == "assistant"
    assert_equal_to_score(built, model, tokenizer)
    with pytest.raises(ches.ChesError, match="row 1, column 'responses', response 0: expected a message list"):
        to_candidates([rows[0], {"prompt": rows[0]["prompt"], "responses": ["Yes", "No"], "ratings": [1, 0]}])


# --- the output: traced back, TRL-ready, read by filter, report and audit ---------------------------------------

def test_the_rows_other_columns_are_carried_into_each_pair(tiny_model, tokenizer, tmp_path):
    model = tiny_model("llama")
    rows = [dict(row, prompt_id=f"id-{k}", source=["hh", "persona"][k % 2], meta={"turns": k})
            for k, row in enumerate(hh_candidate_rows(3) + persona_rows(2))]
    built, info = ches.pairs_run(rows, model, tokenizer, per_prompt=2, progress=False)
    assert info.carried_columns == ["prompt_id", "source", "meta"] == built.column_names[-3:]
    assert built.num_rows == 10
    for pair in built:
        source = rows[pair["source_row"]]
        assert (pair["prompt_id"], pair["source"], pair["meta"], pair["prompt"]) == \
            (source["prompt_id"], source["source"], source["meta"], source["prompt"])
    built.to_json(tmp_path / "pairs.jsonl")  # the dataset itself: straight to a file, or to TRL
    written = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert [row["prompt_id"] for row in written] == built["prompt_id"]


def test_the_columns_are_typed_as_ches_score_types_them_even_with_no_pair(tiny_model, tokenizer):
    from ches.data.columns import LOGPS_COLUMNS, SCORE_COLUMNS

    model = tiny_model("llama")
    built = ches.pairs([dict(persona_rows(1)[0], prompt_id="a")], model, tokenizer, logps=True, progress=False)
    empty = ches.pairs([{"prompt": "p", "responses": [" a"], "ratings": [1.0], "prompt_id": "b"}], model, tokenizer,
                       logps=True, progress=False)
    scored = ches.score([{"prompt": "p", "chosen": " a", "rejected": " b"}], model, tokenizer, logps=True, progress=False)
    assert (built.num_rows, empty.num_rows) == (1, 0) and empty.column_names == built.column_names
    assert empty.features == built.features  # every column, typed, the carried prompt_id too
    for name in SCORE_COLUMNS + LOGPS_COLUMNS:
        assert built.features[name] == scored.features[name], name


def test_a_carried_column_named_like_an_output_column_is_refused_before_the_model_loads():
    rows = [{"prompt": "p", "responses": ["a", "b"], "ratings": [1, 0], "ln_ches": 0.5}]
    with pytest.raises(ches.ChesError) as error:
        ches.pairs(rows, "no/such-model-folder")
    assert str(error.value) == (
        "column 'ln_ches' would be carried into each pair (ches.pairs reads 'prompt', 'responses', 'ratings'), but "
        "ches.pairs writes its output column 'ln_ches' there; rename it first (dataset.rename_column('ln_ches', ...)) "
        "or drop it (dataset.remove_columns('ln_ches')).")
    renamed = [{"question": "p", "responses": ["a", "b"], "ratings": [1, 0], "prompt": "kept"}]
    with pytest.raises(ches.ChesError, match="column 'prompt' would be carried into each pair .ches.pairs reads "
                                             "'question', 'responses', 'ratings'."):
        ches.pairs(renamed, "no/such-model-folder", columns={"prompt": "question"})
    with pytest.raises(ches.ChesError, match="column 'chosen_logps' would be carried"):
        ches.pairs([{"prompt": "p", "responses": ["a", "b"], "ratings": [1, 0], "chosen_logps": 1.0}], "no/such-model-folder",
                   logps=True)


def test_filter_report_and_audit_take_the_pairs(tiny_model, tokenizer, tmp_path):
    from ches.cli import main
    from ches.evaluate.auditing import audit

    model = tiny_model("llama")
    rows = persona_rows(3) + hh_candidate_rows(3)
    built = ches.pairs(rows, model, tokenizer, logps=True, progress=False)
    kept = ches.filter(built, keep=2)
    assert sorted(kept["ln_ches"]) == sorted(built["ln_ches"])[:2]  # the two lowest, by a direct sort
    audited = audit(built, model, tokenizer, resamples=20, progress=False)  # the model DPO started from: no change
    assert np.abs(np.array(audited.dataset["chosen_change"])).max() < 1e-4
    assert np.abs(np.array(audited.dataset["rejected_change"])).max() < 1e-4
    path = tmp_path / "pairs.parquet"
    built.to_parquet(path)
    assert main(["report", str(path), "--output", str(tmp_path / "report.html")]) == 0
    assert "<html" in (tmp_path / "report.html").read_text()[:200].lower()
    without = ches.pairs(rows[:3], model, tokenizer, progress=False)
    with pytest.raises(ches.ChesError, match=r"these rows have no chosen_logps, rejected_logps: .* build them with "
                                             r"ches.pairs\(\.\.\., logps=True\) \(ches pairs --logps\)"):
        audit(without, model, tokenizer)


def test_cli_pairs_with_logps_then_audit(tmp_path, capsys):
    """The file ches pairs --logps writes (and its sidecar, the record of the reference) is what ches audit reads."""
    from ches.cli import main
    from ches.data.inputs import load_data

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in persona_rows(3)), encoding="utf-8")
    built, audited = tmp_path / "pairs.parquet", tmp_path / "audited.parquet"
    assert main(["pairs", str(data), "--model", str(MODEL_DIR), "--logps", "--per-prompt", "2", "--output", str(built),
                 "--no-progress"]) == 0
    assert main(["audit", str(built), "--model", str(MODEL_DIR), "--resamples", "20", "--output", str(audited),
                 "--no-progress"]) == 0, capsys.readouterr().err
    change = np.array(load_data(str(audited))["chosen_change"])
    assert len(change) == 6 and np.abs(change).max() < 1e-4  # the model the pairs were scored with: nothing moved


def test_a_second_run_with_the_same_cache_runs_only_the_new_prompts(tiny_model, tokenizer, tmp_path, monkeypatch):
    import ches.builder.passes as passes

    model = tiny_model("llama")
    rows = hh_candidate_rows(2) + persona_rows(2)
    small = ChunkSizes(sequences=1)  # one prompt per chunk
    ran = []
    real = passes.run_sequences

    def counting(sequences, groups, *args, **kwargs):
        ran.append(len(sequences))
        return real(sequences, groups, *args, **kwargs)

    monkeypatch.setattr(passes, "run_sequences", counting)
    ches.pairs(rows[:2], model, tokenizer, cache_dir=tmp_path / "cache", logps=True, progress=False, chunk_sizes=small)
    assert ran == [3, 3]
    ran.clear()
    again, info = ches.pairs_run(rows, model, tokenizer, cache_dir=tmp_path / "cache", logps=True, progress=False, chunk_sizes=small)
    assert ran == [len(row["responses"]) for row in rows[2:]] and info.chunks_reused == 2  # the new prompts only
    ran.clear()
    fresh = ches.pairs(rows, model, tokenizer, logps=True, progress=False, chunk_sizes=small)
    assert again.to_list() == fresh.to_list()
    ran.clear()
    cached, info = ches.pairs_run(rows, model, tokenizer, cache_dir=tmp_path / "cache", rule="max_margin",
                                  logps=True, progress=False, chunk_sizes=small)  # another rule: the same passes, all from the cache
    assert ran == [] and info.chunks_reused == 4 and info.tokens_run == 0 and cached.num_rows == 4


# --- command line ------------------------------------------------------------------------------------------

def test_help_lists_the_choices_and_the_default_layout_it_runs(capsys):
    from ches.cli import main
    from ches.options import PAIR_LAYOUTS, PAIR_MEASURES, RULES

    with pytest.raises(SystemExit):
        main(["pairs", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    for flag, choices in (("--rule", RULES), ("--measure", PAIR_MEASURES), ("--layout", PAIR_LAYOUTS)):
        assert f"{flag} {{{','.join(choices)}}}" in text
    assert f"how sequences are batched (default: {PAIR_LAYOUT_DEFAULT})" in text
    assert "cheapest" not in text


def test_the_counts_printed_say_one_and_leave_out_zero(tmp_path, capsys):
    from ches.cli import main

    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps(persona_rows(1)[0]) + "\n", encoding="utf-8")
    assert main(["pairs", str(data), "--model", str(MODEL_DIR), "--no-progress"]) == 0
    assert capsys.readouterr().out == "1 pair from 1 of 1 prompt (rule min_ches, ln_ches)\n"


def test_cli_round_trip(tmp_path, capsys):
    from ches.cli import main

    data = tmp_path / "rows.jsonl"
    rows = [{"q": row["prompt"], "outs": row["responses"], "scores": row["ratings"]} for row in persona_rows(3)]
    rows.append({"q": "x", "outs": [" a"], "scores": [1]})
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    output = tmp_path / "pairs.jsonl"
    argv = ["pairs", str(data), "--model", str(MODEL_DIR), "--output", str(output), "--columns",
            "prompt=q,responses=outs,ratings=scores", "--rule", "random", "--seed", "1", "--per-prompt", "2",
            "--threads", "1", "--no-progress"]
    assert main(argv) == 0
    assert capsys.readouterr().out == ("6 pairs from 3 of 4 prompts (rule random, ln_ches); 1 prompt skipped (listed in "
                                       "the .meta.json sidecar)\n")  # counted by hand: 2 pairs from each of 3 rows
    written = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(written) == 6 and {"prompt", "chosen", "rejected", "ln_ches", "source_row"} <= set(written[0])
    meta = json.loads((tmp_path / "pairs.jsonl.meta.json").read_text())
    assert meta["skipped_prompts"] == [{"source_row": 3, "reason": "fewer than two responses", "candidates": 1}]
    assert meta["run"]["options"]["rule"] == "random" and meta["run"]["threads"] == 1
    assert (meta["run"]["options"]["num_threads"], meta["run"]["options"]["progress"]) == (1, False)
    assert meta["run"]["layout_reason"] == f"default; {PAIR_LAYOUT_DEFAULT}"  # what --help says the default is
    assert main(argv) == 2 and "exists; pass --overwrite" in capsys.readouterr().err
    assert main(["filter", str(output), "--keep", "2", "--no-scores", "--output", str(tmp_path / "kept.jsonl")]) == 0
    kept = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert len(kept) == 2 and "ln_ches" not in kept[0]


def test_an_unscorable_top_rated_response_skips_the_prompt_naming_it(workdir):
    model = short_context_model(workdir)
    rows = [{"prompt": "Q:", "responses": [LONG, " b", " c"], "ratings": [3, 2, 1]},
            {"prompt": "Q:", "responses": [" a", LONG, " c"], "ratings": [3, 2, 1]},
            {"prompt": "Q:", "responses": [" a", " b", LONG], "ratings": [3, 2, 1]},
            {"prompt": "Q:", "responses": [LONG, " b", " c"], "ratings": [3, 3, 1]}]
    built, info = ches.pairs_run(rows, model, progress=False)
    assert [item.source_row for item in info.skipped_prompts] == [0]
    assert info.skipped_prompts[0].reason.startswith("the top-rated response 0 (rating 3) could not be scored: ")
    assert "tokens exceeds the model's context (48); pass max_length" in info.skipped_prompts[0].reason
    assert built["source_row"] == [1, 2, 3] and built["chosen_index"] == [0, 0, 1]
    assert built["unscored_responses"] == [[1], [2], [0]]  # said in the output of every pair it touched
    assert [(item.source_row, item.response) for item in info.unscored_responses] == [(0, 0), (1, 1), (2, 2), (3, 0)]
    worst = ches.pairs_run(rows, model, rule="max_margin", progress=False)[1]  # the lowest-rated one is needed too
    assert {item.source_row: item.reason.split(" could")[0] for item in worst.skipped_prompts} == {
        0: "the top-rated response 0 (rating 3)", 2: "the lowest-rated response 2 (rating 1)"}
    every, info = ches.pairs_run(rows, model, rule="all_min_ches", progress=False)  # searches every pair: nothing needed
    assert not info.skipped_prompts and every["unscored_responses"] == [[0], [1], [2], [0]]


def test_score_and_pairs_give_a_response_too_long_for_the_context_one_reason(workdir):
    """The context limit is worded once: ches.score's skip reason for a pair and ches.pairs' reason for the same
    response are the sentence written out here, with the sequence's own length counted by the tokenizer."""
    from transformers import AutoTokenizer

    model = short_context_model(workdir)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokens = len(tokenizer("Q:" + LONG + tokenizer.eos_token)["input_ids"])
    expected = f"sequence of {tokens} tokens exceeds the model's context (48); pass max_length"
    scored = ches.score([{"prompt": "Q:", "chosen": LONG, "rejected": " b"}], model, progress=False)
    assert scored["ches_skip"] == [expected]
    _, info = ches.pairs_run([{"prompt": "Q:", "responses": [" a", LONG, " b"], "ratings": [3, 2, 1]}], model,
                             progress=False)
    assert [(item.response, item.reason) for item in info.unscored_responses] == [(1, expected)]


def test_a_response_whose_hidden_states_are_not_finite_is_listed_not_paired(workdir):
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(workdir / "model")
    blown = tokenizer(" zebra")["input_ids"][-1]
    edit_weights(workdir / "model", lambda w: {**w, "model.embed_tokens.weight": torch.where(
        torch.arange(4096)[:, None] == blown, w["model.embed_tokens.weight"] * 1e6, w["model.embed_tokens.weight"])})
    rows = [{"prompt": "Q:", "responses": [" yes", " a zebra", " no"], "ratings": [3, 2, 1]},
            {"prompt": "Q:", "responses": [" a zebra", " yes", " no"], "ratings": [3, 2, 1]}]
    built, info = ches.pairs_run(rows, "model", dtype="float16", progress=False)
    assert built["source_row"] == [0] and built["rejected"] == [" no"]
    assert built["unscored_responses"] == [[1]] and info.skipped_prompts[0].source_row == 1
    assert "could not be scored: hidden states are not finite (NaN or inf) in float16" in info.skipped_prompts[0].reason
    assert [(item.source_row, item.response) for item in info.unscored_responses] == [(0, 1), (1, 0)]
    assert not ches.pairs_run(rows, "model", dtype="float32", progress=False)[1].unscored_responses  # a float32 number: scored


def test_pairs_cli_lists_unscored_responses(workdir, capsys):
    model = short_context_model(workdir)
    rows = [{"prompt": "Q:", "responses": [" a", LONG, " c"], "ratings": [3, 2, 1]}]
    (workdir / "cands.jsonl").write_text(json.dumps(rows[0]) + "\n")
    assert main(["pairs", "cands.jsonl", "-m", model, "-o", "built.jsonl", "--no-progress"]) == 0
    assert "1 response could not be scored" in capsys.readouterr().out
    meta = json.loads((workdir / "built.jsonl.meta.json").read_text())
    assert meta["unscored_responses"][0]["response"] == 1 and "context (48)" in meta["unscored_responses"][0]["reason"]
    assert json.loads((workdir / "built.jsonl").read_text())["unscored_responses"] == [1]
