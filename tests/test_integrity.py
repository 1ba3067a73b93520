"""Integrity flags (``ches_flags``, :mod:`ches.data.integrity`) against what TRL's own DPOTrainer does with each row:
the rows it drops, the completion tokens its collator keeps and cuts, the tokens each side is (emptiness), the same
for a row of ``ches.score`` and a pair of ``ches.pairs``; dropping flagged rows in ``ches.filter`` / ``ches filter``; the
counts in the summary line, the sidecar, ``ches.summary`` and the report."""

from __future__ import annotations

import json
import logging

import datasets
import pytest
from conftest import MODEL_DIR, conversational_rows, hh_rows, standard_rows
from test_tokens_trl import trl_sequences

import ches
from ches import ChesError
from ches.api import score_run
from ches.cli import main
from ches.data.inputs import load_data
from ches.data.integrity import FLAG_NAMES, FLAGS_COLUMN

pytest.importorskip("trl")

EMPTY_CHOSEN_ROWS = (86, 516, 925)  # hh rows whose preferred answer is a lone space
SHARED = " I can tell you about that." * 40  # long enough to be cut at max_length=160 after any hh-sized prompt
PROMPT = "\n\nHuman: Can you help me?\n\nAssistant:"


def crafted_standard() -> list[dict]:
    """Rows made to raise each flag: identical responses, responses equal only in their first 200-odd tokens,
    empty and whitespace responses, a prompt far longer than max_length."""
    return [
        {"prompt": PROMPT, "chosen": " Sure, here it is.", "rejected": " Sure, here it is."},
        {"prompt": PROMPT, "chosen": SHARED + " Yes.", "rejected": SHARED + " No, never."},
        {"prompt": PROMPT, "chosen": "", "rejected": " I would rather not."},
        {"prompt": PROMPT, "chosen": " Fine.", "rejected": "   "},
        {"prompt": PROMPT * 30, "chosen": " Yes.", "rejected": " No."},
    ]


def as_conversation(row: dict) -> dict:
    """A crafted standard row as one user message and one assistant message per side."""
    return {"prompt": [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}]}


def flag_rows(fmt: str) -> list[dict]:
    hh = hh_rows(30) + [hh_rows(1, start=row)[0] for row in EMPTY_CHOSEN_ROWS]
    if fmt == "standard":
        return standard_rows(hh) + crafted_standard()
    return conversational_rows(hh) + [as_conversation(row) for row in crafted_standard()]


def completion_text(completion) -> str:
    return completion if isinstance(completion, str) else "".join(message["content"] for message in completion)


def trl_flags(rows, tokenizer, model, max_length, tmp_path, empty=None) -> list[list[str]]:
    """Each row's flags read off TRL's own preparation: the rows its trainer drops, the completion tokens its
    collator keeps (completion_mask) against the ones it tokenized, and for emptiness the rows' own text, or
    ``empty`` (per row, the sides that are empty: :func:`trl_empty`)."""
    indexed = [dict(row, row_index=index) for index, row in enumerate(rows)]
    prepared, sequences = trl_sequences(indexed, tokenizer, model, max_length, tmp_path)
    kept = {prepared[position]["row_index"]: position for position in range(len(prepared))}
    eos = tokenizer.eos_token
    expected = []
    for index, row in enumerate(rows):
        found = set()
        for side in ("chosen", "rejected"):
            if (side in empty[index]) if empty is not None else not completion_text(row[side]).removesuffix(eos).strip():
                found.add(f"empty_{side}")
        if index not in kept:
            found.add("prompt_fills_max_length")
        else:
            position = kept[index]
            kept_ids = []
            for side_index, side in enumerate(("chosen", "rejected")):
                input_ids, mask = sequences[(position, side_index)]
                kept_ids.append([token for token, flag in zip(input_ids, mask) if flag])
                if len(kept_ids[-1]) < len(prepared[position][f"{side}_ids"]):
                    found.add(f"{side}_truncated")
            if kept_ids[0] == kept_ids[1]:
                found.add("identical_after_truncation")
        expected.append([name for name in FLAG_NAMES if name in found])
    return expected


