"""Resumable runs: a run killed with SIGKILL and started again ends with the uninterrupted run's output;
other settings never reuse the cache; output files are never half-written."""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import MODEL_DIR, ROOT

import ches
from ches.data.inputs import load_data

SAMPLE = str(ROOT / "examples" / "data" / "hh-sample.jsonl")
DRIVER = ("import sys; from ches.cli import main; from ches.run.chunk_loop import ChunkSizes; "
          "sys.exit(main(sys.argv[1:], chunk_sizes=ChunkSizes(pairs=4)))")


def run_cli(*args, wait=True):
    command = [sys.executable, "-c", DRIVER, "score", SAMPLE, "--model", str(MODEL_DIR), "--no-progress", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if wait:
        return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def shards(folder):
    return [p for p in folder.rglob("chunk-*.safetensors")] if folder.exists() else []


@pytest.mark.slow
def test_kill_and_resume_gives_the_uninterrupted_output(tmp_path):
    cache, output = tmp_path / "cache", tmp_path / "scores.parquet"
    process = run_cli("--cache-dir", str(cache), "--output", str(output), wait=False)
    deadline = time.time() + 300
    while len(shards(cache)) < 3 and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done_before = len(shards(cache))
    assert 3 <= done_before < 16 and not output.exists()  # killed mid-way: some chunks, no output
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    resumed = run_cli("--cache-dir", str(cache), "--output", str(output))
    assert resumed.returncode == 0, resumed.stderr
    assert f"{done_before} finished chunks reused" in resumed.stderr
    uninterrupted = run_cli("--cache-dir", str(tmp_path / "fresh"), "--output", str(tmp_path / "fresh.parquet"))
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    assert load_data(str(output)).to_list() == load_data(str(tmp_path / "fresh.parquet")).to_list()  # identical


def test_other_settings_do_not_reuse_the_cache(tmp_path):
    cache = tmp_path / "cache"
    first = ches.score(SAMPLE, str(MODEL_DIR), cache_dir=cache, progress=False)
    before = set(shards(cache))
    truncated = ches.score(SAMPLE, str(MODEL_DIR), cache_dir=cache, max_length=128, progress=False)
    assert set(shards(cache)) > before  # the truncated chunks are new work, with shards of their own
    assert list(truncated["ches"]) != list(first["ches"])
    fresh = ches.score(SAMPLE, str(MODEL_DIR), max_length=128, progress=False)
    assert truncated.to_pandas().equals(fresh.to_pandas())  # the cache changed nothing (NaN equal to NaN)
    again = ches.score(SAMPLE, str(MODEL_DIR), cache_dir=cache, progress=False)
    assert again.to_list() == first.to_list()


def test_a_changed_model_gets_a_new_key(tmp_path, tokenizer, tiny_model):
    import copy

    import torch

    model = copy.deepcopy(tiny_model("llama"))
    rows = load_data(SAMPLE).select(range(6))
    ches.score(rows, model, tokenizer, cache_dir=tmp_path, progress=False)
    with torch.no_grad():
        model.model.norm.weight.add_(0.5)
    ches.score(rows, model, tokenizer, cache_dir=tmp_path, progress=False)
    assert len({p.parent.name for p in shards(tmp_path)}) == 2


def test_failed_write_leaves_no_output(tmp_path, monkeypatch):
    import datasets

    scored = load_data(SAMPLE).select(range(4))

    def broken(self, path, **kwargs):
        with open(path, "w") as handle:
            handle.write("half")
        raise OSError("disk full")

    monkeypatch.setattr(datasets.Dataset, "to_parquet", broken)
    from ches.data.export import write_dataset

    with pytest.raises(OSError, match="disk full"):
        write_dataset(scored, tmp_path / "out.parquet")
    assert list(tmp_path.iterdir()) == []


def test_a_shard_under_another_chunks_name_is_not_reused(tmp_path, monkeypatch, caplog):
    """Each shard records the key of the chunk it holds: one copied over another chunk's file (by hand, or a
    sync tool) is recomputed, not read as that chunk's numbers."""
    import logging
    import shutil

    from ches.run.chunk_loop import ChunkSizes

    small = ChunkSizes(pairs=8)
    rows = load_data(SAMPLE).select(range(16))
    first = ches.score(rows, str(MODEL_DIR), cache_dir=str(tmp_path), progress=False, num_threads=1, chunk_sizes=small)
    files = sorted(shards(tmp_path))
    assert len(files) == 2
    shutil.copyfile(files[0], files[1])
    with caplog.at_level(logging.WARNING, logger="ches"):
        again = ches.score(rows, str(MODEL_DIR), cache_dir=str(tmp_path), progress=False, num_threads=1,
                           chunk_sizes=small)
    assert "records the key" in caplog.text
    assert again["ches"][:] == first["ches"][:]
