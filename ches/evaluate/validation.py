"""``ches.validate``: does CHES predict likelihood displacement for *your* model and data, and what to do?

Scores a pool of rows (with ``logps=True``: the reference of the runs), trains DPO on subsets of them
(``protocol="subsets"``: the lowest and highest ``n`` pairs of each measure and ``n`` random ones, each subset
once per seed, each run one run of TRL's trainer with the user's config, :mod:`ches.evaluate.training`) or probes
single pairs spread over the CHES range (``"probes"``, :mod:`ches.evaluate.probes`); the protocols and their
evidence are :mod:`ches.evaluate.protocols`. It ends with a verdict per measure and one recommendation
(:mod:`ches.evaluate.advice`); a saved result is read back by :mod:`ches.evaluate.results`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..api import score_run
from ..data.columns import DEFAULT_MEASURE
from ..data.inputs import Data, column, load_data
from ..errors import ChesError
from ..model.models import load_model, resolve_device, resolve_dtype
from ..model.threads import set_threads, torch_threads
from ..options import VALIDATE_KEYWORDS, ValidateOptions, signature_with_options
from ..run.distributed import Process
from ..scores.select import similarity
from .advice import MIN_N, MIN_PAIRS_FOR_VERDICT, filter_command, format_recommendation, recommend, status
from .auditing import AUDIT_MEASURES
from .protocols import (  # noqa: F401  (ches.evaluate.validation.<name>, as before the protocols moved)
    PROBE_MAX_LENGTH,
    PROTOCOLS,
    Pool,
    Probes,
    Protocol,
    Subsets,
    _protocol_of_result,
    correlation_table,
    evidence_of,
    probe_sequences,
    protocol_of,
    run_probes,
)
from .results import ACTIONS, check_validation, load_validation, read_validation  # noqa: F401


def validate(data: Data, model, tokenizer=None, *, options: ValidateOptions | None = None, **kwargs) -> dict:
    """Does a measure predict likelihood displacement on this model and data? DPO runs on subsets chosen by
    each measure (``protocol="subsets"``, the default) or single-pair probes (``"probes"``), then one
    recommendation: which measure to filter by, where to cut, or not to filter, or that the evidence is not
    enough to act on (:mod:`ches.evaluate.advice`).

    ``subsets`` (the paper's Section 5, trained the way users train): for ``ln_ches``, ``ches`` and
    ``edit_distance``, DPO on the ``n`` pairs of the scored pool that the measure scores lowest and on the ``n``
    it scores highest, plus ``n`` random pairs, each subset trained ``seeds`` times. Each run is one run of
    :class:`ches.trl.DPOTrainer` with the user's ``DPOConfig`` and LoRA (:mod:`ches.evaluate.training`), on a
    twin of the model (the model given is never changed), audited on its pairs (the fraction displaced, the
    mean change of log pi(y+|x) with its interval). A measure predicts displacement when its highest subset lost
    more than its lowest (``gap``, bootstrap 95 % interval above 0) in every seed.
    ``probes``: per seed, ``n`` pairs spread over the CHES range, each trained alone for ``steps`` full-batch
    RMSprop steps; a measure predicts when its Spearman correlation with the displacement is above 0 in every
    seed.

    Args:
        data, model, tokenizer: as for :func:`ches.score` (a loaded model must already be in ``dtype`` and on
            ``device``: validate does not cast or move it).
        options, **kwargs: a :class:`~ches.options.ValidateOptions` and/or its fields as keywords, all checked
            before any work: ``protocol``; ``n`` (pairs per subset, or pairs probed per seed); ``seeds``;
            ``dpo_config`` (a ``trl.DPOConfig``, a dict of its fields or a JSON/YAML file of them),
            ``peft_config`` or ``lora_r``; ``learning_rate``, ``beta``, ``batch_size``, ``epochs``, ``max_length``
            (over the config's; without one 1e-6, 0.1, 8, 1, 512) or ``steps`` (probes); ``pool`` rows scored to
            choose from (default: all rows, or a random ``20 * n`` of larger data); ``seed`` (pool draw, random
            subset, the first run's seed, bootstrap); ``resamples``; ``split``, ``columns``, ``format``,
            ``device``, ``dtype`` (default float32: DPO steps in half precision are noisy), ``num_threads``
            and ``progress`` as for :func:`ches.score`.

    Returns:
        ``{"settings", "evidence": {measure: {"statistic", "ci95", "status", "pairs", "seeds", "seeds_agree",
        "pairs_needed", ...}}, "verdict", "recommendation": {"action", "measure", "quantile", "threshold",
        "cost", "benefit", "reason", "command"}, ...}`` with, for ``subsets``, ``"subsets"`` (each subset: its
        pairs, score range, its ``runs`` per seed with TRL's log, and over the seeds each pair's change and the
        audit) and ``settings["trainer"]`` (the TRL config that trained), and, for ``probes``, ``"rows"``
        (per-pair results), ``"correlations"``, ``"seeds"`` and ``"summary"``. Measure values are sign-adjusted
        so that higher = more similar; ``displacement`` is the drop of ``log pi(y+|x)``.
    """
    options = ValidateOptions.from_kwargs(options, **kwargs)
    protocol_of(options.protocol).check(options)
    with torch_threads(options.num_threads):
        return _validate(data, model, tokenizer, options)


def _validate(data: Data, model, tokenizer, options: ValidateOptions) -> dict:
    started = time.time()
    n = options.n
    protocol = protocol_of(options.protocol)
    training = protocol.training(options)  # the DPOConfig / LoRA checked before the data and the model
    if training is not None:  # and what TRL makes of it on this device (bf16 on a CPU, a bad combination, ...)
        training.check(_device_of(model, options))
    max_length = training.max_length if training is not None else options.max_length or PROBE_MAX_LENGTH
    dataset = load_data(data, options.split)
    if hasattr(dataset, "keys"):
        raise ChesError(f"data has splits {sorted(dataset)}; pass split=.")
    if n < 3 or n > len(dataset):
        raise ChesError(f"n={n} must be between 3 and the number of rows ({len(dataset)}).")
    if options.pool is not None and options.pool > len(dataset):
        raise ChesError(f"pool={options.pool} is more than the {len(dataset)} rows of the data; drop pool= to score "
                        "them all.")
    size = options.pool_rows(len(dataset))
    needed = protocol.pairs_needed(n)
    if size < needed:
        raise ChesError(f"the {protocol.name} protocol {protocol.trains_on(n)}, so it needs at least {needed} rows and "
                        f"the data has {size}; lower n.")
    generator = np.random.default_rng(options.seed)
    pool_rows = np.sort(generator.choice(len(dataset), size=size, replace=False))
    candidates = dataset.select(pool_rows)
    loaded = load_model(model, tokenizer, **_placement(model, options))
    threads = set_threads(loaded.model, explicit=options.num_threads, device=loaded.device)
    scored, _ = score_run(candidates, loaded.model, loaded.tokenizer, max_length=max_length, logps=True,
                          columns=options.columns, format=options.format, progress=options.progress,
                          num_threads=threads.count)
    usable = np.flatnonzero([reason is None for reason in column(scored, "ches_skip")])
    if len(usable) < needed:
        raise ChesError(f"only {len(usable)} of the {size} pooled rows could be scored and the {options.protocol} "
                        f"protocol needs {needed}; lower n or raise max_length.")
    pool = Pool(candidates, scored, usable, pool_rows)
    owned = isinstance(model, (str, Path))
    result = protocol.run(pool, loaded, options, training=training, owned=owned)
    settings = {"protocol": protocol.name, "model": loaded.name, "n": n, "seeds": options.seeds,
                "max_length": max_length, "pool": size, "scored": len(usable), "seed": options.seed,
                "resamples": options.resamples, "dtype": str(loaded.dtype), "device": str(loaded.device)}
    settings.update(protocol.settings(options, training, loaded.device))
    settings.update(threads=threads.count, threads_reason=threads.reason, processes=Process.current().world,
                    seconds=time.time() - started)
    result = {"settings": settings, **result}
    result["evidence"] = evidence_of(result)
    result["verdict"] = verdict(result)
    pool_scores = {name: similarity(np.asarray(column(scored, name), dtype=np.float64)[usable], name)
                   for name in AUDIT_MEASURES}
    advice = recommend(result["evidence"], protocol=protocol.name, statistic=protocol.statistic,
                       cut_quantile=protocol.cut_quantile(n, len(usable)), pool_scores=pool_scores,
                       seeds=options.seeds, largest_n=len(usable) // protocol.pairs_per_n,
                       benefit=lambda measure, threshold: protocol.benefit(result, pool, measure, threshold),
                       **protocol.displacement_seen(result))
    if advice["action"] == "filter":
        own = _has_these_scores(dataset.select(pool_rows), scored, advice["measure"])
        advice["command"] = filter_command(data if isinstance(data, (str, Path)) else "DATA", None if own else
                                           str(model if isinstance(model, (str, Path)) else loaded.name), advice,
                                           scoring=_scoring_flags(tokenizer, loaded, max_length),
                                           reading=_reading_flags(options))
        advice["threshold_from"] = f"the {len(usable)} scored rows of the pool"
    else:
        advice["command"] = None
    result["recommendation"] = advice
    return result


def _device_of(model, options: ValidateOptions) -> torch.device:
    """Where the runs will train: a loaded model's device, else the one ``options`` ask for (or the default)."""
    if isinstance(model, torch.nn.Module):
        return next(model.parameters()).device
    return resolve_device(options.device)


def _placement(model, options: ValidateOptions) -> dict:
    """``load_model``'s ``dtype``/``device`` for ``model``: the options' for a model validate loads; none for a
    loaded model (validate never changes the model it is given: it must already be in that dtype, on that
    device)."""
    if not isinstance(model, torch.nn.Module):
        return {"dtype": options.dtype, "device": options.device}
    dtype = next(model.parameters()).dtype
    if options.dtype is not None and dtype != resolve_dtype(options.dtype, next(model.parameters()).device):
        raise ChesError(f"the model is in {str(dtype).removeprefix('torch.')} and validate was asked for "
                        f"dtype={options.dtype}; validate never changes the model it is given: pass "
                        f"dtype={str(dtype).removeprefix('torch.')!r} (--dtype), or pass the model's folder to load it "
                        f"in {options.dtype}.")
    device = next(model.parameters()).device
    if options.device is not None and resolve_device(options.device) != device:
        raise ChesError(f"the model is on {device} and validate was asked for device={options.device}; validate never "
                        "moves the model it is given: move it first, or pass its folder.")
    return {"dtype": None, "device": None}


def _has_these_scores(pool, scored, measure: str) -> bool:
    """Whether the data's own score columns, on the pool's rows, are the scores validate read the threshold
    from (``scored``: the pool scored by this model at these settings): the same rows scored, the same
    ``measure`` values to the last bit. Then ``ches filter`` can cut the data's columns; otherwise (no scores,
    or scores from other weights or settings) it must score the data with this model first."""
    if measure not in pool.column_names or "ches_skip" not in pool.column_names:
        return False
    usable = [reason is None for reason in column(pool, "ches_skip")]
    if usable != [reason is None for reason in column(scored, "ches_skip")]:
        return False
    mask = np.asarray(usable, dtype=bool)
    before = np.asarray(column(pool, measure), dtype=np.float64)[mask]
    return bool(np.array_equal(before, np.asarray(column(scored, measure), dtype=np.float64)[mask]))


def _scoring_flags(tokenizer, loaded, max_length: int | None) -> tuple[str, ...]:
    """The ``ches filter`` flags that score as validate scored the pool (with ``--model``)."""
    flags = ("--tokenizer", str(tokenizer)) if isinstance(tokenizer, (str, Path)) else ()
    if max_length:
        flags += ("--max-length", str(max_length))
    return (*flags, "--dtype", str(loaded.dtype).removeprefix("torch."))


def _reading_flags(options: ValidateOptions) -> tuple[str, ...]:
    """The ``ches filter`` flags that read the data as validate read it (``--split``, ``--columns``, ``--format``)."""
    flags = ("--split", options.split) if options.split is not None else ()
    flags += ("--format", options.format) if options.format is not None else ()
    if options.columns:
        flags += ("--columns", ",".join(f"{name}={value}" for name, value in options.columns.items()))
    return flags


def format_table(result: dict, measure: str = DEFAULT_MEASURE) -> str:
    """What ``ches validate`` prints: the protocol's table with what it means, the verdict on ``measure``
    (the filter's default) and the recommendation (with the ``ches filter`` command to run).

    >>> table = {"ln_ches": {"spearman_total": 0.4, "spearman_total_ci95": (0.2, 0.6), "spearman_per_token": 0.3,
    ...          "spearman_per_token_ci95": (0.1, 0.5), "spearman_total_given_lengths": 0.35}}
    >>> text = format_table({"correlations": table, "summary": {"mean_chosen_change": -0.01,
    ...                      "mean_rejected_change": -0.2, "fraction_displaced": 0.6}})
    >>> text.splitlines()[-1]
    'verdict (probes protocol): ln_ches predicts displacement on this model: Spearman +0.400, 95% CI [+0.20, +0.60] (above 0).'
    """
    lines = _protocol_of_result(result).lines(result)
    lines.append(verdict(result, measure))
    if "recommendation" in result:
        lines.append(format_recommendation(result["recommendation"]))
    return "\n".join(lines)


def verdict(result: dict, measure: str = DEFAULT_MEASURE) -> str:
    """One line, naming the protocol: whether ``measure`` predicts displacement on this model, with its
    interval; no verdict from fewer than :data:`~ches.evaluate.advice.MIN_PAIRS_FOR_VERDICT` pairs (per subset, or
    probed) or from an interval of zero width."""
    protocol = _protocol_of_result(result)
    head = f"verdict ({protocol.name} protocol):"
    found = protocol.verdict_evidence(result, measure)
    if isinstance(found, str):
        return f"{head} no verdict on {measure}: {found}."
    low, high, pairs, stated, few = found
    entry = result.get("evidence", {}).get(measure)
    outcome = entry["status"] if entry is not None else status(low, high, pairs)  # the seeds' agreement counted
    if outcome == "no evidence" and (pairs < MIN_PAIRS_FOR_VERDICT or not (np.isfinite(low) and np.isfinite(high))
                                     or low == high):
        return (f"{head} no verdict on {measure}: {few} ({stated}) are too few for a confidence interval; use at "
                f"least {MIN_PAIRS_FOR_VERDICT} (--n), and {MIN_N} or more to act on it.")
    if outcome == "predicts":
        return f"{head} {measure} predicts displacement on this model: {stated} (above 0)."
    if outcome == "wrong way":
        return f"{head} {measure} ranks displacement the wrong way on this model: {stated} (below 0); do not filter by it here."
    why = "includes 0" if low <= 0 <= high else "is not every seed's verdict"
    needed = entry.get("pairs_needed") if entry is not None else None
    more = f"about n={needed} pairs would resolve an effect this size" if needed else "try more pairs (--n)"
    return (f"{head} no evidence that {measure} predicts displacement on this model: {stated} {why}. Filtering by it "
            f"is a guess here; {more}, or train longer.")


validate.__signature__ = signature_with_options(validate, VALIDATE_KEYWORDS)
