"""One recommendation everywhere: ``ches report --validation`` ranks its pair tables by the measure ``ches validate``
recommended (or says above them that it recommends not filtering), and ``ches audit --validation`` says whether that
measure predicted displacement on the trained model's run -- the table order against numpy, the audit's verdict
against scipy's Spearman of the audited rows."""

from __future__ import annotations

import copy
import html
import json
import re

import datasets
import numpy as np
import pytest
from conftest import hh_rows, standard_rows
from test_audit import trained_copy

import ches
from ches.cli import main
from ches.evaluate.auditing import validation_check
from ches.evaluate.validation import check_validation
from ches.report import write_report

scipy_stats = pytest.importorskip("scipy.stats")


def validation(action: str = "filter", measure: str | None = "ches", model: str = "sft") -> dict:
    """A validation result as ches validate writes it (checked by check_validation), recommending ``action``."""
    entry = {"statistic": 0.5, "ci95": [0.1, 0.9], "status": "predicts", "pairs": 64}
    advice = {"action": action, "measure": measure, "quantile": 0.8, "threshold": 1.5, "kept": 51,
              "reason": f"{measure} gap +0.500 [+0.10, +0.90] (95% CI above 0: {measure} predicts displacement on this "
                        "model; subsets protocol).", "command": f"ches filter d.jsonl --measure {measure} --max-score 1.5"}
    if action == "do not filter":
        advice = {"action": action, "measure": None, "quantile": None, "threshold": None, "command": None,
                  "reason": "no measure predicts displacement here (ln_ches ranks it the wrong way; subsets protocol): "
                            "ln_ches gap -0.300 [-0.50, -0.10]."}
    if action == "not enough evidence":
        advice = {"action": action, "measure": None, "quantile": None, "threshold": None, "command": None,
                  "reason": "every interval includes 0 (subsets protocol): ln_ches gap +0.010 [-0.10, +0.12]; measure "
                            "more pairs (--n), or train longer (--epochs) to say."}
    result = {"settings": {"protocol": "subsets", "model": model, "n": 16, "learning_rate": 5e-4, "beta": 0.1,
                           "max_length": 512, "scored": 64},
              "evidence": {"ln_ches": dict(entry), "ches": dict(entry)}, "recommendation": advice}
    check_validation(result, "test")
    return result


@pytest.fixture(scope="module")
def scored() -> datasets.Dataset:
    """Scored rows whose three measures rank the pairs three different ways (no ties)."""
    rng = np.random.default_rng(7)
    n = 30
    ches_, ln_ches, edit = rng.normal(size=n) * 100, rng.normal(size=n), rng.uniform(0, 1, size=n)
    return datasets.Dataset.from_list([
        {"prompt": f"Human: question {i}?\n\nAssistant:", "chosen": f" answer {i}", "rejected": f" no {i}",
         "ches": float(ches_[i]), "ln_ches": float(ln_ches[i]), "edit_distance": float(edit[i]),
         "chosen_tokens": 3 + i % 4, "rejected_tokens": 2 + i % 3, "ches_skip": None} for i in range(n)])


def table_rows(page: str, which: str) -> list[int]:
    """The row numbers of the pair table under the heading '... highest/lowest ...', in page order."""
    start = page.index(f" {which} ")
    part = page[start:page.index("</table>", start)]
    return [int(found) for found in re.findall(r"<tr><td class='num'>(\d+)</td><td class='scores'>", part)]


def most_similar_first(dataset: datasets.Dataset, measure: str) -> list[int]:
    """The independent ranking: higher ches/ln_ches, lower edit distance = more similar."""
    values = np.asarray(dataset[measure], dtype=np.float64)
    return np.argsort(values if measure == "edit_distance" else -values, kind="stable").tolist()


def ranking_line(page: str) -> str:
    found = re.findall(r"<p class='ranking'>(.*?)</p>", page)
    assert len(found) <= 1
    return html.unescape(found[0]) if found else ""


