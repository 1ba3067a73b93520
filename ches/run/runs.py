"""One run's setup, shared by ``ches.score`` and ``ches.pairs``: the model loaded on the process's
device, the CPU threads chosen, the batch budget, the layout probed and set up on the model, the model
compiled if asked; and the record of what the run used (:class:`ModelRun`, which :class:`RunInfo`
and ``ches.pairs``'s :class:`~ches.builder.plan.PairsInfo` extend with what each produced).

>>> from ches.options import ScoreOptions
>>> with prepared("examples/tiny-hh-model", None, ScoreOptions(layout="padded", num_threads=1)) as setup:
...     setup.layout.layout, setup.threads.count, setup.record()["batch_tokens"]
('padded', 1, 1024)
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..data.tokens import SequencePair
from ..model.layouts import LayoutChoice, resolve_layout
from ..model.models import LoadedModel, default_batch_tokens, describe_model, load_model
from ..model.threads import ThreadChoice, set_threads
from ..options import ScoreOptions
from .distributed import Process


def now() -> str:
    """The time, as every run record writes it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass(frozen=True)
class Setup:
    """What a run runs with: the loaded model, its CPU threads, the batch budget, the layout set up for it."""

    loaded: LoadedModel
    threads: ThreadChoice
    batch_tokens: int
    layout: LayoutChoice
    process: Process
    started: str

    def record(self) -> dict[str, Any]:
        """The fields of :class:`ModelRun` this setup fills (all but ``options`` and ``finished``)."""
        return {**describe_model(self.loaded), "batch_tokens": self.batch_tokens, "layout": self.layout.layout,
                "layout_reason": self.layout.reason, "processes": self.process.world, "threads": self.threads.count,
                "threads_reason": self.threads.reason, "started": self.started}


@contextlib.contextmanager
def prepared(model, tokenizer, options: ScoreOptions, *,
             work: Callable[[LoadedModel], Sequence[SequencePair]] | None = None, default_layout: str | None = None,
             estimate: str | None = None, started: str | None = None) -> Iterator[Setup]:
    """Load and set up a run (see the module docstring); an attention kernel the layout switched on is
    switched back when the block ends.

    Args:
        model, tokenizer: as for ``ches.score``.
        options: the run's options (device, dtype, threads, batch budget, layout, compile, model keywords).
        work: the pairs the layout estimate looks at, given the loaded model (a sample of the data).
        default_layout: the layout to probe first when ``options.layout`` is None (else: the cheapest).
        estimate: the cost line of the layout's reason, for work that is not pairs.
        started: when the run began (default: now).
    """
    started = started or now()
    process = Process.current()
    device = options.device
    if device is None and process.world > 1 and not isinstance(model, torch.nn.Module):
        device = process.device()
    loaded = load_model(model, tokenizer, dtype=options.dtype, device=device, model_kwargs=options.model_kwargs)
    threads = set_threads(loaded.model, explicit=options.num_threads, device=loaded.device)
    budget = options.batch_tokens or default_batch_tokens(loaded)
    sample = work(loaded) if work is not None else []
    with contextlib.ExitStack() as scope:  # an attention kernel switched for packed rows is restored on exit
        layout = resolve_layout(options.layout or default_layout, loaded, sample, budget, scope, estimate=estimate,
                                asked="requested" if options.layout is not None else "default")
        if options.compile:  # after the layout probes, so their tiny shapes are not compiled
            loaded = dataclasses.replace(loaded, body=torch.compile(loaded.body, dynamic=True))
        yield Setup(loaded, threads, budget, layout, process, started)


@dataclass(kw_only=True)
class ModelRun:
    """What a run used, enough to reproduce it (written next to CLI outputs): ``options`` as given, the
    other fields what they resolved to (the dtype the weights ran in, device, batch size, layout and why,
    CPU threads and why)."""

    model: str
    model_revision: str | None
    tokenizer: str
    dtype: str
    device: str
    attention: str | None
    batch_tokens: int
    layout: str
    layout_reason: str
    processes: int
    threads: int
    threads_reason: str
    options: dict[str, Any]
    model_fingerprint: str | None = None  # with logps: a hash of the weights the log-probs came from
    tokenizer_fingerprint: str | None = None  # with logps: a hash of the tokenizer that made the token ids
    started: str = ""
    finished: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(kw_only=True)
class RunInfo(ModelRun):
    """A ``ches.score`` run (:class:`ModelRun`) and what came out per split: rows, skipped rows and how many
    for each reason, prompts cut at a token boundary, rows per integrity flag (:mod:`ches.data.integrity`; the
    flags no row has are left out) and rows with any flag; the layout the rows were read in (``format``: ``"trl"``,
    or a framework's, docs/formats.md); and the data's fingerprints."""

    format: str = "trl"  # the layout the rows were read in (named, or detected from the columns)
    dataset_fingerprints: dict[str, str] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    skip_reasons: dict[str, dict[str, int]] = field(default_factory=dict)
    prompt_cut: dict[str, int] = field(default_factory=dict)
    flags: dict[str, dict[str, int]] = field(default_factory=dict)
    flagged: dict[str, int] = field(default_factory=dict)
