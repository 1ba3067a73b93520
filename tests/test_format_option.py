"""``format=`` / ``--format``: another framework's layout is detected (or named), read as the TRL rows it means,
scored exactly like the same pairs written by hand in TRL's conversational format, recorded (log, run record,
reference), kept in its own columns in the output, and trained on by ``ches.trl.DPOTrainer``; an implicit prompt
that is a guess is refused in one line; ``columns=`` maps ``system``."""

from __future__ import annotations

import copy
import json
import logging
import math

import datasets
import pytest
from conftest import MODEL_DIR, as_messages, hh_rows

import ches
from ches.cli import main
from ches.data.frameworks import FORMATS, Format
from ches.data.inputs import Reading, as_trl_rows, resolve_reading
from ches.options import FORMAT_NAMES

SYSTEM = "You are a careful assistant. Answer briefly."
MEASURES = ("ches", "ln_ches", "edit_distance", "last_hidden_ip", "prompt_tokens", "chosen_tokens", "rejected_tokens")


def single_turns(count: int) -> list[tuple[str, str, str]]:
    """(question, chosen answer, rejected answer) of hh-rlhf rows with one human turn each."""
    found = []
    for row in hh_rows(200):
        chosen, rejected = as_messages(row["chosen"]), as_messages(row["rejected"])
        if len(chosen) == len(rejected) == 2 and chosen[0] == rejected[0]:
            found.append((chosen[0]["content"], chosen[1]["content"], rejected[1]["content"]))
    assert len(found) >= count
    return found[:count]


def intel_rows(count: int = 10) -> list[dict]:
    """axolotl chatml.intel rows, by hand: every other row has a system text, the others an empty one."""
    return [{"system": SYSTEM if index % 2 else "", "question": question, "chosen": chosen, "rejected": rejected}
            for index, (question, chosen, rejected) in enumerate(single_turns(count))]


def trl_conversational(rows: list[dict]) -> list[dict]:
    """The same pairs written by hand as TRL conversational rows: the independent reference."""
    return [{"prompt": ([{"role": "system", "content": row["system"]}] if row["system"] else [])
             + [{"role": "user", "content": row["question"]}],
             "chosen": [{"role": "assistant", "content": row["chosen"]}],
             "rejected": [{"role": "assistant", "content": row["rejected"]}]} for row in rows]


def same_scores(got: datasets.Dataset, expected: datasets.Dataset) -> None:
    assert got["ches_skip"] == expected["ches_skip"] == [None] * len(got)
    for name in MEASURES:
        assert got[name] == expected[name], name
    assert got["ches_token_digest"] == expected["ches_token_digest"]


def test_the_option_names_every_layout_and_trl():
    assert FORMAT_NAMES == ("trl", *FORMATS)
    assert ches.ScoreOptions(format="axolotl.chatml.intel").format == "axolotl.chatml.intel"
    with pytest.raises(ches.ChesError, match=r"format='axolotl.nonesuch' \(--format\) is not a layout ches reads; use "
                                             r"one of \['trl', 'axolotl.chatml.intel'"):
        ches.ScoreOptions(format="axolotl.nonesuch")
    assert ches.ScoreOptions(format="axolotl.intel").format == "axolotl.intel"  # an alias
    assert ches.ScoreOptions(format="llamafactory.sharegpt:user_tag=user").format == "llamafactory.sharegpt:user_tag=user"
    with pytest.raises(ches.ChesError, match=r"'colour=red' is not a parameter of llamafactory.sharegpt"):
        ches.ScoreOptions(format="llamafactory.sharegpt:colour=red")


def test_detection_reads_a_layout_and_leaves_trl_data_alone(monkeypatch):
    assert resolve_reading(["system", "question", "chosen", "rejected"], None).format == "axolotl.chatml.intel"
    assert resolve_reading(["id", "sys", "q", "chosen", "rejected"], {"system": "sys", "question": "q"}).format \
        == "axolotl.chatml.intel"  # columns= on top: the layout's own names
    for names in (["prompt", "chosen", "rejected"], ["chosen", "rejected"], ["prompt", "chosen", "rejected", "system",
                                                                             "question"]):
        assert resolve_reading(names, None).format == "trl", names  # TRL's columns win: read as always
    assert resolve_reading(["system", "question", "chosen", "rejected"], Reading(format="trl")).format == "trl"
    twin = Format("other.intel", ("system", "question", "chosen", "rejected"), FORMATS["axolotl.chatml.intel"].to_trl)
    monkeypatch.setitem(FORMATS, twin.name, twin)
    with pytest.raises(ches.ChesError, match=r"fit several layouts \(axolotl.chatml.intel, other.intel\).*; name yours "
                                             r"with format= \(--format\)"):
        resolve_reading(["system", "question", "chosen", "rejected"], None)


