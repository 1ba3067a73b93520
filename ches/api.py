"""``ches.score``: rows -> pairs -> TRL token sequences -> decoder pass -> hidden-state sums -> scores."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch

from . import scores
from .cache import ShardCache, model_fingerprint, run_key
from .distributed import Ranks
from .embeddings import save_embeddings as write_embeddings
from .columns import SCORE_COLUMNS, SCORE_TYPES
from .errors import ChesError
from .export import check_output
from .formats import pair_problem, to_pairs
from .inputs import Data, check_columns, load_data, pair_columns
from .layouts import check_layout, resolve_layout
from .quiet import library_bars_off
from .models import LoadedModel, attention_kernel, load_model, max_positions, text_config
from .runner import compute_sums, edit_distances, tokenize_shared
from .stats import skip_reasons
from .tokens import TokenizedPair, to_sequences

logger = logging.getLogger("ches")

CPU_BATCH_TOKENS = 1024  # measured: small batches run fastest on CPUs (docs/performance.md)


@dataclass(frozen=True)
class ScoredRows:
    """Everything computed for a table of rows; NaN / zero rows where ``ches_skip`` has a reason.

    Attributes:
        chosen_sum, rejected_sum: ``[N, H]`` float32 hidden-state sums ``S+`` and ``S-``.
        chosen_last, rejected_last: ``[N, H]`` float32 hidden states at the last summed positions.
        columns: the score columns added to the dataset, by name (``SCORE_COLUMNS``).
        prompt_cut: rows whose prompt ids were not a prefix of the full ids (prompt cut, as in TRL).
    """

    chosen_sum: torch.Tensor
    rejected_sum: torch.Tensor
    chosen_last: torch.Tensor
    rejected_last: torch.Tensor
    columns: dict[str, list]
    prompt_cut: int


@dataclass
class RunInfo:
    """What a scoring run used and produced: enough to reproduce it (written next to CLI outputs)."""

    model: str
    model_revision: str | None
    tokenizer: str
    dtype: str
    device: str
    max_length: int | None
    batch_tokens: int
    layout: str
    layout_reason: str
    attention: str | None
    compiled: bool
    processes: int
    threads: int
    split: str | None
    dataset_fingerprints: dict[str, str]
    columns: dict[str, str] | None = None
    rows: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    prompt_cut: dict[str, int] = field(default_factory=dict)
    started: str = ""
    finished: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def score(
    data: Data,
    model,
    tokenizer=None,
    *,
    split: str | None = None,
    max_length: int | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    batch_tokens: int | None = None,
    progress: bool = True,
    trust_remote_code: bool = False,
    save_embeddings: str | os.PathLike | None = None,
    layout: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    offload_folder: str | os.PathLike | None = None,
    attn_implementation: str | None = None,
    compile: bool = False,
    overwrite: bool = False,
    columns: dict[str, str] | None = None,
    num_threads: int | None = None,
) -> datasets.Dataset | datasets.DatasetDict:
    """CHES scores for every preference pair, on exactly the token sequences TRL's DPOTrainer trains on.

    Args:
        data: a ``Dataset``, ``DatasetDict``, list of dicts, pandas DataFrame, local file
            (``.jsonl``/``.json``/``.parquet``/``.csv``, optionally gzipped), ``save_to_disk`` folder,
            or Hub dataset id; standard, conversational or implicit-prompt preference format.
        model: local folder, Hub id, or loaded ``PreTrainedModel`` (causal LM).
        tokenizer: defaults to the model's tokenizer.
        split: which split of a ``DatasetDict`` / Hub dataset to score (default: all of them).
        max_length: keep the first ``max_length`` tokens of each prompt+completion (TRL ``keep_start``).
        dtype: ``"bfloat16"``, ``"float16"``, ``"float32"``; default bfloat16 on CUDA, float32 on CPU
            (a loaded model keeps its dtype unless one is given).
        device: default CUDA when available (a loaded model stays on its device unless one is given).
        batch_tokens: token slots per forward batch (rows x padded length); default: chosen from free
            memory on CUDA (see :func:`default_batch_tokens`), 1,024 on CPU. Peak activation memory
            grows linearly with it.
        progress: show a tqdm progress bar over pairs and print the summary line.
        trust_remote_code: allow custom model code from the Hub (off by default).
        save_embeddings: also write ``S+``, ``S-`` and the last hidden states per row to this
            safetensors file (one file per split, ``name.SPLIT.safetensors``, for a DatasetDict). Checked
            before the model is loaded; an existing file is replaced only with ``overwrite=True``.
        overwrite: allow ``save_embeddings`` to replace existing files.
        columns: your column names for ches' ``prompt``/``chosen``/``rejected`` (and ``tools``,
            ``chat_template_kwargs``), e.g. ``{"prompt": "question", "chosen": "answer_a", "rejected":
            "answer_b"}``; the output keeps your columns as they are.
        num_threads: CPU threads for the call (``torch.set_num_threads``, restored afterwards); default:
            torch's (one per core). On a machine other work keeps busy, fewer threads than cores can be
            much faster: oversubscribed cores make every thread wait (docs/performance.md).
        layout: how sequences meet the model: ``"padded"`` (length-sorted, right-padded batches),
            ``"packed"`` (sequences back to back, restarting position ids; padding-free attention, see
            :mod:`ches.attention`), ``"prefix_shared"`` (each pair as ``prompt | chosen | rejected``, the
            prompt computed once, pairs packed back to back) or ``"shared_prompt"`` (pair by pair, the
            prompt run once through a KV cache). ``None``: the layout estimated to be cheapest for these
            lengths on this device (:mod:`ches.layouts`; the choice and why are in the run metadata).
            Layouts other than ``padded`` are used only after a probe on the model itself shows they
            give the same hidden states as ``padded``; otherwise the next one is used (logged).
        device_map, max_memory, offload_folder: passed to ``from_pretrained`` for models larger than
            one device (e.g. ``device_map="auto", max_memory={0: "70GiB", "cpu": "200GiB"}``).
        attn_implementation: the attention kernel, e.g. ``"flash_attention_2"`` (needs flash-attn;
            its varlen path makes ``layout="packed"`` padding-free) or ``"flex_attention"``; default:
            transformers' choice (SDPA). Whatever is chosen, non-padded layouts are probed first.
        compile: run the decoder body through ``torch.compile(dynamic=True)``. Pays on long runs in
            the ``padded`` and ``packed`` layouts (compiling takes tens of seconds; see
            docs/performance.md); results equal the eager ones to float rounding.
        cache_dir: keep finished chunks of hidden-state sums here; re-running the same call after a
            crash skips them and ends with the same result as an uninterrupted run. The cache is keyed
            by everything that changes the numbers, so other settings never reuse stale chunks.

    Under ``torchrun`` / ``accelerate launch`` each process scores a share of the rows (balanced by
    token count) and every process returns the full result, the same as a single process's.

    Returns:
        The rows in their original order with every original column, plus ``ches``, ``ln_ches``,
        ``edit_distance``, ``last_hidden_ip`` (float64), ``prompt_tokens``, ``chosen_tokens``,
        ``rejected_tokens`` (tokens scored) and ``ches_skip`` (None, or why the row has NaN scores).
        A ``DatasetDict`` comes back for a ``DatasetDict`` scored without ``split``.

    Raises:
        ChesError: (a ``ValueError``) bad rows, columns, options, model or tokenizer, before any forward pass.

    >>> scored = score([{"prompt": "\\n\\nHuman: Hi\\n\\nAssistant:", "chosen": " Hello!", "rejected": " Go away."}],
    ...                "examples/tiny-hh-model", progress=False)
    >>> scored.column_names[3:6], scored[0]["chosen_tokens"], scored[0]["ches_skip"]
    (['ches', 'ln_ches', 'edit_distance'], 3, None)
    """
    return score_run(data, model, tokenizer, split=split, max_length=max_length, dtype=dtype, device=device,
                     batch_tokens=batch_tokens, progress=progress, trust_remote_code=trust_remote_code,
                     save_embeddings=save_embeddings, layout=layout, cache_dir=cache_dir, device_map=device_map,
                     max_memory=max_memory, offload_folder=offload_folder,
                     attn_implementation=attn_implementation, compile=compile, overwrite=overwrite,
                     columns=columns, num_threads=num_threads)[0]


def score_run(data, model, tokenizer=None, *, split=None, max_length=None, dtype=None, device=None,
              batch_tokens=None, progress=True, trust_remote_code=False, save_embeddings=None, layout=None,
              cache_dir=None, device_map=None, max_memory=None, offload_folder=None, attn_implementation=None,
              compile=False, overwrite=False, columns=None, num_threads=None):
    """:func:`score`, also returning the :class:`RunInfo` of the run."""
    if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
        raise ChesError(f"num_threads={num_threads!r} must be a positive integer (or None for torch's default).")
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        with library_bars_off():  # one bar, ches' own, or none
            return _score_run(data, model, tokenizer, split=split, max_length=max_length, dtype=dtype, device=device,
                              batch_tokens=batch_tokens, progress=progress, trust_remote_code=trust_remote_code,
                              save_embeddings=save_embeddings, layout=layout, cache_dir=cache_dir,
                              device_map=device_map, max_memory=max_memory, offload_folder=offload_folder,
                              attn_implementation=attn_implementation, compile=compile, overwrite=overwrite,
                              columns=columns)
    finally:
        torch.set_num_threads(previous)


def _score_run(data, model, tokenizer, *, split, max_length, dtype, device, batch_tokens, progress, trust_remote_code,
               save_embeddings, layout, cache_dir, device_map, max_memory, offload_folder, attn_implementation,
               compile, overwrite, columns):
    started = _now()
    if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
        raise ChesError(f"max_length={max_length!r} must be an integer >= 2 (or None for no truncation).")
    if batch_tokens is not None and (not isinstance(batch_tokens, int) or batch_tokens < 1):
        raise ChesError(f"batch_tokens={batch_tokens!r} must be a positive integer.")
    check_layout(layout)
    idle = [name for name, value in (("max_memory", max_memory), ("offload_folder", offload_folder)) if value is not None]
    if idle and device_map is None:
        raise ChesError(f"{' and '.join(idle)} only apply with device_map= (--device-map); pass it too, or drop them.")
    if cache_dir is not None and Path(cache_dir).exists() and not Path(cache_dir).is_dir():
        raise ChesError(f"cache_dir {cache_dir} is not a folder (a file is in the way).")
    dataset = load_data(data, split)
    parts = dataset if isinstance(dataset, datasets.DatasetDict) else {None: dataset}
    pairs = {name: _validated_pairs(part, name, columns) for name, part in parts.items()}
    embedding_files = {name: _embedding_file(save_embeddings, name) for name in parts} if save_embeddings else {}
    for target in embedding_files.values():  # before the model is loaded: nothing existing is replaced unasked
        check_output(target, overwrite=overwrite, suffixes=(".safetensors",))
    ranks = Ranks.current()
    if device is None and ranks.world > 1 and not isinstance(model, torch.nn.Module):
        device = ranks.device()
    loaded = load_model(model, tokenizer, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                        device_map=device_map, max_memory=max_memory, offload_folder=offload_folder,
                        attn_implementation=attn_implementation)
    budget = batch_tokens or default_batch_tokens(loaded)
    plans = {name: plan_pairs(pairs[name], loaded, max_length=max_length, ranks=ranks) for name in parts}
    with contextlib.ExitStack() as scope:  # an attention kernel switched for packed rows is restored on exit
        choice = resolve_layout(layout, loaded, [work for plan in plans.values() for work in plan.work], budget, scope)
        if compile:  # after the layout probes, so their tiny shapes are not compiled
            loaded = dataclasses.replace(loaded, body=torch.compile(loaded.body, dynamic=True))
        info = RunInfo(
            model=loaded.name, model_revision=getattr(loaded.model.config, "_commit_hash", None),
            tokenizer=getattr(loaded.tokenizer, "name_or_path", "") or type(loaded.tokenizer).__name__,
            dtype=str(loaded.dtype).removeprefix("torch."), device=str(loaded.device), max_length=max_length,
            batch_tokens=budget, layout=choice.layout, layout_reason=choice.reason,
            attention=attention_kernel(loaded.model), compiled=compile, processes=ranks.world,
            threads=torch.get_num_threads(), split=split, columns=columns,
            dataset_fingerprints={_key(name): getattr(part, "_fingerprint", "") for name, part in parts.items()},
            started=started,
        )
        results = {}
        for name, part in parts.items():
            rows = score_planned(plans[name], loaded, batch_tokens=budget, progress=progress, layout=choice.layout,
                                 cache_dir=cache_dir, ranks=ranks)
            results[name] = _with_columns(part, rows.columns)
            key = _key(name)
            info.rows[key] = len(part)
            info.skipped[key] = sum(reason is not None for reason in rows.columns["ches_skip"])
            info.prompt_cut[key] = rows.prompt_cut
            if save_embeddings is not None and ranks.is_main:
                write_embeddings(embedding_files[name], embedding_tensors(rows),
                                 {"model": info.model, "split": key, **_versions()})
    info.finished = _now()
    output = datasets.DatasetDict(results) if isinstance(dataset, datasets.DatasetDict) else results[None]
    return output, info


def default_batch_tokens(loaded: LoadedModel) -> int:
    """Token slots per batch: 1,024 on CPU; on CUDA, what half of the free memory holds by the estimate
    ``bytes per token = dtype size x (6 x hidden + 3 x intermediate) + 8 x hidden`` (the widest live
    activations of one decoder layer, plus the float32 copies of the summed positions), between 4,096
    and 131,072, rounded down to a multiple of 64. An out-of-memory error halves it and retries.
    """
    if loaded.device.type != "cuda":
        return CPU_BATCH_TOKENS
    intermediate = getattr(text_config(loaded.model), "intermediate_size", None) or 4 * loaded.hidden_size
    per_token = torch.finfo(loaded.dtype).bits // 8 * (6 * loaded.hidden_size + 3 * intermediate) + 8 * loaded.hidden_size
    free, _ = torch.cuda.mem_get_info(loaded.device)
    return int(min(max(free // 2 // per_token, 4096), 131072)) // 64 * 64


def _embedding_file(save_embeddings: str | os.PathLike, split_name: str | None) -> Path:
    """The embeddings file of a split: ``name.safetensors``, or ``name.SPLIT.safetensors`` for a DatasetDict."""
    target = Path(save_embeddings)
    if split_name is None:
        return target
    return target.with_name(f"{target.stem}.{split_name}{target.suffix or '.safetensors'}")


def _key(split_name: str | None) -> str:
    """How a split is named in :class:`RunInfo`: its name, or ``"data"`` for a dataset without splits."""
    return "data" if split_name is None else split_name


def embedding_tensors(rows: ScoredRows) -> dict[str, torch.Tensor]:
    """The per-row tensors of the scored (not skipped) rows, keyed as in :mod:`ches.embeddings`."""
    kept = torch.tensor([i for i, reason in enumerate(rows.columns["ches_skip"]) if reason is None], dtype=torch.long)
    return {
        "row_index": kept,
        "chosen_sum": rows.chosen_sum[kept], "rejected_sum": rows.rejected_sum[kept],
        "chosen_last": rows.chosen_last[kept], "rejected_last": rows.rejected_last[kept],
        "chosen_tokens": torch.tensor(rows.columns["chosen_tokens"], dtype=torch.long)[kept],
        "rejected_tokens": torch.tensor(rows.columns["rejected_tokens"], dtype=torch.long)[kept],
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _versions() -> dict[str, str]:
    import transformers

    from . import __version__

    return {"ches": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def _validated_pairs(dataset: datasets.Dataset, split_name: str | None, columns: dict[str, str] | None = None):
    if len(dataset) == 0:
        raise ChesError(f"the data{f' (split {split_name!r})' if split_name else ''} has no rows.")
    mapping = check_columns(dataset, columns)
    missing = [name for name in ("chosen", "rejected") if mapping.get(name, name) not in dataset.column_names]
    if missing:
        raise ChesError(
            f"missing column(s) {missing}; the data has {dataset.column_names}. A preference data set needs 'chosen' "
            "and 'rejected' (and optionally 'prompt'): map yours with columns={'chosen': 'answer_a', ...} "
            "(--columns chosen=answer_a,... on the command line)."
        )
    try:
        return to_pairs(pair_columns(dataset, mapping))
    except ChesError as error:
        if split_name is None:
            raise
        raise ChesError(f"split {split_name!r}: {error}") from None


@dataclass(frozen=True)
class PlannedPairs:
    """Pairs tokenized and planned, before any forward pass.

    Attributes:
        plans: per row, its two :class:`~ches.tokens.ScoredSequence` (chosen, rejected), or the reason it
            cannot be scored.
        tokenized: per row, its TRL token ids.
        owners: the rows that are scored; ``work[k]`` is row ``owners[k]``'s pair of sequences.
    """

    plans: list
    tokenized: list[TokenizedPair]
    owners: list[int]
    work: list


def plan_pairs(pairs, loaded: LoadedModel, *, max_length: int | None, ranks: Ranks | None = None) -> PlannedPairs:
    """Tokenize normalized pairs (shared over ranks) and plan the sequences to run, or each row's skip reason."""
    tokenized = tokenize_shared(pairs, loaded.tokenizer, ranks or Ranks())
    context = max_positions(loaded.model)
    plans = [pair_problem(pair) or _plan(tokens, max_length, context) for pair, tokens in zip(pairs, tokenized)]
    owners = [row for row, plan in enumerate(plans) if not isinstance(plan, str)]
    return PlannedPairs(plans, tokenized, owners, [plans[row] for row in owners])


