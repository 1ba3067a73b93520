"""Model loading (:mod:`ches.model.models`): the dtype a model is scored in, accepted or refused the same way by
the options, the command line and the loader, before any model loads."""

from __future__ import annotations

import pytest
import torch
from conftest import MODEL_DIR

import ches
from ches import ChesError
from ches.cli import main
from ches.model import models
from ches.options import ScoreOptions

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
