"""The columns ches adds to a dataset, with their types: one definition that every module imports.

>>> SCORE_COLUMNS[:3]
('ches', 'ln_ches', 'edit_distance')
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Collection

from ..errors import ChesError
from .integrity import FLAGS_COLUMN, parse_flags

logger = logging.getLogger("ches")

#: the column holding each row's :func:`ches.data.tokens.token_digest`: which tokens its scores and log-probs belong to
#: (None where ``ches_skip`` has a reason)
DIGEST_COLUMN = "ches_token_digest"
#: score columns added by ``ches.score``, in order, with their ``datasets`` value types (``list<string>``: a
#: list of strings; ``ches_flags`` holds each row's integrity flags, :mod:`ches.data.integrity`)
SCORE_TYPES = {
    "ches": "float64", "ln_ches": "float64", "edit_distance": "float64", "last_hidden_ip": "float64",
    "prompt_tokens": "int64", "chosen_tokens": "int64", "rejected_tokens": "int64", "ches_skip": "string",
    FLAGS_COLUMN: "list<string>", DIGEST_COLUMN: "string",
}
SCORE_COLUMNS = tuple(SCORE_TYPES)
#: columns added by ``ches.score(..., logps=True)``: each completion's log-probability under the scored model
#: (TRL's ``ref_chosen_logps`` / ``ref_rejected_logps``), NaN where ``ches_skip`` has a reason
LOGPS_TYPES = {"chosen_logps": "float64", "rejected_logps": "float64"}
LOGPS_COLUMNS = tuple(LOGPS_TYPES)
#: also added by ``ches.score(..., logps=True)``: the log-probability of each completion's first min(|y+|, |y-|)
#: tokens (after truncation), the part LD-DPO (TRL's ``DPOConfig(ld_alpha=...)``) weighs in full; the rest is
#: weighed by ``ld_alpha``
SHARED_LOGPS_TYPES = {"chosen_shared_logps": "float64", "rejected_shared_logps": "float64"}
SHARED_LOGPS_COLUMNS = tuple(SHARED_LOGPS_TYPES)
#: output columns that data scored by an older ches lacks: such data still counts as an earlier run's output
LATER_COLUMNS = (FLAGS_COLUMN, DIGEST_COLUMN) + SHARED_LOGPS_COLUMNS
#: columns added by ``ches.rank``
RANK_TYPES = {"ches_rank": "int64", "ches_percentile": "float64"}
RANK_COLUMNS = tuple(RANK_TYPES)
#: columns added by ``ches.audit`` (:mod:`ches.evaluate.auditing`): the trained model's log-probs, their change from the
#: reference's, and whether the preferred response lost probability
AUDIT_TYPES = {"chosen_logps_after": "float64", "rejected_logps_after": "float64", "chosen_change": "float64",
               "rejected_change": "float64", "displaced": "bool"}
AUDIT_COLUMNS = tuple(AUDIT_TYPES)
#: what ``ches filter --no-scores`` keeps of rows scored with log-probs: the reference and the tokens it belongs to
REFERENCE_COLUMNS = LOGPS_COLUMNS + SHARED_LOGPS_COLUMNS + (DIGEST_COLUMN,)
#: what an earlier ches run added beside its scores, which a new scoring run drops when it does not compute it
STALE_COLUMNS = LOGPS_COLUMNS + SHARED_LOGPS_COLUMNS + RANK_COLUMNS + AUDIT_COLUMNS
#: the measures pairs are selected by, with their sign (+1: higher = more similar pair, more likely to displace)
MEASURES = {"ln_ches": 1.0, "ches": 1.0, "last_hidden_ip": 1.0, "edit_distance": -1.0}
#: the measure ``ches.filter``, ``ches.rank``, the CLI and the report use unless told otherwise (the paper filters by it)
DEFAULT_MEASURE = "ln_ches"


def check_measure(measure: str, allowed: Collection[str] = MEASURES, scope: str = "") -> str:
    """``measure``, when it is one of ``allowed`` (default: every measure, :data:`MEASURES`); the one check of a
    measure's name, wherever one is given (``scope``: what takes only ``allowed``, for the message).

    >>> check_measure("edit_distance")
    'edit_distance'
    >>> check_measure("cosine")
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: unknown measure 'cosine'; use one of ['ches', 'edit_distance', 'last_hidden_ip', 'ln_ches'] (measure=, --measure).

    Raises:
        ChesError: naming the measure given and the ones accepted.
    """
    if measure not in allowed:
        raise ChesError(f"unknown measure {measure!r}{scope}; use one of {sorted(allowed)} (measure=, --measure).")
    return measure


def all_types() -> dict[str, str]:
    """Every column ches writes, with its type: :data:`SCORE_TYPES`, :data:`LOGPS_TYPES`,
    :data:`SHARED_LOGPS_TYPES`, :data:`RANK_TYPES`, :data:`AUDIT_TYPES`; the one table :func:`typed_cell` and :func:`column_feature` read (built when asked, so
    a column added to one of those tables is in it).

    >>> types = all_types()
    >>> types["ches"], types["chosen_logps"], types["ches_rank"], types["displaced"], types["ches_flags"]
    ('float64', 'float64', 'int64', 'bool', 'list<string>')
    """
    return {**SCORE_TYPES, **LOGPS_TYPES, **SHARED_LOGPS_TYPES, **RANK_TYPES, **AUDIT_TYPES}


def typed_cell(name: str, text: str | None):
    """A cell of a column ches writes (:func:`all_types`) read back from text (a CSV file): a number, NaN for
    an empty float cell, None for an empty int, bool or string cell; ``True``/``False`` for a bool; a list of
    flag names for ``ches_flags``.

    Raises:
        ValueError: the text is not a value of the column's type.

    >>> typed_cell("ches", "1.5"), typed_cell("ches", ""), typed_cell("chosen_tokens", "7"), typed_cell("ches_skip", "")
    (1.5, nan, 7, None)
    >>> typed_cell("ches_flags", "['empty_chosen']"), typed_cell("ches_flags", "[]")
    (['empty_chosen'], [])
    >>> typed_cell("displaced", "True"), typed_cell("displaced", "False"), typed_cell("displaced", "")
    (True, False, None)
    >>> typed_cell("displaced", "yes")
    Traceback (most recent call last):
    ...
    ValueError: 'yes' is not True or False
    """
    kind = all_types()[name]
    if kind == "list<string>":
        return parse_flags(text)
    if text is None or text == "":
        return float("nan") if kind == "float64" else None
    if kind == "float64":
        return float(text)
    if kind == "int64":
        return int(float(text))
    if kind == "bool":
        if text not in ("True", "False"):
            raise ValueError(f"{text!r} is not True or False")
        return text == "True"
    return text


def column_feature(name: str):
    """The ``datasets`` feature of a column ches writes (:func:`all_types`).

    >>> column_feature("ches"), column_feature("ches_flags"), column_feature("displaced")
    (Value('float64'), List(Value('string')), Value('bool'))
    """
    import datasets

    kind = all_types()[name]
    return datasets.List(datasets.Value("string")) if kind == "list<string>" else datasets.Value(kind)


def check_score_columns(dataset, label: str = "the data") -> None:
    """Refuse score columns that ches did not write as it writes them: numbers in the measures and token
    counts, text or None in ``ches_skip``, lists in ``ches_flags`` (read elsewhere, they would give wrong
    selections or raw errors).

    >>> import datasets
    >>> check_score_columns(datasets.Dataset.from_list([{"ln_ches": "0.5", "ches_skip": None}]), "scores.csv")
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: scores.csv: column 'ln_ches' holds string values, not numbers; ches writes numbers there. Is it a file written by 'ches score'? Rename your own column if it only shares the name.
    """
    for name in (*MEASURES, "chosen_tokens", "rejected_tokens", "prompt_tokens", "ches_skip", FLAGS_COLUMN):
        if name not in dataset.column_names:
            continue
        feature = dataset.features[name]
        if name == FLAGS_COLUMN:
            if type(feature).__name__ not in ("List", "Sequence", "LargeList"):
                raise ChesError(f"{label}: column {name!r} holds {getattr(feature, 'dtype', type(feature).__name__)} "
                                "values, not lists; ches writes a list of integrity flag names there. Is it a file "
                                "written by 'ches score'? Rename your own column if it only shares the name.")
            continue
        kind = getattr(feature, "dtype", type(feature).__name__)
        wanted = ("string", "large_string", "null") if name == "ches_skip" else None
        fits = kind in wanted if wanted else (kind.startswith(("float", "int", "uint")) or kind == "null")
        if not fits:
            what = "text or None (the reason a row was not scored)" if name == "ches_skip" else "numbers"
            raise ChesError(f"{label}: column {name!r} holds {kind} values, not {what.split(' (')[0]}; ches writes "
                            f"{what} there. Is it a file written by 'ches score'? Rename your own column if it only "
                            "shares the name.")


def check_output_columns(column_names, added: tuple[str, ...], read: list[str], label: str = "the data") -> bool:
    """Refuse data whose own columns the output columns ``added`` would overwrite; True when the data holds all
    of them (the output of an earlier ches run, which a new run replaces), False when it holds none.

    A column ches reads (a prompt, chosen or rejected column) never shares a name with an output column; any
    other column that does is the user's own unless every output column is there (every one but the
    :data:`LATER_COLUMNS` for data scored by an older ches, and for a scoring run the log-prob columns: data
    scored without ``logps=True`` is an earlier run's output for a run with it), or the data holds exactly the
    :data:`REFERENCE_COLUMNS` of them (what ``ches filter --no-scores`` keeps of rows scored with log-probs).

    >>> check_output_columns(["prompt", "chosen", "rejected"], SCORE_COLUMNS, ["prompt", "chosen", "rejected"])
    False
    >>> check_output_columns(["ches", "chosen", "rejected"], SCORE_COLUMNS, ["ches", "chosen", "rejected"])
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: the data: column 'ches' is read as a pair's text, but ches writes its output column 'ches' there; rename it first (dataset.rename_column('ches', ...)).
    """
    present = [name for name in added if name in column_names]
    read_too = [name for name in present if name in read]
    if read_too:
        raise ChesError(f"{label}: column {read_too[0]!r} is read as a pair's text, but ches writes its output column "
                        f"{read_too[0]!r} there; rename it first (dataset.rename_column({read_too[0]!r}, ...)).")
    scoring = set(SCORE_COLUMNS) <= set(added)  # a scoring run: one run before it may have been without logps=True
    optional = LATER_COLUMNS + (LOGPS_COLUMNS + SHARED_LOGPS_COLUMNS if scoring else ())
    required = [name for name in added if name not in optional]
    reference_only = (all(name in column_names for name in LOGPS_COLUMNS + (DIGEST_COLUMN,))
                      and set(present) <= set(REFERENCE_COLUMNS))
    if present and not reference_only and not all(name in present for name in required):
        raise ChesError(f"{label} has column(s) {present}, which ches writes its output to ({', '.join(added)}); they "
                        "are not an earlier ches run's output (that has all of them), so they would be overwritten: "
                        "rename them first (dataset.rename_column).")
    return bool(present)


def add_score_columns(dataset, columns: dict[str, list]):
    """``dataset`` (a ``datasets.Dataset``) with the :data:`SCORE_COLUMNS` ``columns`` (and the
    :data:`LOGPS_COLUMNS` when there) appended, typed as :data:`SCORE_TYPES`. An earlier run's score columns
    (all of them: :func:`check_output_columns`) are replaced, and what that run added that this one does not
    replace (:data:`STALE_COLUMNS`: its log-probs, ranks, audit columns, and its reference record) is dropped,
    so that no number of another model or run stays beside the new scores; both are logged."""
    import copy

    clashes = [name for name in columns if name in dataset.column_names]
    if clashes:
        stale = [name for name in STALE_COLUMNS if name in dataset.column_names and name not in columns]
        logger.info("replacing the score columns of an earlier ches run (%s) with this run's%s; every other column "
                    "is kept as it was", ", ".join(clashes),
                    f", and dropping its {', '.join(stale)}, which this run does not compute" if stale else "")
        dataset = dataset.remove_columns(clashes + stale)
        dataset._info = copy.deepcopy(dataset.info)  # the caller's dataset keeps its own record
        if "ches_reference" in (dataset.info.description or ""):  # the earlier runs' records no longer describe them
            dataset.info.description = ""
    types = {**SCORE_TYPES, **LOGPS_TYPES, **SHARED_LOGPS_TYPES}
    for name in [name for name in types if name in columns]:
        dataset = dataset.add_column(name, columns[name], feature=column_feature(name),
                                     new_fingerprint=_fingerprint(dataset, name, columns[name]))
    return dataset


def _fingerprint(dataset, name: str, values: list) -> str:
    """The fingerprint of ``dataset`` plus the column ``name`` = ``values``: a hash of the values' bytes,
    instead of the pickle-based hash ``datasets`` would compute (the slow part of adding a column)."""
    import numpy as np

    digest = hashlib.sha256(f"{getattr(dataset, '_fingerprint', '')}\0{name}\0".encode())
    as_text = name in ("ches_skip", FLAGS_COLUMN, DIGEST_COLUMN)
    digest.update(json.dumps(values).encode() if as_text else np.asarray(values, dtype=np.float64).tobytes())
    return digest.hexdigest()[:16]


#: the fields of a run's record that say which reference its log-probs are (checked by :mod:`ches.trl`)
REFERENCE_FIELDS = ("model", "model_fingerprint", "tokenizer", "tokenizer_fingerprint", "dtype")


def with_reference(dataset, run):
    """``dataset`` carrying, in its ``info.description``, what its log-probs were computed with: the model's
    and tokenizer's fingerprints, dtype and ``max_length`` (a dataset saved with ``save_to_disk`` keeps it; a
    file keeps it in its ``.meta.json`` sidecar, which :func:`ches.data.inputs.load_data` reads back)."""
    import copy
    import json

    record = run.as_dict() if hasattr(run, "as_dict") else dict(run)
    if "options" in record:  # a run's record: the reference's fields of it
        reference = reference_from_run(record)
    else:  # already a reference record (reference_of, sidecar_reference)
        reference = dict(record)
    dataset._info = copy.deepcopy(dataset.info)  # the caller's own dataset keeps its description
    dataset.info.description = json.dumps({"ches_reference": reference})
    return dataset


def reference_of(dataset) -> dict | None:
    """What :func:`with_reference` recorded on ``dataset`` (on a ``DatasetDict``: on its first split that has a
    record), or None."""
    if hasattr(dataset, "keys"):
        return next((found for part in dataset.values() if (found := reference_of(part)) is not None), None)
    text = getattr(getattr(dataset, "info", None), "description", None) or ""
    records = []
    for block in text.split("\n\n"):  # datasets.concatenate_datasets joins differing descriptions with a blank line
        try:
            found = json.loads(block).get("ches_reference")
        except (ValueError, AttributeError):
            continue
        if found is not None and found not in records:
            records.append(found)
    if len(records) > 1:
        models = ", ".join(repr(record.get("model")) for record in records)
        raise ChesError(f"the rows come from {len(records)} scoring runs (datasets concatenated after scoring: {models}), "
                        "so their log-probs are not one reference; score them together, with the model DPO starts from.")
    return records[0] if records else None


def sidecar_reference(meta: dict | None) -> dict | None:
    """The reference record in the ``.meta.json`` sidecar of a file ches wrote (as
    :func:`ches.data.paths.read_sidecar` reads it; None: no sidecar): what the log-probs in the file were computed with. Every command that writes rows carrying log-probs records it as ``reference``; a
    sidecar written before that has it only as the ``run`` of ``ches score`` / ``ches pairs`` (never another
    command's ``run``: ``ches audit``'s is the trained model's, not the reference's).

    >>> sidecar_reference({"reference": {"model": "sft"}, "run": {"model": "dpo", "model_fingerprint": "x"}})
    {'model': 'sft'}
    >>> sidecar_reference({"command": ["ches", "audit"], "run": {"model": "dpo", "model_fingerprint": "x"}}) is None
    True
    """
    if not isinstance(meta, dict):
        return None
    if isinstance(meta.get("reference"), dict):
        return meta["reference"]
    command = meta.get("command") or []
    run = meta.get("run")
    if len(command) > 1 and command[1] in ("score", "pairs") and isinstance(run, dict) and run.get("model_fingerprint"):
        return reference_from_run(run)
    return None


def reference_from_run(run: dict) -> dict:
    """The reference record of a run's record (:class:`ches.run.runs.RunInfo` as a dict): its
    :data:`REFERENCE_FIELDS`, and how its rows were read and cut (``max_length``, ``columns`` and the layout,
    ``format``: ``ches.trl`` and ``ches audit`` read the rows as they were scored; ``"trl"`` for a run before
    layouts, whose rows were read as TRL's, and for ``ches.pairs``, whose rows are TRL's).

    >>> reference_from_run({"model": "sft", "format": "axolotl.chatml.intel", "options": {"max_length": 64}})["format"]
    'axolotl.chatml.intel'
    """
    options = run.get("options") or {}
    reference = {name: run.get(name) for name in REFERENCE_FIELDS}
    return {**reference, "max_length": options.get("max_length"), "columns": options.get("columns"),
            "format": run.get("format") or "trl"}


def parse_columns(text: str) -> dict[str, str]:
    """``"prompt=question,chosen=good"`` as a mapping (the command line's ``--columns``).

    >>> parse_columns("prompt=question, chosen=answer_matching_behavior")
    {'prompt': 'question', 'chosen': 'answer_matching_behavior'}
    """
    mapping = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        role, separator, name = item.partition("=")
        if not separator or not role.strip() or not name.strip():
            raise ChesError(f"--columns {text!r}: expected NAME=COLUMN pairs separated by commas, e.g. "
                            "prompt=question,chosen=answer_a,rejected=answer_b.")
        mapping[role.strip()] = name.strip()
    return mapping