def score_planned(planned: PlannedPairs, loaded: LoadedModel, *, batch_tokens: int, progress: bool,
                  layout: str = "padded", cache_dir: str | os.PathLike | None = None,
                  ranks: Ranks | None = None) -> ScoredRows:
    """Run the model over planned pairs in ``layout`` (already resolved for the model) and score them."""
    ranks = ranks or Ranks()
    work = planned.work
    pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    cache = None
    if cache_dir is not None:
        settings = {"ches": _versions()["ches"], "model": loaded.name,
                    "revision": getattr(loaded.model.config, "_commit_hash", None),
                    "weights": model_fingerprint(loaded.model), "dtype": str(loaded.dtype),
                    "device": loaded.device.type, "layout": layout, "attention": attention_kernel(loaded.model)}
        cache = ShardCache(cache_dir, run_key(settings, [s for pair in work for s in pair]))
    bar = _progress_bar(len(work), progress and ranks.is_main)
    sums, reused = compute_sums(work, loaded, layout=layout, batch_tokens=batch_tokens, pad_id=pad_id, ranks=ranks,
                                cache=cache, on_pairs=bar.update if bar is not None else None)
    result = _assemble(planned.plans, planned.tokenized, planned.owners, sums, edit_distances(planned.plans, ranks))
    summary = _summary(result, loaded.name) + (f"; {reused} finished chunks reused from {cache.folder}" if reused else "")
    if bar is not None:
        bar.close()
        if not logger.isEnabledFor(logging.INFO):  # nobody would see the log record: show it with the bar
            bar.write(summary, file=sys.stderr)
    if ranks.is_main:
        logger.info(summary)
    return result


