"""The per-pair pipeline, streamed: rows -> chunks -> token sequences -> decoder passes -> per-pair numbers.

Before the model loads, :func:`ches.data.rows.read_rows` checks every row and keeps only each row's text
length. The rows are then cut into chunks of ``chunk_pairs`` pairs (default :attr:`ChunkSizes.pairs
<ches.run.chunk_loop.ChunkSizes>`, :func:`ches.run.chunks.plan_chunks`), which :func:`ches.run.chunk_loop.run_chunks`
shares among the processes (balanced by length), reads from the cache or runs, and gathers. A background
thread reads and tokenizes a process's chunks ahead of the device (:func:`ches.run.chunks.stream_chunks`),
while the main thread runs the model on the current one and reduces it at once to its numbers
(:class:`ChunkNumbers`). Per row, only numbers are kept (a few bytes each; token ids live only while their
chunk is in flight, hidden sums only when embeddings are written, and those go to disk chunk by chunk). At
the end the processes exchange their rows' numbers, so every process returns all of them.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

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
from .chunk_loop import Chunk, ChunkSizes, ChunkWork, run_chunks
from .chunks import PlannedChunk, plan_chunks, plan_pairs, stream_chunks  # noqa: F401 (plan_pairs: read here by tests too)
from .distributed import Process
from .embeddings import EmbeddingWriter
from .progress import TokenProgress, run_tokens, write_line

logger = logging.getLogger("ches")

#: per-pair numbers computed from the hidden sums (the rest of the score columns come from the plans)
SUM_SCORES = ("ches", "ln_ches", "last_hidden_ip")
#: the numeric score columns of a row, as exchanged between processes
NUMBERS = {name: torch.float64 if kind == "float64" else torch.int64
           for name, kind in SCORE_TYPES.items() if kind in ("float64", "int64")} | {"prompt_cut": torch.int64,
                                                                                    "flag_bits": torch.int64}
SUM_TENSORS = ("chosen_sum", "rejected_sum", "chosen_last", "rejected_last")  # what embeddings and the cache keep


def model_numbers(logps: bool) -> tuple[str, ...]:
    """The per-pair numbers the model pass gives: the sums' scores, and with ``logps`` each completion's
    log-probability (and its LD-DPO shared part).

    >>> model_numbers(False)
    ('ches', 'ln_ches', 'last_hidden_ip')
    """
    return SUM_SCORES + (LOGPS_COLUMNS + SHARED_LOGPS_COLUMNS if logps else ())


@dataclass(frozen=True)
class PairSequences:
    """The two sequences of each of ``N`` pairs as the one list the engine runs: every chosen sequence, then
    every rejected one, so ``sequences[i]`` and ``sequences[N + i]`` are pair ``i``'s (and share its prompt).

    >>> from ches.data.tokens import TokenSequence
    >>> halves = PairSequences([SequencePair(TokenSequence([1, 2], 0, 1), TokenSequence([1, 3], 0, 1))] * 2)
    >>> halves.groups, halves.pair_of(3)
    ([(0, 2), (1, 3)], 1)
    """

    pairs: Sequence[SequencePair]

    @property
    def sequences(self) -> list[TokenSequence]:
        return [pair.chosen for pair in self.pairs] + [pair.rejected for pair in self.pairs]

    @property
    def groups(self) -> list[tuple[int, int]]:
        """The positions of each pair's two sequences in :attr:`sequences`."""
        return [(index, index + len(self.pairs)) for index in range(len(self.pairs))]

    def pair_of(self, position: int) -> int:
        """The pair whose sequence is at ``position`` of :attr:`sequences`."""
        return position % len(self.pairs)

    def split(self, sums: HiddenSums) -> SideSums:
        """The engine's sums of :attr:`sequences`, back in the two sides of each pair."""
        count = len(self.pairs)
        return SideSums(_rows(sums, slice(None, count)), _rows(sums, slice(count, None)))


