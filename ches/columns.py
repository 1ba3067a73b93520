"""The columns ches adds to a dataset, with their types: one definition that every module imports.

>>> SCORE_COLUMNS[:3]
('ches', 'ln_ches', 'edit_distance')
"""

from __future__ import annotations

#: score columns added by ``ches.score``, in order, with their ``datasets`` value types
SCORE_TYPES = {
    "ches": "float64", "ln_ches": "float64", "edit_distance": "float64", "last_hidden_ip": "float64",
    "prompt_tokens": "int64", "chosen_tokens": "int64", "rejected_tokens": "int64", "ches_skip": "string",
}
SCORE_COLUMNS = tuple(SCORE_TYPES)
#: columns added by ``ches.rank``
RANK_TYPES = {"ches_rank": "int64", "ches_percentile": "float64"}
RANK_COLUMNS = tuple(RANK_TYPES)


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
