"""The per-pair pipeline, streamed: rows -> chunks -> token sequences -> decoder passes -> per-pair numbers.

Before the model loads, :func:`ches.data.rows.read_rows` checks every row and keeps only each row's text
length. The rows are then cut into chunks of :data:`CHUNK_PAIRS` pairs (:func:`ches.run.chunks.plan_chunks`).
Each process takes a share of the chunks (balanced by length) and streams them: a background thread
reads and tokenizes the chunks ahead of the device (:func:`ches.run.chunks.stream_chunks`), while the main
thread runs the model on the current one (from the cache where it holds the chunk) and reduces it at
once to its numbers. Per row, only
numbers are kept (a few bytes each; token ids live only while their chunk is in flight, hidden sums
only when embeddings are written, and those go to disk chunk by chunk). At the end the processes
exchange their rows' numbers, so every process returns all of them.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..data.columns import DIGEST_COLUMN, LOGPS_COLUMNS, SCORE_TYPES, SHARED_LOGPS_COLUMNS
from ..data.integrity import FLAGS_COLUMN, describe_flags, from_bits
from ..data.rows import RowSource
from ..data.tokens import SequencePair, Skip, TokenSequence
from ..errors import ChesError
from ..model.engine import HiddenSums
from ..model.layouts import LayoutChoice
from ..model.logps import LMHead
from ..model.models import LoadedModel
from ..scores import formulas as scores
from ..scores.stats import counted, skip_reasons
from .cache import ShardCache, chunk_key
from .chunks import PlannedChunk, plan_chunks, plan_pairs, stream_chunks  # noqa: F401 (plan_pairs: read here by tests too)
from .distributed import Process
from .embeddings import EmbeddingWriter
from .progress import TokenProgress, progress_bar, run_tokens  # noqa: F401 (progress_bar: read from here by pair_builder)

logger = logging.getLogger("ches")

CHUNK_PAIRS = 256  # pairs per chunk: the unit of work, of caching and of resuming
#: per-pair numbers computed from the hidden sums (the rest of the score columns come from the plans)
SUM_SCORES = ("ches", "ln_ches", "last_hidden_ip")
#: per-pair numbers the model pass gives: the sums' scores, and with ``logps`` each completion's log-probability
MODEL_NUMBERS = {False: SUM_SCORES, True: SUM_SCORES + LOGPS_COLUMNS + SHARED_LOGPS_COLUMNS}
#: the numeric score columns of a row, as exchanged between processes
NUMBERS = {name: torch.float64 if kind == "float64" else torch.int64
           for name, kind in SCORE_TYPES.items() if kind in ("float64", "int64")} | {"prompt_cut": torch.int64,
                                                                                    "flag_bits": torch.int64}


@dataclass(frozen=True)
class SideSums:
    """Hidden-state reductions of ``N`` pairs, one ``[N, H]`` float32 tensor per side and kind."""

    chosen_sum: torch.Tensor
    rejected_sum: torch.Tensor
    chosen_last: torch.Tensor
    rejected_last: torch.Tensor
    chosen_logps: torch.Tensor | None = None  # [N] float64, with logps
    rejected_logps: torch.Tensor | None = None
    chosen_shared_logps: torch.Tensor | None = None  # [N] float64, with logps: LD-DPO's shared part
    rejected_shared_logps: torch.Tensor | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        """The four ``[N, H]`` tensors (:data:`SUM_TENSORS`), by name."""
        return {name: getattr(self, name) for name in SUM_TENSORS}


SUM_TENSORS = ("chosen_sum", "rejected_sum", "chosen_last", "rejected_last")  # what embeddings and the cache keep


@dataclass(frozen=True)
class ScoredRows:
    """What :func:`score_rows` computed for a table: the score columns by name
    (:data:`ches.data.columns.SCORE_COLUMNS`), NaN / zero where ``ches_skip`` has a reason (``ches_flags``: a
    list of :mod:`ches.data.integrity` flag names per row), and how many prompts were cut at a token boundary."""

    columns: dict[str, list]
    prompt_cut: int


def score_rows(source: RowSource, loaded: LoadedModel, *, layout: LayoutChoice, batch_tokens: int,
               max_length: int | None, progress: bool = False, cache: ShardCache | None = None,
               embeddings: EmbeddingWriter | None = None, process: Process | None = None,
               logps: bool = False) -> ScoredRows:
    """Score every row of ``source`` in ``layout`` (resolved for this model), streaming chunk by chunk; with
    ``logps``, each completion's log-probability too (:data:`~ches.data.columns.LOGPS_COLUMNS`)."""
    process = process or Process()
    chunks = plan_chunks(source.lengths, CHUNK_PAIRS)
    mine = process.share([float(source.lengths[chunk].sum()) for chunk in chunks])
    bar = TokenProgress.start(int(sum(source.lengths[chunks[i]].sum() for i in mine)), progress and process.is_main)
    try:
        result, reused = _score_chunks(source, chunks, mine, loaded, layout=layout, batch_tokens=batch_tokens,
                                       max_length=max_length, bar=bar, cache=cache, embeddings=embeddings, process=process,
                                       logps=logps)
        _refuse_if_nothing_finite(result.columns["ches_skip"], loaded.dtype, source.split)
        if embeddings is not None and process.is_main:
            embeddings.finish(list(range(len(chunks))))
    except BaseException:
        if embeddings is not None:  # no half-built embeddings are left behind
            embeddings.discard()
        if bar is not None:  # an error is printed on a line of its own
            bar.close()
        raise
    summary = _summary(result, loaded.name) + (f"; {reused} finished chunks reused from {cache.folder}" if reused else "")
    if bar is not None:
        bar.close()
        if not logger.isEnabledFor(logging.INFO):  # nobody would see the log record: show it with the bar
            bar.write(summary, file=sys.stderr)
    if process.is_main:
        logger.info(summary)
    return result


