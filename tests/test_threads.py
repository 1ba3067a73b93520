"""CPU threads: the default fits the machine (free cores, host-bound models), an explicit count wins, the
choice is recorded and torch's own setting is given back. Nothing here is timed: the timings that justify
the rules are in benchmarks/threads.py and docs/performance.md#cpu-threads."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch
from conftest import MODEL_DIR, hh_rows
from edges import ROWS

import ches
from ches import ChesError
from ches.model import threads


def test_an_explicit_count_always_wins():
    choice = threads.choose_threads(torch.nn.Linear(1000, 1000), explicit=3, busy=2.0)
    assert (choice.count, choice.reason) == (3, "asked for (num_threads=3)")


def test_one_thread_per_free_core(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    big = torch.nn.Linear(1000, 1000)  # a million weights: not host-bound
    assert threads.choose_threads(big, busy=0.0).count == 8
    assert threads.choose_threads(big, busy=2.9).count == 5
    assert threads.choose_threads(big, busy=8.0).count == 1  # never fewer than one
    assert threads.choose_threads(big, busy=3.0).reason == "5 of 8 usable cores free (other work kept 3.0 busy over 50 ms)"
    monkeypatch.setattr(threads, "busy_cores", lambda window=0.05: None)  # no /proc/stat: every usable core
    assert threads.choose_threads(big).count == 8


def test_a_host_bound_model_runs_on_one_thread_on_the_cpu_only(tiny_model):
    model = tiny_model("llama")  # 2 layers of width 32: some 20k weights in the body
    assert threads.body_parameters(model) < threads.HOST_BOUND_PARAMETERS
    choice = threads.choose_threads(model, device=torch.device("cpu"), busy=0.0)
    assert choice.count == 1 and "host-bound" in choice.reason
    assert threads.choose_threads(model, device=torch.device("cuda"), busy=0.0).count == threads.usable_cores()


def test_body_parameters_leave_out_the_embeddings(tiny_model):
    model = tiny_model("llama")
    expected = sum(p.numel() for name, p in model.model.named_parameters() if not name.startswith("embed_tokens"))
    assert threads.body_parameters(model) == expected


def test_a_core_kept_busy_by_another_process_is_seen():
    if threads.busy_cores(0.01) is None:
        pytest.skip("this system has no /proc/stat")
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = threads.busy_cores()
    finally:
        spinner.kill()
        spinner.wait()
    assert busy >= 0.7  # one core's worth, give or take what else the machine does
    big = torch.nn.Linear(1000, 1000)
    assert threads.choose_threads(big, busy=busy).count <= max(1, threads.usable_cores() - 1)


def test_a_cgroup_quota_caps_the_usable_cores(monkeypatch):
    monkeypatch.setattr(threads, "cgroup_quota", lambda: 1.5)
    assert threads.usable_cores() == 1
    monkeypatch.setattr(threads, "cgroup_quota", lambda: None)
    assert threads.usable_cores() >= 1


def test_the_choice_is_recorded_and_torch_is_given_back_its_count(tokenizer, tiny_model):
    before = torch.get_num_threads()
    _, info = ches.api.score_run(hh_rows(3), tiny_model("llama"), tokenizer, progress=False)
    assert (info.threads, torch.get_num_threads()) == (1, before) and "host-bound" in info.threads_reason
    _, info = ches.api.score_run(hh_rows(3), tiny_model("llama"), tokenizer, num_threads=2, progress=False)
    assert (info.threads, info.threads_reason) == (2, "asked for (num_threads=2)") and torch.get_num_threads() == before
    _, info = ches.pairs_run([{"prompt": "Q:", "responses": [" a", " b"], "ratings": [1, 0]}], tiny_model("llama"),
                             tokenizer, num_threads=1, progress=False)
    assert info["threads"] == 1 and info["threads_reason"] == "asked for (num_threads=1)"


def test_validate_takes_a_thread_count():
    result = ches.validate(str(MODEL_DIR.parent / "data" / "hh-sample.jsonl"), str(MODEL_DIR), n=3, steps=1,
                           protocol="probes", max_length=512, pool=3, num_threads=1, progress=False)
    assert result["settings"]["threads"] == 1
    with pytest.raises(ches.ChesError, match=r"num_threads=0 must be a positive integer"):
        ches.validate(str(MODEL_DIR.parent / "data" / "hh-sample.jsonl"), str(MODEL_DIR), n=3, num_threads=0)


def test_threads_are_set_for_the_call_and_recorded(workdir):
    import torch

    default = torch.get_num_threads()
    _, info = ches.api.score_run(ROWS, str(workdir / "model"), num_threads=1, progress=False)
    assert info.threads == 1 and torch.get_num_threads() == default
    with pytest.raises(ChesError, match=r"num_threads=0 must be a positive integer"):
        ches.score(ROWS, str(workdir / "model"), num_threads=0, progress=False)
