"""Trustworthy edges: every failure a user can cause is one clear line naming the file, row, column or
option (exit 2, no traceback), raised before model work where it can be, and nothing in the working
folder changes except the output that was asked for. Grouped by layer: files, rows, models, options,
outputs, cache; the kill tests for outputs are in tests/test_atomic.py."""

from __future__ import annotations

import json
import math

import pytest
from edges import ROWS, assert_one_line_error, digest, edit_weights, no_model_load, run_cli, scored_sample

import ches
from ches import ChesError
from ches.cli import main

# ---------------------------------------------------------------- options
OPTION_CASES = {
    "max length 1": (["score", "pairs.jsonl", "-m", "model", "--max-length", "1"], r"max_length=1 must be an integer >= 2"),
    "max length negative": (["score", "pairs.jsonl", "-m", "model", "--max-length", "-5"], r"max_length=-5"),
    "max length not a number": (["score", "pairs.jsonl", "-m", "model", "--max-length", "ten"], r"--max-length.*'ten'"),
    "batch tokens zero": (["score", "pairs.jsonl", "-m", "model", "--batch-tokens", "0"], r"batch_tokens=0 must be a positive"),
    "unknown layout": (["score", "pairs.jsonl", "-m", "model", "--layout", "ragged"], r"--layout.*'ragged'"),
    "unknown dtype": (["score", "pairs.jsonl", "-m", "model", "--dtype", "int8"], r"--dtype.*'int8'"),
    "max memory not json": (["score", "pairs.jsonl", "-m", "model", "--max-memory", "{70GiB"], r"--max-memory"),
    "unknown flag": (["score", "pairs.jsonl", "-m", "model", "--fast"], r"unrecognized arguments: --fast"),
    "no command": ([], r"the following arguments are required: command \(see 'ches --help'\)"),
    "score without model": (["score", "pairs.jsonl"], r"the following arguments are required: --model/-m"),
    "quantile above 1": (["filter", "scores.parquet", "--quantile", "1.5"], r"quantile=1.5 must be in \(0, 1\]"),
    "quantile zero": (["filter", "scores.parquet", "--quantile", "0"], r"quantile=0.0 must be in \(0, 1\]"),
    "keep too many": (["filter", "scores.parquet", "--keep", "999"], r"keep=999 is outside \[0, 6\]"),
    "keep negative": (["filter", "scores.parquet", "--keep", "-1"], r"keep=-1 is outside"),
    "two rules": (["filter", "scores.parquet", "--keep", "2", "--max-score", "0"], r"not allowed with argument"),
    "window without around": (["filter", "scores.parquet", "--window", "4"], r"window= sets the size of the around="),
    "window too large": (["filter", "scores.parquet", "--around", "0.5", "--window", "99"], r"window size 99 must be in"),
    "around outside [0, 1]": (["filter", "scores.parquet", "--around", "2"], r"around=2.0 must be a quantile in \[0, 1\]"),
    "unknown measure": (["filter", "scores.parquet", "--measure", "cosine"], r"--measure.*'cosine'"),
    "raw data without model": (["filter", "pairs.jsonl"], r"has no 'ln_ches' column; pass model="),
    "scoring flags without model": (["filter", "scores.parquet", "--max-length", "64", "--layout", "padded"],
                                    r"max_length= \(--max-length\), layout= \(--layout\) only apply when "
                                    r"scoring; pass model= \(--model\) too, or drop them\."),
    "report unknown measure": (["report", "scores.parquet", "-o", "r.html", "--measure", "x"], r"--measure.*'x'"),
    "report without output": (["report", "scores.parquet"], r"--output"),
    "report top zero": (["report", "scores.parquet", "-o", "r.html", "--top", "0"], r"top=0 must be a positive integer"),
    "validate n zero": (["validate", "pairs.jsonl", "-m", "model", "--n", "0"], r"n=0"),
    "validate negative steps": (["validate", "pairs.jsonl", "-m", "model", "--n", "4", "--steps", "-1"],
                                r"steps=-1 must be a positive integer"),
    "validate zero lr": (["validate", "pairs.jsonl", "-m", "model", "--n", "4", "--lr", "0"], r"learning_rate=0.0 must be > 0"),
    "validate zero beta": (["validate", "pairs.jsonl", "-m", "model", "--n", "4", "--beta", "0"], r"beta=0.0 must be > 0"),
    "split of a single file": (["score", "pairs.jsonl", "-m", "model", "--split", "test"],
                               r"split='test' was given, but pairs.jsonl is a single file with no splits"),
}

# ---------------------------------------------------------------- outputs