def test_trl_rows_come_out_as_they_were_given():
    rows = datasets.Dataset.from_list([{"prompt": "Hi", "chosen": " a", "rejected": " b", "system": "x"}])
    assert as_trl_rows(rows, None) is rows  # nothing to convert: TRL tokenizes the user's rows as they are


def test_a_layout_scores_as_its_pairs_written_in_trls_conversational_format(caplog):
    rows = intel_rows()
    with caplog.at_level(logging.INFO, logger="ches"):
        scored, info = ches.score_run(rows, str(MODEL_DIR), progress=False)
    said = [record.getMessage() for record in caplog.records if "read as" in record.getMessage()]
    expected = ches.score(trl_conversational(rows), str(MODEL_DIR), progress=False)
    same_scores(scored, expected)
    named = ches.score(rows, str(MODEL_DIR), progress=False, format="axolotl.chatml.intel")
    same_scores(named, expected)
    assert info.format == "axolotl.chatml.intel" and info.options["format"] is None
    assert said == ["rows read as axolotl.chatml.intel (detected from the columns; --format/format= names another); "
                    "their scores are those of the TRL rows it means"]
    # the output keeps the user's layout: their columns, in their order, untouched, with the scores added
    assert scored.column_names[:4] == ["system", "question", "chosen", "rejected"]
    assert scored.select_columns(["system", "question", "chosen", "rejected"]).to_list() == rows


def test_the_issues_rows_are_never_given_implicit_prompt_scores():
    """axolotl chatml.intel rows read as TRL's (format="trl"): no prompt column, the answers share no start: refused
    in one line naming the unread columns and the layout."""
    rows = intel_rows(6)
    with pytest.raises(ches.ChesError) as error:
        ches.score(rows, "no/such-model-folder", progress=False, format="trl")  # refused before any model loads
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("the rows have no prompt column, and in 6 of 6 rows the prompt ches would take from the "
                              "start 'chosen' and 'rejected' share is under 16 characters")
    assert "the text column(s) ['system', 'question'] are not read: map the prompt with --columns prompt=question " \
           "(columns=), or name the rows' layout with --format axolotl.chatml.intel (format=)" in message


def test_implicit_prompts_of_trl_data_are_read_as_always(caplog):
    """hh-rlhf's implicit-prompt rows (long shared starts) with a text column ches does not read: scored, the
    column named once in the log."""
    rows = [{**row, "source": "hh"} for row in hh_rows(4)]
    with caplog.at_level(logging.INFO, logger="ches"):
        scored = ches.score(rows, str(MODEL_DIR), progress=False)
    said = [record.getMessage() for record in caplog.records if "not read" in record.getMessage()]
    plain = ches.score(hh_rows(4), str(MODEL_DIR), progress=False)
    assert scored["ln_ches"] == plain["ln_ches"]
    assert said == [
        "column(s) ['source'] not read: text ches does not score (a layout reading them: --format/format=; a role: "
        "--columns/columns=)"]


def test_columns_map_a_system_text_into_conversational_rows():
    rows = intel_rows(6)
    expected = ches.score(trl_conversational(rows), str(MODEL_DIR), progress=False)
    mapped = [{"sys": row["system"], "prompt": message["prompt"][-1:], "chosen": message["chosen"],
               "rejected": message["rejected"]} for row, message in zip(rows, trl_conversational(rows))]
    scored = ches.score(mapped, str(MODEL_DIR), progress=False, columns={"system": "sys"})
    same_scores(scored, expected)
    implicit = [{"sys": row["sys"], "chosen": row["prompt"] + row["chosen"], "rejected": row["prompt"] + row["rejected"]}
                for row in mapped]  # the system turn goes first in both transcripts: the prompt TRL extracts has it
    same_scores(ches.score(implicit, str(MODEL_DIR), progress=False, columns={"system": "sys"}), expected)
    standard = [{"sys": row["system"], "prompt": row["question"], "chosen": row["chosen"], "rejected": row["rejected"]}
                for row in rows]
    with pytest.raises(ches.ChesError, match=r"columns= maps 'system', but these rows are standard strings \(row 0 of "
                                             r"'chosen'\): TRL has no chat template, so no system turn"):
        ches.score(standard, "no/such-model-folder", columns={"system": "sys"})