@pytest.mark.parametrize("recommended", ["ches", "ln_ches", "edit_distance"])
def test_the_report_ranks_its_tables_by_the_recommended_measure(scored, tmp_path, recommended):
    page = write_report(scored, tmp_path / "r.html", top=5, validation=validation(measure=recommended)).read_text()
    order = most_similar_first(scored, recommended)
    assert table_rows(page, "highest") == order[:5]
    assert table_rows(page, "lowest") == order[::-1][:5]
    assert f"5 highest {recommended} (most displacement-prone)" in page
    assert ranking_line(page) == (f"The pair tables are ranked by {recommended}, the measure ches validate recommended "
                                  "filtering by on this model.")
    assert page.index("class='ranking'") < page.index("5 highest")  # above the tables


def test_an_explicit_other_measure_is_used_and_the_recommendation_still_said(scored, tmp_path):
    page = write_report(scored, tmp_path / "r.html", top=5, measure="edit_distance",
                        validation=validation(measure="ches")).read_text()
    assert table_rows(page, "highest") == most_similar_first(scored, "edit_distance")[:5]
    assert ranking_line(page) == ("The pair tables are ranked by edit_distance, as asked (measure=, --measure); ches "
                                  "validate recommended filtering by ches on this model instead.")
    same = write_report(scored, tmp_path / "s.html", top=5, measure="ches", validation=validation(measure="ches"))
    assert "the measure ches validate recommended" in ranking_line(same.read_text())


@pytest.mark.parametrize("action, said", [
    ("do not filter", "ches validate recommends not filtering on this model: no measure predicts displacement here "
                      "(ln_ches ranks it the wrong way; subsets protocol)"),
    ("not enough evidence", "ches validate found not enough evidence to recommend a filter on this model: every "
                            "interval includes 0 (subsets protocol)")])
@pytest.mark.parametrize("measure", [None, "ches"])
def test_a_recommendation_not_to_filter_is_said_above_the_tables(scored, tmp_path, action, said, measure):
    page = write_report(scored, tmp_path / "r.html", top=4, measure=measure, validation=validation(action)).read_text()
    shown = measure or "ln_ches"
    assert ranking_line(page) == f"{said}; the tables below are ranked by {shown} for inspection only."
    assert table_rows(page, "highest") == most_similar_first(scored, shown)[:4]  # the tables are kept


def test_without_a_validation_the_report_is_ranked_as_before(scored, tmp_path):
    page = write_report(scored, tmp_path / "r.html", top=4).read_text()
    assert ranking_line(page) == "" and table_rows(page, "highest") == most_similar_first(scored, "ln_ches")[:4]


def test_a_recommended_measure_the_report_cannot_rank_by_is_said(scored, tmp_path):
    """A hand-edited file: the tables are ranked as without a validation, and the line says why."""
    bad = validation()
    bad["recommendation"]["measure"] = "cosine"
    page = write_report(scored, tmp_path / "r.html", top=4, validation=bad).read_text()
    assert ranking_line(page) == ("ches validate recommended filtering by 'cosine', which is not a score ches writes "
                                  "(one of ['ches', 'edit_distance', 'last_hidden_ip', 'ln_ches']); the pair tables are "
                                  "ranked by ln_ches.")
    assert table_rows(page, "highest") == most_similar_first(scored, "ln_ches")[:4]


def test_ches_report_validation_ranks_by_the_recommendation(scored, tmp_path):
    from ches.data.export import write_dataset

    write_dataset(scored, tmp_path / "scores.parquet")
    (tmp_path / "v.json").write_text(json.dumps(validation(measure="ches")))
    out = tmp_path / "r.html"
    assert main(["report", str(tmp_path / "scores.parquet"), "--validation", str(tmp_path / "v.json"), "-o", str(out),
                 "--top", "3"]) == 0
    assert table_rows(out.read_text(), "highest") == most_similar_first(scored, "ches")[:3]
    sidecar = tmp_path / "r.html.meta.json"
    if sidecar.exists():
        assert json.loads(sidecar.read_text())["measure"] == "ches"


# ches audit --validation