@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_options(case, workdir, capsys):
    argv, message = OPTION_CASES[case]
    before = digest(workdir)
    assert_one_line_error(*run_cli(argv, capsys), message)
    assert digest(workdir) == before






# ---------------------------------------------------------------- cache
def test_cache_recomputes_after_one_weight_element_changes(workdir, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(workdir / "model")
    first = ches.score(ROWS, model, tokenizer, cache_dir="cache", progress=False)
    with torch.no_grad():  # one element, far from where a strided sample would look
        parameter = model.model.layers[-1].mlp.down_proj.weight
        parameter.view(-1)[parameter.numel() // 2 + 7] += 0.5
    second = ches.score(ROWS, model, tokenizer, cache_dir="cache", progress=False)
    fresh = ches.score(ROWS, model, tokenizer, progress=False)
    assert list(second["ches"]) == pytest.approx(list(fresh["ches"]), rel=1e-9)
    assert list(second["ches"]) != pytest.approx(list(first["ches"]), rel=1e-9)
    assert len(list((workdir / "cache").iterdir())) == 2  # a second run key, the first left as it was


def test_cache_ignores_the_batch_budget_and_recomputes_a_corrupt_shard(workdir, tokenizer, caplog):
    import logging

    model = str(workdir / "model")
    first = ches.score(ROWS, model, cache_dir="cache", batch_tokens=4096, progress=False)
    [run] = list((workdir / "cache").iterdir())
    [shard] = list(run.glob("chunk-*.safetensors"))
    resumed_at = shard.stat().st_mtime_ns
    again = ches.score(ROWS, model, cache_dir="cache", batch_tokens=512, progress=False)  # another budget: same key
    assert shard.stat().st_mtime_ns == resumed_at and list(again["ches"]) == list(first["ches"])
    shard.write_bytes(shard.read_bytes()[:50])  # a shard cut short (e.g. a full disk)
    with caplog.at_level(logging.WARNING, logger="ches"):
        third = ches.score(ROWS, model, cache_dir="cache", progress=False)
    assert "is unreadable or incomplete" in caplog.text and list(third["ches"]) == pytest.approx(list(first["ches"]))




# ---------------------------------------------------------------- signals




def test_cache_works_with_an_offloaded_model(workdir):
    offload = {"device_map": "auto", "max_memory": {"cpu": "150KB"}, "offload_folder": str(workdir / "offload")}
    reference = ches.score(ROWS, str(workdir / "model"), progress=False)
    scored = ches.score(ROWS, str(workdir / "model"), cache_dir="cache", progress=False, **offload)
    again = ches.score(ROWS, str(workdir / "model"), cache_dir="cache", progress=False, **offload)
    assert list(scored["ches"]) == pytest.approx(list(reference["ches"]), rel=1e-5)
    assert list(again["ches"]) == list(scored["ches"])




# ================================================================ never a silent wrong number (issue 20)


# ---------------------------------------------------------------- lost data: the user's columns
@pytest.mark.parametrize("columns, message", [
    ("prompt=ches,chosen=chosen,rejected=rejected", r"column 'ches' is read as a pair's text, but ches writes its output"),
    ("chosen=chosen_tokens,rejected=rejected", r"column 'chosen_tokens' is read as a pair's text"),
    ("prompt=ches_skip", r"column 'ches_skip' is read as a pair's text"),
])
def test_a_read_column_named_like_an_output_is_refused_before_the_model(columns, message, workdir, capsys, monkeypatch):
    rows = [{**row, "ches": row["chosen"][:20], "chosen_tokens": row["chosen"], "ches_skip": "x"} for row in ROWS]
    (workdir / "named.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    no_model_load(monkeypatch)
    before = digest(workdir)
    assert_one_line_error(*run_cli(["score", "named.jsonl", "-m", "model", "--columns", columns, "-o", "s.parquet"], capsys),
                          message)
    assert digest(workdir) == before


@pytest.mark.parametrize("name", ["ches", "ln_ches", "edit_distance", "last_hidden_ip", "prompt_tokens", "chosen_tokens",
                                  "rejected_tokens", "ches_skip", "ches_flags"])
def test_every_output_column_is_protected(name, workdir, monkeypatch):
    no_model_load(monkeypatch)
    rows = [dict(row, **{name: "mine"}) for row in ROWS]
    with pytest.raises(ChesError, match=rf"has column\(s\) \['{name}'\], which ches writes its output to"):
        ches.score(rows, "model", progress=False)
    with pytest.raises(ChesError, match=rf"'{name}'"):  # through filter with a model too
        ches.filter(rows, 0.5, model="model")








# ---------------------------------------------------------------- silent wrong results: the numbers
def test_hidden_states_that_are_not_finite_are_marked_only_where_they_are(workdir, caplog):
    import logging

    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(workdir / "model")
    counts = {}
    for row in ROWS:
        for token in set(tokenizer(row["chosen"])["input_ids"]):
            counts[token] = counts.get(token, 0) + 1
    rare = min((token for token, count in counts.items() if count == 1 and token > 10))
    affected = [index for index, row in enumerate(ROWS) if rare in tokenizer(row["chosen"])["input_ids"]]
    edit_weights(workdir / "model", lambda w: {**w, "model.embed_tokens.weight": torch.where(
        torch.arange(4096)[:, None] == rare, w["model.embed_tokens.weight"] * 1e6, w["model.embed_tokens.weight"])})
    fine = ches.score(ROWS, "model", progress=False, dtype="float32")  # 1e6 is a float32 number: all scored
    assert all(reason is None for reason in fine["ches_skip"])
    with caplog.at_level(logging.INFO, logger="ches"):
        assert main(["score", "pairs.jsonl", "-m", "model", "--dtype", "float16", "-o", "half.parquet", "--no-progress"]) == 0
    err = caplog.text
    half = ches.data.inputs.load_data("half.parquet")
    marked = [index for index, reason in enumerate(half["ches_skip"]) if reason]
    assert marked == affected and all(math.isnan(half["ln_ches"][index]) for index in marked)
    assert half["ches_skip"][marked[0]].startswith("hidden states are not finite (NaN or inf) in float16, whose largest "
                                                   "number is 65504: try dtype='bfloat16' or 'float32'")
    assert all(math.isfinite(half["ln_ches"][index]) for index in range(len(ROWS)) if index not in marked)
    assert f"scored {len(ROWS) - len(marked)} of {len(ROWS)} rows" in err and "hidden states are not finite" in err
    run = json.loads((workdir / "half.parquet.meta.json").read_text())["run"]
    assert run["skipped"] == {"data": len(marked)} and run["dtype"] == "float16"
    assert list(run["skip_reasons"]["data"].values()) == [len(marked)]
    for layout in ("prefix_shared", "packed", "padded", "shared_prompt"):  # an overflow never spreads to other rows
        again = ches.score(ROWS, "model", dtype="float16", layout=layout, progress=False)
        assert [index for index, reason in enumerate(again["ches_skip"]) if reason] == marked, layout


def test_a_run_with_no_finite_hidden_state_fails_in_one_line(workdir, capsys):
    import torch

    edit_weights(workdir / "model", lambda w: {**w, "model.layers.1.mlp.down_proj.weight":
                                               w["model.layers.1.mlp.down_proj.weight"].index_fill(0, torch.tensor([0]), float("nan"))})
    before = digest(workdir)
    assert_one_line_error(*run_cli(["score", "pairs.jsonl", "-m", "model", "-o", "s.parquet", "--save-embeddings",
                                    "e.safetensors", "--no-progress"], capsys),
                          r"nothing was scored: for every row that ran \(6\), hidden states are not finite \(NaN or inf\) "
                          r"in float32: the model's weights or computation give NaN or inf")
    assert digest(workdir) == before




# ---------------------------------------------------------------- options that cannot act, or disagree
OPTION_CASES_20 = {
    "chosen and rejected from one column": (lambda: ches.score(ROWS, "model", columns={"chosen": "chosen", "rejected": "chosen"}),
                                            r"column 'chosen' would be read as both 'chosen' and 'rejected'"),
    "chosen mapped onto rejected": (lambda: ches.score(ROWS, "model", columns={"chosen": "rejected"}),
                                    r"column 'rejected' would be read as both 'chosen' and 'rejected'"),
    "prompt from the chosen column": (lambda: ches.score(ROWS, "model", columns={"prompt": "chosen"}),
                                      r"column 'chosen' would be read as both 'prompt' and 'chosen'"),
    "dtype and torch_dtype disagree": (lambda: ches.score(ROWS, "model", dtype="float32", model_kwargs={"torch_dtype": "bfloat16"}),
                                       r"dtype='float32' and model_kwargs\['torch_dtype'\]='bfloat16' disagree"),
    "dtype twice in model_kwargs": (lambda: ches.score(ROWS, "model", model_kwargs={"dtype": "float16", "torch_dtype": "float32"}),
                                    r"model_kwargs\['dtype'\]='float16' and model_kwargs\['torch_dtype'\]='float32' disagree"),
    "dtype auto": (lambda: ches.score(ROWS, "model", model_kwargs={"dtype": "auto"}), r"model_kwargs\['dtype'\]='auto' is not supported"),
    "options not options": (lambda: ches.score(ROWS, "model", options="fast"), r"options= must be a ches.ScoreOptions"),
    "options dict misspelled": (lambda: ches.score(ROWS, "model", options={"max_lenght": 3}), r"unknown option 'max_lenght'"),
    "options dict and keyword": (lambda: ches.score(ROWS, "model", options={"max_length": 3}, max_length=4),
                                 r"max_length given both in options= and as keywords"),
    "model_kwargs a string": (lambda: ches.score(ROWS, "model", model_kwargs="device_map=auto"),
                              r"model_kwargs must be a dict of from_pretrained keywords.*got str 'device_map=auto'"),
    "filter keep fraction": (lambda: ches.filter(scored_sample(), keep=2.7), r"keep=2.7 must be a whole number of rows"),
    "filter quantile True": (lambda: ches.filter(scored_sample(), quantile=True), r"quantile=True must be a number"),
    "filter quantile text": (lambda: ches.filter(scored_sample(), quantile="0.5"), r"quantile='0.5' must be a number"),
    "filter max_score nan": (lambda: ches.filter(scored_sample(), max_score=float("nan")), r"max_score=nan must be a number"),
    "filter window fraction": (lambda: ches.filter(scored_sample(), around=0.5, window=2.5), r"window=2.5 must be a whole number"),
    "rating_field on generic rows": (lambda: ches.pairs([{"prompt": "p", "responses": ["a", "b"], "ratings": [1, 0]}], "model",
                                                        rating_field="fine-grained_score"),
                                     r"rating_field='fine-grained_score' picks the rating field of raw UltraFeedback rows"),
    "columns on UltraFeedback rows": (lambda: ches.pairs([{"instruction": "Q", "completions": [{"response": "a", "overall_score": 1}]}],
                                                         "model", columns={"prompt": "instruction"}),
                                      r"these are raw UltraFeedback rows \(instruction, completions\).*drop columns="),
    "pairs roles from one column": (lambda: ches.pairs([{"prompt": "p", "responses": ["a", "b"], "ratings": [1, 0]}], "model",
                                                       columns={"ratings": "responses"}),
                                    r"column 'responses' would be read as both 'responses' and 'ratings'"),
    "validate pool below n": (lambda: ches.validate(ROWS, "model", n=4, pool=1), r"pool=1 must hold at least the n=4 pairs"),
    "validate lr inf": (lambda: ches.validate(ROWS, "model", n=4, learning_rate=float("inf")),
                        r"learning_rate=inf must be > 0 and finite"),
    "validate beta nan": (lambda: ches.validate(ROWS, "model", n=4, beta=float("nan")), r"beta=nan must be > 0 and finite"),
    "validate seed negative": (lambda: ches.validate(ROWS, "model", n=4, seed=-1), r"seed=-1 must be an integer >= 0"),
    "validate n fraction": (lambda: ches.validate(ROWS, "model", n=4.5), r"n=4.5 must be an integer"),
}


@pytest.mark.parametrize("case", sorted(OPTION_CASES_20))
def test_options_that_cannot_act_or_disagree_are_refused_before_the_model(case, workdir, monkeypatch):
    no_model_load(monkeypatch)
    call, message = OPTION_CASES_20[case]
    before = digest(workdir)
    with pytest.raises(ChesError, match=message):
        call()
    assert digest(workdir) == before


def test_validate_flags_that_cannot_act(workdir, capsys, monkeypatch):
    no_model_load(monkeypatch)
    for argv, message in [(["--pool", "1", "--n", "4"], r"pool=1 must hold at least the n=4 pairs"),
                          (["--lr", "inf", "--n", "4"], r"learning_rate=inf must be > 0 and finite"),
                          (["--seed", "-1", "--n", "4"], r"seed=-1 must be an integer >= 0")]:
        assert_one_line_error(*run_cli(["validate", "pairs.jsonl", "-m", "model", *argv], capsys), message)




def test_a_verdict_needs_enough_pairs_for_an_interval():
    from ches.evaluate.validation import MIN_PAIRS_FOR_VERDICT, verdict

    entry = {"spearman_total": -1.0, "spearman_total_ci95": (-1.0, -1.0)}
    few = {"correlations": {"ln_ches": entry}, "summary": {"fraction_displaced": 0.0}, "rows": [{}] * 4}
    assert verdict(few).startswith("verdict (probes protocol): no verdict on ln_ches: 4 probed pairs (Spearman -1.000, 95% CI [-1.00, -1.00]) "
                                   "are too few for a confidence interval")
    wide = dict(few, rows=[{}] * MIN_PAIRS_FOR_VERDICT, correlations={"ln_ches": {**entry, "spearman_total_ci95": (-1.0, -0.5)}})
    assert "ranks displacement the wrong way" in verdict(wide)




# ---------------------------------------------------------------- ends: a full disk, SIGTERM




