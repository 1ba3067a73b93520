"""Helpers the edge-case tests share: a working folder's files and digest, a scored sample, the one-line
error check (the ``workdir`` fixture that lays the folder out is in conftest.py)."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from pathlib import Path

import datasets
from conftest import MODEL_DIR, ROOT

import ches
from ches.cli import main

SAMPLE = ROOT / "examples" / "data" / "hh-sample.jsonl"
ROWS = [json.loads(line) for line in SAMPLE.read_text().splitlines()[:6]]


@functools.cache
def scored_sample() -> datasets.Dataset:
    """The first rows of the bundled sample, scored once per test session."""
    return ches.score(ROWS, str(MODEL_DIR), progress=False, layout="padded")


def scored_rows(folder: Path) -> None:
    scored_sample().to_parquet(str(folder / "scores.parquet"))


def digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) with the SHA-256 of its bytes."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def run_cli(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def write(path: Path, content) -> None:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


def prepare(workdir: Path) -> None:
    """Extra files some cases need."""
    (workdir / "notes.parquet").write_text("an old output the user wants to keep")
    (workdir / "notes.safetensors").write_text("old embeddings")
    (workdir / "old.html").write_text("<p>old report</p>")
    (workdir / "old.json").write_text("{}")
    (workdir / "fresh.parquet.meta.json").write_text("{}")
    (workdir / "sub").mkdir(exist_ok=True)
    shutil.copy(workdir / "pairs.jsonl", workdir / "sub" / "pairs.jsonl")
    (workdir / "empty-model").mkdir(exist_ok=True)


def assert_one_line_error(code: int, err: str, message: str | None) -> None:
    lines = [line for line in err.splitlines() if line.startswith("ches: error:")]
    assert code == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    if message:
        import re

        assert re.search(message, lines[0]), lines[0]


def no_model_load(monkeypatch) -> None:
    """Make any model load fail the test: the case must be refused before it."""
    import ches.evaluate.validation
    import ches.run.runs

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the problem was found")

    for module in (ches.run.runs, ches.evaluate.validation):
        monkeypatch.setattr(module, "load_model", refuse)


def edit_weights(folder: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    save_file(edit(weights), str(folder / "model.safetensors"), metadata={"format": "pt"})


def short_context_model(workdir: Path) -> str:
    """The bundled model, told its context is 48 tokens (only ches' checks read it)."""
    folder = workdir / "short"
    shutil.copytree(workdir / "model", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 48}))
    return str(folder)


LONG = " and then" * 40  # far beyond 48 tokens


PERSONA = ROOT / "examples" / "data" / "persona-ends-justify-means.jsonl"


PERSONA_COLUMNS = {"prompt": "question", "chosen": "answer_matching_behavior", "rejected": "answer_not_matching_behavior"}


def _longer_tokenizer(*, eos: bool = False):
    """The bundled tokenizer (4,096 tokens, as many as the model's embeddings) with one token more,
    ``<unused_0>`` (id 4096); ``eos``: that token is its EOS."""
    from transformers import AutoTokenizer

    longer = AutoTokenizer.from_pretrained(MODEL_DIR)
    if eos:
        longer.add_special_tokens({"eos_token": "<unused_0>"})
    else:
        longer.add_tokens(["<unused_0>"])
    assert len(longer) == 4097 and longer.convert_tokens_to_ids("<unused_0>") == 4096
    return longer
