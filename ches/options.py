"""What a scoring run is asked to do: :class:`ScoreOptions` (what it used is :class:`ches.run.runs.RunInfo`).

:class:`ScoreOptions` is the one list of ``ches.score``'s options: the keyword arguments of
``ches.score``/``ches.filter``/``ches.rank``/``ches.summary``, the flags of ``ches score``/``ches
filter`` (built from each field's ``metadata``), the ``options`` recorded in :class:`~ches.run.runs.RunInfo` and in
every sidecar. Options that only pass through to ``from_pretrained`` travel in ``model_kwargs``; their
old keywords (``device_map=``, ``attn_implementation=``, ...) still work and land there.
:func:`ches.pairs` takes a subset of them (:func:`pair_score_options`) and its own pairing rule
(:class:`PairOptions`), whose fields give ``ches pairs`` its flags the same way.

Each public function takes its options as ``**kwargs``: which dataclasses' fields they are is one table per function
(:data:`PAIR_KEYWORDS`, ...), from which its signature (:func:`signature_with_options`) and the splitting of its
keywords (:func:`split_keywords`, :func:`pairs_options`, :func:`filter_options`, :func:`audit_options`) both come;
the command line checks its flags with the same functions, before the heavy imports.

>>> options = ScoreOptions.from_kwargs(max_length=512, device_map="auto")
>>> options.max_length, options.model_kwargs
(512, {'device_map': 'auto'})
>>> ScoreOptions.from_kwargs(max_lenght=512)
Traceback (most recent call last):
ches.errors.ChesError: unknown option 'max_lenght' (did you mean 'max_length'?); the options are ...
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .data.columns import DEFAULT_MEASURE, MEASURES, check_measure
from .data.frameworks import FORMATS, get_format
from .data.integrity import FLAG_NAMES, check_flag_names
from .errors import ChesError

if TYPE_CHECKING:
    import torch

#: ``from_pretrained`` keywords accepted as options of their own (and as CLI flags), gathered into
#: ``model_kwargs``: name -> (help, how the flag's text is read)
MODEL_KWARGS = {
    "trust_remote_code": ("allow custom model code from the Hub", bool),
    "attn_implementation": ("attention kernel, e.g. flash_attention_2, flex_attention, sdpa", str),
    "device_map": ("spread a large model over devices, e.g. auto", str),
    "max_memory": ('JSON, e.g. \'{"0": "70GiB", "cpu": "200GiB"}\' (with --device-map)', "memory"),
    "offload_folder": ("where weights that fit nowhere else are offloaded (with --device-map)", Path),
    "revision": ("the model's Hub revision (branch, tag or commit)", str),
}
#: the dtypes a model is scored in (``torch``'s names), and the other names each is accepted by: the one table,
#: torch-free, that :func:`check_dtype` reads and :func:`ches.model.models.resolve_dtype` maps to ``torch`` dtypes
DTYPE_NAMES = ("bfloat16", "float16", "float32")
#: the layouts ``format=`` / ``--format`` names: TRL's columns, and every other framework's layout ches reads
FORMAT_NAMES = ("trl", *FORMATS)
#: the layouts ``ches.pairs`` reads (several rated responses per prompt; :func:`ches.builder.candidates.schema`)
PAIR_FORMATS = ("generic", "ultrafeedback", "axolotl.zephyr.nectar")
DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}


def dtype_name(dtype: Any) -> str:
    """A dtype given as text or as a ``torch.dtype``, by its full name (``"bf16"`` -> ``"bfloat16"``).

    >>> dtype_name("bf16"), dtype_name("float32")
    ('bfloat16', 'float32')
    """
    text = str(dtype).removeprefix("torch.")
    return DTYPE_ALIASES.get(text, text)


def check_dtype(dtype: Any, where: str = "dtype") -> str:
    """``dtype`` (a name of :data:`DTYPE_NAMES` or :data:`DTYPE_ALIASES`, or a ``torch.dtype``) by its full name;
    the one check of a dtype, made before any model loads (``where``: the option it was given as).

    >>> check_dtype("half"), check_dtype("torch.bfloat16")
    ('float16', 'bfloat16')
    >>> check_dtype("float64")
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: dtype='float64' is not supported; use one of ['bfloat16', 'float16', 'float32'] (or bf16, fp16, half, fp32, float).

    Raises:
        ChesError: a dtype ches does not score in, with the names accepted.
    """
    name = dtype_name(dtype)
    if name not in DTYPE_NAMES:
        raise ChesError(f"{where}={dtype!r} is not supported; use one of {list(DTYPE_NAMES)} "
                        f"(or {', '.join(DTYPE_ALIASES)}).")
    return name


#: the layouts (:mod:`ches.model.layouts`), in the order of preference at equal estimated cost
LAYOUTS = ("prefix_shared", "packed", "padded", "shared_prompt")


def _option(default: Any = None, *, help: str, flag: str | None = "", type: Any = str, choices=None, **extra) -> Any:
    """A :class:`ScoreOptions` field: ``flag`` is its command-line flag (``""``: from the name; ``None``:
    Python only); ``type``/``choices`` parse it; ``none`` (in ``extra``) says what a ``None`` default means,
    for the help (``(default: no truncation)``), so that a class giving the field another default keeps the help."""
    factory = {"default_factory": default} if callable(default) else {"default": default}
    return field(**factory, metadata={"help": help, "flag": flag, "type": type, "choices": choices, **extra})


def _sharing(source: type, names: tuple[str, ...], *, defaults: dict[str, Any] | None = None,
             helps: dict[str, str] | None = None):
    """A class decorator (under ``@dataclass``): the fields ``names`` of the dataclass ``source``, added after the
    class's own with the same type, help, flag and choices; ``defaults`` and ``helps`` give a field a default of the
    class's own and the help that says why. Each shared option is thereby written once, in ``source``."""
    defaults, helps = defaults or {}, helps or {}

    def share(cls: type) -> type:
        for name in names:
            item = source.__dataclass_fields__[name]
            metadata = {**item.metadata, **({"help": helps[name]} if name in helps else {})}
            if name in defaults:
                made = field(default=defaults[name], metadata=metadata)
            elif item.default_factory is not dataclasses.MISSING:
                made = field(default_factory=item.default_factory, metadata=metadata)
            else:
                made = field(default=item.default, metadata=metadata)
            cls.__annotations__[name] = source.__annotations__[name]
            setattr(cls, name, made)
        return cls

    return share