def _score_chunks(source: RowSource, chunks: list[np.ndarray], mine: list[int], loaded: LoadedModel, *,
                  layout: LayoutChoice, batch_tokens: int, max_length: int | None, bar: TokenProgress | None,
                  cache: ShardCache | None,
                  embeddings: EmbeddingWriter | None, process: Process, logps: bool) -> tuple[ScoredRows, int]:
    """Run this process's chunks (from the cache where it holds them), then gather every process's rows."""
    collected, reused = _Collected(MODEL_NUMBERS[logps]), 0
    head = LMHead.of(loaded.model) if logps else None
    try:
        for planned in stream_chunks(source, chunks, mine, loaded, max_length):
            if bar is not None:
                bar.planned(int(source.lengths[planned.rows].sum()), run_tokens(planned.work))
            stored, cached = _chunk_scores(planned, loaded, layout=layout, batch_tokens=batch_tokens, cache=cache,
                                           keep_sums=embeddings is not None, bar=bar, head=head)
            reused += cached
            run = collected.add(planned, stored, loaded.dtype)
            release_freed_memory()
            if embeddings is not None:
                embeddings.add(planned.chunk_id, torch.as_tensor(planned.rows)[run],
                               {name: stored[name] for name in SUM_TENSORS},
                               torch.tensor(planned.numbers["chosen_tokens"])[run],
                               torch.tensor(planned.numbers["rejected_tokens"])[run])
        failure = None
    except Exception as error:  # every process learns of it below, instead of waiting at the exchange
        failure = error
    process.fail_together(failure)
    return collected.gather(process, len(source.lengths)), reused


def _chunk_scores(planned: PlannedChunk, loaded: LoadedModel, *, layout: LayoutChoice, batch_tokens: int,
                  cache: ShardCache | None, keep_sums: bool, bar: TokenProgress | None, head: LMHead | None = None
                  ) -> tuple[dict[str, torch.Tensor], bool]:
    """A chunk's :data:`MODEL_NUMBERS` (and sums when ``keep_sums``) for its run rows, and whether they came
    from the cache."""
    names = MODEL_NUMBERS[head is not None] + (SUM_TENSORS if keep_sums else ())
    key = chunk_key(planned.plans) if cache is not None else None
    stored = cache.load(key, rows=len(planned.work), names=names) if cache is not None else None
    if stored is None:
        computed = compute_chunk(planned.work, loaded, layout=layout, batch_tokens=batch_tokens, keep_sums=keep_sums,
                                 on_tokens=bar.update if bar is not None else None, head=head)
        if cache is not None:
            cache.save(key, computed)
    elif bar is not None:  # a chunk from the cache (skipped rows run no tokens)
        bar.update(run_tokens(planned.work))
    return (computed if stored is None else stored), stored is not None


