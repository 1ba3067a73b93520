"""TRL's ``DPOTrainer`` with its reference log-probs taken from ches' scoring pass (``logps=True``).

TRL's trainer either keeps a frozen reference model for the whole run, or, with
``precompute_ref_log_probs=True``, runs it over the whole dataset before training. ches' scoring pass
already ran that model (the SFT model *is* DPO's reference) over exactly TRL's token sequences, and with
``logps=True`` kept each completion's log-probability. :class:`DPOTrainer` trains with TRL's precompute
semantics on those numbers: no reference model is created or run, nothing is recomputed, and the losses
are TRL's own::

    scored = ches.score("pairs.jsonl", "path/to/sft", logps=True, max_length=1024)
    trainer = ches.trl.DPOTrainer(model=policy, args=DPOConfig(max_length=1024, ...),
                                  train_dataset=ches.filter(scored, 0.95), processing_class=tokenizer)
    trainer.train()

It refuses, in one line, data whose log-probs do not belong to this run: no ``chosen_logps`` /
``rejected_logps`` columns (score with ``logps=True``), NaN in them (rows ches skipped: filter them first),
no record of what they were computed with, another model (a hash of the weights the trainer starts from),
another tokenizer, another ``max_length``, or a truncation other than TRL's ``keep_start``.

Needs TRL (``pip install 'ches[trl]'``).
"""

from __future__ import annotations

import math
from typing import Any

from .columns import LOGPS_COLUMNS, reference_of
from .errors import ChesError

try:
    import trl as _trl
except ImportError:  # TRL stays optional: say how to get it
    raise ChesError("ches.trl needs TRL: pip install 'ches[trl]' (or pip install 'trl>=1.16').") from None

#: ches' column -> the column TRL's trainer reads its precomputed reference log-probs from
TRL_COLUMNS = {"chosen_logps": "ref_chosen_logps", "rejected_logps": "ref_rejected_logps"}


class DPOTrainer(_trl.DPOTrainer):
    """TRL's ``DPOTrainer``, its reference log-probs read from ches' ``chosen_logps`` / ``rejected_logps``.

    Takes TRL's arguments (``ref_model`` excepted: the reference is the data's); ``args`` gets
    ``precompute_ref_log_probs=True``. See the module docstring for what is checked.
    """

    def __init__(self, model=None, ref_model=None, args=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, **kwargs: Any) -> None:
        import dataclasses

        if ref_model is not None:
            raise ChesError("ches.trl.DPOTrainer takes its reference log-probs from the data, so ref_model would "
                            "never run; drop ref_model.")
        if args is None:
            raise ChesError("ches.trl.DPOTrainer needs args=DPOConfig(...), with the max_length the data was scored with.")
        if getattr(args, "truncation_mode", "keep_start") != "keep_start":
            raise ChesError(f"DPOConfig(truncation_mode={args.truncation_mode!r}), but ches truncates as TRL's "
                            "keep_start does; train with truncation_mode='keep_start'.")
        args = dataclasses.replace(args, precompute_ref_log_probs=True)
        if isinstance(model, str):
            raise ChesError("pass ches.trl.DPOTrainer a loaded model (its weights are checked against those the "
                            "log-probs came from), e.g. AutoModelForCausalLM.from_pretrained(path).")
        if train_dataset is not None:
            train_dataset = reference_columns(train_dataset, "train_dataset", model, processing_class, args.max_length)
        if isinstance(eval_dataset, dict):
            eval_dataset = {name: reference_columns(part, f"eval_dataset[{name!r}]", model, processing_class,
                                                    args.max_length) for name, part in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = reference_columns(eval_dataset, "eval_dataset", model, processing_class, args.max_length)
        super().__init__(model=model, ref_model=None, args=args, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, **kwargs)

    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        """Nothing to compute: the data carries its reference log-probs (checked when the trainer was made)."""
        missing = [column for column in TRL_COLUMNS.values() if column not in dataset.column_names]
        if missing:
            raise ChesError(f"the {name} dataset lost its reference log-probs ({', '.join(missing)}) on the way into "
                            "TRL's trainer; pass the dataset ches.score(..., logps=True) returned.")
        return dataset


def reference_columns(dataset, what: str, model, tokenizer, max_length: int | None):
    """``dataset`` with ches' log-probs under the names TRL's trainer reads (:data:`TRL_COLUMNS`), after
    checking that they are this run's reference: present, finite, computed with this model, tokenizer and
    ``max_length`` (see the module docstring)."""
    missing = [name for name in LOGPS_COLUMNS if name not in dataset.column_names]
    if missing:
        raise ChesError(f"{what} has no {', '.join(missing)} column(s); score it with ches.score(..., logps=True) "
                        "(ches score --logps), which gives the reference log-probs the trainer uses.")
    clash = [name for name in TRL_COLUMNS.values() if name in dataset.column_names]
    if clash:
        raise ChesError(f"{what} already has {', '.join(clash)}; drop them, so that the reference is ches' only.")
    for name in LOGPS_COLUMNS:
        bad = [row for row, value in enumerate(dataset[name]) if value is None or not math.isfinite(value)]
        if bad:
            raise ChesError(f"{what}: column {name!r} is NaN in {len(bad)} row(s) (e.g. row {bad[0]}): rows ches "
                            "could not score (see ches_skip); filter them first, e.g. ches.filter(data, 1.0) keeps "
                            "every scored row.")
    reference = reference_of(dataset)
    if reference is None:
        raise ChesError(f"{what} carries no record of the model its log-probs came from; pass the dataset "
                        "ches.score(..., logps=True) returned, or load the file it wrote with "
                        "ches.inputs.load_data(path) (its .meta.json sidecar says what they were computed with).")
    _check_reference(reference, what, model, tokenizer, max_length)
    for ours, theirs in TRL_COLUMNS.items():
        dataset = dataset.rename_column(ours, theirs)
    return dataset


def _check_reference(reference: dict, what: str, model, tokenizer, max_length: int | None) -> None:
    from .cache import model_fingerprint
    from .models import tokenizer_fingerprint

    if reference.get("max_length") != max_length:
        raise ChesError(f"{what} was scored with max_length={reference.get('max_length')!r} but the trainer truncates "
                        f"at DPOConfig(max_length={max_length!r}); score again with max_length={max_length!r}, or "
                        f"train with max_length={reference.get('max_length')!r}.")
    if model is not None and model_fingerprint(model) != reference.get("model_fingerprint"):
        raise ChesError(f"{what}'s log-probs came from other weights than the model the trainer starts from "
                        f"(scored with {reference.get('model')!r} in {reference.get('dtype')}); the reference must be "
                        "the model DPO starts from: score the data with it.")
    if tokenizer is not None and tokenizer_fingerprint(tokenizer) != reference.get("tokenizer_fingerprint"):
        raise ChesError(f"{what} was tokenized by another tokenizer ({reference.get('tokenizer')!r}) than the "
                        "trainer's processing_class; pass that one, or score the data again with this one.")
