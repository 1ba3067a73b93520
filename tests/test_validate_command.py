"""The ``ches filter`` command that ``ches validate`` recommends applies the cut it reports: ``--max-score`` at
the reported threshold, and the model and scoring flags whenever the data's score columns are not the scores
validate read the threshold from. The DPO runs are stubbed (a measure is made to predict), so that the cut and
the command are real and the test is fast."""

import json
import shlex

import pytest
from conftest import MODEL_DIR, ROOT

import ches
from ches.cli import main
from ches.data.export import write_dataset
from ches.data.inputs import load_data
from ches.evaluate import protocols, validation

HH_SAMPLE = str(ROOT / "examples" / "data" / "hh-sample.jsonl")


@pytest.fixture
def predicting(monkeypatch):
    """``ches.validate`` with its DPO runs replaced: ``ches`` predicts displacement; returns what the runs saw."""
    seen = {}

    def runs(pool, loaded, options, training=None, owned=False):
        seen.update(pool_rows=pool.rows, scored=pool.scored, usable=pool.usable)
        audit = {"fraction_displaced": 0.5, "mean_chosen_change": -0.1, "mean_chosen_change_ci95": [-0.2, 0.0]}
        return {"subsets": [{"name": "random", "measure": None, "side": "random", "rows": [], "audit": audit}]}

    def evidence(result):
        states = {"ln_ches": [-0.2, 0.4], "ches": [0.1, 0.9], "edit_distance": [-0.3, 0.2]}
        return {name: {"statistic": sum(ci) / 2, "ci95": ci, "status": ches.evaluate.advice.status(*ci, 64), "pairs": 64}
                for name, ci in states.items()}

    monkeypatch.setattr(protocols, "subsets_protocol", runs)
    monkeypatch.setattr(validation, "evidence_of", evidence)
    return seen


def run_command(command: str, data: str, output) -> dict:
    """The printed ``ches filter`` command run on ``data`` (in place of the data it names), writing ``output``;
    its sidecar."""
    words = shlex.split(command)[1:]
    words[1] = data
    words[words.index("--output") + 1] = str(output)
    assert main([*words, "--no-progress"]) == 0
    return json.loads(output.with_name(output.name + ".meta.json").read_text())


def pairs_of(dataset) -> list[tuple[str, str]]:
    return sorted(zip(dataset["chosen"], dataset["rejected"]))


@pytest.mark.parametrize("earlier", ["other weights", "other settings", "unscored"])
def test_the_command_cuts_at_the_reported_threshold_with_this_models_scores(earlier, predicting, tokenizer,
                                                                              tiny_model, tmp_path):
    data = tmp_path / "data.jsonl"
    raw = load_data(HH_SAMPLE)
    if earlier == "other weights":  # scored before by another model: its columns are not this model's scores
        write_dataset(ches.score(raw, tiny_model("llama"), tokenizer, max_length=96, progress=False), data)
    elif earlier == "other settings":  # these weights, another max_length
        write_dataset(ches.score(raw, str(MODEL_DIR), max_length=80, dtype="float32", progress=False), data)
    else:
        write_dataset(raw, data)
    result = ches.validate(str(data), str(MODEL_DIR), n=4, pool=24, max_length=96, progress=False)
    advice = result["recommendation"]
    assert advice["action"] == "filter" and advice["measure"] == "ches"
    words = shlex.split(advice["command"])
    assert words[words.index("--model") + 1] == str(MODEL_DIR)
    assert words[words.index("--max-length") + 1] == "96" and words[words.index("--dtype") + 1] == "float32"
    assert words[words.index("--max-score") + 1] == repr(advice["threshold"]) and "--quantile" not in words

    # on the pool, the command keeps exactly the rows the recommendation says: those at or below the threshold
    pool = raw.select(predicting["pool_rows"])
    write_dataset(pool, tmp_path / "pool.jsonl")
    scored = predicting["scored"].select(predicting["usable"])
    expected = scored.filter(lambda row: row["ches"] <= advice["threshold"])
    kept_meta = run_command(advice["command"], str(tmp_path / "pool.jsonl"), tmp_path / "kept-pool.jsonl")
    kept = load_data(str(tmp_path / "kept-pool.jsonl"))
    assert pairs_of(kept) == pairs_of(expected) and kept.num_rows == advice["kept"]
    assert advice["quantile"] == advice["kept"] / len(scored)
    assert kept_meta["cut"]["threshold"] == advice["threshold"]

    # on the full file, the cut is the reported threshold, on this model's scores
    full_meta = run_command(advice["command"], str(data), tmp_path / "kept.jsonl")
    assert full_meta["rule"]["max_score"] == advice["threshold"] and full_meta["cut"]["threshold"] <= advice["threshold"]
    rescored = ches.score(raw, str(MODEL_DIR), max_length=96, dtype="float32", progress=False)
    assert load_data(str(tmp_path / "kept.jsonl")).num_rows == sum(
        1 for value, skip in zip(rescored["ches"], rescored["ches_skip"]) if skip is None and value <= advice["threshold"])


def test_data_scored_by_this_model_is_cut_on_its_own_columns(predicting, tmp_path):
    data = tmp_path / "scored.parquet"  # every digit of the scores kept (JSON Lines keeps 15 significant digits)
    write_dataset(ches.score(HH_SAMPLE, str(MODEL_DIR), max_length=96, dtype="float32", progress=False), data)
    advice = ches.validate(str(data), str(MODEL_DIR), n=4, pool=24, max_length=96, progress=False)["recommendation"]
    words = shlex.split(advice["command"])
    assert "--model" not in words and words[words.index("--max-score") + 1] == repr(advice["threshold"])
    assert run_command(advice["command"], str(data), tmp_path / "kept.jsonl")["rule"]["max_score"] == advice["threshold"]


def renamed(tmp_path) -> str:
    """hh-sample with its completions under other names (``good``, ``bad``), as JSON Lines."""
    path = tmp_path / "renamed.jsonl"
    write_dataset(load_data(HH_SAMPLE).rename_columns({"chosen": "good", "rejected": "bad"}), path)
    return str(path)


def test_validate_reads_columns_end_to_end_in_python(tmp_path):
    result = ches.validate(renamed(tmp_path), str(MODEL_DIR), protocol="probes", n=4, steps=1, max_length=96,
                           columns={"chosen": "good", "rejected": "bad"}, progress=False, resamples=10)
    assert len(result["rows"]) == 2 * 4 and result["settings"]["scored"] > 4  # 4 pairs probed per seed, 2 seeds


def test_validate_takes_columns_on_the_command_line_and_passes_them_on(predicting, tmp_path, capsys):
    data = renamed(tmp_path)
    assert main(["validate", data, "--model", str(MODEL_DIR), "--columns", "chosen=good,rejected=bad", "--n", "4",
                 "--pool", "24", "--max-length", "96", "--no-progress", "--output", str(tmp_path / "v.json")]) == 0
    advice = json.loads((tmp_path / "v.json").read_text())["recommendation"]
    words = shlex.split(advice["command"])
    assert words[words.index("--columns") + 1] == "chosen=good,rejected=bad"
    meta = run_command(advice["command"], data, tmp_path / "kept.jsonl")
    assert meta["rule"]["max_score"] == advice["threshold"]
    assert load_data(str(tmp_path / "kept.jsonl")).column_names[:2] == ["good", "bad"]