@pytest.fixture(scope="module")
def audited(tiny_model, tokenizer):
    """Rows scored with logps by the tiny model, audited with a "trained" copy, with a validation recommending ches."""
    model = tiny_model("llama")
    rows = standard_rows(hh_rows(30))
    scores = ches.score(rows, model, tokenizer, logps=True, max_length=120, progress=False)
    reference = ches.data.columns.reference_of(scores)["model"]
    result = ches.audit(scores, trained_copy(model), tokenizer, progress=False, resamples=200,
                        validation=validation(measure="ches", model=reference))
    return result, scores, model


def independent_spearman(dataset: datasets.Dataset, measure: str) -> float:
    change = np.asarray(dataset["chosen_change"], dtype=np.float64)
    keep = np.isfinite(change)
    sign = -1.0 if measure == "edit_distance" else 1.0
    return float(scipy_stats.spearmanr(sign * np.asarray(dataset[measure], dtype=np.float64)[keep], change[keep])[0])


def test_the_audit_says_whether_the_recommended_measure_predicted_displacement(audited):
    result, _, _ = audited
    check = result.summary["validation"]
    expected = independent_spearman(result.dataset, "ches")
    assert check["action"] == "filter" and check["measure"] == "ches" and check["recommended"] is True
    assert check["spearman"] == pytest.approx(expected, abs=1e-9)
    low, high = check["ci95"]
    assert low <= expected <= high
    assert check["predicted"] is (high < 0)
    shown = f"Spearman {expected:+.2f} [{low:+.2f}, {high:+.2f}]"
    verdict = ("predicted displacement: " + shown if high < 0 else
               "ranked displacement the wrong way: " + shown if low > 0 else
               "did not predict displacement: " + shown + " includes 0")
    assert check["statement"].startswith(f"validate recommended filtering by ches; on this run ches {verdict}")
    assert check["model_note"] is None  # the validation was of the model the rows were scored with
    assert check["statement"] in ches.evaluate.auditing.format_audit(result.summary).splitlines()


def test_the_audit_of_a_recommendation_not_to_filter_and_of_another_model(audited, tokenizer, tmp_path):
    _, scores, model = audited
    path = tmp_path / "v.json"
    path.write_text(json.dumps(validation("not enough evidence", model="EleutherAI/other-sft")))
    result = ches.audit(scores, trained_copy(model), tokenizer, progress=False, resamples=50, validation=str(path))
    check = result.summary["validation"]
    assert check["action"] == "not enough evidence" and check["measure"] == "ln_ches" and check["recommended"] is False
    assert check["spearman"] == pytest.approx(independent_spearman(result.dataset, "ln_ches"), abs=1e-9)
    assert check["statement"].startswith("validate recommended nothing (not enough evidence): every interval includes 0 "
                                         "(subsets protocol); for information, on this run ln_ches ")
    reference = ches.data.columns.reference_of(scores)["model"]
    assert check["model_note"] == f"validation was of model EleutherAI/other-sft, these rows were scored with {reference}."
    assert f"Note: {check['model_note']}" in ches.evaluate.auditing.format_audit(result.summary)


@pytest.mark.parametrize("spearman, ci95, predicted, verdict", [
    (-0.30, [-0.38, -0.22], True, "on this run ches predicted displacement: Spearman -0.30 [-0.38, -0.22]."),
    (-0.05, [-0.20, 0.10], False, "on this run ches did not predict displacement: Spearman -0.05 [-0.20, +0.10] "
                                  "includes 0."),
    (0.30, [0.22, 0.38], False, "on this run ches ranked displacement the wrong way: Spearman +0.30 [+0.22, +0.38] (the "
                                "pairs it scores higher lost less)."),
    (float("nan"), [float("nan"), float("nan")], None, "ches has no correlation with the change here (one side is "
                                                       "constant)."),
])
def test_each_verdict_in_one_line(spearman, ci95, predicted, verdict):
    summary = {"measures": {"ches": {"spearman": spearman, "spearman_ci95": ci95},
                            "ln_ches": {"spearman": -0.5, "spearman_ci95": [-0.6, -0.4]}}}
    check = validation_check(summary, validation(measure="ches"), "sft")
    assert check["predicted"] is predicted and check["statement"].endswith(verdict)
    assert check["statement"].startswith("validate recommended filtering by ches; ")
    other = validation_check(summary, validation("do not filter"), None)  # no reference model: nothing to compare
    assert other["measure"] == "ln_ches" and other["predicted"] is True and other["model_note"] is None
    assert other["statement"] == ("validate recommended not filtering: no measure predicts displacement here (ln_ches "
                                  "ranks it the wrong way; subsets protocol); for information, on this run ln_ches "
                                  "predicted displacement: Spearman -0.50 [-0.60, -0.40].")
    missing = validation_check(summary, validation(measure="edit_distance"), "sft")
    assert missing["predicted"] is None and "these rows have no edit_distance column" in missing["statement"]