def _rows(sums: HiddenSums, rows: slice) -> HiddenSums:
    """Some rows of ``sums`` (every tensor it holds)."""
    return HiddenSums(*(None if tensor is None else tensor[rows]
                        for tensor in (sums.sums, sums.last, sums.logps, sums.shared_logps)))


@dataclass(frozen=True)
class SideSums:
    """The engine's reductions of ``N`` pairs, one :class:`~ches.model.engine.HiddenSums` per side (``[N, H]``
    float32 sums and last hidden states; with a head, ``[N]`` float64 log-probabilities)."""

    chosen: HiddenSums
    rejected: HiddenSums

    def tensors(self) -> dict[str, torch.Tensor]:
        """The four ``[N, H]`` tensors (:data:`SUM_TENSORS`), by name."""
        return dict(zip(SUM_TENSORS, (self.chosen.sums, self.rejected.sums, self.chosen.last, self.rejected.last)))

    def logps(self) -> PairLogps:
        """Each completion's log-probability and that of its shared part (with a head)."""
        return PairLogps(self.chosen.logps, self.rejected.logps, self.chosen.shared_logps, self.rejected.shared_logps)

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> SideSums:
        """The sums :meth:`tensors` gave (from a cache shard)."""
        chosen_sum, rejected_sum, chosen_last, rejected_last = (tensors[name] for name in SUM_TENSORS)
        return cls(HiddenSums(chosen_sum, chosen_last), HiddenSums(rejected_sum, rejected_last))


@dataclass(frozen=True)
class PairLogps:
    """Each of ``N`` pairs' completions' log-probabilities, and those of their LD-DPO shared parts: ``[N]``
    float64 each, named as their columns (:data:`~ches.data.columns.LOGPS_COLUMNS`,
    :data:`~ches.data.columns.SHARED_LOGPS_COLUMNS`)."""

    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    chosen_shared_logps: torch.Tensor
    rejected_shared_logps: torch.Tensor

    def columns(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in LOGPS_COLUMNS + SHARED_LOGPS_COLUMNS}


@dataclass(frozen=True)
class ChunkNumbers:
    """What the model pass gives for the ``N`` pairs of a chunk that run (:func:`compute_chunk`), and what a
    chunk's cache shard holds.

    Attributes:
        ches, ln_ches, last_hidden_ip: ``[N]`` float64, from the hidden sums (:func:`pair_scores`).
        logps: the completions' log-probabilities, when the run asks for them.
        sums: the pairs' hidden sums, when they are kept (for embeddings).
    """

    ches: torch.Tensor
    ln_ches: torch.Tensor
    last_hidden_ip: torch.Tensor
    logps: PairLogps | None = None
    sums: SideSums | None = None

    @staticmethod
    def names(logps: bool, sums: bool) -> tuple[str, ...]:
        """The tensors of a run's shards: :func:`model_numbers`, and :data:`SUM_TENSORS` with ``sums``."""
        return model_numbers(logps) + (SUM_TENSORS if sums else ())

    def columns(self) -> dict[str, torch.Tensor]:
        """The per-pair numbers by column name (:func:`model_numbers`)."""
        scores_by_name = {"ches": self.ches, "ln_ches": self.ln_ches, "last_hidden_ip": self.last_hidden_ip}
        return scores_by_name | (self.logps.columns() if self.logps is not None else {})

    def tensors(self) -> dict[str, torch.Tensor]:
        """The shard's tensors by name (:meth:`names`)."""
        return self.columns() | (self.sums.tensors() if self.sums is not None else {})

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> ChunkNumbers:
        """The numbers a shard (or :meth:`tensors`) holds."""
        has = set(tensors)
        logps = PairLogps(*(tensors[name] for name in LOGPS_COLUMNS + SHARED_LOGPS_COLUMNS)) if LOGPS_COLUMNS[0] in has else None
        sums = SideSums.from_tensors(tensors) if SUM_TENSORS[0] in has else None
        return cls(*(tensors[name] for name in SUM_SCORES), logps=logps, sums=sums)

    @classmethod
    def empty(cls, hidden_size: int, logps: bool, sums: bool) -> ChunkNumbers:
        """The numbers of a chunk none of whose pairs run."""
        return cls.from_tensors({name: torch.zeros(0, dtype=torch.float64) for name in model_numbers(logps)} |
                                ({name: torch.zeros(0, hidden_size) for name in SUM_TENSORS} if sums else {}))


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
               logps: bool = False, chunk_pairs: int = ChunkSizes.pairs) -> ScoredRows:
    """Score every row of ``source`` in ``layout`` (resolved for this model), streaming chunks of
    ``chunk_pairs`` pairs (:func:`ches.run.chunk_loop.run_chunks`); with ``logps``, each completion's
    log-probability too (:data:`~ches.data.columns.LOGPS_COLUMNS`)."""
    process = process or Process()
    work = _PairChunks(source, loaded, layout=layout, batch_tokens=batch_tokens, max_length=max_length,
                       embeddings=embeddings, logps=logps, chunk_pairs=chunk_pairs)
    try:
        ran = run_chunks(work, process=process, cache=cache, progress=progress)
        _refuse_if_nothing_finite(ran.result.columns["ches_skip"], loaded.dtype, source.split)
        if embeddings is not None and process.is_main:
            embeddings.finish(list(range(len(work.plan))))
    except BaseException:
        if embeddings is not None:  # no half-built embeddings are left behind
            embeddings.discard()
        raise
    reused = f"; {ran.reused} finished chunks reused from {cache.folder}" if ran.reused else ""
    summary = _summary(ran.result, loaded.name) + reused
    if progress and process.is_main and not logger.isEnabledFor(logging.INFO):  # nobody would see the log record
        write_line(summary, file=sys.stderr)  # show it with the bar
    if process.is_main:
        logger.info(summary)
    return ran.result


