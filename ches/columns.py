"""The columns ches adds to a dataset, with their types: one definition that every module imports.

>>> SCORE_COLUMNS[:3]
('ches', 'ln_ches', 'edit_distance')
"""

from __future__ import annotations

import hashlib
import json
import logging

from .errors import ChesError
from .integrity import FLAGS_COLUMN, parse_flags

logger = logging.getLogger("ches")

#: score columns added by ``ches.score``, in order, with their ``datasets`` value types (``list<string>``: a
#: list of strings; ``ches_flags`` holds each row's integrity flags, :mod:`ches.integrity`)
SCORE_TYPES = {
    "ches": "float64", "ln_ches": "float64", "edit_distance": "float64", "last_hidden_ip": "float64",
    "prompt_tokens": "int64", "chosen_tokens": "int64", "rejected_tokens": "int64", "ches_skip": "string",
    FLAGS_COLUMN: "list<string>",
}
SCORE_COLUMNS = tuple(SCORE_TYPES)
#: output columns that data scored by an older ches lacks: such data still counts as an earlier run's output
LATER_COLUMNS = (FLAGS_COLUMN,)
#: columns added by ``ches.score(..., logps=True)``: each completion's log-probability under the scored model
#: (TRL's ``ref_chosen_logps`` / ``ref_rejected_logps``), NaN where ``ches_skip`` has a reason
LOGPS_TYPES = {"chosen_logps": "float64", "rejected_logps": "float64"}
LOGPS_COLUMNS = tuple(LOGPS_TYPES)
#: columns added by ``ches.rank``
RANK_TYPES = {"ches_rank": "int64", "ches_percentile": "float64"}
RANK_COLUMNS = tuple(RANK_TYPES)
#: the measures pairs are selected by, with their sign (+1: higher = more similar pair, more likely to displace)
MEASURES = {"ln_ches": 1.0, "ches": 1.0, "last_hidden_ip": 1.0, "edit_distance": -1.0}
#: the measure ``ches.filter``, ``ches.rank``, the CLI and the report use unless told otherwise (the paper filters by it)
DEFAULT_MEASURE = "ln_ches"


def typed_cell(name: str, text: str):
    """A score column's cell read back from text (a CSV file): numbers, or None for an empty cell; a list of
    flag names for ``ches_flags``.

    >>> typed_cell("ches", "1.5"), typed_cell("ches", ""), typed_cell("chosen_tokens", "7"), typed_cell("ches_skip", "")
    (1.5, nan, 7, None)
    >>> typed_cell("ches_flags", "['empty_chosen']"), typed_cell("ches_flags", "[]")
    (['empty_chosen'], [])
    """
    kind = {**SCORE_TYPES, **RANK_TYPES}[name]
    if kind == "list<string>":
        return parse_flags(text)
    if text is None or text == "":
        return float("nan") if kind == "float64" else None
    if kind == "float64":
        return float(text)
    if kind == "int64":
        return int(float(text))
    return text


def column_feature(name: str):
    """The ``datasets`` feature of a column ches writes (:data:`SCORE_TYPES`, :data:`LOGPS_TYPES`,
    :data:`RANK_TYPES`).

    >>> column_feature("ches"), column_feature("ches_flags")
    (Value('float64'), List(Value('string')))
    """
    import datasets

    kind = {**SCORE_TYPES, **LOGPS_TYPES, **RANK_TYPES}[name]
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
    :data:`LATER_COLUMNS` for data scored by an older ches).

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
    required = [name for name in added if name not in LATER_COLUMNS]
    if present and not all(name in present for name in required):
        raise ChesError(f"{label} has column(s) {present}, which ches writes its output to ({', '.join(added)}); they "
                        "are not an earlier ches run's output (that has all of them), so they would be overwritten: "
                        "rename them first (dataset.rename_column).")
    return bool(present)


def add_score_columns(dataset, columns: dict[str, list]):
    """``dataset`` (a ``datasets.Dataset``) with the :data:`SCORE_COLUMNS` ``columns`` (and the
    :data:`LOGPS_COLUMNS` when there) appended, typed as :data:`SCORE_TYPES`; an earlier run's score columns
    (all of them: :func:`check_output_columns`) are replaced."""
    import datasets

    clashes = [name for name in columns if name in dataset.column_names]
    if clashes:
        logger.info("replacing the score columns of an earlier run with new scores")
        dataset = dataset.remove_columns(clashes)
    types = {**SCORE_TYPES, **LOGPS_TYPES}
    for name in [name for name in types if name in columns]:
        dataset = dataset.add_column(name, columns[name], feature=column_feature(name),
                                     new_fingerprint=_fingerprint(dataset, name, columns[name]))
    return dataset


def _fingerprint(dataset, name: str, values: list) -> str:
    """The fingerprint of ``dataset`` plus the column ``name`` = ``values``: a hash of the values' bytes,
    instead of the pickle-based hash ``datasets`` would compute (the slow part of adding a column)."""
    import numpy as np

    digest = hashlib.sha256(f"{getattr(dataset, '_fingerprint', '')}\0{name}\0".encode())
    as_text = name in ("ches_skip", FLAGS_COLUMN)
    digest.update(json.dumps(values).encode() if as_text else np.asarray(values, dtype=np.float64).tobytes())
    return digest.hexdigest()[:16]


#: the fields of a run's record that say which reference its log-probs are (checked by :mod:`ches.trl`)
REFERENCE_FIELDS = ("model", "model_fingerprint", "tokenizer", "tokenizer_fingerprint", "dtype")


def with_reference(dataset, run):
    """``dataset`` carrying, in its ``info.description``, what its log-probs were computed with: the model's
    and tokenizer's fingerprints, dtype and ``max_length`` (a dataset saved with ``save_to_disk`` keeps it; a
    file keeps it in its ``.meta.json`` sidecar, which :func:`ches.inputs.load_data` reads back)."""
    import json

    import copy

    record = run.as_dict() if hasattr(run, "as_dict") else dict(run)
    dataset._info = copy.deepcopy(dataset.info)  # the caller's own dataset keeps its description
    reference = {name: record.get(name) for name in REFERENCE_FIELDS}
    reference["max_length"] = (record.get("options") or {}).get("max_length")
    reference["columns"] = (record.get("options") or {}).get("columns")
    dataset.info.description = json.dumps({"ches_reference": reference})
    return dataset


def reference_of(dataset) -> dict | None:
    """What :func:`with_reference` recorded on ``dataset``, or None."""
    try:
        return json.loads(dataset.info.description or "{}").get("ches_reference")
    except (ValueError, AttributeError):
        return None


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
