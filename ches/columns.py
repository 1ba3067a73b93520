"""The columns ches adds to a dataset, with their types: one definition that every module imports.

>>> SCORE_COLUMNS[:3]
('ches', 'ln_ches', 'edit_distance')
"""

from __future__ import annotations

import hashlib
import json
import logging

logger = logging.getLogger("ches")

#: score columns added by ``ches.score``, in order, with their ``datasets`` value types
SCORE_TYPES = {
    "ches": "float64", "ln_ches": "float64", "edit_distance": "float64", "last_hidden_ip": "float64",
    "prompt_tokens": "int64", "chosen_tokens": "int64", "rejected_tokens": "int64", "ches_skip": "string",
}
SCORE_COLUMNS = tuple(SCORE_TYPES)
#: columns added by ``ches.rank``
RANK_TYPES = {"ches_rank": "int64", "ches_percentile": "float64"}
RANK_COLUMNS = tuple(RANK_TYPES)
#: the measures pairs are selected by, with their sign (+1: higher = more similar pair, more likely to displace)
MEASURES = {"ln_ches": 1.0, "ches": 1.0, "last_hidden_ip": 1.0, "edit_distance": -1.0}
#: the measure ``ches.filter``, ``ches.rank``, the CLI and the report use unless told otherwise (the paper filters by it)
DEFAULT_MEASURE = "ln_ches"


def typed_cell(name: str, text: str):
    """A score column's cell read back from text (a CSV file): numbers, or None for an empty cell.

    >>> typed_cell("ches", "1.5"), typed_cell("ches", ""), typed_cell("chosen_tokens", "7"), typed_cell("ches_skip", "")
    (1.5, nan, 7, None)
    """
    kind = {**SCORE_TYPES, **RANK_TYPES}[name]
    if text is None or text == "":
        return float("nan") if kind == "float64" else None
    if kind == "float64":
        return float(text)
    if kind == "int64":
        return int(float(text))
    return text


def add_score_columns(dataset, columns: dict[str, list]):
    """``dataset`` (a ``datasets.Dataset``) with the :data:`SCORE_COLUMNS` ``columns`` appended, typed as
    :data:`SCORE_TYPES`; columns of the same names already there are replaced (with a warning)."""
    import datasets

    clashes = [name for name in columns if name in dataset.column_names]
    if clashes:
        logger.warning("replacing existing column(s) %s with new scores", clashes)
        dataset = dataset.remove_columns(clashes)
    for name in SCORE_COLUMNS:
        dataset = dataset.add_column(name, columns[name], feature=datasets.Value(SCORE_TYPES[name]),
                                     new_fingerprint=_fingerprint(dataset, name, columns[name]))
    return dataset


def _fingerprint(dataset, name: str, values: list) -> str:
    """The fingerprint of ``dataset`` plus the column ``name`` = ``values``: a hash of the values' bytes,
    instead of the pickle-based hash ``datasets`` would compute (the slow part of adding a column)."""
    import numpy as np

    digest = hashlib.sha256(f"{getattr(dataset, '_fingerprint', '')}\0{name}\0".encode())
    digest.update(json.dumps(values).encode() if name == "ches_skip" else np.asarray(values, dtype=np.float64).tobytes())
    return digest.hexdigest()[:16]
