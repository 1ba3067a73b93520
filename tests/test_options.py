"""The options are written once: each public function's signature lists exactly its options' fields, a misspelt
keyword is refused with a suggestion everywhere, the command line and Python refuse an option that would do nothing
with the same sentence, and ``ches.validate``'s scoring options are ``ches.score``'s own fields."""

import dataclasses
import inspect
import json

import pytest
from conftest import MODEL_DIR
from edges import ROWS as SAMPLE_ROWS
from edges import assert_one_line_error, digest, no_model_load, run_cli, scored_sample

import ches
from ches import ChesError
from ches.cli import main
from ches.options import AuditOptions, FilterOptions, PairInputOptions, PairOptions, ScoreOptions, ValidateOptions

#: the from_pretrained keywords every function that loads a model takes as keywords of their own (docs/api.md)
FROM_PRETRAINED = ["trust_remote_code", "attn_implementation", "device_map", "max_memory", "offload_folder", "revision"]


def names(options: type, *, without: tuple[str, ...] = ()) -> list[str]:
    return [item.name for item in dataclasses.fields(options) if item.name not in without]


#: function -> the parameters its signature must list: its own head, then its options' fields (as docs/api.md states
#: which of ches.score's options each takes)
EXPECTED = {
    "score": ["data", "model", "tokenizer", "options", *names(ScoreOptions), *FROM_PRETRAINED],
    # the *_run functions also take chunk_sizes= (how much a chunk holds: for tests and benchmarks)
    "score_run": ["data", "model", "tokenizer", "options", "chunk_sizes", *names(ScoreOptions), *FROM_PRETRAINED],
    "filter": ["data", "quantile", "model", "tokenizer", "options", *names(FilterOptions, without=("quantile",)),
               *names(ScoreOptions), *FROM_PRETRAINED],
    "filter_run": ["data", "quantile", "model", "tokenizer", "options", *names(FilterOptions, without=("quantile",)),
                   *names(ScoreOptions), *FROM_PRETRAINED],
    "pairs": ["data", "model", "tokenizer", "options", *names(PairOptions), *names(PairInputOptions),
              *names(ScoreOptions, without=("columns", "format", "compile", "save_embeddings", "overwrite")), *FROM_PRETRAINED],
    "pairs_run": ["data", "model", "tokenizer", "options", "chunk_sizes", *names(PairOptions), *names(PairInputOptions),
                  *names(ScoreOptions, without=("columns", "format", "compile", "save_embeddings", "overwrite")),
                  *FROM_PRETRAINED],
    "audit": ["scored", "model", "tokenizer", "options", *names(AuditOptions),
              *names(ScoreOptions, without=("split", "columns", "format", "max_length", "save_embeddings", "overwrite", "logps")),
              *FROM_PRETRAINED],
    "validate": ["data", "model", "tokenizer", "options", *names(ValidateOptions)],
}


@pytest.mark.parametrize("function", sorted(EXPECTED))
def test_every_signature_lists_exactly_its_options_fields_with_their_defaults(function):
    parameters = inspect.signature(getattr(ches, function)).parameters
    assert list(parameters) == EXPECTED[function]
    classes = (ValidateOptions,) if function == "validate" else (ScoreOptions, FilterOptions, PairInputOptions,
                                                                      PairOptions, AuditOptions)
    fields = {item.name: item for options in classes for item in dataclasses.fields(options)}  # shared: one default
    for name, parameter in list(parameters.items())[4:]:
        if name in fields:
            item = fields[name]
            default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
            assert parameter.default == default, (function, name)
            assert parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)


ROWS = [{"prompt": "p", "chosen": "a", "rejected": "b", "ln_ches": 1.0, "ches_skip": None}]
MULTI = [{"prompt": "p", "responses": ["a", "b"], "ratings": [1, 0]}]


@pytest.mark.parametrize("call, message", [
    (lambda: ches.score(ROWS, "no/such-model-folder", max_lenght=8), "unknown option 'max_lenght' (did you mean 'max_length'?)"),
    (lambda: ches.filter(ROWS, windw=3), "unknown option 'windw' (did you mean 'window'?)"),
    (lambda: ches.filter_run(ROWS, 0.5, drop_flag=["empty_chosen"]), "unknown option 'drop_flag' (did you mean 'drop_flags'?)"),
    (lambda: ches.pairs(MULTI, "no/such-model-folder", rulle="random"), "unknown option 'rulle' (did you mean 'rule'?)"),
    (lambda: ches.pairs_run(MULTI, "no/such-model-folder", rating_feld="honesty"),
     "unknown option 'rating_feld' (did you mean 'rating_field'?)"),
    (lambda: ches.audit(ROWS, "no/such-model-folder", resampels=10), "unknown option 'resampels' (did you mean 'resamples'?)"),
    (lambda: ches.validate(ROWS, "no/such-model-folder", epoch=2), "unknown option 'epoch' (did you mean 'epochs'?)"),
])
def test_a_misspelt_keyword_is_refused_with_a_suggestion(call, message):
    """Before any data is read or model loaded (the model folder does not exist)."""
    with pytest.raises(ches.ChesError) as error:
        call()
    assert str(error.value).startswith(message + "; the options are ")


