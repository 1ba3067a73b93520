"""``ches.score``: check everything, load the model, choose the layout, run the pipeline, add the columns.

The stages live in their own modules: rows -> pairs (:mod:`ches.data.inputs`, :mod:`ches.data.formats`) ->
token sequences and the per-pair pipeline (:mod:`ches.run.runner`) -> decoder passes (:mod:`ches.model.engine`)
-> scores (:mod:`ches.scores`) -> columns (:mod:`ches.data.columns`). This module only orders them.
"""

from __future__ import annotations

import os
from typing import Any

import datasets
import torch

from .data.columns import (
    LOGPS_COLUMNS,
    SCORE_COLUMNS,
    SHARED_LOGPS_COLUMNS,
    add_score_columns,
    check_output_columns,
    with_reference,
)
from .data.export import check_apart_from_inputs, check_output
from .data.inputs import Data, Reading, load_data, read_columns
from .data.integrity import FLAGS_COLUMN, count_flags, flagged_rows
from .data.paths import model_paths
from .data.rows import one_format, read_rows
from .model.models import tokenizer_fingerprint
from .model.threads import torch_threads
from .options import ScoreOptions, signature_with_options
from .run.cache import model_fingerprint, open_cache
from .run.chunk_loop import ChunkSizes
from .run.chunks import sample_work
from .run.embeddings import EmbeddingWriter, embedding_file
from .run.quiet import library_bars_off
from .run.runner import score_rows
from .run.runs import RunInfo, now, prepared
from .scores.stats import skip_reasons


def score(data: Data, model, tokenizer=None, *, options: ScoreOptions | None = None,
          **kwargs: Any) -> datasets.Dataset | datasets.DatasetDict:
    """CHES scores for every preference pair, on exactly the token sequences TRL's DPOTrainer trains on.

    Args:
        data: a ``Dataset``, ``DatasetDict``, list of dicts, pandas DataFrame, local file
            (``.jsonl``/``.json``/``.parquet``/``.csv``, optionally gzipped), ``save_to_disk`` folder,
            or Hub dataset id; TRL's standard, conversational or implicit-prompt preference format, or another
            framework's layout (axolotl, LLaMA-Factory, OpenRLHF, open-instruct: ``format=``, detected by default;
            docs/formats.md), read as the TRL rows it means and returned in its own columns.
        model: local folder, Hub id, or loaded ``PreTrainedModel`` (causal LM).
        tokenizer: defaults to the model's tokenizer.
        options, **kwargs: a :class:`~ches.options.ScoreOptions`, and/or its fields as keywords
            (``split``, ``columns``, ``format``, ``max_length``, ``dtype``, ``device``, ``batch_tokens``, ``layout``,
            ``compile``, ``num_threads``, ``cache_dir``, ``save_embeddings``, ``overwrite``, ``progress``,
            ``model_kwargs``; ``from_pretrained`` keywords such as ``device_map=`` go to ``model_kwargs``).
            Everything is checked before the model is loaded.

    Under ``torchrun`` / ``accelerate launch`` each process scores a share of the rows (balanced by
    token count) and every process returns the full result, the same as a single process's.

    Returns:
        The rows in their original order with every original column, plus ``ches``, ``ln_ches``,
        ``edit_distance``, ``last_hidden_ip`` (float64), ``prompt_tokens``, ``chosen_tokens``,
        ``rejected_tokens`` (tokens scored), ``ches_skip`` (None, or why the row has NaN scores) and
        ``ches_flags`` (the row's integrity flags, :mod:`ches.data.integrity`: a list of names, empty when clean).
        A ``DatasetDict`` comes back for a ``DatasetDict`` scored without ``split``.

    Raises:
        ChesError: (a ``ValueError``) bad rows, columns, options, model or tokenizer, before any forward pass.

    >>> scored = score([{"prompt": "\\n\\nHuman: Hi\\n\\nAssistant:", "chosen": " Hello!", "rejected": " Go away."}],
    ...                "examples/tiny-hh-model", progress=False)
    >>> scored.column_names[3:6], scored[0]["chosen_tokens"], scored[0]["ches_skip"]
    (['ches', 'ln_ches', 'edit_distance'], 3, None)
    """
    return score_run(data, model, tokenizer, options=options, **kwargs)[0]


