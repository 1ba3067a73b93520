"""``ches report --validation FILE`` on a malformed or hand-edited validation JSON: one line naming the file and
the field, never a raw Python error; and every value the page takes from that JSON is HTML-escaped."""

import json

import pytest
from conftest import MODEL_DIR, ROOT

import ches
from ches.cli import main
from ches.data.export import write_dataset

HH_SAMPLE = str(ROOT / "examples" / "data" / "hh-sample.jsonl")


def valid() -> dict:
    entry = {"statistic": 0.5, "ci95": [0.1, 0.9], "status": "predicts", "pairs": 64}
    return {"settings": {"protocol": "subsets", "model": "sft", "n": 16, "learning_rate": 5e-4, "beta": 0.1,
                         "max_length": 512, "scored": 64},
            "evidence": {"ln_ches": dict(entry), "ches": dict(entry)},
            "recommendation": {"action": "filter", "measure": "ches", "quantile": 0.8, "threshold": 1.5, "kept": 51,
                               "reason": "ches predicts.", "command": "ches filter d.jsonl --measure ches --max-score 1.5"}}


@pytest.fixture(scope="module")
def scores(tmp_path_factory):
    path = tmp_path_factory.mktemp("scores") / "scores.parquet"
    write_dataset(ches.score(ches.data.inputs.load_data(HH_SAMPLE).select(range(8)), str(MODEL_DIR), max_length=96,
                             progress=False), path)
    return str(path)


def edited(path, *, drop=None, **changes):
    """``valid()`` with ``changes`` (dotted field -> value) and ``drop`` (a dotted field) applied, written to ``path``."""
    result = valid()
    for dotted, value in [*changes.items(), *([(drop, None)] if drop else [])]:
        *parents, last = dotted.split("__")
        target = result
        for name in parents:
            target = target[name]
        if dotted == drop:
            del target[last]
        else:
            target[last] = value
    path.write_text(json.dumps(result))
    return path


@pytest.mark.parametrize("change, message", [
    ({"recommendation__threshold": "abc"}, "field 'recommendation.threshold' should be a number, found 'abc'."),
    ({"drop": "settings__protocol"}, "field 'settings.protocol' is missing (it should be one of 'subsets', 'probes'); "
                                     "write the file with ches validate ... --output."),
    ({"evidence": [1, 2]}, "field 'evidence' should be an object ({...}), found a list [1, 2]."),
    ({"evidence__ches__ci95": [0.1]}, "field 'evidence.ches.ci95' should be a list of two numbers [low, high], found "
                                      "a list [0.1]."),
    ({"settings__learning_rate": None}, "field 'settings.learning_rate' should be a number, found null."),
    ({"recommendation__action": "cut"}, "field 'recommendation.action' should be one of 'filter', 'do not filter', "
                                        "'not enough evidence', found 'cut'."),
    ({"settings__n": True}, "field 'settings.n' should be a whole number, found True."),
])
def test_a_malformed_validation_is_one_line_naming_the_field(change, message, scores, tmp_path, capsys):
    path = edited(tmp_path / "val.json", **change)
    assert main(["report", scores, "--validation", str(path), "--output", str(tmp_path / "r.html")]) == 2
    assert capsys.readouterr().err.strip() == f"ches: error: {path}: {message}"


def test_every_value_from_the_validation_is_escaped(scores, tmp_path):
    attack = "<script>alert(1)</script>"
    path = edited(tmp_path / "val.json", settings__protocol="subsets", settings__model=attack, evidence__ches__status=attack,
                  recommendation__reason=attack, recommendation__command=attack, recommendation__measure=attack)
    result = json.loads(path.read_text())
    result["evidence"][attack] = result["evidence"].pop("ln_ches")
    path.write_text(json.dumps(result))
    assert main(["report", scores, "--validation", str(path), "--output", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 5


def test_a_python_validation_with_a_bad_field_is_refused(scores, tmp_path):
    from ches.report import write_report

    bad = valid()
    bad["settings"]["scored"] = "many"
    with pytest.raises(ches.ChesError, match=r"^validation=: field 'settings.scored' should be a whole number, found 'many'.$"):
        write_report(ches.data.inputs.load_data(scores), tmp_path / "r.html", validation=bad)


@pytest.mark.parametrize("field", ["protocol", "n", "max_length", "scored"])
def test_markup_in_a_field_the_page_wrote_raw_never_reaches_it(field, scores, tmp_path, capsys):
    """These settings once reached the page unescaped; they hold no text, so markup there is refused."""
    path = edited(tmp_path / "val.json", **{f"settings__{field}": "<script>alert(1)</script>"})
    assert main(["report", scores, "--validation", str(path), "--output", str(tmp_path / "r.html")]) == 2
    assert f"field 'settings.{field}' should be" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()
