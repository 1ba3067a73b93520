"""ches' progress bar counts the tokens the model runs (what the time goes to), and its total is the run's
token count: both sequences of every pair as TRL's DPOTrainer builds them, counted by TRL itself."""


import datasets
import pytest
from conftest import hh_rows
from test_tokens_trl import trl_sequences

import ches
import ches.run.progress
import ches.run.runner
from ches.cli import main
from ches.run.chunk_loop import ChunkSizes


@pytest.fixture
def bars(monkeypatch):
    """Every bar ches opens, kept (still counting) after it is closed."""
    opened = []
    real = ches.run.progress.progress_bar

    def keep(*args, **kwargs):
        bar = real(*args, **kwargs)
        opened.append(bar)
        return bar

    monkeypatch.setattr(ches.run.progress, "progress_bar", keep)
    return opened


def test_the_bar_counts_the_tokens_trl_trains_on(bars, tokenizer, tiny_model, tmp_path):
    rows = hh_rows(40)
    model = tiny_model("llama")
    _, sequences = trl_sequences(rows, tokenizer, model, None, tmp_path)
    tokens = sum(len(input_ids) for input_ids, _ in sequences.values())

    small = ChunkSizes(pairs=8)  # five chunks: the total is estimated, then exact
    ches.score(datasets.Dataset.from_list(rows), model, tokenizer, progress=True, cache_dir=tmp_path / "cache",
               chunk_sizes=small)
    ches.score(datasets.Dataset.from_list(rows), model, tokenizer, progress=True, cache_dir=tmp_path / "cache",
               chunk_sizes=small)

    assert [bar.unit for bar in bars] == ["tok", "tok"]
    for bar in bars:  # the run that computed every chunk, and the one that read them all from the cache
        assert bar.total == tokens
        assert bar.n == tokens


def test_the_total_is_estimated_from_the_characters_left():
    """Until every chunk is tokenized, the total is the tokens planned plus the characters left at the tokens
    per character seen so far."""
    progress = ches.run.progress.TokenProgress(characters=900, bar=None)
    assert progress.total is None
    progress.planned(characters=300, tokens=60)  # 0.2 tokens per character, 600 characters left
    assert progress.total == 60 + 120
    progress.planned(characters=0, tokens=0)  # a chunk of skipped rows changes nothing
    assert progress.total == 180
    progress.planned(characters=600, tokens=150)
    assert progress.total == 210


def test_no_progress_silences_every_bar_and_progress_shows_only_ches_bar(workdir, capsys):
    import datasets.utils.logging as datasets_logging

    assert main(["score", "pairs.jsonl", "-m", "model", "-o", "quiet.parquet", "--no-progress"]) == 0
    assert "%|" not in capsys.readouterr().err  # no bar at all: weight loading, conversion, ches
    assert main(["score", "pairs.jsonl", "-m", "model", "-o", "loud.parquet"]) == 0
    bars = {line.split(":")[0].strip() for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if "%|" in line}
    assert bars == {"ches"}
    assert datasets_logging.is_progress_bar_enabled()  # the libraries' own setting is given back