def trl_empty(rows, tokenizer, model, tmp_path) -> list[set[str]]:
    """Per row, the sides whose completion ids, as TRL's trainer tokenizes them (no truncation), decode without
    special tokens to whitespace only: what DPO trains each side on, read off TRL, with nothing of ches."""
    prepared, _ = trl_sequences(rows, tokenizer, model, None, tmp_path)
    assert len(prepared) == len(rows)
    return [{side for side in ("chosen", "rejected")
             if not tokenizer.decode(prepared[index][f"{side}_ids"], skip_special_tokens=True).strip()}
            for index in range(len(rows))]


@pytest.mark.parametrize("max_length", [None, 160])
@pytest.mark.parametrize("fmt", ["standard", "conversational"])
def test_flags_match_what_trl_does_with_each_row(fmt, max_length, tokenizer, tiny_model, tmp_path):
    rows = flag_rows(fmt)
    expected = trl_flags(rows, tokenizer, tiny_model("llama"), max_length, tmp_path)
    scored = ches.score(rows, str(MODEL_DIR), progress=False, max_length=max_length)
    assert scored[FLAGS_COLUMN] == expected
    raised = {name for flags in expected for name in flags}
    wanted = set(FLAG_NAMES) if max_length else {"identical_after_truncation", "empty_chosen", "empty_rejected"}
    assert wanted <= raised, f"the rows should raise every flag: {sorted(wanted - raised)} never did"
    for flags, reason in zip(scored[FLAGS_COLUMN], scored["ches_skip"]):  # TRL drops them: ches skips them
        assert ("prompt_fills_max_length" in flags) == (reason is not None and reason.startswith("prompt fills"))


# ---------------------------------------------------------------- one definition for ches.score and ches.pairs
def edge_candidates(tokenizer) -> list[dict]:
    """ches.pairs rows whose pairs hit every flag and the cases where "empty" read from the text and read from the
    tokens disagree: the EOS or BOS string as the whole response (text, but its tokens are only special ones), a
    lone space whose pair's prompt boundary moves back into the prompt (``Say th`` + ``ink`` merge into `` think``,
    so its completion decodes to `` th ``), whitespace of several kinds, and long responses equal in their start."""
    eos, bos = tokenizer.eos_token, tokenizer.bos_token
    answers = [" Sure, here it is.", " ", "", "   ", "\t\n", eos, " " + eos, bos, "\u200b", SHARED + " Yes.",
               SHARED + " No, never."]
    return [{"prompt": PROMPT, "responses": answers, "ratings": [float(len(answers) - k) for k in range(len(answers))]},
            {"prompt": "Say th", "responses": ["ink", " ", " no", eos], "ratings": [3.0, 2.0, 1.0, 0.0]}]


def as_chat_candidates(row: dict) -> dict:
    """A ches.pairs row as a user message and one assistant message per response."""
    return {"prompt": [{"role": "user", "content": row["prompt"]}], "ratings": row["ratings"],
            "responses": [[{"role": "assistant", "content": text}] for text in row["responses"]]}


@pytest.mark.parametrize("max_length", [None, 160])
@pytest.mark.parametrize("fmt", ["standard", "conversational"])
def test_pairs_and_score_flag_each_pair_alike_as_trl_reads_it(fmt, max_length, tokenizer, tiny_model, tmp_path):
    """Every pair ches.pairs builds carries the flags ches.score gives the same pair as a row, and both are what
    TRL does with it (its truncation, and its completion tokens for emptiness), edge cases included."""
    candidates = edge_candidates(tokenizer)
    if fmt == "conversational":
        candidates = [as_chat_candidates(row) for row in candidates]
    built, info = ches.pairs_run(candidates, str(MODEL_DIR), rule="all_min_ches", per_prompt=100,
                                 max_length=max_length, progress=False)
    assert not info.skipped_prompts and not info.unscored_responses
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in zip(built["prompt"], built["chosen"], built["rejected"])]
    scored = ches.score(rows, str(MODEL_DIR), progress=False, max_length=max_length)
    model = tiny_model("llama")
    expected = trl_flags(rows, tokenizer, model, max_length, tmp_path, empty=trl_empty(rows, tokenizer, model, tmp_path))
    assert scored[FLAGS_COLUMN] == expected
    assert built[FLAGS_COLUMN] == expected
    raised = {name for row_flags in expected for name in row_flags}
    wanted = {"empty_chosen", "empty_rejected"} | ({"identical_after_truncation", "chosen_truncated",
                                                    "rejected_truncated"} if max_length else set())
    assert wanted <= raised, sorted(wanted - raised)
    if fmt == "conversational":
        return
    flags = {(row["prompt"], row["chosen"], row["rejected"]): row_flags for row, row_flags in zip(rows, expected)}
    eos = tokenizer.eos_token
    assert "empty_rejected" in flags[PROMPT, " Sure, here it is.", eos]  # text, but only the EOS token
    assert "empty_rejected" in flags[PROMPT, " Sure, here it is.", tokenizer.bos_token]
    assert "empty_rejected" in flags[PROMPT, " Sure, here it is.", "\t\n"]
    assert "empty_rejected" not in flags[PROMPT, " Sure, here it is.", "\u200b"]  # not whitespace to str.strip
    assert "empty_rejected" not in flags["Say th", "ink", " "]  # whitespace text, but its tokens are " th "
    assert "empty_rejected" in flags["Say th", " no", eos]