def score_run(data: Data, model, tokenizer=None, *, options: ScoreOptions | None = None,
              chunk_sizes: ChunkSizes | None = None, **kwargs: Any) -> tuple[datasets.Dataset | datasets.DatasetDict, RunInfo]:
    """:func:`score`, also returning the :class:`~ches.run.runs.RunInfo` of the run; ``chunk_sizes``: how many
    pairs a chunk holds (the unit of work, caching and resuming; default :class:`~ches.run.chunk_loop.ChunkSizes`),
    for tests and benchmarks."""
    options = ScoreOptions.from_kwargs(options, **kwargs)
    with torch_threads(options.num_threads), library_bars_off():  # one bar, ches' own, or none
        return _score_run(data, model, tokenizer, options, chunk_sizes or ChunkSizes())


def _score_run(data: Data, model, tokenizer, options: ScoreOptions, chunk_sizes: ChunkSizes):
    started = now()
    dataset = load_data(data, options.split)
    parts = dataset if isinstance(dataset, datasets.DatasetDict) else {None: dataset}
    added = SCORE_COLUMNS + (LOGPS_COLUMNS + SHARED_LOGPS_COLUMNS if options.logps else ())
    reading = Reading(options.columns, options.format)
    for name, part in parts.items():  # no column of the user's is overwritten by the scores
        check_output_columns(part.column_names, added, read_columns(part, reading), _where(data, name))
    sources = {name: read_rows(part, name, reading) for name, part in parts.items()}  # every row checked
    layout_used = one_format(sources)
    embedding_files = {name: embedding_file(options.save_embeddings, name) for name in parts} if options.save_embeddings else {}
    inputs = (data if isinstance(data, (str, os.PathLike)) else None, *model_paths(model, tokenizer))
    for target in embedding_files.values():  # before the model is loaded: nothing existing is replaced unasked
        check_output(target, overwrite=options.overwrite, suffixes=(".safetensors",), inputs=inputs)
    if options.cache_dir is not None:
        check_apart_from_inputs(options.cache_dir, inputs, may_hold_inputs=True)
    with prepared(model, tokenizer, options, started=started,
                  work=lambda loaded: sample_work(list(sources.values()), loaded, max_length=options.max_length)) as setup:
        loaded, layout = setup.loaded, setup.layout
        info = RunInfo(**setup.record(), options=options.as_dict(), format=layout_used,
                       dataset_fingerprints={_key(name): getattr(part, "_fingerprint", "") for name, part in parts.items()})
        cache = open_cache(options.cache_dir, loaded, layout.layout) if options.cache_dir else None
        results = {}
        for name, part in parts.items():
            writer = EmbeddingWriter(embedding_files[name], loaded.hidden_size,
                                     {"model": info.model, "split": _key(name), **_versions()},
                                     rows=len(part)) if embedding_files else None
            rows = score_rows(sources[name], loaded, layout=layout, batch_tokens=setup.batch_tokens,
                              max_length=options.max_length, progress=options.progress, cache=cache, embeddings=writer,
                              process=setup.process, logps=options.logps, chunk_pairs=chunk_sizes.pairs)
            results[name] = add_score_columns(part, rows.columns)
            key = _key(name)
            info.rows[key] = len(part)
            info.skip_reasons[key] = dict(skip_reasons(rows.columns["ches_skip"]).most_common())
            info.skipped[key] = sum(info.skip_reasons[key].values())
            info.prompt_cut[key] = rows.prompt_cut
            info.flags[key] = count_flags(rows.columns[FLAGS_COLUMN])
            info.flagged[key] = flagged_rows(rows.columns[FLAGS_COLUMN])
    info.finished = now()
    if options.logps:  # what a trainer taking these log-probs as its reference must match (ches.trl)
        info.model_fingerprint = model_fingerprint(loaded.model)
        info.tokenizer_fingerprint = tokenizer_fingerprint(loaded.tokenizer)
        results = {name: with_reference(part, info) for name, part in results.items()}
    output = datasets.DatasetDict(results) if isinstance(dataset, datasets.DatasetDict) else results[None]
    return output, info


def _where(data: Data, split_name: str | None) -> str:
    """How errors name a table: its file (or "the data") and split."""
    label = str(data) if isinstance(data, (str, os.PathLike)) else "the data"
    return label + (f" (split {split_name!r})" if split_name is not None else "")


def _key(split_name: str | None) -> str:
    """How a split is named in :class:`RunInfo`: its name, or ``"data"`` for a dataset without splits."""
    return "data" if split_name is None else split_name


def _versions() -> dict[str, str]:
    import transformers

    from . import __version__

    return {"ches": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


score.__signature__ = signature_with_options(score)
score_run.__signature__ = signature_with_options(score_run)
