"""TRL's ``DPOTrainer`` with its reference log-probs taken from ches' scoring pass (``logps=True``).

TRL's trainer either keeps a frozen reference model for the whole run, or, with
``precompute_ref_log_probs=True``, runs it over the whole dataset before training. ches' scoring pass
already ran that model (the SFT model *is* DPO's reference) over exactly TRL's token sequences, and with
``logps=True`` kept each completion's log-probability. :class:`DPOTrainer` trains with TRL's precompute
semantics on those numbers: no reference model is created or run, nothing is recomputed, and the losses
are TRL's own::

    scored = ches.score("pairs.jsonl", "path/to/sft", logps=True)
    trainer = ches.trl.DPOTrainer(model=policy, args=DPOConfig(...),
                                  train_dataset=ches.filter(scored, 0.95), processing_class=tokenizer)
    trainer.train()

The log-probs are checked by *content*: every scored row carries ``ches_token_digest``, the digest of the
exact tokens its log-probs were computed on (:func:`ches.data.tokens.token_digest`). Once TRL has tokenized the
data its own way (with the trainer's ``processing_class``, or the one TRL loads when it is None, its chat
template, its EOS and its ``max_length`` truncation), each row's digest is compared with TRL's tokens, and
only rows whose tokens differ are refused, in one line naming them (text edited after scoring, another
tokenizer or template, a ``max_length`` that truncates them otherwise). A ``max_length`` that truncates
nothing, or another tokenizer object that gives the same ids, is accepted. Also refused, each in one line,
before TRL tokenizes anything: no ``chosen_logps`` / ``rejected_logps`` columns (score with ``logps=True``),
NaN in them (rows ches skipped: filter them first), no record of the model they came from, other weights
than the model the trainer starts from (a hash of the weights), and a truncation other than ``keep_start``.
With ``DPOConfig(ld_alpha=...)`` (LD-DPO) TRL's reference weighs the log-probs of each completion's tokens
past the shorter completion's length by ``ld_alpha``; the scoring pass keeps the part before that length
(``chosen_shared_logps`` / ``rejected_shared_logps``), so the reference is computed exactly as TRL does.
A loss that uses no reference (``loss_type="sft"``) is said to, in the log.

Data scored by an older ches, without the digest column, is checked by its record instead (the same
tokenizer and ``max_length``).

Displacement is watched live: at each of TRL's logging steps, beside TRL's own ``rewards/chosen`` and
``logps/chosen``, the trainer logs ``ches/displaced``, the fraction of the batch's preferred responses whose
policy log-probability is below their reference by more than the audit's rounding tolerance
(:func:`ches.evaluate.auditing.displacement_tolerance`), and ``ches/chosen_change``, their mean change in nats
(``eval_ches/...`` in evaluation). ``warn_displaced=0.2`` warns once, when the fraction logged passes 0.2
(:meth:`DPOTrainer.compute_loss`, :meth:`DPOTrainer.log`).

Needs TRL (``pip install 'ches[trl]'``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

from .data.columns import DIGEST_COLUMN, LOGPS_COLUMNS, SHARED_LOGPS_COLUMNS, reference_of
from .errors import ChesError

try:
    import trl as _trl
except ImportError:  # TRL stays optional: say how to get it
    raise ChesError("ches.trl needs TRL: pip install 'ches[trl]' (or pip install 'trl>=1.16').") from None

logger = logging.getLogger("ches")

#: ches' column -> the column TRL's trainer reads its precomputed reference log-probs from
TRL_COLUMNS = {"chosen_logps": "ref_chosen_logps", "rejected_logps": "ref_rejected_logps"}
#: the column that carries each row's number in the data given, through TRL's preparation (errors name rows by it)
ROW_COLUMN = "ches_row"
#: rows whose token ids are read at a time to check their digests
CHECK_ROWS = 4096
#: the loss types of TRL 1.16 that use no reference log-probs
REFERENCE_FREE_LOSSES = frozenset({"sft"})
#: the metrics logged beside TRL's (``eval_`` before them in evaluation, as TRL names its own)
DISPLACED_METRIC, CHANGE_METRIC = "ches/displaced", "ches/chosen_change"
#: the dtype the policy's forward computes in under TRL's mixed precision (``accelerator.mixed_precision``)
MIXED_PRECISION_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


class DPOTrainer(_trl.DPOTrainer):
    """TRL's ``DPOTrainer``, its reference log-probs read from ches' ``chosen_logps`` / ``rejected_logps``.

    Takes TRL's arguments (``ref_model`` excepted: the reference is the data's); ``args`` gets
    ``precompute_ref_log_probs=True`` (``args=None`` is TRL's default ``DPOConfig``). See the module docstring
    for what is checked. ``warn_displaced`` (a fraction in (0, 1], or None for never): warn once, through the
    ``ches`` logger, at the first logging step whose ``ches/displaced`` (or ``eval_ches/displaced``) exceeds it.
    """

    def __init__(self, model=None, ref_model=None, args=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, *, warn_displaced: float | None = None, **kwargs: Any) -> None:
        self._ches_warn_displaced = check_warn_displaced(warn_displaced)
        self._ches_warned = False
        self._ches_reference_dtypes: set[str | None] = set()  # of every dataset prepared: the coarsest counts
        if ref_model is not None:
            raise ChesError("ches.trl.DPOTrainer takes its reference log-probs from the data, so ref_model would "
                            "never run; drop ref_model.")
        if isinstance(model, str) or model is None:
            raise ChesError("pass ches.trl.DPOTrainer a loaded model (its weights are checked against those the "
                            "log-probs came from), e.g. AutoModelForCausalLM.from_pretrained(path).")
        if args is None:  # what TRL's trainer makes of args=None
            name = str(getattr(model.config, "_name_or_path", "") or type(model).__name__).rstrip("/").split("/")[-1]
            args = _trl.DPOConfig(f"{name}-DPO")
        check_config(args)
        if processing_class is None and not getattr(model.config, "_name_or_path", ""):
            raise ChesError("processing_class=None, and the model was not loaded from a folder or Hub id TRL could "
                            "load a tokenizer from; pass processing_class= (the tokenizer the rows were scored with).")
        if isinstance(train_dataset, dict):  # a DatasetDict
            raise ChesError(f"train_dataset is a DatasetDict with splits {sorted(train_dataset)}; pass one split, e.g. "
                            f"train_dataset=scored[{sorted(train_dataset)[0]!r}].")
        from .run.cache import model_fingerprint

        self._ches_start = model_fingerprint(model)  # the weights DPO starts from: the reference's, if the data's right
        self._ches_max_length = collator_max_length(kwargs.get("data_collator"), args.max_length)
        super().__init__(model=model, ref_model=None, args=dataclasses.replace(args, precompute_ref_log_probs=True),
                         train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=processing_class,
                         **kwargs)
        mixed = MIXED_PRECISION_DTYPES.get(str(self.accelerator.mixed_precision))
        self._ches_policy_dtypes = (str(getattr(self.model, "dtype", None)),) + ((mixed,) if mixed else ())

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name: str):
        """Check the data's reference and put it under TRL's names (before TRL tokenizes it), then TRL's own
        preparation; a dataset TRL already prepared (it has ``prompt_ids``) goes straight through."""
        if "prompt_ids" not in dataset.column_names:
            self._ches_reference_dtypes.add((reference_of(dataset) or {}).get("dtype"))
            dataset = reference_columns(dataset, _label(dataset_name), self._ches_start, processing_class,
                                        args.max_length, ld_alpha=args.ld_alpha)
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        """Nothing to compute: the data carries its reference log-probs. Each row's tokens, as TRL prepared
        them, must be those the log-probs were computed on (:func:`check_tokens`)."""
        missing = [column for column in TRL_COLUMNS.values() if column not in dataset.column_names]
        if missing:
            raise ChesError(f"the {name} dataset lost its reference log-probs ({', '.join(missing)}) on the way into "
                            "TRL's trainer; pass the dataset ches.score(..., logps=True) returned.")
        check_tokens(dataset, _label(name), self._ches_max_length)
        return dataset.remove_columns([name for name in (DIGEST_COLUMN, ROW_COLUMN) if name in dataset.column_names])

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's loss, and beside its metrics :data:`DISPLACED_METRIC` and :data:`CHANGE_METRIC` of the batch
        (:func:`displacement`), from the per-token log-probs of the policy forward TRL's loss ran (caught by a
        forward hook on ``model``: the model is not run again) and the batch's reference log-probs; gathered
        across processes as TRL gathers ``rewards/chosen``, so under torchrun they are the global batch's."""
        forwards = []

        def catch(module, args, kwargs, output):
            if kwargs.get("fused_lm_head") and not forwards:  # the policy's forward (TRL's first, with its head)
                forwards.append(output.log_probs.detach())

        hook = model.register_forward_hook(catch, with_kwargs=True)
        try:
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
        finally:
            hook.remove()
        if forwards and "ref_chosen_logps" in inputs:
            displaced, change = displacement(forwards[0], inputs["completion_mask"], inputs["ref_chosen_logps"],
                                             self.ld_alpha, (*self._ches_reference_dtypes, *self._ches_policy_dtypes))
            mode = "train" if self.model.training else "eval"
            self._metrics[mode][DISPLACED_METRIC].append(self.accelerator.gather(displaced.float()).mean().item())
            self._metrics[mode][CHANGE_METRIC].append(self.accelerator.gather(change).mean().item())
        return result

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """TRL's logging (its metrics and ches', averaged since the last logging step), and with
        ``warn_displaced`` one warning, the first time the displaced fraction logged exceeds it."""
        mode = "train" if self.model.training else "eval"
        values = self._metrics[mode].get(DISPLACED_METRIC) or []
        fraction = sum(values) / len(values) if values else None
        super().log(logs, start_time)
        threshold = self._ches_warn_displaced
        if (threshold is not None and fraction is not None and fraction > threshold and not self._ches_warned
                and self.is_world_process_zero()):
            self._ches_warned = True
            where = "training" if mode == "train" else "evaluation"
            logger.warning("ches: at step %d (%s), %.1f%% of the preferred responses' log-probabilities fell below "
                           "their reference (ches/displaced=%.3f > warn_displaced=%g): DPO is displacing them; "
                           "consider a lower learning_rate or fewer epochs, filtering the data with ches.filter, "
                           "and `ches audit` on the trained model (warned once)", self.state.global_step, where,
                           100 * fraction, fraction, threshold)


def check_warn_displaced(value) -> float | None:
    """``warn_displaced`` as a float, refused unless None or a fraction in (0, 1].

    >>> check_warn_displaced(0.25), check_warn_displaced(None)
    (0.25, None)
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ChesError(f"warn_displaced={value!r}; give a fraction in (0, 1] (e.g. 0.2: warn when more than 20% of a "
                        "logged batch's preferred responses are displaced), or None for no warning.")
    return float(value)


def displacement(per_token_logps, completion_mask, ref_chosen_logps, ld_alpha: float | None, dtypes):
    """``([B] bool, [B] float)``: for the chosen half of a TRL batch (``[chosen; rejected]``, ``2B`` rows), which
    preferred responses are displaced (policy minus reference log-prob below ``-tolerance``,
    :func:`~ches.evaluate.auditing.displacement_tolerance` of the reference, ``|y+|`` and the coarsest of
    ``dtypes``) and that change. The policy's log-prob is TRL 1.16's, from its forward's ``per_token_logps``
    (``[2B, >= T-1]``) and the ``completion_mask`` (``[2B, T]``): their sum over the completion, or with
    ``ld_alpha`` (LD-DPO) the shared part (the first min(|y+|, |y-|) tokens) plus ``ld_alpha`` times the rest,
    as the reference (:func:`reference_logps`) is weighed: the quantities TRL's loss compares.

    >>> import torch
    >>> mask = torch.tensor([[0, 1, 1], [0, 1, 0]])
    >>> per_token = torch.tensor([[-1.0, -2.0], [-1.0, 0.0]])
    >>> displacement(per_token, mask, torch.tensor([-2.0]), None, ["float32"])
    (tensor([True]), tensor([-1.]))
    """
    import numpy as np
    import torch

    from .evaluate.auditing import displacement_tolerance

    shift_mask = completion_mask[..., 1:]
    per_token = per_token_logps[:, -shift_mask.size(1):] * shift_mask
    if ld_alpha is None:
        logps = per_token.sum(dim=1)
    else:
        positions = shift_mask.cumsum(dim=1)
        shared = torch.minimum(*shift_mask.sum(dim=1).chunk(2, dim=0)).repeat(2).unsqueeze(1)
        logps = (per_token * (positions <= shared)).sum(dim=1) + ld_alpha * (per_token * (positions > shared)).sum(dim=1)
    chosen_logps = logps.chunk(2, dim=0)[0].float()  # in float32 even when the forward ran in bf16
    reference = ref_chosen_logps.to(chosen_logps)
    change = chosen_logps - reference
    tokens = shift_mask.chunk(2, dim=0)[0].sum(dim=1)
    tolerance = displacement_tolerance(reference.double().cpu().numpy(), tokens.cpu().numpy(), dtypes)
    return change < -torch.as_tensor(np.asarray(tolerance), dtype=change.dtype, device=change.device), change


def collator_max_length(collator, max_length: int | None) -> int | None:
    """Where the batches are cut: at ``DPOConfig.max_length`` by TRL's own collator (``collator`` None), at a
    ``data_collator``'s own ``max_length`` when it is TRL's ``DataCollatorForPreference`` (or says where it cuts
    the same way); any other collator is refused, since what it feeds the model cannot be checked.

    >>> collator_max_length(None, 1024)
    1024
    """
    if collator is None:
        return max_length
    if not hasattr(collator, "max_length"):
        raise ChesError(f"data_collator={type(collator).__name__}(...) builds the batches in a way ches cannot check "
                        "against the tokens its log-probs were computed on; use TRL's DataCollatorForPreference (or "
                        "none: the trainer makes it from DPOConfig).")
    if getattr(collator, "truncation_mode", "keep_start") != "keep_start":
        raise ChesError(f"data_collator truncates with truncation_mode={collator.truncation_mode!r}, but ches "
                        "truncates as TRL's keep_start does; use truncation_mode='keep_start'.")
    return collator.max_length


def _label(name: str) -> str:
    return {"train": "train_dataset", "eval": "eval_dataset"}.get(name, f"eval_dataset[{name!r}]")


def check_config(args) -> None:
    """Refuse a ``DPOConfig`` under which TRL's reference is not what ches computed (each completion's log-probs
    after ``keep_start`` truncation: their sum, and with ``ld_alpha`` LD-DPO's weighting of them, from the
    shared parts); say when the loss uses no reference at all."""
    if getattr(args, "truncation_mode", "keep_start") != "keep_start":
        raise ChesError(f"DPOConfig(truncation_mode={args.truncation_mode!r}), but ches truncates as TRL's "
                        "keep_start does; train with truncation_mode='keep_start'.")
    losses = args.loss_type if isinstance(args.loss_type, (list, tuple)) else [args.loss_type]
    if set(losses) <= REFERENCE_FREE_LOSSES:
        logger.info("DPOConfig(loss_type=%s) uses no reference log-probs: ches' chosen_logps/rejected_logps are "
                    "checked but not used", list(losses))


def reference_columns(dataset, what: str, start_fingerprint: str | None, tokenizer=None,
                      max_length: int | None = None, *, ld_alpha: float | None = None):
    """``dataset`` ready for TRL's preparation: ches' log-probs under the names TRL's trainer reads
    (:data:`TRL_COLUMNS`), the columns it was scored from under TRL's names (``columns=`` of the scoring run; a
    framework's layout as the TRL rows it means, :func:`_trl_rows`),
    and each row's number (:data:`ROW_COLUMN`), after checking that the log-probs are present, finite and
    were computed with the weights ``start_fingerprint`` hashes (:func:`ches.run.cache.model_fingerprint`). For
    data without :data:`~ches.data.columns.DIGEST_COLUMN` (an older ches) also the record's tokenizer and
    ``max_length``. With ``ld_alpha`` (LD-DPO) the reference is TRL's weighting of each completion's
    log-probs: its shared part (the first min(|y+|, |y-|) tokens, ``*_shared_logps``) plus ``ld_alpha``
    times the rest."""
    if isinstance(dataset, dict):
        raise ChesError(f"{what} is a DatasetDict with splits {sorted(dataset)}; pass one split, or a dict of "
                        "splits as eval_dataset.")
    if not hasattr(dataset, "select"):  # an IterableDataset: TRL's precompute, which this replaces, needs rows
        raise ChesError(f"{what} is of type {type(dataset).__name__}; ches.trl.DPOTrainer reads the log-probs row by "
                        "row from a map-style datasets.Dataset (load it without streaming=True).")
    missing = [name for name in LOGPS_COLUMNS if name not in dataset.column_names]
    if missing:
        raise ChesError(f"{what} has no {', '.join(missing)} column(s); score it with ches.score(..., logps=True) "
                        "(ches score --logps), which gives the reference log-probs the trainer uses.")
    clash = [name for name in (*TRL_COLUMNS.values(), ROW_COLUMN) if name in dataset.column_names]
    if clash:
        raise ChesError(f"{what} already has {', '.join(clash)}; drop them, so that the reference is ches' only.")
    needed = LOGPS_COLUMNS + (SHARED_LOGPS_COLUMNS if ld_alpha is not None else ())
    lacking = [name for name in needed if name not in dataset.column_names]
    if lacking:
        raise ChesError(f"DPOConfig(ld_alpha={ld_alpha}) weighs each completion's log-probs past the shorter one's "
                        f"length (LD-DPO), and {what} has no {', '.join(lacking)}: score it again with this ches and "
                        "logps=True (ches.pairs gives none), or train with ld_alpha=None.")
    for name in needed:
        bad = [row for row, value in enumerate(dataset[name][:]) if value is None or not math.isfinite(value)]
        if bad:
            raise ChesError(f"{what}: column {name!r} is NaN in {len(bad)} row(s) (e.g. row {bad[0]}): rows ches "
                            "could not score (see ches_skip); filter them first, e.g. ches.filter(data, 1.0) keeps "
                            "every scored row.")
    reference = reference_of(dataset)
    if reference is None:
        raise ChesError(f"{what} carries no record of the model its log-probs came from (a Dataset rebuilt from rows, "
                        "or a file whose .meta.json sidecar is missing); pass the dataset ches.score(..., logps=True) "
                        "or ches.filter returned, or load the file ches wrote with ches.load_data(path), its "
                        "sidecar beside it; a dataset rebuilt from scored rows (pandas, from_list) takes their record "
                        "back with ches.with_reference(rebuilt, ches.reference_of(scored)): the "
                        "tokens are still checked row by row.")
    if start_fingerprint is not None and start_fingerprint != reference.get("model_fingerprint"):
        raise ChesError(f"{what}'s log-probs came from other weights than the model the trainer starts from "
                        f"(scored with {reference.get('model')!r} in {reference.get('dtype')}); the reference must be "
                        "the model DPO starts from: score the data with it.")
    if DIGEST_COLUMN not in dataset.column_names:
        _check_record(reference, what, tokenizer, max_length)
    dataset = _trl_rows(dataset, reference, what)
    references = {theirs: reference_logps(dataset, ours, ld_alpha) for ours, theirs in TRL_COLUMNS.items()}
    used = [name for name in LOGPS_COLUMNS + SHARED_LOGPS_COLUMNS if name in dataset.column_names]
    dataset = dataset.remove_columns(used)
    for name, values in references.items():
        dataset = dataset.add_column(name, values)
    return dataset.add_column(ROW_COLUMN, list(range(len(dataset))))


def reference_logps(dataset, name: str, ld_alpha: float | None) -> list[float]:
    """The reference TRL's loss takes for the completions of column ``name`` (``chosen_logps`` or
    ``rejected_logps``): the log-probs themselves, or with ``ld_alpha`` LD-DPO's ``shared + ld_alpha * (total -
    shared)``, as TRL 1.16 weighs its reference's per-token log-probs.

    >>> import datasets
    >>> rows = datasets.Dataset.from_dict({"chosen_logps": [-10.0], "chosen_shared_logps": [-4.0]})
    >>> reference_logps(rows, "chosen_logps", None), reference_logps(rows, "chosen_logps", 0.5)
    ([-10.0], [-7.0])
    """
    total = dataset[name][:]
    if ld_alpha is None:
        return list(total)
    shared = dataset[name.replace("_logps", "_shared_logps")][:]
    return [part + ld_alpha * (whole - part) for whole, part in zip(total, shared)]


def _trl_rows(dataset, reference: dict, what: str):
    """``dataset`` as TRL's trainer reads it, read as the scoring run read it (its ``columns=`` and layout, from
    its ``reference`` record): the columns read for each role under TRL's names, and a framework's layout
    (docs/formats.md) as the TRL rows it means, before TRL tokenizes them (:func:`ches.data.inputs.as_trl_rows`),
    every other column kept."""
    from .data.inputs import TRL_FORMAT, Reading, as_trl_rows

    reading = Reading(reference.get("columns"), reference.get("format") or TRL_FORMAT)
    try:
        return as_trl_rows(dataset, reading)
    except ChesError as error:
        raise ChesError(f"{what} (read as {reading.format}, columns={reading.columns}): {error}") from None


def check_tokens(dataset, what: str, max_length: int | None) -> None:
    """Refuse the rows of a TRL-prepared ``dataset`` (``prompt_ids``, ``chosen_ids``, ``rejected_ids``) whose
    tokens, cut at ``max_length`` as TRL's collator cuts them, are not those their log-probs were computed on
    (:data:`~ches.data.columns.DIGEST_COLUMN`); rows are named by their number in the data given."""
    from .data.tokens import token_digest

    if DIGEST_COLUMN not in dataset.column_names:
        return
    differ = []
    names = [DIGEST_COLUMN, "prompt_ids", "chosen_ids", "rejected_ids"] + (
        [ROW_COLUMN] if ROW_COLUMN in dataset.column_names else [])
    for begin in range(0, len(dataset), CHECK_ROWS):  # a block at a time: the ids of a large set never all in memory
        block = dataset.select_columns(names)[begin : begin + CHECK_ROWS]
        rows = block.get(ROW_COLUMN, range(begin, begin + len(block[DIGEST_COLUMN])))
        ids = zip(block["prompt_ids"], block["chosen_ids"], block["rejected_ids"])
        differ += [row for row, digest, (prompt, chosen, rejected) in zip(rows, block[DIGEST_COLUMN], ids)
                   if digest != token_digest(prompt, chosen, rejected, max_length)]
    if differ:
        shown = ", ".join(map(str, differ[:8])) + (", ..." if len(differ) > 8 else "")
        raise ChesError(f"{what}: in {len(differ)} of {len(dataset)} rows (rows {shown}) the tokens TRL trains on are "
                        "not those ches computed the reference log-probs on (text edited after scoring, another "
                        f"tokenizer or chat template, or the batches' max_length={max_length} truncating them "
                        "otherwise); score those rows again with this tokenizer and max_length, or drop them.")


def _check_record(reference: dict, what: str, tokenizer, max_length: int | None) -> None:
    """Data without token digests (scored by an older ches): the record's tokenizer and ``max_length``."""
    from .model.models import tokenizer_fingerprint

    if reference.get("max_length") != max_length:
        raise ChesError(f"{what} was scored with max_length={reference.get('max_length')!r} but the trainer truncates "
                        f"at DPOConfig(max_length={max_length!r}), and it has no {DIGEST_COLUMN} column to check its "
                        "tokens by (scored by an older ches): score it again.")
    if tokenizer is not None and tokenizer_fingerprint(tokenizer) != reference.get("tokenizer_fingerprint"):
        raise ChesError(f"{what} was tokenized by another tokenizer ({reference.get('tokenizer')!r}) than the "
                        "trainer's processing_class; pass that one, or score the data again with this one.")