def _plan(tokenized: TokenizedPair, max_length: int | None, context: int | None):
    sequences = to_sequences(tokenized, max_length)
    if isinstance(sequences, str) or context is None:
        return sequences
    longest = max(len(sequence.input_ids) for sequence in sequences)
    if longest > context:
        return f"sequence of {longest} tokens exceeds the model's context ({context}); pass max_length"
    return sequences


def _assemble(planned, tokenized: list[TokenizedPair], owners: list[int], sums, distances: list[float]) -> ScoredRows:
    rows, width = len(planned), sums.sums.shape[1]
    chosen_sum = torch.full((rows, width), float("nan"))
    rejected_sum, chosen_last, rejected_last = chosen_sum.clone(), chosen_sum.clone(), chosen_sum.clone()
    owner_index = torch.tensor(owners, dtype=torch.long)
    chosen_sum[owner_index], rejected_sum[owner_index] = sums.sums[0::2], sums.sums[1::2]
    chosen_last[owner_index], rejected_last[owner_index] = sums.last[0::2], sums.last[1::2]
    lengths = [_lengths(plan, pair) for plan, pair in zip(planned, tokenized)]
    prompt_n, chosen_n, rejected_n = (torch.tensor(column) for column in zip(*lengths))
    columns = {
        "ches": scores.ches(chosen_sum, rejected_sum).tolist(),
        "ln_ches": scores.ln_ches(chosen_sum, rejected_sum, chosen_n, rejected_n).tolist(),
        "edit_distance": distances,
        "last_hidden_ip": scores.last_hidden_ip(chosen_last, rejected_last).tolist(),
        "prompt_tokens": prompt_n.tolist(),
        "chosen_tokens": chosen_n.tolist(),
        "rejected_tokens": rejected_n.tolist(),
        "ches_skip": [plan if isinstance(plan, str) else None for plan in planned],
    }
    return ScoredRows(chosen_sum, rejected_sum, chosen_last, rejected_last, columns,
                      prompt_cut=sum(pair.prompt_cut > 0 for pair in tokenized))