def test_empty_is_what_the_tokens_decode_to(tokenizer):
    """A completion is empty when its ids decode, special tokens left out, to whitespace only (written out here
    by hand for the project's tokenizer, whose special tokens are <|bos|>, <|endoftext|>, <|pad|>, <|im_start|>,
    <|im_end|>)."""
    from ches.data.integrity import empty_texts

    texts = {"": True, " ": True, "\t\n  ": True, "<|endoftext|>": True, "<|bos|> <|im_end|>": True, "ok": False,
             " ok ": False, "\u200b": False, "<|endoftext|>x": False}
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    assert empty_texts(ids, tokenizer) == list(texts.values())
    assert empty_texts([], tokenizer) == []


def test_pair_flags_by_hand():
    """Hand-derived flags: prompt 2 tokens, max_length 4 keeps 2 completion tokens of each side."""
    from ches.data.integrity import pair_flags, tokenized_flags
    from ches.data.tokens import TokenizedPair

    cases = [  # (prompt, chosen, rejected), max_length, empty, flags
        (([1, 5], [7, 8, 2], [7, 8, 9, 2]), 4, (False, False),
         ["identical_after_truncation", "chosen_truncated", "rejected_truncated"]),
        (([1, 5], [7, 8, 2], [7, 8, 9, 2]), None, (False, False), []),
        (([1, 5], [7, 2], [7, 9]), 4, (False, True), ["empty_rejected"]),
        (([1, 5], [2], [2]), 4, (True, True), ["identical_after_truncation", "empty_chosen", "empty_rejected"]),
        (([1, 5, 6, 4], [7, 2], [9, 2]), 4, (True, False), ["prompt_fills_max_length", "empty_chosen"]),
        (([1, 5], [7, 8, 9], [7, 2]), 4, (False, False), ["chosen_truncated"]),
    ]
    for (prompt, chosen, rejected), max_length, empty, flags in cases:
        assert tokenized_flags(TokenizedPair(prompt, chosen, rejected), max_length, empty) == flags
        room = None if max_length is None else max_length - len(prompt)
        kept = (chosen[:room], rejected[:room]) if room is None or room > 0 else ([], [])
        assert pair_flags(len(prompt), kept, (len(chosen), len(rejected)), max_length, empty) == flags


def test_a_clean_row_has_an_empty_list():
    scored = ches.score([{"prompt": PROMPT, "chosen": " Yes.", "rejected": " No."}], str(MODEL_DIR), progress=False)
    assert scored.features[FLAGS_COLUMN] == datasets.List(datasets.Value("string"))
    assert scored[FLAGS_COLUMN] == [[]]