@dataclass(frozen=True)
class ScoreOptions:
    """Every option of a scoring run, checked on creation (bad values raise :class:`ChesError`).

    Attributes:
        split: which split of a ``DatasetDict`` / Hub dataset to score (default: all of them).
        columns: your column names for ``prompt``/``chosen``/``rejected`` (and ``tools``,
            ``chat_template_kwargs``, and ``system``: a system turn of conversational rows), e.g.
            ``{"chosen": "answer_a"}``, or for a layout (``format``) its own columns; the output keeps yours.
        format: the layout the rows are in: ``"trl"`` (TRL's columns, as always), or another framework's,
            e.g. ``"axolotl.chatml.intel"`` (every name: :data:`FORMAT_NAMES`, docs/formats.md); default: detected
            from the columns (TRL's ``prompt``/``chosen``/``rejected`` are always read as TRL's).
        max_length: keep the first ``max_length`` tokens of each prompt+completion (TRL ``keep_start``).
        dtype: ``"bfloat16"``, ``"float16"`` or ``"float32"``; default bfloat16 on CUDA, float32 on
            CPU (a loaded model keeps its dtype unless one is given).
        device: default CUDA when available (a loaded model stays where it is unless one is given).
        batch_tokens: token slots per forward batch (rows x padded length); default: from free memory
            on CUDA (:func:`ches.model.models.default_batch_tokens`), 1,024 on CPU.
        layout: ``"prefix_shared"``, ``"packed"``, ``"padded"``, ``"shared_prompt"``, or ``None``: the
            cheapest by an estimate from the lengths (:mod:`ches.model.layouts`); any layout but ``padded``
            runs only after a probe on the model shows the same hidden states as ``padded``.
        compile: run the decoder body through ``torch.compile(dynamic=True)``: about 10 % faster on a
            2-core CPU after a warm-up that compiles (tens of seconds); on an H200 it ran 2.8x slower
            before the padding-free kernel became one graph-friendly operator, not re-measured since
            (docs/performance.md).
        num_threads: CPU threads for the call (restored afterwards); default: one per core that other work
            leaves free, one for a model too small to use more (:mod:`ches.model.threads`; the choice and its
            reason are recorded).
        cache_dir: keep finished chunks here; re-running the same call after a crash resumes.
        save_embeddings: also write ``S+``, ``S-`` and the last hidden states per row to this
            safetensors file (``name.SPLIT.safetensors`` per split of a ``DatasetDict``).
        overwrite: allow ``save_embeddings`` to replace an existing file.
        progress: a progress bar over the tokens run (both sequences of each pair) and the summary line.
        logps: also add ``chosen_logps`` and ``rejected_logps`` (float64): each completion's summed token
            log-probabilities under the model, the numbers TRL's ``DPOTrainer`` precomputes as its
            reference log-probs (:mod:`ches.model.logps`), from the same forward pass.
        model_kwargs: passed to ``from_pretrained``: ``trust_remote_code``, ``attn_implementation``
            (e.g. ``"flash_attention_2"``; also applied to a loaded model), ``device_map``,
            ``max_memory``, ``offload_folder`` (for models larger than one device), ``revision``, ...
    """

    split: str | None = _option(help="split of a DatasetDict / Hub dataset")
    columns: dict[str, str] | None = _option(help="your column names, e.g. prompt=question,chosen=answer_a,rejected=answer_b",
                                              type="columns", metavar="NAME=COLUMN,...")
    format: str | None = _option(help="the rows' layout: trl (TRL's columns), or another framework's (docs/formats.md)",
                                 metavar="NAME[:KEY=VALUE,...]", none="detected from the columns")
    max_length: int | None = _option(help="keep the first N tokens of each sequence (TRL keep_start)", type=int,
                                     none="no truncation")
    dtype: str | torch.dtype | None = _option(help="default: bfloat16 on CUDA, float32 on CPU (or bf16, fp16, half, "
                                                   "fp32, float)", choices=DTYPE_NAMES, type=dtype_name)
    device: str | torch.device | None = _option(help="e.g. cuda, cuda:1, cpu (default: CUDA when available)")
    batch_tokens: int | None = _option(help="token slots per forward batch (default: 1024 on CPU; on CUDA, from the free "
                                             "memory)", type=int)
    layout: str | None = _option(help="how sequences are batched (default: the cheapest by an estimate from the "
                                      "lengths, probed on the model; see docs/performance.md)", choices=LAYOUTS)
    compile: bool = _option(False, help="torch.compile the decoder body (about 10 percent faster on CPU after compiling; GPU: docs/performance.md)", type=bool)
    num_threads: int | None = _option(help="CPU threads (default: one per free core, measured at the start; one for a "
                                           "tiny model)", type=int,
                                      flag="--threads")
    cache_dir: str | os.PathLike | None = _option(help="keep finished work here; re-running resumes after a crash",
                                                  type=Path)
    save_embeddings: str | os.PathLike | None = _option(help="also write S+, S- and the last hidden states per row to "
                                                             "this .safetensors file (NAME.SPLIT.safetensors per split)",
                                                        type=Path, metavar="FILE.safetensors")
    overwrite: bool = _option(False, help="replace existing outputs", type=bool, flag=None)
    progress: bool = _option(True, help="no progress bar", type=bool, flag="--no-progress")
    logps: bool = _option(False, help="also each completion's log-probability under the model (chosen_logps, "
                                      "rejected_logps: TRL's reference log-probs)", type=bool)
    model_kwargs: dict[str, Any] = _option(dict, help="passed to from_pretrained", flag=None)

    def __post_init__(self) -> None:
        _positive("max_length", self.max_length, minimum=2, none="no truncation")
        _positive("batch_tokens", self.batch_tokens, minimum=1, none="an automatic size")
        _positive("num_threads", self.num_threads, minimum=1, none="one per free core")
        if self.format is not None and self.format.partition(":")[0] not in FORMAT_NAMES:
            raise ChesError(f"format={self.format!r} (--format) is not a layout ches reads; use one of "
                            f"{list(FORMAT_NAMES)} (or leave it out to detect the layout from the columns).")
        if self.format is not None and self.format != "trl":
            get_format(self.format)  # its parameters (name:key=value,...) checked before any work
        if self.layout is not None and self.layout not in LAYOUTS:
            raise ChesError(f"layout={self.layout!r} is not one of {sorted(LAYOUTS)} (or None to choose by estimated cost).")
        if not isinstance(self.model_kwargs, dict):
            raise ChesError(f"model_kwargs must be a dict of from_pretrained keywords; got {type(self.model_kwargs).__name__}.")
        self._take_dtype_from_model_kwargs()
        idle = [name for name in ("max_memory", "offload_folder") if self.model_kwargs.get(name) is not None]
        if idle and self.model_kwargs.get("device_map") is None:
            raise ChesError(f"{' and '.join(idle)} only apply with device_map= (--device-map); pass it too, or drop them.")
        if self.cache_dir is not None and Path(self.cache_dir).exists() and not Path(self.cache_dir).is_dir():
            raise ChesError(f"cache_dir {self.cache_dir} is not a folder (a file is in the way).")

    def _take_dtype_from_model_kwargs(self) -> None:
        """``dtype`` given in ``model_kwargs`` (as ``dtype`` or ``torch_dtype``) becomes the ``dtype`` option,
        so that one dtype is loaded and recorded; two that disagree are refused."""
        given = {name: value for name, value in (("dtype", self.dtype), *((f"model_kwargs[{key!r}]", self.model_kwargs.get(key))
                                                                         for key in ("dtype", "torch_dtype")))
                 if value is not None}
        names = {where: dtype_name(value) for where, value in given.items()}
        if len(set(names.values())) > 1:
            stated = " and ".join(f"{where}={value!r}" for where, value in given.items())
            raise ChesError(f"{stated} disagree; give the dtype once (dtype=, --dtype).")
        if names:
            for where, value in given.items():
                check_dtype(value, where)
            object.__setattr__(self, "dtype", next(iter(names.values())))
            object.__setattr__(self, "model_kwargs", {key: value for key, value in self.model_kwargs.items()
                                                      if key not in ("dtype", "torch_dtype")})

    @classmethod
    def from_kwargs(cls, options: ScoreOptions | Mapping[str, Any] | None = None, **kwargs: Any) -> ScoreOptions:
        """``options`` (default: all defaults; a dict is read as keywords) with ``kwargs`` replacing fields;
        the keywords in :data:`MODEL_KWARGS` are merged into ``model_kwargs``. Unknown names raise
        :class:`ChesError`."""
        if isinstance(options, Mapping):
            twice = sorted(set(options) & set(kwargs))
            if twice:
                raise ChesError(f"{', '.join(twice)} given both in options= and as keywords; give each once.")
            options, kwargs = None, {**options, **kwargs}
        elif options is not None and not isinstance(options, cls):
            raise ChesError(f"options= must be a ches.ScoreOptions (or a dict of its fields); got {type(options).__name__}.")
        refuse_unknown(kwargs, {item.name for item in fields(cls)} | set(MODEL_KWARGS))
        base = options or cls()
        passed = {name: kwargs.pop(name) for name in MODEL_KWARGS if name in kwargs}
        extra = kwargs.pop("model_kwargs", None)
        if extra is not None and not isinstance(extra, Mapping):
            raise ChesError(f"model_kwargs must be a dict of from_pretrained keywords, e.g. {{'device_map': 'auto'}}; got "
                            f"{type(extra).__name__} {extra!r:.60}.")
        model_kwargs = {**base.model_kwargs, **(extra or {}),
                        **{name: value for name, value in passed.items() if value not in (None, False)}}
        return replace(base, **kwargs, model_kwargs=model_kwargs)

    def as_dict(self) -> dict[str, Any]:
        """The options as JSON-ready values (paths and dtypes as strings), for metadata."""
        return json.loads(json.dumps(asdict(self), default=str))


