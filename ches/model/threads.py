"""CPU threads: how many torch uses for a call, chosen to fit the machine as it is at that moment.

torch starts one thread per core, and every parallel operator waits for all of them. When another
process holds a core, the thread scheduled there runs late and every operator waits for it: on a 2-core
machine with one core busy, two threads made ``ches.score`` 1.8x slower than one (docs/performance.md,
"CPU threads"). So a call without ``num_threads`` counts the cores it may use (its CPU affinity, capped
by a cgroup CPU quota), looks at how busy they are for a moment (:func:`busy_cores`: 50 ms of the
kernel's per-CPU counters), and takes one thread per core that is free. On the CPU, a model whose layers
do almost nothing per token (fewer than :data:`HOST_BOUND_PARAMETERS` weights in its body) runs on one
thread: the time then goes to Python and the tokenizer, which more threads only slow down. An explicit
count always wins. The choice and its reason are recorded with the run (``threads``, ``threads_reason``).

>>> choice = choose_threads(None, explicit=3)
>>> choice.count, choice.reason
(3, 'asked for (num_threads=3)')
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

#: a model body with fewer weights than this is host-bound on the CPU: one thread is fastest (measured in
#: benchmarks/threads.py: a 0-layer model and a 32-wide one ran faster on one thread than on two, a 64-wide
#: one with 131k body weights already faster on two)
HOST_BOUND_PARAMETERS = 100_000
#: how long the CPUs' counters are watched to see how busy they are
BUSY_WINDOW_SECONDS = 0.05


@dataclass(frozen=True)
class ThreadChoice:
    """How many CPU threads torch runs for a call, and why (recorded in the run's metadata)."""

    count: int
    reason: str


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup CPU quota where one is set
    (a container limited to 4 CPUs on a 64-core host can use 4).

    >>> usable_cores() >= 1
    True
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        cores = os.cpu_count() or 1
    quota = cgroup_quota()
    return max(1, min(cores, math.floor(quota)) if quota is not None else cores)


def cgroup_quota() -> float | None:
    """The CPUs a cgroup quota allows this process (cgroup v2 ``cpu.max`` or v1 ``cfs_quota_us``), or None."""
    for path, parse in (("/sys/fs/cgroup/cpu.max", lambda text: text.split()),
                        ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", None)):
        try:
            with open(path, encoding="ascii") as handle:
                text = handle.read().strip()
        except OSError:
            continue
        if parse is not None:
            quota, period = (parse(text) + ["100000"])[:2]
        else:
            quota = text
            try:
                with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us", encoding="ascii") as handle:
                    period = handle.read().strip()
            except OSError:
                return None
        if quota in ("max", "-1") or not quota.lstrip("-").isdigit() or not period.isdigit() or int(period) == 0:
            return None
        return max(int(quota) / int(period), 1.0)
    return None


def busy_cores(window: float = BUSY_WINDOW_SECONDS) -> float | None:
    """How many of this process's cores other work keeps busy now: the summed busy fractions of its CPUs
    over ``window`` seconds (this process sleeps meanwhile, so the work is others'); None where the
    kernel's per-CPU counters (``/proc/stat``) cannot be read.

    >>> 0.0 <= (busy_cores(0.01) or 0.0) <= usable_cores()
    True
    """
    try:
        mine = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        mine = None
    before = _cpu_counters()
    if before is None:
        return None
    time.sleep(window)
    after = _cpu_counters()
    if after is None:
        return None
    busy = 0.0
    for cpu, (total, idle) in after.items():
        if (mine is not None and cpu not in mine) or cpu not in before:
            continue
        elapsed = total - before[cpu][0]
        if elapsed > 0:
            busy += 1.0 - (idle - before[cpu][1]) / elapsed
    return busy


def _cpu_counters() -> dict[int, tuple[int, int]] | None:
    """Per CPU: ``(total, idle)`` jiffies since boot, from ``/proc/stat`` (idle includes I/O wait)."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    counters = {}
    for line in lines:
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *values = line.split()
            numbers = [int(value) for value in values[:8]]
            counters[int(name[3:])] = (sum(numbers), numbers[3] + numbers[4])
    return counters or None


def body_parameters(model: torch.nn.Module) -> int:
    """Weights of a causal LM's decoder body, embeddings excluded: the work its layers do per token."""
    body = getattr(model, "base_model", model)
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    skipped = {id(parameter) for parameter in embeddings.parameters()} if embeddings is not None else set()
    return sum(parameter.numel() for parameter in body.parameters() if id(parameter) not in skipped)


def choose_threads(model: torch.nn.Module | None, *, explicit: int | None = None, device: torch.device | None = None,
                   busy: float | None = None) -> ThreadChoice:
    """The CPU threads for a call: ``explicit`` if given; else one per usable core that other work leaves
    free (``busy``: :func:`busy_cores`, measured here when not given), and one for a host-bound model on
    the CPU (its body has fewer than :data:`HOST_BOUND_PARAMETERS` weights). Never fewer than one.

    >>> choose_threads(None, busy=0.0).count == usable_cores()
    True
    >>> choose_threads(torch.nn.Linear(4, 4), device=torch.device("cpu"), busy=0.0).reason
    'one thread: the model body has 20 weights (< 100,000), so the run is host-bound and one thread is fastest'
    """
    if explicit is not None:
        return ThreadChoice(explicit, f"asked for (num_threads={explicit})")
    cores = usable_cores()
    on_cpu = device is None or device.type == "cpu"
    if model is not None and on_cpu:
        weights = body_parameters(model)
        if weights < HOST_BOUND_PARAMETERS:
            return ThreadChoice(1, f"one thread: the model body has {weights:,} weights (< {HOST_BOUND_PARAMETERS:,}), "
                                   "so the run is host-bound and one thread is fastest")
    busy = busy_cores() if busy is None else busy
    if busy is None:
        return ThreadChoice(cores, f"one per usable core ({cores}); how busy they are could not be read")
    free = max(1, min(cores, round(cores - busy)))
    return ThreadChoice(free, f"{free} of {cores} usable cores free (other work kept {busy:.1f} busy over "
                              f"{int(BUSY_WINDOW_SECONDS * 1000)} ms)")


def set_threads(model: torch.nn.Module | None, *, explicit: int | None = None,
                device: torch.device | None = None) -> ThreadChoice:
    """:func:`choose_threads` for a loaded model, and torch set to it (inside :func:`torch_threads`, which
    gives the previous count back after the call)."""
    choice = choose_threads(model, explicit=explicit, device=device)
    torch.set_num_threads(choice.count)
    return choice


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``count`` inside the block (``None``: left as they are), restored after."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