def test_each_functions_suggestion_lists_the_options_it_takes():
    with pytest.raises(ches.ChesError) as error:
        ches.audit(ROWS, "no/such-model-folder", resampels=10)
    listed = str(error.value).split("; the options are ", 1)[1].removesuffix(".").split(", ")
    assert sorted(listed) == sorted(EXPECTED["audit"][4:])


@pytest.mark.parametrize("flags, keywords, message", [
    (["--max-length", "64", "--threads", "2"], {"max_length": 64, "num_threads": 2},
     "max_length= (--max-length), num_threads= (--threads) only apply when scoring; pass model= (--model) too, or "
     "drop them."),
    (["--tokenizer", "gpt2"], {"tokenizer": "gpt2"},
     "tokenizer= (--tokenizer) only applies when scoring; pass model= (--model) too, or drop it."),
    (["--trust-remote-code"], {"trust_remote_code": True},
     "trust_remote_code= (--trust-remote-code) only applies when scoring; pass model= (--model) too, or drop it."),
])
def test_the_command_line_and_python_refuse_an_unused_option_with_one_sentence(flags, keywords, message, tmp_path,
                                                                              capsys):
    scores = tmp_path / "scores.jsonl"
    scores.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    assert main(["filter", str(scores), *flags]) == 2
    assert capsys.readouterr().err.strip() == f"ches: error: {message}"
    with pytest.raises(ches.ChesError) as error:
        ches.filter(str(scores), **keywords)
    assert str(error.value) == message


def test_what_does_something_without_a_model_is_not_refused(tmp_path):
    """split and progress apply to reading the scores too; an option at its default value does nothing either way."""
    kept = ches.filter(ROWS * 4, 0.5, progress=False, max_length=None, keep_scores=False)
    assert kept.num_rows == 2


def test_the_rule_given_both_as_options_and_as_a_keyword_is_refused_by_filter_too():
    with pytest.raises(ches.ChesError, match=r"pass the rule either as options= or as keywords \(keep\), not both\."):
        ches.filter(ROWS, options=FilterOptions(quantile=0.5), keep=1)


SHARED = ("split", "columns", "device", "dtype", "max_length", "num_threads", "progress")


@pytest.mark.parametrize("name", SHARED)
def test_validate_takes_score_options_fields_as_they_are(name):
    """Same type, flag, choices and parsing; the help too, except where validate's own default needs saying why."""
    validate = ValidateOptions.__dataclass_fields__[name]
    score = ScoreOptions.__dataclass_fields__[name]
    assert validate.type == score.type
    differs = {"dtype": {"help"}, "max_length": {"help"}}.get(name, set())
    assert {key: value for key, value in validate.metadata.items() if key not in differs} == \
        {key: value for key, value in score.metadata.items() if key not in differs}
    if name == "dtype":
        assert "half precision" in validate.metadata["help"] and validate.metadata["help"] != score.metadata["help"]
    if name == "max_length":
        assert "the DPOConfig's" in validate.metadata["help"] and validate.metadata["help"] != score.metadata["help"]


def test_validate_keeps_its_own_defaults_for_dtype_and_max_length():
    assert (ValidateOptions().dtype, ValidateOptions().max_length) == ("float32", None)  # None: the DPOConfig's
    assert (ScoreOptions().dtype, ScoreOptions().max_length) == (None, None)
    assert {name: getattr(ValidateOptions(), name) for name in SHARED if name not in ("dtype", "max_length")} == \
        {name: getattr(ScoreOptions(), name) for name in SHARED if name not in ("dtype", "max_length")}


def test_the_shared_max_length_help_states_each_commands_default():
    from ches.cli import build_parser

    commands = next(action for action in build_parser()._actions if action.dest == "command").choices
    helps = {command: next(action.help for action in commands[command]._actions if "--max-length" in action.option_strings)
             for command in ("score", "validate")}
    assert helps == {"score": "keep the first N tokens of each sequence (TRL keep_start) (default: no truncation)",
                     "validate": "keep the first N tokens of each sequence (TRL keep_start), in the scoring and the DPO "
                                 "runs alike (default: the DPOConfig's; 512 without --dpo-config)"}


def test_validate_refuses_a_bad_shared_value_as_score_does():
    for options in (ScoreOptions, ValidateOptions):
        with pytest.raises(ches.ChesError, match=r"^num_threads=0 must be a positive integer \(or None for one per free "
                                                 r"core\)\.$"):
            options(num_threads=0)
        none = "no truncation" if options is ScoreOptions else "the DPOConfig's"
        with pytest.raises(ches.ChesError, match=rf"^max_length=1 must be an integer >= 2 \(or None for {none}\)\.$"):
            options(max_length=1)


