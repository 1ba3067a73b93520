"""The dataset ``ches.pairs`` returns: TRL's ``prompt``/``chosen``/``rejected``, the ratings, the scores,
where each pair came from, and the input's own columns carried along."""

from __future__ import annotations

from collections.abc import Mapping

import datasets

from ..data.columns import LOGPS_COLUMNS, LOGPS_TYPES, SCORE_COLUMNS, SCORE_TYPES, column_feature
from ..errors import ChesError
from .candidates import CANDIDATE_COLUMNS, SCHEMA_COLUMNS, schema

PAIR_COLUMNS = ("prompt", "chosen", "rejected", "chosen_rating", "rejected_rating")


ROW_COLUMNS = ("candidates", "chosen_index", "rejected_index", "source_row", "unscored_responses")


def output_columns(logps: bool = False) -> tuple[str, ...]:
    """The columns ches.pairs writes, in order (the row's carried columns follow them).

    >>> output_columns()[:6], output_columns(logps=True)[15:17]
    (('prompt', 'chosen', 'rejected', 'chosen_rating', 'rejected_rating', 'ches'), ('chosen_logps', 'rejected_logps'))
    """
    return PAIR_COLUMNS + SCORE_COLUMNS + (LOGPS_COLUMNS if logps else ()) + ROW_COLUMNS


def carried_columns(column_names: list[str], columns: Mapping[str, str] | None, written: tuple[str, ...],
                    format: str | None = None) -> list[str]:
    """The rows' columns that each of their pairs carries: all but those read as the prompt, responses and
    ratings; one named like an output column (``written``) is refused, since it would be overwritten.

    >>> carried_columns(["prompt_id", "prompt", "responses", "ratings", "source"], None, output_columns())
    ['prompt_id', 'source']
    >>> carried_columns(["q", "responses", "ratings", "prompt"], {"prompt": "q"}, output_columns())
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: column 'prompt' would be carried into each pair (ches.pairs reads 'q', 'responses', 'ratings'), but ches.pairs writes its output column 'prompt' there; rename it first (dataset.rename_column('prompt', ...)) or drop it (dataset.remove_columns('prompt')).
    """
    named = schema(column_names, columns, format)
    if named in SCHEMA_COLUMNS:
        read = list(SCHEMA_COLUMNS[named])
    else:
        read = [(columns or {}).get(name, name) for name in CANDIDATE_COLUMNS]
    carried = [name for name in column_names if name not in read]
    clash = next((name for name in carried if name in written), None)
    if clash is not None:
        raise ChesError(f"column {clash!r} would be carried into each pair (ches.pairs reads "
                        f"{', '.join(repr(name) for name in read)}), but ches.pairs writes its output column {clash!r} "
                        f"there; rename it first (dataset.rename_column({clash!r}, ...)) or drop it "
                        f"(dataset.remove_columns({clash!r})).")
    return carried


PAIR_TYPES = {"chosen_rating": "float64", "rejected_rating": "float64", **SCORE_TYPES, **LOGPS_TYPES, "candidates": "int64",
              "chosen_index": "int64", "rejected_index": "int64", "source_row": "int64"}


def output_dataset(columns: dict[str, list], carried: datasets.Dataset) -> datasets.Dataset:
    """The pairs as a dataset: the score columns typed as ``ches.score`` types them, ``unscored_responses``
    as lists of ints, then the ``carried`` columns (one row per pair, their types kept). With no pair, every
    column is still there, typed (the texts as strings)."""
    features = {name: column_feature(name) if name in SCORE_TYPES or name in LOGPS_TYPES
                else datasets.Value(PAIR_TYPES[name]) for name in columns if name in PAIR_TYPES}
    features["unscored_responses"] = datasets.List(datasets.Value("int64"))
    if not columns["source_row"]:
        features = {**{name: datasets.Value("string") for name in PAIR_COLUMNS[:3]}, **features, **carried.features}
        return datasets.Dataset.from_dict({name: [] for name in features}, features=datasets.Features(features))
    dataset = datasets.Dataset.from_dict(columns)
    dataset = dataset.cast(datasets.Features({name: features.get(name, feature) for name, feature in dataset.features.items()}))
    return datasets.concatenate_datasets([dataset, carried.flatten_indices()], axis=1) if carried.column_names else dataset