def _lengths(plan, tokenized: TokenizedPair) -> tuple[int, int, int]:
    if isinstance(plan, str):
        return len(tokenized.prompt_ids), 0, 0
    chosen, rejected = plan
    return chosen.start + 1, chosen.end - chosen.start, rejected.end - rejected.start


def _with_columns(dataset: datasets.Dataset, columns: dict[str, list]) -> datasets.Dataset:
    clashes = [name for name in columns if name in dataset.column_names]
    if clashes:
        logger.warning("replacing existing column(s) %s with new scores", clashes)
        dataset = dataset.remove_columns(clashes)
    features = {name: datasets.Value(kind) for name, kind in SCORE_TYPES.items()}
    for name in SCORE_COLUMNS:
        dataset = dataset.add_column(name, columns[name], feature=features[name],
                                     new_fingerprint=_fingerprint(dataset, name, columns[name]))
    return dataset


def _fingerprint(dataset: datasets.Dataset, name: str, values: list) -> str:
    """The fingerprint of ``dataset`` plus the column ``name`` = ``values``: a hash of the values' bytes,
    instead of the pickle-based hash ``datasets`` would compute (the slow part of adding a column)."""
    digest = hashlib.sha256(f"{getattr(dataset, '_fingerprint', '')}\0{name}\0".encode())
    digest.update(json.dumps(values).encode() if name == "ches_skip" else np.asarray(values, dtype=np.float64).tobytes())
    return digest.hexdigest()[:16]


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="pair", desc="ches")


def _summary(result: ScoredRows, model_name: str) -> str:
    """One line: rows scored and skipped (by reason), and prompts cut at a token boundary."""
    reasons = skip_reasons(result.columns["ches_skip"])
    total, skipped = len(result.columns["ches_skip"]), sum(reasons.values())
    detail = "".join(f"; {count} {reason}" for reason, count in reasons.most_common())
    return (
        f"ches: scored {total - skipped} of {total} rows with {model_name}; skipped {skipped}{detail}; "
        f"{result.prompt_cut} prompts were not a token prefix of their completions and were cut to the "
        "common prefix, as TRL does"
    )
