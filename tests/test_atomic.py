"""Outputs appear atomically: a process killed at any point of writing a folder or a file output leaves
the complete old output or the complete new one at the path, never neither and never a mixture.

The kill is ``os._exit`` (no cleanup, no ``finally``: what SIGKILL leaves) injected at each step of
:func:`ches.data.export.write_dataset` in a child process."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from ches.data.export import write_dataset
from ches.data.inputs import load_data

CHILD = r"""
import os, sys, datasets, shutil
import ches.data.export as export
target, point = sys.argv[1], sys.argv[2]
new = datasets.Dataset.from_dict({"x": list(range(100, 140)), "y": ["new"] * 40})

def die(*args, **kwargs):
    os._exit(9)

def after(function):
    def wrapped(*args, **kwargs):
        function(*args, **kwargs)
        os._exit(9)
    return wrapped

if point == "while-writing":  # half a file / half a folder written, then killed
    def partial(self, path, *args, **kwargs):
        os.makedirs(path, exist_ok=True) if not path.endswith((".parquet", ".jsonl")) else None
        with open(path if path.endswith((".parquet", ".jsonl")) else os.path.join(path, "data.arrow"), "wb") as f:
            f.write(b"PAR1 half")
        os._exit(9)
    datasets.Dataset.to_parquet = partial
    datasets.Dataset.to_json = partial
    export.write_json_lines = lambda dataset, path, *args, **kwargs: partial(dataset, str(path))
    datasets.Dataset.save_to_disk = partial
elif point == "before-rename":
    export.os.replace = die
    export._exchange = die
elif point == "after-rename":
    export.os.replace = after(os.replace)
    export._exchange = after(export._exchange)
elif point == "while-removing-old":
    export.shutil.rmtree = die
export.write_dataset(new, target, overwrite=True)
os._exit(0)
"""


def folder_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for item in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if item.is_file():
            digest.update(item.name.encode() + item.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("point", ["while-writing", "before-rename", "after-rename", "while-removing-old", "never"])
@pytest.mark.parametrize("name", ["scores", "scores.parquet", "scores.jsonl"])
def test_a_kill_leaves_the_old_or_the_new_output_whole(name, point, tmp_path):
    target = tmp_path / name
    old = datasets.Dataset.from_dict({"x": list(range(30)), "y": ["old"] * 30})
    write_dataset(old, target)
    old_digest = folder_digest(target)
    result = subprocess.run([sys.executable, "-c", CHILD, str(target), point], capture_output=True, text=True)
    assert result.returncode in (0, 9), result.stderr
    if point != "never" and not (point == "while-removing-old" and name != "scores"):  # files remove no old folder
        assert result.returncode == 9, f"the kill point {point} was never reached"
    assert target.exists(), f"killed {point}: the output is gone"
    if folder_digest(target) == old_digest:
        assert point != "never"
        assert load_data(str(target)).to_dict() == old.to_dict()
    else:
        assert load_data(str(target)).to_dict() == {"x": list(range(100, 140)), "y": ["new"] * 40}
    if point == "never":
        assert not [item for item in tmp_path.iterdir() if item.name.startswith(".")]  # nothing left behind