def test_summary_line_and_run_record_count_the_flags(caplog):
    rows = crafted_standard()
    with caplog.at_level(logging.INFO, logger="ches"):
        scored, info = score_run(rows, str(MODEL_DIR), progress=False, max_length=160)
    flags = scored[FLAGS_COLUMN]
    counts = {name: sum(name in row for row in flags) for name in FLAG_NAMES}
    counts = {name: count for name, count in counts.items() if count}
    flagged = sum(bool(row) for row in flags)
    assert info.flags == {"data": counts} and info.flagged == {"data": flagged}
    line = f"{flagged} rows flagged: " + ", ".join(f"{name} {count}" for name, count in counts.items())
    assert line in caplog.text
    assert ches.summary(scored)["flags"] == counts


def test_summary_line_says_nothing_of_flags_when_no_row_has_one(caplog):
    with caplog.at_level(logging.INFO, logger="ches"):
        ches.score([{"prompt": PROMPT, "chosen": " Yes.", "rejected": " No."}], str(MODEL_DIR), progress=False)
    assert "scored 1 of 1 rows" in caplog.text and "flagged" not in caplog.text


# ---------------------------------------------------------------- dropping flagged rows
def flagged_table(n: int = 40) -> list[dict]:
    """Scored rows with distinct scores and a known mix of flags."""
    names = ["identical_after_truncation", "chosen_truncated", "empty_chosen"]
    rows = []
    for index in range(n):
        flags = [name for bit, name in enumerate(names) if index % (bit + 3) == 0]
        rows.append({"id": index, "prompt": f"p{index}", "chosen": f"c{index}", "rejected": f"r{index}",
                     "ln_ches": float((index * 7) % n), "ches_skip": None, FLAGS_COLUMN: flags})
    return rows


@pytest.mark.parametrize("drop", [["identical_after_truncation"], ["empty_chosen", "chosen_truncated"]])
def test_drop_flags_removes_flagged_rows_before_the_quantile(drop, caplog):
    rows = flagged_table()
    with caplog.at_level(logging.INFO, logger="ches"):
        kept = ches.filter(rows, 0.5, drop_flags=drop)
    left = [row for row in rows if not set(drop) & set(row[FLAGS_COLUMN])]
    lowest = sorted(left, key=lambda row: (row["ln_ches"], row["id"]))[:round(0.5 * len(left))]
    assert kept["id"] == sorted(row["id"] for row in lowest)
    for name in drop:
        assert f"dropped {sum(name in row[FLAGS_COLUMN] for row in rows)} rows flagged {name}" in caplog.text


def test_drop_flags_lines_name_their_split(caplog):
    import datasets

    rows = flagged_table()
    parts = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:12]),
                                  "test": datasets.Dataset.from_list(rows[12:])})
    with caplog.at_level(logging.INFO, logger="ches"):
        ches.filter(parts, 0.5, drop_flags=["empty_chosen"])
    for name, part in (("train", rows[:12]), ("test", rows[12:])):
        dropped = sum("empty_chosen" in row[FLAGS_COLUMN] for row in part)
        assert f"{name}: dropped {dropped} rows flagged empty_chosen" in caplog.text


def test_drop_flags_accepts_one_comma_separated_string():
    rows = flagged_table()
    both = ches.filter(rows, 1.0, drop_flags="empty_chosen, identical_after_truncation")
    assert both["id"] == [row["id"] for row in rows
                          if not {"empty_chosen", "identical_after_truncation"} & set(row[FLAGS_COLUMN])]


def test_unknown_flag_names_are_refused_with_the_valid_ones():
    with pytest.raises(ChesError) as error:
        ches.filter(flagged_table(), drop_flags=["identical"])
    assert str(error.value) == ("drop_flags (--drop-flags): unknown integrity flag 'identical'; the flags are "
                                f"{', '.join(FLAG_NAMES)}.")


def test_drop_flags_on_data_scored_before_flags_asks_to_score_again():
    rows = [{key: value for key, value in row.items() if key != FLAGS_COLUMN} for row in flagged_table()]
    assert len(ches.filter(rows, 0.5)) == 20  # without drop_flags such data still filters
    with pytest.raises(ChesError, match=r"the data has no 'ches_flags' column, so rows cannot be dropped by flag: it "
                                        r"was scored by an older ches.*score it again with ches score"):
        ches.filter(rows, 0.5, drop_flags=["empty_chosen"])


def test_no_scores_drops_the_flags_column_too():
    rows = flagged_table()
    kept = ches.filter(rows, 0.5, keep_scores=False, drop_flags=["empty_chosen"])
    assert kept.column_names == ["id", "prompt", "chosen", "rejected"]