def refuse_unknown(given, known: set[str]) -> None:
    """A misspelled option is an error with a suggestion, never ignored.

    >>> refuse_unknown({"max_lenght": 3}, {"max_length", "dtype"})
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: unknown option 'max_lenght' (did you mean 'max_length'?); the options are dtype, max_length.
    """
    unknown = sorted(set(given) - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ChesError(f"unknown option {unknown[0]!r}{hint}; the options are {', '.join(sorted(known))}.")


#: the quantile ``ches.filter`` keeps when no rule is given, and the rows ``around=`` keeps by default
DEFAULT_QUANTILE, DEFAULT_WINDOW = 0.95, 512
VALIDATE_PROTOCOLS = ("subsets", "probes")
#: the rules of ``ches.filter``: give at most one
FILTER_RULES = ("quantile", "max_score", "keep", "around")


@dataclass(frozen=True)
class FilterOptions:
    """How ``ches.filter`` chooses the rows it keeps (``ches filter``'s flags); checked on creation.

    >>> FilterOptions(keep=3).rule, FilterOptions().rule, FilterOptions().quantile_kept
    ('keep', 'quantile', 0.95)
    >>> FilterOptions(drop_flags="identical_after_truncation,empty_chosen").drop_flags
    ('identical_after_truncation', 'empty_chosen')
    >>> FilterOptions(keep=2.7)
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: keep=2.7 must be a whole number of rows.
    """

    quantile: float | None = _option(help=f"fraction of scored rows to keep, lowest scores first (default "
                                          f"{DEFAULT_QUANTILE})", type=float, group="rule")
    max_score: float | None = _option(help="keep rows whose score is at most this", type=float, group="rule")
    keep: int | None = _option(help="keep this many rows with the lowest scores", type=int, group="rule")
    around: float | None = _option(help="keep --window rows centred on this quantile of the sorted scores", type=float,
                                   group="rule")
    window: int | None = _option(help=f"rows kept with --around (default {DEFAULT_WINDOW})", type=int)
    measure: str = _option(DEFAULT_MEASURE, help="the score to select by", choices=tuple(MEASURES))
    keep_scores: bool = _option(True, help="drop the score columns (exactly the input schema)", type=bool,
                                flag="--no-scores")
    drop_flags: tuple[str, ...] | None = _option(
        help="first drop the rows with any of these integrity flags (comma-separated; the rule then applies to the "
             f"rows left): {', '.join(FLAG_NAMES)}", metavar="FLAG,...")

    def __post_init__(self) -> None:
        for name in ("quantile", "max_score", "around"):
            object.__setattr__(self, name, _real(name, getattr(self, name)))
        for name in ("keep", "window"):
            object.__setattr__(self, name, _whole(name, getattr(self, name)))
        self._check_ranges()
        given = [name for name in FILTER_RULES if getattr(self, name) is not None]
        if len(given) > 1:
            raise ChesError(f"give at most one of quantile=, max_score=, keep=, around= (got {', '.join(given)}).")
        if self.window is not None and self.around is None:
            raise ChesError("window= sets the size of the around= selection; pass around= too, or drop window=.")
        check_measure(self.measure)
        object.__setattr__(self, "drop_flags", check_flag_names(self.drop_flags or (), "drop_flags (--drop-flags)"))

    def _check_ranges(self) -> None:
        """The values that no data can make right (those that depend on the number of rows wait for the data)."""
        if self.quantile is not None and not 0 < self.quantile <= 1:
            raise ChesError(f"quantile={self.quantile!r} must be in (0, 1]: the fraction of scored rows to keep "
                            f"(e.g. 0.95, not 95).")
        if self.around is not None and not 0 <= self.around <= 1:
            raise ChesError(f"around={self.around!r} must be a quantile in [0, 1]: where the window's centre lies in the "
                            "sorted scores (0 = least similar).")
        if self.keep is not None and self.keep < 0:
            raise ChesError(f"keep={self.keep} is outside [0, the number of scored rows]: the rows to keep.")
        if self.window is not None and self.window < 1:
            raise ChesError(f"window={self.window} must be a positive number of rows.")

    @property
    def rule(self) -> str:
        """The rule given, or ``"quantile"`` (the default rule)."""
        return next((name for name in FILTER_RULES if getattr(self, name) is not None), "quantile")

    @property
    def quantile_kept(self) -> float:
        return DEFAULT_QUANTILE if self.quantile is None else self.quantile

    @property
    def window_kept(self) -> int:
        return DEFAULT_WINDOW if self.window is None else self.window


@dataclass(frozen=True)
class ReportOptions:
    """What ``ches report`` shows (its flags); checked on creation."""

    measure: str | None = _option(help="the score the pairs are sorted by", choices=tuple(MEASURES),
                                  none=f"the measure --validation recommends, else {DEFAULT_MEASURE}")
    top: int = _option(20, help="pairs shown at each end", type=int)
    split: str | None = _option(help="report only this split of a folder with several splits (default: every split, "
                                     "one section each)")
    validation: str | None = _option(help="the JSON of ches validate --output: show its evidence and recommendation")

    def __post_init__(self) -> None:
        if isinstance(self.top, bool) or not isinstance(self.top, int) or self.top < 1:
            raise ChesError(f"top={self.top!r} must be a positive integer: the pairs shown at each end.")


@dataclass(frozen=True)
@_sharing(ScoreOptions, ("split", "columns", "format", "device", "dtype", "max_length", "num_threads", "progress"),
          defaults={"dtype": "float32"},
          helps={"dtype": "precision of the scoring and of the DPO runs (DPO steps in half precision are noisy)",
                 "max_length": "keep the first N tokens of each sequence (TRL keep_start), in the scoring and the DPO "
                               "runs alike (default: the DPOConfig's; 512 without --dpo-config)"})
class ValidateOptions:
    """How ``ches.validate`` probes a model (its keywords and ``ches validate``'s flags); checked on creation.

    The ``subsets`` runs train with TRL (:mod:`ches.evaluate.training`): ``dpo_config`` is the user's
    ``DPOConfig`` (or a dict of its fields, or a JSON/YAML file of them), ``peft_config`` or ``lora_r`` their
    LoRA; ``learning_rate``, ``beta``, ``batch_size``, ``epochs`` and ``max_length``, when given, replace the
    config's fields (without a config: 1e-6, 0.1, 8, 1 and 512).

    >>> ValidateOptions(n=16).pool_rows(1000)
    320
    >>> ValidateOptions(n=4, pool=1)
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: pool=1 must hold at least the n=4 pairs probed; raise pool or lower n (or drop pool= to score every row).
    """

    protocol: str = _option("subsets", help="subsets: DPO runs (TRL's DPOTrainer) on the lowest and highest n pairs of "
                                            "each measure and on n random ones; probes: n single-pair DPO probes "
                                            "(full batch, RMSprop)", choices=VALIDATE_PROTOCOLS)
    n: int = _option(64, help="pairs per subset (subsets), or pairs probed, spread over the CHES range (probes); "
                              "a recommendation to filter needs n >= 32", type=int)
    seeds: int = _option(2, help="runs per subset (subsets) or draws of probed pairs (probes), seeds seed, seed+1, ...; "
                                 "a measure's verdict must agree across them, and a recommendation to filter needs 2",
                         type=int)
    epochs: int | None = _option(help="passes over each subset (subsets); sets DPOConfig.num_train_epochs", type=int,
                                 none="the DPOConfig's; 1 without --dpo-config")
    batch_size: int | None = _option(help="pairs per DPO step (subsets); sets DPOConfig.per_device_train_batch_size",
                                     type=int, none="the DPOConfig's; 8 without --dpo-config")
    steps: int = _option(5, help="DPO steps per probe (probes)", type=int)
    learning_rate: float | None = _option(help="learning rate (subsets: sets DPOConfig.learning_rate; probes: RMSprop's)",
                                          type=float, flag="--lr", none="the DPOConfig's; 1e-6 without --dpo-config")
    beta: float | None = _option(help="DPO beta (sets DPOConfig.beta)", type=float,
                                 none="the DPOConfig's; 0.1 without --dpo-config")
    dpo_config: Any = _option(help="the DPOConfig of the subset runs: a JSON or YAML file of its fields (as trl dpo "
                                   "--config reads; its LoRA fields use_peft, lora_r, ... too); in Python also a "
                                   "trl.DPOConfig or a dict", metavar="FILE", none="validate's: see the flags above")
    lora_r: int | None = _option(help="train LoRA adapters of rank R (TRL's LoRA defaults otherwise, as trl dpo "
                                      "--use_peft --lora_r R), fresh for each run, the model's weights frozen and shared",
                                 type=int, metavar="R", none="full fine-tuning, unless the --dpo-config file says use_peft")
    peft_config: Any = _option(help="a peft config (e.g. peft.LoraConfig) for the subset runs", flag=None)
    pool: int | None = _option(help="rows scored to choose from, drawn at random (default: 20 x n, or every row of "
                                      "smaller data)", type=int)
    seed: int = _option(0, help="which pool rows are drawn, the random subset, the first run's seed (batch order, "
                                "adapters); also seeds the bootstrap", type=int)
    resamples: int = _option(1000, help="bootstrap resamples for the 95 % intervals", type=int, flag=None)

    def __post_init__(self) -> None:
        if self.protocol not in VALIDATE_PROTOCOLS:
            raise ChesError(f"unknown protocol {self.protocol!r}; use one of {', '.join(VALIDATE_PROTOCOLS)}.")
        whole = {"n": 3, "seeds": 1, "steps": 1, "epochs": 1, "batch_size": 1, "resamples": 1, "seed": 0, "pool": 1,
                 "lora_r": 1}
        for name, minimum in whole.items():  # n: also ranged with the data
            value = getattr(self, name)
            if value is None and name in ("pool", "epochs", "batch_size", "lora_r"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
                raise ChesError(f"{name}={value!r} must be {what}.")
        for name in ("learning_rate", "beta"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ChesError(f"{name}={value!r} must be > 0 and finite.")
        if self.pool is not None and self.pool < self.n:
            raise ChesError(f"pool={self.pool} must hold at least the n={self.n} pairs probed; raise pool or lower n "
                            "(or drop pool= to score every row).")
        if self.protocol == "probes":
            training = [name for name in ("dpo_config", "lora_r", "peft_config", "epochs", "batch_size")
                        if getattr(self, name) is not None]
            if training:
                raise ChesError(f"{', '.join(training)} set how the subsets protocol trains (TRL's DPOTrainer); the "
                                "probes protocol runs its own single-pair steps (steps, learning_rate, beta): drop "
                                "them, or use protocol='subsets'.")
        if self.peft_config is not None and self.lora_r is not None:
            raise ChesError("peft_config and lora_r both say how to apply LoRA; give one.")
        _positive("max_length", self.max_length, minimum=2, none="the DPOConfig's")
        _positive("num_threads", self.num_threads, minimum=1, none="one per free core")
        if self.dtype is not None:  # recorded by its full name, as ScoreOptions records it
            object.__setattr__(self, "dtype", check_dtype(self.dtype))

    def shorthands(self) -> dict[str, Any]:
        """The options that set ``DPOConfig`` fields (:data:`ches.evaluate.training.SHORTHANDS`), None where not given."""
        return {name: getattr(self, name) for name in ("learning_rate", "beta", "batch_size", "epochs", "max_length")}

    def pool_rows(self, rows: int) -> int:
        """Rows scored to choose the probed pairs from, of a table of ``rows``."""
        return min(rows, self.pool or 20 * self.n)

    @classmethod
    def from_kwargs(cls, options: ValidateOptions | None = None, **kwargs: Any) -> ValidateOptions:
        """``options`` (default: all defaults) with ``kwargs`` replacing fields; unknown names are refused."""
        refuse_unknown(kwargs, {item.name for item in fields(cls)})
        return replace(options or cls(), **kwargs)

    def as_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


def _real(name: str, value: Any) -> float | None:
    """A number as a Python float (numpy scalars too); None stays None; booleans, text and NaN are refused."""
    if value is None:
        return None
    if isinstance(value, bool) or type(value).__name__ == "bool_" or not _is_real(value) or math.isnan(value):
        raise ChesError(f"{name}={value!r} must be a number.")
    return float(value)


def _whole(name: str, value: Any) -> int | None:
    """A count of rows as a Python int (numpy integers too); None stays None."""
    if value is None:
        return None
    if isinstance(value, bool) or type(value).__name__ == "bool_" or not hasattr(value, "__index__"):
        raise ChesError(f"{name}={value!r} must be a whole number of rows.")
    return int(value)


def _is_real(value: Any) -> bool:
    import numbers

    return isinstance(value, numbers.Real)


#: how :func:`ches.pairs` chooses pairs (:mod:`ches.scores.pairing`)
RULES = ("min_ches", "all_min_ches", "max_margin", "random")
#: the measures :func:`ches.pairs` selects by: those :func:`ches.scores.pairing.pair_matrices` gives every pair
PAIR_MEASURES = tuple(name for name in MEASURES if name in ("ln_ches", "ches"))
#: the layouts :func:`ches.pairs` runs a prompt's responses in: those whose groups may hold any number of
#: sequences (:attr:`ches.model.layouts.Layout.any_group`, checked there; ``shared_prompt`` runs two a prompt)
PAIR_LAYOUTS = ("prefix_shared", "packed", "padded")
#: the layout :func:`ches.pairs` runs without ``layout=``, as its help and its run record say it
PAIR_LAYOUT_DEFAULT = ("prefix_shared, each prompt written once with all its responses after it (packed, then padded, "
                       "where the model's probe refuses it)")
#: the :class:`ScoreOptions` :func:`ches.pairs` takes (the others apply to ``ches.score`` only)
PAIR_SCORE_OPTIONS = ("split", "max_length", "dtype", "device", "batch_tokens", "layout", "num_threads", "cache_dir",
                      "progress", "logps", "model_kwargs")


@dataclass(frozen=True)
class PairOptions:
    """How :func:`ches.pairs` chooses pairs (see :mod:`ches.scores.pairing` for the rules); checked on creation.

    >>> PairOptions(rule="max_margin").per_prompt
    1
    >>> PairOptions(rule="best")
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: rule='best' is not one of ['min_ches', 'all_min_ches', 'max_margin', 'random'].
    """

    rule: str = _option("min_ches", help="how pairs are chosen", choices=RULES)
    measure: str = _option(DEFAULT_MEASURE, help="what min_ches and all_min_ches minimize",
                           choices=PAIR_MEASURES)
    min_margin: float = _option(0.0, help="smallest rating gap of a pair", type=float)
    per_prompt: int = _option(1, help="pairs kept per prompt, at most", type=int)
    seed: int = _option(0, help="seed of --rule random", type=int)

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ChesError(f"rule={self.rule!r} is not one of {list(RULES)}.")
        check_measure(self.measure, PAIR_MEASURES, " for ches.pairs (it selects by the scores every pair of responses "
                      "gets)")
        if isinstance(self.min_margin, bool) or not isinstance(self.min_margin, (int, float)) \
                or not math.isfinite(self.min_margin) or self.min_margin < 0:
            raise ChesError(f"min_margin={self.min_margin!r} must be a finite number >= 0.")
        if isinstance(self.per_prompt, bool) or not isinstance(self.per_prompt, int) or self.per_prompt < 1:
            raise ChesError(f"per_prompt={self.per_prompt!r} must be a positive integer.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ChesError(f"seed={self.seed!r} must be an integer >= 0.")


#: the :class:`ScoreOptions` ``ches.audit`` takes for the trained model's pass (``max_length`` and ``columns`` are
#: the scoring run's, from its record)
AUDIT_SCORE_OPTIONS = ("dtype", "device", "batch_tokens", "layout", "compile", "num_threads", "cache_dir", "progress",
                       "model_kwargs")


@dataclass(frozen=True)
class AuditOptions:
    """What ``ches.audit`` reports on (``ches audit``'s own flags; its scoring flags are
    :data:`AUDIT_SCORE_OPTIONS`). It returns both the audited rows and the next round's: which one ``ches audit
    --output`` writes is ``--next-round``, a flag of the command like ``--output``."""

    split: str | None = _option(help="split of a folder with several splits")
    seed: int = _option(0, help="seeds the bootstrap of the intervals", type=int)
    resamples: int = _option(1000, help="bootstrap resamples for the 95 percent intervals", type=int)
    validation: str | os.PathLike | dict | None = _option(
        help="the JSON of ches validate --output (in Python also the result itself): say whether the measure it "
             "recommended predicted displacement on this run", metavar="FILE")

    def __post_init__(self) -> None:
        _positive("resamples", self.resamples, minimum=1, none="")
        if self.validation is not None and not isinstance(self.validation, (str, os.PathLike, dict)):
            raise ChesError(f"validation={self.validation!r} must be a ches.validate result (a dict) or the path of its "
                            "JSON file.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ChesError(f"seed={self.seed!r} must be an integer >= 0.")


@dataclass(frozen=True)
class PairInputOptions:
    """How :func:`ches.pairs` reads its rows: your column names (generic rows) or the rated field
    (raw UltraFeedback rows); checked against the data by :func:`ches.builder.api.candidate_rows`."""

    columns: dict[str, str] | None = _option(help="your column names, e.g. prompt=question,responses=outs,ratings=scores",
                                              type="columns", metavar="NAME=COLUMN,...")
    rating_field: str | None = _option(help="the completion field rated, for raw UltraFeedback rows (default "
                                            "overall_score)")
    format: str | None = _option(help="the rows' layout: generic (prompt, responses, ratings), ultrafeedback (raw "
                                      "UltraFeedback), axolotl.zephyr.nectar (Nectar's ranked answers)",
                                 choices=PAIR_FORMATS, none="detected from the columns")

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in PAIR_FORMATS:
            raise ChesError(f"format={self.format!r} (--format) is not a layout ches.pairs reads; use one of "
                            f"{list(PAIR_FORMATS)} (or leave it out to detect it from the columns).")


def score_options_for(function: str, names: tuple[str, ...], options: ScoreOptions | None = None,
                      **kwargs: Any) -> ScoreOptions:
    """:meth:`ScoreOptions.from_kwargs` for ``function``, which takes only the options ``names`` of ``ches.score``
    (and the ``from_pretrained`` keywords): any other set to a value but its default is refused.

    >>> score_options_for("ches.audit", ("dtype", "progress"), logps=True)
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: logps= applies to ches.score only; ches.audit takes dtype, progress (and the from_pretrained keywords).
    """
    scoring = ScoreOptions.from_kwargs(options, **kwargs)
    defaults = ScoreOptions()
    for item in fields(ScoreOptions):
        if item.name not in names and getattr(scoring, item.name) != getattr(defaults, item.name):
            raise ChesError(f"{item.name}= applies to ches.score only; {function} takes {', '.join(names)} "
                            "(and the from_pretrained keywords).")
    return scoring


def pair_score_options(options: ScoreOptions | None = None, **kwargs: Any) -> ScoreOptions:
    """:func:`score_options_for` :func:`ches.pairs`: only the :data:`PAIR_SCORE_OPTIONS`, and only the
    :data:`PAIR_LAYOUTS`.

    >>> pair_score_options(max_length=512, revision="main").model_kwargs
    {'revision': 'main'}
    >>> pair_score_options(save_embeddings="sums.safetensors")
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: save_embeddings= applies to ches.score only; ches.pairs takes split, max_length, dtype, device, batch_tokens, layout, num_threads, cache_dir, progress, logps, model_kwargs (and the from_pretrained keywords).
    """
    scoring = score_options_for("ches.pairs", PAIR_SCORE_OPTIONS, options, **kwargs)
    if scoring.layout is not None and scoring.layout not in PAIR_LAYOUTS:
        raise ChesError(f"layout={scoring.layout!r} is not one of {list(PAIR_LAYOUTS)} for ches.pairs (it runs all of a "
                        "prompt's responses together; shared_prompt runs two).")
    return scoring


def _positive(name: str, value: Any, *, minimum: int, none: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ChesError(f"{name}={value!r} must be {what}" + (f" (or None for {none})." if none else "."))


#: the options each public function takes as keywords, in the order its signature lists them: (a dataclass, the
#: names it takes of its fields, or None for all); a keyword belongs to the first dataclass that has it, and the
#: ``from_pretrained`` keywords (:data:`MODEL_KWARGS`) to :class:`ScoreOptions`
SCORE_KEYWORDS = ((ScoreOptions, None),)
FILTER_KEYWORDS = ((FilterOptions, None), (ScoreOptions, None))
PAIR_KEYWORDS = ((PairOptions, None), (PairInputOptions, None), (ScoreOptions, PAIR_SCORE_OPTIONS))
AUDIT_KEYWORDS = ((AuditOptions, None), (ScoreOptions, AUDIT_SCORE_OPTIONS))
VALIDATE_KEYWORDS = ((ValidateOptions, None),)


def _names(options: type) -> tuple[str, ...]:
    """Every keyword the dataclass ``options`` reads: its fields (and, for :class:`ScoreOptions`, the
    ``from_pretrained`` keywords)."""
    return tuple(item.name for item in fields(options)) + (tuple(MODEL_KWARGS) if options is ScoreOptions else ())


def keyword_names(keywords: tuple = SCORE_KEYWORDS) -> list[str]:
    """The keywords a function taking ``keywords`` (e.g. :data:`PAIR_KEYWORDS`) accepts, in its signature's order.

    >>> keyword_names(AUDIT_KEYWORDS)[:5]
    ['split', 'seed', 'resamples', 'validation', 'dtype']
    """
    names: list[str] = []
    for options, subset in keywords:
        names += [name for name in _names(options) if (subset is None or name in subset or name in MODEL_KWARGS)
                  and name not in names]
    return names


def split_keywords(given: Mapping[str, Any], keywords: tuple) -> list[dict[str, Any]]:
    """``given`` keywords, one dict per dataclass of ``keywords``; a name that none of them has is refused with a
    suggestion (:func:`refuse_unknown`). A field of :class:`ScoreOptions` outside a function's subset goes to
    :class:`ScoreOptions`, whose check (:func:`score_options_for`) says which function takes it.

    >>> split_keywords({"rule": "random", "max_length": 64}, PAIR_KEYWORDS)
    [{'rule': 'random'}, {}, {'max_length': 64}]
    >>> split_keywords({"rulle": "random"}, PAIR_KEYWORDS)
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: unknown option 'rulle' (did you mean 'rule'?); the options are ...
    """
    parts: list[dict[str, Any]] = [{} for _ in keywords]
    unknown = {}
    for name, value in given.items():
        where = next((index for index, (options, _) in enumerate(keywords) if name in _names(options)), None)
        (unknown if where is None else parts[where])[name] = value
    refuse_unknown(unknown, set(keyword_names(keywords)))
    return parts


def filter_options(options: FilterOptions | None = None, *, model: Any = None, tokenizer: Any = None,
                   **kwargs: Any) -> tuple[FilterOptions, ScoreOptions]:
    """``ches.filter``'s keywords as its rule (:class:`FilterOptions`, or ``options``) and its scoring options
    (:func:`scoring_options`: refused without ``model``); the rule given both ways is refused.

    >>> filter_options(keep=3)[0].rule
    'keep'
    >>> filter_options(FilterOptions(keep=3), quantile=0.5)
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: pass the rule either as options= or as keywords (quantile), not both.
    """
    rules, scoring = split_keywords(kwargs, FILTER_KEYWORDS)
    if options is None:
        options = FilterOptions(**rules)
    elif not isinstance(options, FilterOptions):
        raise ChesError(f"options= must be a ches.FilterOptions; got {type(options).__name__}.")
    elif any(value != getattr(FilterOptions(), name) for name, value in rules.items()):
        raise ChesError(f"pass the rule either as options= or as keywords ({', '.join(sorted(rules))}), not both.")
    return options, scoring_options(model, tokenizer, **scoring)


def scoring_options(model: Any, tokenizer: Any = None, **kwargs: Any) -> ScoreOptions:
    """:meth:`ScoreOptions.from_kwargs` for ``ches.filter``/``rank``/``summary``, which score only with a
    ``model``: without one, a ``tokenizer`` or a scoring option set to a value but its default (``split`` and
    ``progress`` aside) would do nothing, so it is refused, by its keyword and its flag (``ches filter`` refuses
    the same with this message).

    >>> scoring_options(None, max_length=64, device_map="auto")
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: max_length= (--max-length), device_map= (--device-map) only apply when scoring; pass model= (--model) too, or drop them.
    """
    options = ScoreOptions.from_kwargs(**kwargs)
    if model is not None:
        return options
    defaults = ScoreOptions()
    idle = ["tokenizer= (--tokenizer)"] if tokenizer is not None else []
    idle += [_keyword(item.name, item.metadata) for item in fields(ScoreOptions)
             if item.name not in ("split", "progress", "model_kwargs") and getattr(options, item.name) != getattr(defaults, item.name)]
    idle += [_keyword(name, {}) for name in MODEL_KWARGS if name in options.model_kwargs]
    idle += ["model_kwargs="] if set(options.model_kwargs) - set(MODEL_KWARGS) else []
    if idle:
        many = len(idle) > 1
        raise ChesError(f"{', '.join(idle)} only appl{'y' if many else 'ies'} when scoring; pass model= (--model) too, "
                        f"or drop {'them' if many else 'it'}.")
    return options


def flag_of(name: str, metadata: Mapping[str, Any]) -> str | None:
    """The command-line flag of the option ``name`` (``metadata``: its field's): from the name unless the field
    names one; ``None`` for an option of Python only.

    >>> flag_of("max_length", {}), flag_of("num_threads", {"flag": "--threads"}), flag_of("overwrite", {"flag": None})
    ('--max-length', '--threads', None)
    """
    flag = metadata.get("flag", "")
    return None if flag is None else flag or "--" + name.replace("_", "-")


def _keyword(name: str, metadata: Mapping[str, Any]) -> str:
    """How a refusal names an option: its keyword, and its flag where it has one (``max_length= (--max-length)``)."""
    flag = flag_of(name, metadata)
    return f"{name}=" + (f" ({flag})" if flag else "")


def pairs_options(options: ScoreOptions | None = None,
                  **kwargs: Any) -> tuple[PairOptions, PairInputOptions, ScoreOptions]:
    """``ches.pairs``' keywords as its pairing rule, how it reads its rows and its scoring options (``options``:
    a :class:`ScoreOptions`, checked by :func:`pair_score_options`).

    >>> pairs_options(rule="max_margin", rating_field="helpfulness", max_length=64)[1].rating_field
    'helpfulness'
    """
    rules, reading, scoring = split_keywords(kwargs, PAIR_KEYWORDS)
    return PairOptions(**rules), PairInputOptions(**reading), pair_score_options(options, **scoring)


def audit_options(options: AuditOptions | None = None, **kwargs: Any) -> tuple[AuditOptions, ScoreOptions]:
    """``ches.audit``'s keywords as what it reports on (:class:`AuditOptions`, or ``options`` with keywords
    replacing its fields) and how the trained model runs (:data:`AUDIT_SCORE_OPTIONS`); ``max_length`` and
    ``columns`` are refused: they are the scoring run's, from its record.

    >>> audit_options(resamples=20, dtype="float32")[0].resamples
    20
    >>> audit_options(max_length=64)
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: max_length come from the scoring run's record (the audit runs the same token sequences); drop them.
    """
    own, scoring = split_keywords(kwargs, AUDIT_KEYWORDS)
    if options is not None and not isinstance(options, AuditOptions):
        raise ChesError(f"options= must be a ches.AuditOptions; got {type(options).__name__}.")
    reported = replace(options or AuditOptions(), **own)
    taken = [name for name in ("max_length", "columns") if scoring.get(name) is not None]
    if taken:
        raise ChesError(f"{', '.join(taken)} come from the scoring run's record (the audit runs the same token "
                        "sequences); drop them.")
    return reported, score_options_for("ches.audit", AUDIT_SCORE_OPTIONS, **scoring)


def signature_with_options(function, keywords: tuple = SCORE_KEYWORDS) -> inspect.Signature:
    """``function``'s signature with every keyword of ``keywords`` (:data:`SCORE_KEYWORDS`, ...; those it
    names itself aside, such as ``ches.filter``'s positional ``quantile``) as keyword-only parameters with their
    defaults, so ``help()`` and editors show the options of a function that takes them as ``**kwargs``."""
    head = [p for p in inspect.signature(function).parameters.values() if p.kind != p.VAR_KEYWORD]
    taken = {p.name for p in head}
    items = {item.name: item for options, _ in reversed(keywords) for item in fields(options)}
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=_field_default(items[name]),
                               annotation=items[name].type) if name in items else
             inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None)
             for name in keyword_names(keywords) if name not in taken]
    return inspect.Signature(head + added, return_annotation=inspect.signature(function).return_annotation)


def _field_default(item: dataclasses.Field):
    return item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