class _PairChunks(ChunkWork[PlannedChunk, ScoredRows]):
    """``ches.score``'s chunks: rows of similar length (:func:`~ches.run.chunks.plan_chunks`), tokenized ahead of the
    device (:func:`~ches.run.chunks.stream_chunks`), each reduced at once to its rows' numbers; a bar over tokens."""

    def __init__(self, source: RowSource, loaded: LoadedModel, *, layout: LayoutChoice, batch_tokens: int,
                 max_length: int | None, embeddings: EmbeddingWriter | None, logps: bool, chunk_pairs: int) -> None:
        self.source, self.loaded, self.layout, self.batch_tokens = source, loaded, layout, batch_tokens
        self.max_length, self.embeddings = max_length, embeddings
        self.plan = plan_chunks(source.lengths, chunk_pairs)
        self.head = LMHead.of(loaded.model) if logps else None
        self.names = ChunkNumbers.names(logps, sums=embeddings is not None)
        self.collected = _Collected(model_numbers(logps))

    def costs(self) -> list[float]:
        return [float(self.source.lengths[chunk].sum()) for chunk in self.plan]

    def open_bar(self, mine: list[int]) -> TokenProgress | None:
        return TokenProgress.start(int(sum(self.source.lengths[self.plan[i]].sum() for i in mine)), True)

    def chunks(self, mine: list[int], bar: TokenProgress | None) -> Iterator[Chunk[PlannedChunk]]:
        with contextlib.closing(stream_chunks(self.source, self.plan, mine, self.loaded, self.max_length)) as stream:
            for planned in stream:
                tokens = run_tokens(planned.work)  # skipped rows run no tokens
                if bar is not None:
                    bar.planned(int(self.source.lengths[planned.rows].sum()), tokens)
                yield Chunk(planned.chunk_id, planned, rows=len(planned.work), units=tokens)

    def key(self, item: PlannedChunk) -> str:
        return chunk_key(item.plans)

    def compute(self, item: PlannedChunk, bar: TokenProgress | None) -> dict[str, torch.Tensor]:
        return compute_chunk(item.work, self.loaded, layout=self.layout, batch_tokens=self.batch_tokens,
                             keep_sums=self.embeddings is not None, on_tokens=bar.update if bar is not None else None,
                             head=self.head).tensors()

    def keep(self, chunk: Chunk[PlannedChunk], tensors: dict[str, torch.Tensor]) -> None:
        planned, numbers = chunk.item, ChunkNumbers.from_tensors(tensors)
        run = self.collected.add(planned, numbers, self.loaded.dtype)
        if self.embeddings is not None:
            self.embeddings.add(planned.chunk_id, torch.as_tensor(planned.rows)[run], numbers.sums.tensors(),
                                torch.tensor(planned.numbers["chosen_tokens"])[run],
                                torch.tensor(planned.numbers["rejected_tokens"])[run])

    def gather(self, process: Process, reused: int) -> ScoredRows:
        return self.collected.gather(process, len(self.source.lengths))