def test_data_scored_before_flags_is_scored_again_not_refused():
    old = ches.score(crafted_standard()[:2], str(MODEL_DIR), progress=False).remove_columns(FLAGS_COLUMN)
    again = ches.score(old, str(MODEL_DIR), progress=False)
    assert again[FLAGS_COLUMN] == [["identical_after_truncation"], []]


# ---------------------------------------------------------------- files and the command line
def test_cli_score_sidecar_filter_drop_flags_and_report(tmp_path, capsys, caplog):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in standard_rows(hh_rows(6)) + crafted_standard()))
    scores = tmp_path / "scores.jsonl"
    with caplog.at_level(logging.INFO, logger="ches"):
        assert main(["score", str(data), "-m", str(MODEL_DIR), "--max-length", "160", "-o", str(scores),
                     "--no-progress"]) == 0
    written = [json.loads(line) for line in scores.read_text().splitlines()]
    flags = [row[FLAGS_COLUMN] for row in written]
    counts = {name: sum(name in row for row in flags) for name in FLAG_NAMES}
    counts = {name: count for name, count in counts.items() if count}
    run = json.loads((tmp_path / "scores.jsonl.meta.json").read_text())["run"]
    assert run["flags"] == {"data": counts} and run["flagged"] == {"data": sum(map(bool, flags))}
    assert f"{sum(map(bool, flags))} rows flagged: " in caplog.text

    caplog.clear()
    kept_file = tmp_path / "kept.jsonl"
    with caplog.at_level(logging.INFO, logger="ches"):
        assert main(["filter", str(scores), "--quantile", "1.0", "--drop-flags",
                     "empty_chosen,identical_after_truncation", "-o", str(kept_file)]) == 0
    for name in ("empty_chosen", "identical_after_truncation"):
        assert f"dropped {counts.get(name, 0)} rows flagged {name}" in caplog.text
    kept = [json.loads(line) for line in kept_file.read_text().splitlines()]
    assert kept and not any({"empty_chosen", "identical_after_truncation"} & set(row[FLAGS_COLUMN]) for row in kept)
    assert json.loads((tmp_path / "kept.jsonl.meta.json").read_text())["drop_flags"] == ["empty_chosen",
                                                                                          "identical_after_truncation"]

    report = tmp_path / "report.html"
    assert main(["report", str(scores), "-o", str(report)]) == 0
    page = report.read_text()
    assert "<h2>Integrity flags</h2>" in page
    for name, count in counts.items():
        assert f"<td>{name}</td><td class='num'>{count}</td>" in page


def test_cli_refuses_an_unknown_flag_in_one_line(tmp_path, capsys):
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(row) + "\n" for row in flagged_table()))
    assert main(["filter", str(tmp_path / "s.jsonl"), "--drop-flags", "empty"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("ches: error: drop_flags (--drop-flags): unknown integrity flag 'empty'; the flags are "
                           f"{', '.join(FLAG_NAMES)}.")


def test_flags_survive_a_csv_file(tmp_path):
    scored = ches.score(crafted_standard(), str(MODEL_DIR), progress=False, max_length=160)
    scored.to_csv(str(tmp_path / "s.csv"), index=False)
    read = load_data(str(tmp_path / "s.csv"))
    assert read[FLAGS_COLUMN] == scored[FLAGS_COLUMN]
    expected = [flags for flags, skip in zip(scored[FLAGS_COLUMN], scored["ches_skip"])
                if skip is None and "empty_chosen" not in flags]
    assert ches.filter(str(tmp_path / "s.csv"), 1.0, drop_flags=["empty_chosen"])[FLAGS_COLUMN] == expected


def test_a_ches_flags_column_that_is_not_lists_is_refused():
    rows = [dict(row, ches_flags=",".join(row[FLAGS_COLUMN])) for row in flagged_table()]
    with pytest.raises(ChesError, match=r"the data: column 'ches_flags' holds string values, not lists; ches writes a "
                                        r"list of integrity flag names there"):
        ches.filter(rows, 0.5, drop_flags=["empty_chosen"])