def test_a_validation_of_the_wrong_kind_is_refused_before_the_data_is_read():
    with pytest.raises(ches.ChesError, match=r"^validation=3 must be a ches.validate result"):
        ches.audit("no-such-file.jsonl", "no-such-model", validation=3)
    bad = validation()
    bad["recommendation"]["action"] = "cut"
    with pytest.raises(ches.ChesError, match=r"^validation=: field 'recommendation.action' should be one of 'filter', "):
        ches.audit("no-such-file.jsonl", "no-such-model", validation=bad)
    with pytest.raises(ches.ChesError, match=r"^no-such-validation.json does not exist; write it with ches validate"):
        ches.audit("no-such-file.jsonl", "no-such-model", validation="no-such-validation.json")


def test_ches_audit_validation_flag(audited, tokenizer, tmp_path, capsys, monkeypatch):
    _, _, model = audited
    folder, trained = tmp_path / "sft", tmp_path / "dpo"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    trained_copy(copy.deepcopy(model)).save_pretrained(trained)
    tokenizer.save_pretrained(trained)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in standard_rows(hh_rows(20))))
    scores = tmp_path / "scores.parquet"
    assert main(["score", str(data), "-m", str(folder), "--logps", "--max-length", "120", "-o", str(scores),
                 "--no-progress"]) == 0
    (tmp_path / "bad.json").write_text("{not json")
    capsys.readouterr()
    with monkeypatch.context() as patched:  # a bad file is refused before the trained model (or its tokenizer) loads
        def loaded(*args, **kwargs):
            raise AssertionError("the model was loaded before the validation file was checked")

        patched.setattr("ches.model.models.load_tokenizer", loaded)
        patched.setattr("ches.api.score_run", loaded)
        assert main(["audit", str(scores), "-m", str(trained), "--validation", str(tmp_path / "bad.json"),
                     "--no-progress"]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1
        assert error.startswith(f"ches: error: {tmp_path / 'bad.json'} is not a JSON file written by ches validate")
        assert main(["audit", str(scores), "-m", str(trained), "--validation", str(tmp_path / "missing.json"),
                     "--no-progress"]) == 2
        assert f"{tmp_path / 'missing.json'} does not exist; write it with ches validate" in capsys.readouterr().err
        partial = validation()
        del partial["settings"]["n"]  # the command checks the whole file, as ches report does
        (tmp_path / "partial.json").write_text(json.dumps(partial))
        assert main(["audit", str(scores), "-m", str(trained), "--validation", str(tmp_path / "partial.json"),
                     "--no-progress"]) == 2
        assert "field 'settings.n' is missing" in capsys.readouterr().err
    (tmp_path / "v.json").write_text(json.dumps(validation(measure="ches", model=str(folder))))
    out = tmp_path / "audited.parquet"
    assert main(["audit", str(scores), "-m", str(trained), "--validation", str(tmp_path / "v.json"), "-o", str(out),
                 "--resamples", "50", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    meta = json.loads((tmp_path / "audited.parquet.meta.json").read_text())
    check = meta["audit"]["validation"]
    assert check["statement"] in printed.splitlines() and check["measure"] == "ches" and check["model_note"] is None
    assert check["spearman"] == pytest.approx(independent_spearman(ches.load_data(str(out)), "ches"), abs=1e-9)
