"""ches.pairs on Nectar rows (axolotl's zephyr.nectar: a prompt and its ranked answers), checked against the same
answers written by hand as generic conversational candidate rows."""

from __future__ import annotations

import pytest
from conftest import hh_rows, standard_rows

import ches
from ches.builder.candidates import from_nectar, schema
from ches.errors import ChesError


def question(prompt: str) -> str:
    """The user's text of a one-turn hh prompt ('\\n\\nHuman: ...\\n\\nAssistant:')."""
    return prompt.removeprefix("\n\nHuman: ").removesuffix("\n\nAssistant:")


def hh_answers(count: int) -> list[tuple[str, list[str]]]:
    """Real hh-rlhf prompts (one user turn) with three answers, best first: chosen, a cut of it, rejected."""
    rows = [row for row in standard_rows(hh_rows(80)) if row["prompt"].count("\n\nHuman:") == 1][:count]
    return [(question(row["prompt"]), [row["chosen"], row["chosen"][:40], row["rejected"]]) for row in rows]


def nectar_rows(count: int) -> list[dict]:
    """The answers as Nectar rows, written by hand: ranks 1 (best) to 3, listed in another order, with Nectar's
    other columns."""
    return [{"prompt": text, "answers": [{"answer": answers[2], "rank": 3, "model": "m3"},
                                         {"answer": answers[0], "rank": 1, "model": "m1"},
                                         {"answer": answers[1], "rank": 2, "model": "m2"}],
             "turns": 1, "num_responses": 3, "source": ["hh"]} for text, answers in hh_answers(count)]


def generic_rows(count: int) -> list[dict]:
    """The same answers as generic conversational candidate rows, written by hand (rating: higher is better)."""
    return [{"prompt": [{"role": "user", "content": text}],
             "responses": [[{"role": "assistant", "content": answers[k]}] for k in (2, 0, 1)],
             "ratings": [1.0, 3.0, 2.0], "turns": 1, "num_responses": 3, "source": ["hh"]}
            for text, answers in hh_answers(count)]


def test_nectar_rows_are_detected_and_normalized():
    row = nectar_rows(1)[0]
    assert schema(list(row), None) == "nectar"
    assert schema(list(row), {"prompt": "prompt"}) == "generic"
    normalized = from_nectar(row)
    assert normalized["prompt"] == [{"role": "user", "content": row["prompt"]}]
    assert normalized["ratings"] == [-3, -1, -2]
    assert [response[0]["content"] for response in normalized["responses"]] == [a["answer"] for a in row["answers"]]


def test_nectar_pairs_equal_those_of_the_same_answers_as_generic_rows(tokenizer, tiny_model):
    model = tiny_model("llama")
    ours = ches.pairs(nectar_rows(4), model, tokenizer, rule="all_min_ches", per_prompt=100, progress=False)
    theirs = ches.pairs(generic_rows(4), model, tokenizer, rule="all_min_ches", per_prompt=100, progress=False)
    assert len(ours) == len(theirs) > 4
    for column in theirs.column_names:
        if column not in ("chosen_rating", "rejected_rating"):
            assert ours[column] == theirs[column], column
    # the best-ranked answer is chosen against each worse one: ratings are minus the ranks
    assert [(c, r) for c, r in zip(ours["chosen_rating"], ours["rejected_rating"])] == \
        [(c - 4, r - 4) for c, r in zip(theirs["chosen_rating"], theirs["rejected_rating"])]
    assert {"turns", "num_responses", "source"} <= set(ours.column_names)


def test_nectar_rows_refuse_columns_and_rating_field(tokenizer, tiny_model):
    with pytest.raises(ChesError, match=r"Nectar rows .*drop columns="):
        ches.pairs(nectar_rows(2), tiny_model("llama"), tokenizer, columns={"prompt": "prompt"}, progress=False)
    with pytest.raises(ChesError, match=r"rating_field='rank'.*Nectar rows"):
        ches.pairs(nectar_rows(2), tiny_model("llama"), tokenizer, rating_field="rank", progress=False)


def test_a_malformed_nectar_answer_is_named_by_row_and_position(tokenizer, tiny_model):
    rows = nectar_rows(3)
    rows[1]["answers"][2] = dict(rows[1]["answers"][2], rank=None)
    with pytest.raises(ChesError, match=r"row 1, column 'answers\[\*\]\.rank', response 2: expected a number"):
        ches.pairs(rows, tiny_model("llama"), tokenizer, progress=False)
    rows[1]["answers"][2] = dict(rows[1]["answers"][2], answer=None, rank=2)
    with pytest.raises(ChesError, match=r"row 1, column 'answers', response 2"):
        ches.pairs(rows, tiny_model("llama"), tokenizer, progress=False)


def test_the_layout_is_named_with_format_and_a_wrong_name_is_refused_before_the_model(tmp_path, capsys):
    """``format="axolotl.zephyr.nectar"`` (``--format``) reads the rows as detection does; a layout whose columns
    the rows lack, or a name ches.pairs does not read, is one line before any model loads."""
    import json

    from ches.cli import main

    rows = nectar_rows(3)
    model = "examples/tiny-hh-model"
    detected = ches.pairs(rows, model, progress=False)
    named, info = ches.pairs_run(rows, model, format="axolotl.zephyr.nectar", progress=False)
    assert named.to_list() == detected.to_list() and info.schema == "nectar"
    with pytest.raises(ChesError, match=r"format='ultrafeedback' \(--format\) reads the column\(s\) \['instruction', "
                                        r"'completions'\], which the data does not have"):
        ches.pairs(rows, "no/such-model-folder", format="ultrafeedback")
    with pytest.raises(ChesError, match=r"missing column\(s\) \['responses', 'ratings'\]"):
        ches.pairs(rows, "no/such-model-folder", format="generic")  # read as generic rows: they are not
    with pytest.raises(ChesError, match=r"format='nectar' \(--format\) is not a layout ches.pairs reads; use one of "
                                        r"\['generic', 'ultrafeedback', 'axolotl.zephyr.nectar'\]"):
        ches.pairs(rows, "no/such-model-folder", format="nectar")
    data = tmp_path / "nectar.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "pairs.jsonl"
    assert main(["pairs", str(data), "-m", model, "--format", "axolotl.zephyr.nectar", "-o", str(out),
                 "--no-progress"]) == 0
    assert [json.loads(line)["chosen"] for line in out.read_text().splitlines()] == detected["chosen"]
    assert json.loads((tmp_path / "pairs.jsonl.meta.json").read_text())["run"]["schema"] == "nectar"


def test_scoring_nectar_rows_as_pairs_points_at_ches_pairs():
    """``ches.score`` takes pairs; rows that rank several answers per prompt are refused saying where they go."""
    with pytest.raises(ChesError, match=r"missing column\(s\) \['chosen', 'rejected'\].*These look like nectar rows, "
                                        r"several rated responses per prompt: build pairs from them with ches.pairs"):
        ches.score(nectar_rows(2), "no/such-model-folder", progress=False)