def test_the_command_line_names_the_layout_and_keeps_it_in_the_output(tmp_path, capsys):
    rows = intel_rows(8)
    data = tmp_path / "intel.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    scored, kept = tmp_path / "scored.jsonl", tmp_path / "kept.jsonl"
    assert main(["score", str(data), "-m", str(MODEL_DIR), "--format", "axolotl.chatml.intel", "--no-progress",
                 "-o", str(scored), "--logps"]) == 0
    meta = json.loads((tmp_path / "scored.jsonl.meta.json").read_text())
    assert meta["run"]["format"] == "axolotl.chatml.intel" and meta["run"]["options"]["format"] == "axolotl.chatml.intel"
    assert meta["reference"]["format"] == "axolotl.chatml.intel"
    assert main(["filter", str(scored), "--quantile", "1.0", "--no-scores", "-o", str(kept)]) == 0
    written = [json.loads(line) for line in kept.read_text().splitlines()]
    assert [{name: row[name] for name in ("system", "question", "chosen", "rejected")} for row in written] == rows
    assert not {"prompt", "messages"} & set(written[0])  # nothing renamed into TRL's columns
    assert json.loads((tmp_path / "kept.jsonl.meta.json").read_text())["reference"]["format"] == "axolotl.chatml.intel"
    assert main(["score", str(data), "-m", str(MODEL_DIR), "--format", "trl", "--no-progress"]) == 2
    assert "--format axolotl.chatml.intel" in capsys.readouterr().err
    assert main(["score", str(data), "-m", str(MODEL_DIR), "--format", "nope"]) == 2


@pytest.mark.slow
def test_ches_trl_trains_on_a_layouts_rows_as_on_the_same_trl_rows(tiny_model, tokenizer, tmp_path):
    """ches.trl.DPOTrainer converts a layout's rows to TRL's before TRL tokenizes them: the same losses as on the
    pairs written by hand in TRL's conversational format, every row's tokens checked against its digest."""
    pytest.importorskip("trl")
    from test_trl import config, losses

    rows = intel_rows(12)
    model = tiny_model("llama")
    trained = []
    for data in (rows, trl_conversational(rows)):
        scored = ches.filter(ches.score(data, model, tokenizer, logps=True, max_length=160, progress=False), 1.0)
        trainer = ches.trl.DPOTrainer(model=copy.deepcopy(model), args=config(tmp_path / str(len(trained))),
                                      train_dataset=scored, processing_class=tokenizer)
        trained.append(losses(trainer))
    assert len(trained[0]) == 3 and all(math.isfinite(value) for value in trained[0])
    assert trained[0] == pytest.approx(trained[1], abs=1e-6)


def test_an_audit_reads_a_layouts_rows_as_they_were_scored(tiny_model, tokenizer):
    """The reference record's layout: the audit's digest check and its trained pass read the rows as scored."""
    model = tiny_model("llama")
    scored = ches.score(intel_rows(6), model, tokenizer, logps=True, progress=False)
    assert ches.reference_of(scored)["format"] == "axolotl.chatml.intel"
    audited = ches.audit(scored, copy.deepcopy(model), tokenizer, progress=False)
    assert audited.dataset["chosen_change"] == [0.0] * 6  # the same weights: the same tokens, the same log-probs
    assert audited.info.format == "axolotl.chatml.intel"


def test_a_named_layout_the_columns_do_not_fit_is_refused_naming_them():
    rows = [{"prompt": "Hi", "chosen": " a", "rejected": " b"}]
    with pytest.raises(ches.ChesError, match=r"format='axolotl.chatml.intel' reads the column\(s\) \['system', "
                                             r"'question', 'chosen', 'rejected'\], and the data has no \['system', "
                                             r"'question'\] .*--columns system=COLUMN"):
        ches.score(rows, "no/such-model-folder", format="axolotl.chatml.intel")


def test_columns_work_on_top_of_a_layout():
    rows = intel_rows(4)
    renamed = [{"instruction": row["question"], "sys": row["system"], "chosen": row["chosen"],
                "rejected": row["rejected"]} for row in rows]
    scored = ches.score(renamed, str(MODEL_DIR), progress=False, columns={"question": "instruction", "system": "sys"})
    same_scores(scored, ches.score(trl_conversational(rows), str(MODEL_DIR), progress=False))
    assert scored.column_names[:4] == ["instruction", "sys", "chosen", "rejected"]


def test_splits_in_two_layouts_are_refused_before_the_model_loads():
    parts = datasets.DatasetDict({"train": datasets.Dataset.from_list(intel_rows(2)),
                                  "test": datasets.Dataset.from_list(trl_conversational(intel_rows(2)))})
    with pytest.raises(ches.ChesError, match=r"^the splits are in different layouts \(train: axolotl.chatml.intel, "
                                             r"test: trl\); name one with format= \(--format\)"):
        ches.score(parts, "no/such-model-folder")