class _Collected:
    """This process's rows' numbers and skip reasons, chunk by chunk, until they are exchanged."""

    def __init__(self, model_numbers: tuple[str, ...] = SUM_SCORES) -> None:
        self.model_numbers = model_numbers  # what the model pass gives per pair (float64, NaN where skipped)
        self.numbers = NUMBERS | {name: torch.float64 for name in model_numbers}
        self.indices: list[torch.Tensor] = []
        self.parts: dict[str, list[torch.Tensor]] = {name: [] for name in self.numbers}
        self.reasons: dict[int, str] = {}
        self.digests: dict[int, str] = {}

    def add(self, planned: PlannedChunk, stored: ChunkNumbers, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Keep a chunk's numbers; returns the mask of its rows that ran and gave finite numbers. A row whose
        hidden states were not finite (in ``dtype``), or whose hidden states were but whose log-probabilities
        (the LM head's, with ``logps``) were not, gets a skip reason saying which, and NaN scores."""
        run = torch.tensor([isinstance(plan, SequencePair) for plan in planned.plans], dtype=torch.bool)
        scores_by_name, computed = {}, stored.columns()
        for name in self.model_numbers:
            values = torch.full((len(planned.rows),), float("nan"), dtype=torch.float64)
            values[run] = computed[name]
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
                  head: LMHead | None = None) -> ChunkNumbers:
    """The :func:`model_numbers` of each pair (``[N]`` float64; with ``head``, the log-probabilities too), and
    its :class:`SideSums` when ``keep_sums``; ``on_tokens`` is told how many more tokens
    (:func:`~ches.run.progress.run_tokens` of the pairs) finished after each batch."""
    if not pairs:
        return ChunkNumbers.empty(loaded.hidden_size, logps=head is not None, sums=keep_sums)
    sums = run_chunk(pairs, loaded, layout=layout, batch_tokens=batch_tokens, on_done=_token_counter(pairs, on_tokens),
                     head=head)
    return ChunkNumbers(**pair_scores(pairs, sums), logps=sums.logps() if head is not None else None,
                        sums=sums if keep_sums else None)


def run_chunk(pairs: Sequence[SequencePair], loaded: LoadedModel, *, layout: LayoutChoice, batch_tokens: int,
              on_done: Callable[[list[int]], None] | None = None, head: LMHead | None = None) -> SideSums:
    """The engine's hidden sums of each pair's two sequences, in ``layout`` (with ``head``, the two
    completions' log-probabilities too). ``on_done`` gets the indices (into ``pairs``) of pairs finished
    so far, once per sequence finished."""
    halves = PairSequences(pairs)
    done = None if on_done is None else (lambda positions: on_done([halves.pair_of(index) for index in positions]))
    sums = run_sequences(halves.sequences, halves.groups, loaded, layout=layout, batch_tokens=batch_tokens,
                         on_done=done, head=head)
    return halves.split(sums)


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
    chosen, rejected = sums.chosen, sums.rejected
    return {"ches": scores.ches(chosen.sums, rejected.sums),
            "ln_ches": scores.ln_ches(chosen.sums, rejected.sums, chosen_n, rejected_n),
            "last_hidden_ip": scores.last_hidden_ip(chosen.last, rejected.last)}


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
