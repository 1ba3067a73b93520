"""Saved embeddings: a full disk or too little space ends in one line and leaves nothing behind."""

from __future__ import annotations

import shutil

from edges import assert_one_line_error, digest, run_cli


def test_a_full_disk_while_assembling_embeddings_is_one_line_and_leaves_nothing(workdir, capsys, monkeypatch):
    import errno
    import os

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    before = digest(workdir)
    assert_one_line_error(*run_cli(["score", "pairs.jsonl", "-m", "model", "--save-embeddings", "e.safetensors",
                                    "--cache-dir", "cache", "-o", "s.parquet", "--no-progress"], capsys),
                          r"no space left on the device: No space left on device; nothing half-written was left")
    assert {name: value for name, value in digest(workdir).items() if not name.startswith("cache/")} == before
    assert not [path for path in workdir.iterdir() if path.name.startswith(".")]


def test_too_little_space_for_the_embeddings_is_found_before_the_run(workdir, capsys, monkeypatch):
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    before = digest(workdir)
    assert_one_line_error(*run_cli(["score", "pairs.jsonl", "-m", "model", "--save-embeddings", "e.safetensors"], capsys),
                          r"e.safetensors: the embeddings of 6 rows need about 0.0 MiB while they are written .* has 0.0 MiB free")
    assert digest(workdir) == before