class _Collected:
    """This process's rows' numbers and skip reasons, chunk by chunk, until they are exchanged."""

    def __init__(self, model_numbers: tuple[str, ...] = SUM_SCORES) -> None:
        self.model_numbers = model_numbers  # what the model pass gives per pair (float64, NaN where skipped)
        self.numbers = NUMBERS | {name: torch.float64 for name in model_numbers}
        self.indices: list[torch.Tensor] = []
        self.parts: dict[str, list[torch.Tensor]] = {name: [] for name in self.numbers}
        self.reasons: dict[int, str] = {}
        self.digests: dict[int, str] = {}

    def add(self, planned: PlannedChunk, stored: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
        """Keep a chunk's numbers; returns the mask of its rows that ran and gave finite numbers. A row whose
        hidden states were not finite (in ``dtype``), or whose hidden states were but whose log-probabilities
        (the LM head's, with ``logps``) were not, gets a skip reason saying which, and NaN scores."""
        run = torch.tensor([isinstance(plan, SequencePair) for plan in planned.plans], dtype=torch.bool)
        scores_by_name = {}
        for name in self.model_numbers:
            values = torch.full((len(planned.rows),), float("nan"), dtype=torch.float64)
            values[run] = stored[name]
            scores_by_name[name] = values
        finite = {kind: torch.stack([torch.isfinite(scores_by_name[name]) for name in names]).all(0)
                  for kind, names in (("hidden", SUM_SCORES), ("logps", self.model_numbers[len(SUM_SCORES):]))
                  if names}
        nonfinite = run & ~torch.stack(list(finite.values())).all(0)
        numbers = {name: torch.tensor(values, dtype=NUMBERS[name]) for name, values in planned.numbers.items()}
        for values in [*scores_by_name.values(), numbers["edit_distance"]]:
            values[nonfinite] = float("nan")  # a skipped row's scores are NaN, whatever it is skipped for
        for name, values in (scores_by_name | numbers).items():
            self.parts[name].append(values)
        self.reasons |= {int(row): plan.reason for row, plan in zip(planned.rows, planned.plans) if isinstance(plan, Skip)}
        self.digests |= {int(row): digest for row, digest in zip(planned.rows, planned.digests) if digest is not None}
        rows = torch.as_tensor(planned.rows)
        self.reasons |= {int(row): nonfinite_reason(dtype) for row in rows[run & ~finite["hidden"]].tolist()}
        if "logps" in finite:
            self.reasons |= {int(row): nonfinite_logps_reason(dtype)
                             for row in rows[run & finite["hidden"] & ~finite["logps"]].tolist()}
        self.indices.append(torch.as_tensor(planned.rows, dtype=torch.long))
        return run & ~nonfinite

    def gather(self, process: Process, total: int) -> ScoredRows:
        """Every process's rows' numbers and skip reasons, placed by row, on every process."""
        index = torch.cat(self.indices) if self.indices else torch.zeros(0, dtype=torch.long)
        values = {name: torch.cat(self.parts[name]) if self.parts[name] else torch.zeros(0, dtype=dtype)
                  for name, dtype in self.numbers.items()}
        columns = process.gather_columns(index, values, total)
        columns["ches_skip"] = process.gather_labels(self.reasons, total)
        columns[DIGEST_COLUMN] = process.gather_labels(self.digests, total)
        columns[FLAGS_COLUMN] = [from_bits(bits) for bits in columns.pop("flag_bits")]
        return ScoredRows(columns, prompt_cut=int(sum(columns.pop("prompt_cut"))))


def compute_chunk(pairs: Sequence[SequencePair], loaded: LoadedModel, *, layout: LayoutChoice, batch_tokens: int,
                  keep_sums: bool = False, on_tokens: Callable[[int], None] | None = None,
                  head: LMHead | None = None) -> dict[str, torch.Tensor]:
    """The :data:`MODEL_NUMBERS` of each pair (``[N]`` float64; with ``head``, the log-probabilities too),
    plus its :class:`SideSums` tensors when ``keep_sums``; ``on_tokens`` is told how many more tokens
    (:func:`~ches.run.progress.run_tokens` of the pairs) finished after each batch."""
    if not pairs:
        empty = {name: torch.zeros(0, dtype=torch.float64) for name in MODEL_NUMBERS[head is not None]}
        return empty | ({name: torch.zeros(0, loaded.hidden_size) for name in SUM_TENSORS} if keep_sums else {})
    sums = run_chunk(pairs, loaded, layout=layout, batch_tokens=batch_tokens, on_done=_token_counter(pairs, on_tokens),
                     head=head)
    logps = {name: getattr(sums, name) for name in LOGPS_COLUMNS + SHARED_LOGPS_COLUMNS} if head is not None else {}
    return pair_scores(pairs, sums) | logps | (sums.tensors() if keep_sums else {})


def run_chunk(pairs: Sequence[SequencePair], loaded: LoadedModel, *, layout: LayoutChoice, batch_tokens: int,
              on_done: Callable[[list[int]], None] | None = None, head: LMHead | None = None) -> SideSums:
    """The engine's hidden sums of each pair's two sequences, in ``layout`` (with ``head``, the two
    completions' log-probabilities too). ``on_done`` gets the indices (into ``pairs``) of pairs finished
    so far, once per sequence finished."""
    count = len(pairs)
    sequences = [pair.chosen for pair in pairs] + [pair.rejected for pair in pairs]  # sequence i + count: i's rejected
    done = None if on_done is None else (lambda indices: on_done([index % count for index in indices]))
    groups = [(index, index + count) for index in range(count)]  # the two sequences of pair i share its prompt
    sums = run_sequences(sequences, groups, loaded, layout=layout, batch_tokens=batch_tokens, on_done=done, head=head)
    logps = (None,) * 4 if sums.logps is None else (sums.logps[:count], sums.logps[count:], sums.shared_logps[:count],
                                                     sums.shared_logps[count:])
    return SideSums(sums.sums[:count], sums.sums[count:], sums.last[:count], sums.last[count:], *logps)


def run_sequences(sequences: Sequence[TokenSequence], groups: Sequence[Sequence[int]], loaded: LoadedModel, *,
                  layout: LayoutChoice, batch_tokens: int,
                  on_done: Callable[[list[int]], None] | None = None, head: LMHead | None = None) -> HiddenSums:
    """The engine's :class:`~ches.model.engine.HiddenSums` of ``sequences`` in ``layout`` (resolved for this
    model). ``groups`` are the indices of sequences that share a prompt: written once in the
    ``prefix_shared`` layout (any number per group), run through one KV cache in ``shared_prompt``
    (``(chosen, rejected)`` pairs only); the other layouts run every sequence on its own. With ``head``,
    each completion's log-probability too."""
    result = layout.strategy.run(sequences, groups, loaded, batch_tokens=batch_tokens, on_done=on_done, head=head)
    return _rerun_nonfinite_alone(sequences, result, loaded, layout=layout, batch_tokens=batch_tokens, head=head)


def _rerun_nonfinite_alone(sequences: Sequence[TokenSequence], result: HiddenSums, loaded: LoadedModel, *,
                           layout: LayoutChoice, batch_tokens: int, head: LMHead | None = None) -> HiddenSums:
    """Sums that are not finite, computed again one sequence at a time, where other sequences share their
    pass: an infinite activation times an attention weight of zero is NaN, so a masked kernel, or a prompt
    shared with a completion that overflows, can carry one sequence's overflow into its neighbours. Only the
    sequences that overflow themselves stay non-finite (a finite sum is never changed: a neighbour's overflow
    only ever adds NaN). When no sequence is finite (NaN weights) the cause is the model: nothing runs again."""
    finite = torch.isfinite(result.sums).all(-1) & torch.isfinite(result.last).all(-1)
    if result.logps is not None:
        finite &= torch.isfinite(result.logps)
    if bool(finite.all()) or not bool(finite.any()) or layout.strategy.runs_alone:
        return result
    sums, last = result.sums.clone(), result.last.clone()
    logps = None if result.logps is None else result.logps.clone()
    shared = None if result.shared_logps is None else result.shared_logps.clone()
    for index in torch.nonzero(~finite).reshape(-1).tolist():
        alone = layout.strategy.run([sequences[index]], [[0]], loaded, batch_tokens=batch_tokens, head=head)
        sums[index], last[index] = alone.sums[0], alone.last[0]
        if logps is not None:
            logps[index] = alone.logps[0]
        if shared is not None:
            shared[index] = alone.shared_logps[0]
    return HiddenSums(sums, last, logps, shared)


def pair_scores(pairs: Sequence[SequencePair], sums: SideSums) -> dict[str, torch.Tensor]:
    """The :data:`SUM_SCORES` of each pair (``[N]`` float64 each), from its hidden sums."""
    chosen_n, rejected_n = (torch.tensor(column, dtype=torch.long).reshape(-1)
                            for column in zip(*(pair.completion_tokens for pair in pairs)))
    return {"ches": scores.ches(sums.chosen_sum, sums.rejected_sum),
            "ln_ches": scores.ln_ches(sums.chosen_sum, sums.rejected_sum, chosen_n, rejected_n),
            "last_hidden_ip": scores.last_hidden_ip(sums.chosen_last, sums.rejected_last)}


NONFINITE = "hidden states are not finite (NaN or inf)"
NONFINITE_LOGPS = "log-probabilities are not finite (NaN or inf)"


def nonfinite_reason(dtype: torch.dtype | None) -> str:
    """The skip reason of a pair (or response) whose hidden states are not finite, with what may fix it.

    >>> nonfinite_reason(torch.float16)
    "hidden states are not finite (NaN or inf) in float16, whose largest number is 65504: try dtype='bfloat16' or 'float32'"
    """
    name = str(dtype).removeprefix("torch.") if dtype is not None else "the model's dtype"
    fix = {"float16": ", whose largest number is 65504: try dtype='bfloat16' or 'float32'",
           "bfloat16": ": try dtype='float32'"}.get(name, ": the model's weights or computation give NaN or inf (check "
                                                          "the checkpoint for NaN weights)")
    return f"{NONFINITE} in {name}{fix}"


def nonfinite_logps_reason(dtype: torch.dtype | None) -> str:
    """The skip reason of a pair whose hidden states are finite but whose log-probabilities (``logps``: the
    LM head's logits, log-softmaxed) are not.

    >>> nonfinite_logps_reason(torch.float32)
    "log-probabilities are not finite (NaN or inf) in float32, though the hidden states are: the LM head's logits overflow (check the output layer's weights)"
    """
    name = str(dtype).removeprefix("torch.") if dtype is not None else "the model's dtype"
    return f"{NONFINITE_LOGPS} in {name}, though the hidden states are: the LM head's logits overflow (check the output layer's weights)"


def _refuse_if_nothing_finite(reasons: list[str | None], dtype: torch.dtype, split: str | None) -> None:
    """Fail when every row that ran gave hidden states (or log-probabilities) that are not finite: such a run
    has no scores at all. The error gives the reason of the first such row."""
    nonfinite = [reason for reason in reasons if reason is not None and reason.startswith((NONFINITE, NONFINITE_LOGPS))]
    if nonfinite and all(reason is not None for reason in reasons):
        where = f" of split {split!r}" if split is not None else ""
        others = len(reasons) - len(nonfinite)
        before = f" ({others} more were skipped before running)" if others else ""
        raise ChesError(f"nothing was scored: for every row{where} that ran ({len(nonfinite)}{before}), {nonfinite[0]}.")


def release_freed_memory() -> None:
    """Hand memory freed by the allocator back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    A chunk's passes allocate and free many buffers of ``tokens x hidden size`` floats, of sizes that vary
    from chunk to chunk; glibc keeps such freed blocks in its heap, where they fragment, so without this
    the resident memory of a long run creeps up with the hidden size (4.2 KB per pair at width 1,024 over
    100,000 pairs, measured in benchmarks/scale.py) although nothing is held. Trimming once per chunk
    keeps it flat, for about a millisecond.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the symbols already loaded in this process: glibc's, on Linux
    except (OSError, AttributeError, TypeError):  # no such function (macOS, musl) or no dlopen (Windows)
        return
    trim(0)


def _token_counter(pairs: Sequence[SequencePair], on_tokens: Callable[[int], None] | None
                   ) -> Callable[[list[int]], None] | None:
    """Turn the engine's per-sequence callbacks (pair indices) into "n more tokens finished" calls: a pair's
    tokens count once both its sequences are done."""
    if on_tokens is None:
        return None
    seen: dict[int, int] = {}

    def on_done(indices: list[int]) -> None:
        finished = 0
        for index in indices:
            seen[index] = seen.get(index, 0) + 1
            finished += run_tokens([pairs[index]]) if seen[index] == 2 else 0
        on_tokens(finished)

    return on_done


def _summary(result: ScoredRows, model_name: str) -> str:
    """One line: rows scored and skipped (by reason), prompts cut at a token boundary, and the rows with
    integrity flags (by flag; only when some row has one)."""
    reasons = skip_reasons(result.columns["ches_skip"])
    total, skipped = len(result.columns["ches_skip"]), sum(reasons.values())
    detail = f" ({', '.join(f'{reason}: {count}' for reason, count in reasons.most_common())})" if skipped else ""
    flagged = describe_flags(result.columns[FLAGS_COLUMN])
    cut = result.prompt_cut
    parts = [f"ches: scored {total - skipped} of {total} rows with {model_name}", f"skipped {skipped}{detail}"]
    if cut:
        parts.append(f"{counted(cut, 'prompt')} {'was' if cut == 1 else 'were'} not a token prefix of {'its' if cut == 1 else 'their'} "
                     "completions and cut to the common prefix, as TRL does")
    return "; ".join(parts + ([flagged] if flagged else []))
