"""The DPO runs of ``ches validate``'s ``subsets`` protocol: each one is a run of :class:`ches.trl.DPOTrainer`
(TRL's trainer, its reference log-probs the scoring pass's: no reference model, no precompute), trained the
way the user trains (their ``DPOConfig``, their LoRA), then audited with :func:`ches.audit`.

Every run starts from the same weights, and the model given to ``validate`` is never changed: each run trains
a *twin* of it (:func:`twin`), a new module whose parameters are, with LoRA, the given model's own tensors
(frozen and shared: no second copy of the weights; the run's fresh adapters live in the twin only) and, for
full fine-tuning, a copy. What TRL does to the model it trains (the pad token written into its config, its
fused LM head, dropout switched off, gradient checkpointing, the adapters) happens to the twin.

How a run trains is one :class:`Training`: the ``DPOConfig`` fields (the user's config, from a ``DPOConfig``, a
dict, or a JSON/YAML file of its fields; without one, :data:`VALIDATE_CONFIG`), the shorthands
``learning_rate``/``beta``/``batch_size``/``epochs``/``max_length`` over them, and the LoRA config
(``peft_config``, ``lora_r``, or the LoRA fields of TRL's ``ModelConfig`` in the file, read as ``trl dpo
--use_peft`` reads them).
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import logging
import re
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ChesError

logger = logging.getLogger("ches")

#: the ``DPOConfig`` fields of validate's runs when no config is given (the other fields: TRL's defaults)
VALIDATE_CONFIG = {"learning_rate": 1e-6, "beta": 0.1, "per_device_train_batch_size": 8, "num_train_epochs": 1,
                   "max_length": 512, "logging_steps": 1}
#: validate's option -> the ``DPOConfig`` field it sets (given, it replaces the config's value)
SHORTHANDS = {"learning_rate": "learning_rate", "beta": "beta", "batch_size": "per_device_train_batch_size",
              "epochs": "num_train_epochs", "max_length": "max_length"}
#: set in every run whatever the config says: a check run writes no checkpoint, reports to no tracker (its
#: metrics are in the result's ``log``) and evaluates nothing
RUN_FIELDS = {"save_strategy": "no", "eval_strategy": "no", "report_to": "none", "push_to_hub": False}
#: fields of TRL's ``ModelConfig`` that a ``trl dpo`` config file may hold and that say how to apply LoRA
LORA_FIELDS = ("use_peft", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_target_parameters",
               "lora_modules_to_save", "lora_task_type", "use_rslora", "use_dora")


#: FutureWarnings about names TRL 1.16 itself sets (nothing a user of validate can change), or that validate refuses
DEPRECATED_IN_TRL = (r"`gradient_checkpointing` is deprecated", r"`is_gradient_checkpointing` is deprecated",
                     r"The `'keep_end'` truncation mode is deprecated")  # refused anyway (check_config)


@contextmanager
def quiet_deprecations() -> Iterator[None]:
    """:data:`DEPRECATED_IN_TRL` not shown inside the block (every run builds a config; the note is not the user's)."""
    with warnings.catch_warnings():
        for renamed in DEPRECATED_IN_TRL:
            warnings.filterwarnings("ignore", message=renamed, category=FutureWarning)
        yield


def _trl():
    try:
        import trl
    except ImportError:
        raise ChesError("ches validate's subsets protocol trains with TRL's DPOTrainer: pip install 'ches[trl]' (or "
                        "pip install 'trl>=1.16'); --protocol probes runs without it.") from None
    return trl


@dataclass(frozen=True)
class Training:
    """How each subset run trains (see the module docstring).

    Attributes:
        base: the user's ``DPOConfig`` (None: one is built from ``fields``).
        fields: ``DPOConfig`` fields over ``base`` (or over TRL's defaults): the file's or dict's, or
            :data:`VALIDATE_CONFIG` without a config, then the shorthands given.
        peft: the ``peft.PeftConfig`` of the runs (None: full fine-tuning).
        source: where the config came from, in words (for the result's ``settings``).
    """

    base: Any = None
    fields: dict = field(default_factory=dict)
    peft: Any = None
    source: str = "validate's defaults"

    @property
    def max_length(self) -> int | None:
        """Where the runs truncate, so where the scoring pass must truncate too."""
        if "max_length" in self.fields:
            return self.fields["max_length"]
        return self.base.max_length if self.base is not None else _trl().DPOConfig.max_length

    def config(self, output_dir: str, seed: int, device: torch.device):
        """The ``DPOConfig`` of one run: the fields, :data:`RUN_FIELDS`, ``seed`` (also the data order), and on
        a CPU ``use_cpu`` (and, unless the config sets it, ``bf16=False``: TRL's default needs a GPU)."""
        trl = _trl()
        fixed = {**RUN_FIELDS, "output_dir": output_dir, "seed": seed, "data_seed": seed}
        if device.type == "cpu":
            fixed["use_cpu"] = True
            if self.base is None and "bf16" not in self.fields:
                fixed["bf16"] = False
        try:
            with quiet_deprecations():
                if self.base is not None:
                    return dataclasses.replace(self.base, **self.fields, **fixed)
                return trl.DPOConfig(**{**self.fields, **fixed})
        except (TypeError, ValueError) as error:
            raise ChesError(f"the DPOConfig of validate's runs ({self.source}) is not one TRL accepts here: "
                            f"{str(error).splitlines()[0]}") from None

    def check(self, device: torch.device) -> None:
        """Refuse, before any work, a config the runs would fail on later: what :class:`ches.trl.DPOTrainer`
        refuses (:func:`ches.trl.check_config`), a loss type TRL does not have (the names its ``DPOConfig``
        lists), a batch, accumulation or epoch count that trains nothing."""
        trl = _trl()
        from ..trl import check_config

        with tempfile.TemporaryDirectory() as folder:
            config = self.config(folder, 0, device)
        check_config(config)  # what ches.trl.DPOTrainer refuses (a truncation other than keep_start), said now
        known = re.findall(r"`'([a-z_]+)'`", trl.DPOConfig.__dataclass_fields__["loss_type"].metadata.get("help", ""))
        losses = config.loss_type if isinstance(config.loss_type, (list, tuple)) else [config.loss_type]
        unknown = [loss for loss in losses if known and loss not in known]
        if unknown:
            raise ChesError(f"{self.source}: loss_type {', '.join(map(repr, unknown))} is not one of TRL's: "
                            f"{', '.join(known)}.")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps"):
            if getattr(config, name) < 1:
                raise ChesError(f"{self.source}: {name}={getattr(config, name)} must be at least 1.")
        if config.max_steps <= 0 and config.num_train_epochs <= 0:
            raise ChesError(f"{self.source}: num_train_epochs={config.num_train_epochs} (and no max_steps) trains "
                            "nothing; give a positive number of epochs.")

    def record(self, device: torch.device) -> dict:
        """What the result's ``settings["trainer"]`` keeps: the DPOConfig fields that differ from TRL's defaults
        (with the loss and its parameters always), and the LoRA config."""
        trl = _trl()
        with tempfile.TemporaryDirectory() as folder:
            used = self.config(folder, 0, device).to_dict()
            with quiet_deprecations():
                default = trl.DPOConfig(output_dir=folder, **({"use_cpu": True, "bf16": False} if device.type == "cpu"
                                                              else {})).to_dict()
        skipped = {"output_dir", "logging_dir", "seed", "data_seed", "use_cpu", *RUN_FIELDS}
        always = {"learning_rate", "beta", "loss_type", "loss_weights", "per_device_train_batch_size",
                  "gradient_accumulation_steps", "num_train_epochs", "max_steps", "max_length", "label_smoothing", "ld_alpha",
                  "optim", "lr_scheduler_type", "warmup_steps", "weight_decay", "bf16", "gradient_checkpointing"}
        fields_used = {name: _plain(value) for name, value in used.items() if name not in skipped
                       and (name in always or value != default.get(name))}
        import trl as module

        return {"trainer": "ches.trl.DPOTrainer", "trl": module.__version__, "source": self.source,
                "dpo_config": dict(sorted(fields_used.items())),
                "peft_config": None if self.peft is None else _peft_record(self.peft)}


#: what the result keeps of a LoRA config (peft's other fields are its defaults for plain LoRA)
PEFT_RECORDED = ("peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_rslora",
                 "use_dora", "modules_to_save", "init_lora_weights")


def _peft_record(config) -> dict:
    """The fields of a peft config the result keeps (:data:`PEFT_RECORDED`; a set of module names sorted)."""
    fields = config.to_dict()
    return {name: sorted(value) if isinstance(value, (set, frozenset)) else _plain(value)
            for name, value in fields.items() if name in PEFT_RECORDED}


def _plain(value: Any) -> Any:
    """A config value as JSON holds it."""
    return json.loads(json.dumps(value, default=str))


def training_of(dpo_config=None, peft_config=None, lora_r: int | None = None, **shorthands: Any) -> Training:
    """The :class:`Training` of validate's runs: ``dpo_config`` (a ``trl.DPOConfig``, a dict of its fields, or
    the path of a JSON or YAML file of them; None: :data:`VALIDATE_CONFIG`), the ``shorthands`` that are not
    None over it (:data:`SHORTHANDS`), and LoRA from ``peft_config``, else ``lora_r`` (TRL's LoRA defaults
    otherwise, as ``trl dpo --use_peft --lora_r R``), else the file's LoRA fields. Checked before any work.

    >>> training_of(learning_rate=5e-4).fields["learning_rate"], training_of(lora_r=8).peft.r
    (0.0005, 8)
    """
    trl = _trl()
    unknown = sorted(set(shorthands) - set(SHORTHANDS))
    if unknown:
        raise TypeError(f"training_of() got unknown shorthands {unknown}")
    base, fields, lora, source = None, {}, {}, "validate's defaults"
    if dpo_config is None:
        fields = dict(VALIDATE_CONFIG)
    elif isinstance(dpo_config, trl.DPOConfig):
        base, source = dpo_config, "dpo_config="
    elif isinstance(dpo_config, (str, Path, dict)):
        source = str(dpo_config) if not isinstance(dpo_config, dict) else "dpo_config= (a dict)"
        fields = read_config(dpo_config) if not isinstance(dpo_config, dict) else dict(dpo_config)
        fields, lora = _split_fields(fields, source)
    else:
        raise ChesError(f"dpo_config= must be a trl.DPOConfig, a dict of its fields or the path of a JSON/YAML file of "
                        f"them; got {type(dpo_config).__name__}.")
    fields.update({SHORTHANDS[name]: value for name, value in shorthands.items() if value is not None})
    return Training(base, fields, _peft_of(peft_config, lora_r, lora, source), source)


def read_config(path: str | Path) -> dict:
    """The fields of a ``DPOConfig`` written as JSON (``.json``) or YAML (``.yaml``/``.yml``, as ``trl dpo --config``
    reads it): one mapping of field names to values."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ChesError(f"--dpo-config {path} does not exist.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ChesError(f"--dpo-config {path} cannot be read: {error}") from None
    try:
        if path.suffix.lower() == ".json":
            fields = json.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            fields = yaml.safe_load(text)
        else:
            raise ChesError(f"--dpo-config {path}: write the DPOConfig fields as .json or .yaml (found "
                            f"{path.suffix or 'no extension'}).")
    except ChesError:
        raise
    except Exception as error:  # json.JSONDecodeError, yaml.YAMLError
        raise ChesError(f"--dpo-config {path} is not valid {path.suffix.lstrip('.').upper()}: "
                        f"{str(error).splitlines()[0]}") from None
    if fields is None:
        fields = {}
    if not isinstance(fields, dict) or not all(isinstance(name, str) for name in fields):
        raise ChesError(f"--dpo-config {path} must hold one mapping of DPOConfig fields (name: value); found "
                        f"{type(fields).__name__}.")
    return fields


def _split_fields(fields: dict, source: str) -> tuple[dict, dict]:
    """``fields`` as ``(DPOConfig fields, LoRA fields)``; the fields of TRL's script and model arguments that
    validate takes from elsewhere (the model, the data) are left out with one log line; any other name is
    refused, with the nearest field."""
    import difflib

    trl = _trl()
    known = {item.name for item in dataclasses.fields(trl.DPOConfig)}
    elsewhere = ({item.name for item in dataclasses.fields(trl.ModelConfig)}
                 | {item.name for item in dataclasses.fields(trl.ScriptArguments)}) - set(LORA_FIELDS) - known
    unknown = sorted(set(fields) - known - elsewhere - set(LORA_FIELDS))
    if unknown:
        hints = [f"{name} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(name, known, 1)) else name
                 for name in unknown]
        raise ChesError(f"{source}: not DPOConfig fields: {', '.join(hints)}.")
    left_out = sorted(set(fields) & elsewhere)
    if left_out:
        logger.info("%s: %s left out: validate takes the model from --model and the data from DATA", source,
                    ", ".join(left_out))
    for name in ("output_dir", *RUN_FIELDS):
        if name in fields:
            logger.info("%s: %s=%r not used: validate's runs set %s", source, name, fields[name],
                        "a temporary folder" if name == "output_dir" else repr(RUN_FIELDS[name]))
    config = {name: value for name, value in fields.items() if name in known and name != "output_dir"}
    return config, {name: value for name, value in fields.items() if name in LORA_FIELDS}


def _peft_of(peft_config, lora_r: int | None, lora: dict, source: str):
    """The LoRA config of the runs (see :func:`training_of`), or None."""
    if peft_config is not None:
        try:
            from peft import PeftConfig
        except ImportError:
            raise ChesError("peft_config= needs peft: pip install peft.") from None
        if not isinstance(peft_config, PeftConfig):
            raise ChesError(f"peft_config= must be a peft config (e.g. peft.LoraConfig(r=8)); got "
                            f"{type(peft_config).__name__}.")
        return peft_config
    if lora_r is None and not lora.get("use_peft", False):
        if lora:
            logger.info("%s: %s set but use_peft is not: full fine-tuning, as trl dpo would", source, ", ".join(lora))
        return None
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ChesError("LoRA (--lora-r, use_peft) needs peft: pip install peft.") from None
    trl = _trl()
    settings = {**{name: value for name, value in lora.items() if name != "use_peft"}, "use_peft": True}
    if lora_r is not None:
        settings["lora_r"] = lora_r
    return trl.get_peft_config(trl.ModelConfig(**settings))


def twin(model: torch.nn.Module, *, share: bool) -> torch.nn.Module:
    """A new module of the same class, config and weights as ``model``, which training does not reach through:
    its parameters are new ``Parameter`` objects holding ``model``'s tensors (``share``: the same storage, for
    weights that stay frozen, as LoRA's base) or copies of them; buffers are shared (nothing trains them). Tied
    weights stay tied.

    >>> original = torch.nn.Linear(2, 2)
    >>> shared, copied = twin(original, share=True), twin(original, share=False)
    >>> shared.weight is original.weight, shared.weight.data_ptr() == original.weight.data_ptr()
    (False, True)
    >>> copied.weight.data_ptr() == original.weight.data_ptr(), torch.equal(copied.weight, original.weight)
    (False, True)
    """
    memo: dict[int, Any] = {}
    for parameter in model.parameters():  # each once: tied weights map to one new Parameter
        data = parameter.detach() if share else parameter.detach().clone()
        memo[id(parameter)] = torch.nn.Parameter(data, requires_grad=parameter.requires_grad)
    for buffer in model.buffers():
        memo[id(buffer)] = buffer
    return copy.deepcopy(model, memo)


@contextmanager
def released() -> Iterator[None]:
    """Free what a run left behind (its trainer, optimizer, adapters) when the block ends."""
    try:
        yield
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def train_and_audit(model: torch.nn.Module, rows, tokenizer, training: Training, *, seed: int, output_dir: str,
                    device: torch.device, resamples: int, num_threads: int | None = None) -> dict:
    """One subset run: a twin of ``model`` (:func:`twin`) trained with :class:`ches.trl.DPOTrainer` on ``rows``
    (scored with ``logps=True`` by ``model``) as ``training`` says, with ``seed``; then audited on the same rows
    (:func:`ches.audit`: the change of each completion's log-probability, measured as the scoring pass measured
    the reference). ``model`` itself is not changed.

    Returns:
        ``{"seed", "steps", "chosen_change": [N], "rejected_change": [N], "audit": audit summary, "log": TRL's
        log history (its metrics and ches'), "seconds"}``.
    """
    import time

    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from ..data.inputs import column
    from ..trl import DPOTrainer
    from .auditing import audit

    started = time.time()
    with released(), quiet_deprecations():
        trainee = twin(model, share=training.peft is not None)
        trainer = DPOTrainer(model=trainee, args=training.config(output_dir, seed, device), train_dataset=rows,
                             processing_class=tokenizer, peft_config=training.peft)
        for callback in (PrinterCallback, ProgressCallback):  # validate shows one bar for all its runs
            trainer.remove_callback(callback)
        trainer.train()
        trained = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
        trained.eval()
        audited = audit(rows, trained, tokenizer, resamples=resamples, seed=seed, progress=False,
                        num_threads=num_threads)
        result = {"seed": seed, "steps": trainer.state.global_step,
                  "chosen_change": [float(value) for value in column(audited.dataset, "chosen_change")],
                  "rejected_change": [float(value) for value in column(audited.dataset, "rejected_change")],
                  "audit": audited.summary,
                  "log": _plain(trainer.state.log_history), "seconds": time.time() - started}
        del trainer, trainee, trained, audited
    return result