def test_audit_refuses_score_options_it_does_not_take_before_reading_the_data():
    with pytest.raises(ches.ChesError, match=r"^save_embeddings= applies to ches.score only; ches.audit takes dtype, "):
        ches.audit("no/such/file.jsonl", str(MODEL_DIR), save_embeddings="sums.safetensors")
    with pytest.raises(ches.ChesError, match=r"^max_length come from the scoring run's record"):
        ches.audit("no/such/file.jsonl", str(MODEL_DIR), max_length=64)


@pytest.mark.parametrize("function", ["filter", "filter_run", "pairs", "audit", "validate"])
def test_docs_api_md_writes_each_signature_as_it_is(function):
    """The signature docs/api.md shows names the parameters in the function's order, every one but ches.score's
    options where it says ``**score_options`` (ches.filter takes them all)."""
    from conftest import ROOT

    text = (ROOT / "docs" / "api.md").read_text()
    written = text.split(f"\nches.{function}(", 1)[1].split(")", 1)[0]
    parts = [part.split("=")[0].split(":")[0].strip() for part in written.split(",")]
    shown = [part for part in parts if part not in ("*", "") and not part.startswith("**")]
    listed = list(inspect.signature(getattr(ches, function)).parameters)
    rest = [name for name in listed if name not in names(ScoreOptions) + FROM_PRETRAINED] \
        if "**score_options" in parts else listed
    assert shown == [name for name in listed if name in shown] and set(rest) <= set(shown), (shown, listed)


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


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_command_line_options_are_checked_before_work(case, workdir, capsys):
    argv, message = OPTION_CASES[case]
    before = digest(workdir)
    assert_one_line_error(*run_cli(argv, capsys), message)
    assert digest(workdir) == before


OPTION_CASES_20 = {
    "chosen and rejected from one column": (lambda: ches.score(SAMPLE_ROWS, "model", columns={"chosen": "chosen", "rejected": "chosen"}),
                                            r"column 'chosen' would be read as both 'chosen' and 'rejected'"),
    "chosen mapped onto rejected": (lambda: ches.score(SAMPLE_ROWS, "model", columns={"chosen": "rejected"}),
                                    r"column 'rejected' would be read as both 'chosen' and 'rejected'"),
    "prompt from the chosen column": (lambda: ches.score(SAMPLE_ROWS, "model", columns={"prompt": "chosen"}),
                                      r"column 'chosen' would be read as both 'prompt' and 'chosen'"),
    "dtype and torch_dtype disagree": (lambda: ches.score(SAMPLE_ROWS, "model", dtype="float32", model_kwargs={"torch_dtype": "bfloat16"}),
                                       r"dtype='float32' and model_kwargs\['torch_dtype'\]='bfloat16' disagree"),
    "dtype twice in model_kwargs": (lambda: ches.score(SAMPLE_ROWS, "model", model_kwargs={"dtype": "float16", "torch_dtype": "float32"}),
                                    r"model_kwargs\['dtype'\]='float16' and model_kwargs\['torch_dtype'\]='float32' disagree"),
    "dtype auto": (lambda: ches.score(SAMPLE_ROWS, "model", model_kwargs={"dtype": "auto"}), r"model_kwargs\['dtype'\]='auto' is not supported"),
    "options not options": (lambda: ches.score(SAMPLE_ROWS, "model", options="fast"), r"options= must be a ches.ScoreOptions"),
    "options dict misspelled": (lambda: ches.score(SAMPLE_ROWS, "model", options={"max_lenght": 3}), r"unknown option 'max_lenght'"),
    "options dict and keyword": (lambda: ches.score(SAMPLE_ROWS, "model", options={"max_length": 3}, max_length=4),
                                 r"max_length given both in options= and as keywords"),
    "model_kwargs a string": (lambda: ches.score(SAMPLE_ROWS, "model", model_kwargs="device_map=auto"),
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
    "validate pool below n": (lambda: ches.validate(SAMPLE_ROWS, "model", n=4, pool=1), r"pool=1 must hold at least the n=4 pairs"),
    "validate lr inf": (lambda: ches.validate(SAMPLE_ROWS, "model", n=4, learning_rate=float("inf")),
                        r"learning_rate=inf must be > 0 and finite"),
    "validate beta nan": (lambda: ches.validate(SAMPLE_ROWS, "model", n=4, beta=float("nan")), r"beta=nan must be > 0 and finite"),
    "validate seed negative": (lambda: ches.validate(SAMPLE_ROWS, "model", n=4, seed=-1), r"seed=-1 must be an integer >= 0"),
    "validate n fraction": (lambda: ches.validate(SAMPLE_ROWS, "model", n=4.5), r"n=4.5 must be an integer"),
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
