"""Loading models and tokenizers (:mod:`ches.model.models`): a damaged checkpoint, custom code, a tokenizer that
does not fit the embeddings, each refused in one line naming what was found before any row is scored (or only
logged where it is harmless); and the dtype a model is scored in, accepted or refused the same way by the
options, the command line and the loader, before any model loads."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import MODEL_DIR
from edges import (
    ROWS,
    _longer_tokenizer,
    assert_one_line_error,
    digest,
    edit_weights,
    prepare,
    run_cli,
    scored_sample,
    write,
)

import ches
from ches import ChesError
from ches.cli import main
from ches.model import models
from ches.options import ScoreOptions

MODEL_CASES = {
    "missing model folder": (None, ["score", "pairs.jsonl", "-m", "./no-such-model"],
                             r"model folder ./no-such-model does not exist; pass a local model folder or a Hub id"),
    "empty model folder": ("empty", ["score", "pairs.jsonl", "-m", "empty-model"],
                           r"model folder empty-model has no config.json .*: it is not a Hugging Face model folder"),
    "corrupt weights": ("corrupt-weights", ["score", "pairs.jsonl", "-m", "model"], r"could not load model 'model'"),
    "corrupt config": ("corrupt-config", ["score", "pairs.jsonl", "-m", "model"],
                       r"could not load model 'model' \(OSError: .*config file at 'model/config.json' is not a valid JSON"),
    "cuda without cuda": (None, ["score", "pairs.jsonl", "-m", "model", "--device", "cuda"], r"no usable CUDA device"),
    "cuda index out of range": (None, ["score", "pairs.jsonl", "-m", "model", "--device", "cuda:7"],
                                r"device='cuda:7', but this machine has (no usable CUDA device|\d+ CUDA device)"),
    "nonsense device": (None, ["score", "pairs.jsonl", "-m", "model", "--device", "gpu please"], r"not a torch device"),
    "missing tokenizer": (None, ["score", "pairs.jsonl", "-m", "model", "--tokenizer", "./no-tokenizer"],
                          r"tokenizer folder ./no-tokenizer does not exist; pass a local tokenizer folder or a Hub id"),
}


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_models(case, workdir, capsys):
    setup, argv, message = MODEL_CASES[case]
    prepare(workdir)
    if setup == "corrupt-weights":
        (workdir / "model" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    if setup == "corrupt-config":
        (workdir / "model" / "config.json").write_text("{broken")
    before = digest(workdir)
    assert_one_line_error(*run_cli(argv, capsys), message)
    assert digest(workdir) == before


@pytest.mark.parametrize("edit, message", [
    (lambda w: {k: v for k, v in w.items() if ".layers.3." not in k},
     r"missing: model\.layers\.3\.input_layernorm\.weight, .* and 5 more"),
    (lambda w: {k: v for k, v in w.items() if k != "model.norm.weight"}, r"missing: model\.norm\.weight\)"),
    (lambda w: {**w, "model.layers.4.mlp.up_proj.weight": w["model.layers.3.mlp.up_proj.weight"].clone()},
     r"unexpected: model\.layers\.4\.mlp\.up_proj\.weight"),
    (lambda w: {**w, "model.norm.weight": w["model.norm.weight"][:64]},
     r"mis-shaped: model\.norm\.weight \(checkpoint \(64,\), model \(128,\)\)"),
])
def test_a_checkpoint_that_does_not_fill_the_body_is_refused(edit, message, workdir, capsys):
    edit_weights(workdir / "model", edit)
    before = digest(workdir)
    assert_one_line_error(*run_cli(["score", "pairs.jsonl", "-m", "model", "-o", "s.parquet"], capsys),
                          rf"model 'model': the checkpoint does not match the model's body \({message}")
    assert digest(workdir) == before
    with pytest.raises(ChesError, match=message):
        ches.pairs([{"prompt": "Q:", "responses": [" a", " b"], "ratings": [1, 0]}], "model", progress=False)


def test_weights_outside_the_body_are_only_logged(workdir, caplog):
    import logging

    import torch

    edit_weights(workdir / "model", lambda w: {**w, "v_head.weight": torch.zeros(1, 128)})
    with caplog.at_level(logging.WARNING, logger="ches"):
        scored = ches.score(ROWS, "model", progress=False, layout="padded")
    assert "outside the decoder body are missing or unexpected (v_head.weight)" in caplog.text
    assert list(scored["ches"]) == list(scored_sample()["ches"])


def test_custom_code_never_runs_or_prompts_without_trust_remote_code(workdir, capsys, monkeypatch):
    folder = workdir / "custom"
    shutil.copytree(workdir / "model", folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="custom_llama", auto_map={"AutoConfig": "custom.CustomConfig",
                                                       "AutoModelForCausalLM": "custom.CustomForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom.py").write_text(
        f"import pathlib\npathlib.Path({str(folder / 'RAN')!r}).write_text('custom code ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'custom_llama'\n"
        "class CustomForCausalLM(LlamaForCausalLM):\n    config_class = CustomConfig\n")
    monkeypatch.setattr("builtins.input", lambda *args: pytest.fail("asked on the terminal"))
    before = digest(workdir)
    assert_one_line_error(*run_cli(["score", "pairs.jsonl", "-m", "custom"], capsys),
                          r"'custom' needs custom code of its own to load; ches runs such code only when asked: pass "
                          r"--trust-remote-code \(Python: trust_remote_code set to True\)")
    assert digest(workdir) == before and not (folder / "RAN").exists()
    assert main(["score", "pairs.jsonl", "-m", "custom", "--trust-remote-code", "--no-progress"]) == 0
    assert (folder / "RAN").read_text() == "custom code ran"


def test_revision_of_a_local_folder_is_refused(workdir, capsys):
    assert_one_line_error(*run_cli(["score", "pairs.jsonl", "-m", "model", "--revision", "v2"], capsys),
                          r"revision='v2' selects a version of a Hub model, but model is a local folder")


def test_a_tokenizer_longer_than_the_embeddings_scores_as_without_its_unused_token(workdir):
    scored = ches.score(ROWS, "model", _longer_tokenizer(), progress=False, layout="padded", logps=True)
    plain = ches.score(ROWS, "model", progress=False, layout="padded", logps=True)
    for name in ("ches", "ln_ches", "chosen_logps", "rejected_logps"):
        assert scored[name] == plain[name], name
    rows = [{"prompt": "Human: hi\n\nAssistant:", "responses": [" a", " b c", " d"], "ratings": [3, 1, 2]}]
    pairs = ches.pairs(rows, "model", _longer_tokenizer(), progress=False, dtype="float32")
    assert pairs["ches"] == ches.pairs(rows, "model", progress=False, dtype="float32")["ches"]


def test_data_using_a_token_the_model_has_no_embedding_for_is_refused_naming_row_id_and_token(workdir, capsys):
    rows = [dict(row) for row in ROWS]
    rows[3]["chosen"] += " <unused_0>"
    message = (r"^row 3: token id 4096 \('<unused_0>'\) has no embedding in the model \(ids 0\.\.4095\): the tokenizer "
               r"has tokens the model was not given .*; remove that token from the row, or pass the model's own tokenizer\.$")
    with pytest.raises(ChesError, match=message):
        ches.score(rows, "model", _longer_tokenizer(), progress=False, layout="padded")
    _longer_tokenizer().save_pretrained(workdir / "longer-tokenizer")
    write(workdir / "unused.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    assert_one_line_error(*run_cli(["score", "unused.jsonl", "-m", "model", "--tokenizer", "longer-tokenizer"], capsys),
                          message.removeprefix("^"))
    candidates = [{"prompt": "Q:", "responses": [" a", " b"], "ratings": [1, 0]},
                  {"prompt": "Q:", "responses": [" a", " b <unused_0>"], "ratings": [1, 0]}]
    with pytest.raises(ChesError, match=r"^row 1: token id 4096 \('<unused_0>'\) has no embedding in the model"):
        ches.pairs(candidates, "model", _longer_tokenizer(), progress=False)


def test_an_eos_token_the_model_has_no_embedding_for_is_refused_when_the_model_is_loaded(workdir, capsys):
    message = (r"the tokenizer's EOS token '<unused_0>' has id 4096, but the model has embeddings for ids 0\.\.4095 only, "
               r"and that token is in every sequence TRL trains on")
    longer = _longer_tokenizer(eos=True)
    longer.save_pretrained(workdir / "eos-tokenizer")
    assert_one_line_error(*run_cli(["score", "pairs.jsonl", "-m", "model", "--tokenizer", "eos-tokenizer"], capsys), message)
    with pytest.raises(ChesError, match=message):
        ches.pairs([{"prompt": "Q:", "responses": [" a", " b"], "ratings": [1, 0]}], "model", longer, progress=False)


@pytest.mark.parametrize("damage", ["no added_tokens", "not json"])
def test_a_damaged_tokenizer_file_is_named(damage, workdir, capsys):
    path = workdir / "model" / "tokenizer.json"
    if damage == "not json":
        path.write_text("{not json")
    else:
        content = json.loads(path.read_text())
        del content["added_tokens"]
        path.write_text(json.dumps(content))
    assert_one_line_error(*run_cli(["score", "pairs.jsonl", "-m", "model"], capsys),
                          r"could not load the tokenizer of the model 'model' \(model/tokenizer.json is damaged: ")


def test_a_folder_without_tokenizer_files_and_a_missing_model_are_named_as_such(workdir, capsys):
    """A model folder saved without its tokenizer is named as that (the message was transformers' cut-off
    ValueError); a Hub id that cannot be had is a missing model in ches audit too, not a tokenizer problem."""
    assert run_cli(["score", "pairs.jsonl", "-m", "model", "--logps", "-o", "logps.parquet", "--no-progress"], capsys)[0] == 0
    (workdir / "model" / "tokenizer.json").unlink()
    (workdir / "model" / "tokenizer_config.json").unlink()
    assert_one_line_error(*run_cli(["score", "pairs.jsonl", "-m", "model"], capsys),
                          r"could not load the tokenizer of the model 'model' \(the folder holds none of tokenizer.json, "
                          r"tokenizer.model, vocab.json, tokenizer_config.json: save the tokenizer there")
    assert_one_line_error(*run_cli(["audit", "logps.parquet", "-m", "nobody/no-such-model"], capsys),
                          r"could not load model 'nobody/no-such-model': it is not a local folder")


def test_the_dtype_that_ran_is_the_dtype_recorded(workdir):
    scored, info = ches.api.score_run(ROWS, "model", model_kwargs={"torch_dtype": "bfloat16"}, progress=False)
    assert (info.dtype, info.options["dtype"], info.options["model_kwargs"]) == ("bfloat16", "bfloat16", {})
    assert scored["ches"] != scored_sample()["ches"]  # it really ran in bfloat16
    import torch

    _, same = ches.api.score_run(ROWS, "model", dtype=torch.bfloat16, model_kwargs={"dtype": "bf16"}, progress=False)
    assert same.dtype == "bfloat16"


#: every name a dtype may be given by, with the torch dtype it means (written out by hand)
DTYPES_BY_NAME = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
                  "fp16": torch.float16, "half": torch.float16, "float32": torch.float32, "fp32": torch.float32,
                  "float": torch.float32}
REFUSED = ("dtype='float64' is not supported; use one of ['bfloat16', 'float16', 'float32'] "
           "(or bf16, fp16, half, fp32, float).")


@pytest.mark.parametrize("name", sorted(DTYPES_BY_NAME))
def test_every_dtype_name_the_options_accept_loads(name):
    wanted = DTYPES_BY_NAME[name]
    for options in (ScoreOptions(dtype=name), ScoreOptions.from_kwargs(model_kwargs={"torch_dtype": name})):
        assert options.dtype == str(wanted).removeprefix("torch.")  # recorded by its one full name
        loaded = models.load_model(str(MODEL_DIR), dtype=options.dtype, device="cpu")
        assert loaded.dtype == wanted and next(loaded.model.parameters()).dtype == wanted
    assert models.load_model(str(MODEL_DIR), dtype=name, device="cpu").dtype == wanted  # the loader reads it too


def test_the_command_line_takes_every_dtype_name(tmp_path):
    from ches.cli.commands import build_parser

    for name, wanted in DTYPES_BY_NAME.items():
        args = build_parser().parse_args(["score", "pairs.jsonl", "-m", "model", "--dtype", name])
        assert args.dtype == str(wanted).removeprefix("torch.")


def test_an_unknown_dtype_is_refused_before_any_model_loads(monkeypatch, capsys):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "_from_pretrained", no_loading)
    for refuse in (lambda: ScoreOptions(dtype="float64"),
                   lambda: models.load_model(str(MODEL_DIR), dtype="float64", device="cpu"),
                   lambda: ches.score([{"prompt": "Q:", "chosen": " a", "rejected": " b"}], str(MODEL_DIR),
                                      dtype="float64", progress=False)):
        with pytest.raises(ChesError) as error:
            refuse()
        assert str(error.value) == REFUSED
    with pytest.raises(ChesError) as error:
        ScoreOptions.from_kwargs(model_kwargs={"torch_dtype": "float64"})
    assert str(error.value) == REFUSED.replace("dtype=", "model_kwargs['torch_dtype']=")
    assert main(["score", "pairs.jsonl", "-m", str(MODEL_DIR), "--dtype", "float64"]) == 2
    err = capsys.readouterr().err  # argparse's words (quoting the choices or not, by Python version)
    assert "argument --dtype: invalid choice: 'float64' (choose from " in err
    assert all(name in err.split("choose from ")[1] for name in ("bfloat16", "float16", "float32"))
