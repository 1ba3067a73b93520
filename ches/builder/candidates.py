"""Candidate rows: several rated responses per prompt, normalized to ``(prompt, [responses], [ratings])``.

The input of :func:`ches.pairs`. One small function per input schema turns a row (a dict) into the
normalized dict ``{"prompt", "responses", "ratings"}`` (so each plugs into ``Dataset.map`` too):

- **generic** (:func:`from_generic`): ``prompt``, ``responses: list``, ``ratings: list[float]``, under
  these names or yours (``columns={"responses": "all_generated_responses", "ratings": "all_rm_scores"}``);
- **UltraFeedback** (:func:`from_ultrafeedback`): the raw ``openbmb/UltraFeedback`` rows,
  ``instruction`` and ``completions: [{"response", "overall_score", "fine-grained_score", ...}]``; the
  rating is the completion field named by ``rating_field`` (default ``overall_score``);
- **Nectar** (:func:`from_nectar`, axolotl's ``zephyr.nectar``): ``prompt`` and ``answers: [{"answer",
  "rank"}]``, rank 1 the best; the rating is minus the rank.

Responses are strings (standard format) or message lists (conversational format, with a message-list
prompt), as in :mod:`ches.data.formats`; the format is decided from the first response of row 0.
:func:`to_candidates` validates every row and raises one :class:`~ches.errors.ChesError` naming the
row, column and value, before any model is loaded. A row with fewer than two responses is *not* an
error: :func:`ches.pairs` lists it as skipped, with the reason.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets

from ..data.formats import Text, _kind, _message_list_problem
from ..data.frameworks import RANKED_COLUMNS
from ..data.inputs import check_distinct_roles
from ..errors import ChesError
from ..options import PAIR_FORMATS

CANDIDATE_COLUMNS = RANKED_COLUMNS["generic"]
ULTRAFEEDBACK_COLUMNS = RANKED_COLUMNS["ultrafeedback"]
ULTRAFEEDBACK_RATING = "overall_score"  # the completion field rated by default
NECTAR_COLUMNS = RANKED_COLUMNS["nectar"]
#: the columns each named schema reads (the generic schema reads CANDIDATE_COLUMNS, or columns= names)
SCHEMA_COLUMNS = {"ultrafeedback": ULTRAFEEDBACK_COLUMNS, "nectar": NECTAR_COLUMNS}
#: the schema each ``format=`` of ``ches.pairs`` (:data:`ches.options.PAIR_FORMATS`) names
SCHEMA_OF_FORMAT = {"generic": "generic", "ultrafeedback": "ultrafeedback", "axolotl.zephyr.nectar": "nectar"}
assert tuple(SCHEMA_OF_FORMAT) == PAIR_FORMATS


@dataclass(frozen=True)
class Candidates:
    """One prompt and its rated candidate responses (``responses[k]`` is rated ``ratings[k]``)."""

    prompt: Text
    responses: list[Text]
    ratings: list[float]

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)


def from_generic(row: Mapping[str, Any], columns: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A generic row as ``{"prompt", "responses", "ratings"}``; ``columns`` maps those names to the row's own.

    >>> from_generic({"q": "2+2=", "outs": [" 4", " 5"], "scores": [1.0, 0.0]},
    ...              {"prompt": "q", "responses": "outs", "ratings": "scores"})
    {'prompt': '2+2=', 'responses': [' 4', ' 5'], 'ratings': [1.0, 0.0]}
    """
    columns = columns or {}
    return {name: row.get(columns.get(name, name)) for name in CANDIDATE_COLUMNS}


def from_ultrafeedback(row: Mapping[str, Any], rating_field: str = "overall_score") -> dict[str, Any]:
    """A raw UltraFeedback row as ``{"prompt", "responses", "ratings"}``, rated by ``rating_field``.

    Completions that are not dicts are passed through as ``None`` responses, which :func:`to_candidates`
    then reports by row and position.

    >>> from_ultrafeedback({"instruction": "Name a color.", "completions": [
    ...     {"response": "Blue.", "overall_score": 8.5, "fine-grained_score": 4.25},
    ...     {"response": "Seven.", "overall_score": 2.0, "fine-grained_score": 1.5}]}, "fine-grained_score")
    {'prompt': 'Name a color.', 'responses': ['Blue.', 'Seven.'], 'ratings': [4.25, 1.5]}
    """
    completions = row.get("completions")
    if not isinstance(completions, list):
        return {"prompt": row.get("instruction"), "responses": completions, "ratings": None}
    dicts = [completion if isinstance(completion, Mapping) else {} for completion in completions]
    return {"prompt": row.get("instruction"), "responses": [item.get("response") for item in dicts],
            "ratings": [item.get(rating_field) for item in dicts]}


def from_nectar(row: Mapping[str, Any]) -> dict[str, Any]:
    """A Nectar row (berkeley-nest/Nectar; axolotl's ``zephyr.nectar``: ``prompt`` and ``answers``, a list of
    ``{"answer", "rank"}`` with rank 1 the best) as ``{"prompt", "responses", "ratings"}``, conversational.

    axolotl (``src/axolotl/prompt_strategies/dpo/zephyr.py``, ``nectar``) writes the prompt as the user's turn of
    a chat template (an empty system turn before it, i.e. no system text) and each answer as the assistant's:
    here the prompt is that user turn, each answer an assistant message, rated minus its rank (so rank 1 rates
    highest). axolotl itself keeps one pair per row, the answers with the two *largest* rank numbers; ches.pairs
    picks its pairs by its own rule from every ranked answer. Answers that are not ``{"answer", "rank"}`` dicts
    are passed through as ``None``, which :func:`to_candidates` then reports by row and position.

    >>> from_nectar({"prompt": "Name a color.", "answers": [{"answer": "Blue.", "rank": 1}, {"answer": "7", "rank": 2}]})
    {'prompt': [{'role': 'user', 'content': 'Name a color.'}], 'responses': [[{'role': 'assistant', 'content': \
'Blue.'}], [{'role': 'assistant', 'content': '7'}]], 'ratings': [-1, -2]}
    >>> from_nectar({"prompt": "Hi", "answers": [{"answer": "Hello", "rank": None}]})["ratings"]
    [None]
    """
    prompt, answers = row.get("prompt"), row.get("answers")
    prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if not isinstance(answers, list):
        return {"prompt": prompt, "responses": answers, "ratings": None}
    dicts = [answer if isinstance(answer, Mapping) else {} for answer in answers]
    responses = [[{"role": "assistant", "content": item["answer"]}] if isinstance(item.get("answer"), str) else None
                 for item in dicts]
    ranks = [item.get("rank") for item in dicts]
    ratings = [-rank if isinstance(rank, (int, float)) and not isinstance(rank, bool) else rank for rank in ranks]
    return {"prompt": prompt, "responses": responses, "ratings": ratings}


def schema(column_names: Sequence[str], columns: Mapping[str, str] | None, format: str | None = None) -> str:
    """The schema ``format=`` names (its columns checked), else detected: ``"ultrafeedback"`` for UltraFeedback's
    raw columns, ``"nectar"`` for Nectar's (each with no ``columns`` mapping and no ``responses`` column), else
    ``"generic"``.

    >>> schema(["source", "instruction", "models", "completions"], None), schema(["prompt", "responses", "ratings"], None)
    ('ultrafeedback', 'generic')
    >>> schema(["prompt", "answers", "turns", "num_responses", "source"], None)
    'nectar'
    >>> schema(["prompt", "answers"], None, "ultrafeedback")
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: format='ultrafeedback' (--format) reads the column(s) ['instruction', 'completions'], which the data does not have; it has ['prompt', 'answers'].
    """
    if format is not None:
        named = SCHEMA_OF_FORMAT[format]
        missing = [name for name in SCHEMA_COLUMNS.get(named, ()) if name not in column_names]
        if missing:
            raise ChesError(f"format={format!r} (--format) reads the column(s) {missing}, which the data does not "
                            f"have; it has {list(column_names)}.")
        return named
    if columns is None and "responses" not in column_names:
        for name, read in SCHEMA_COLUMNS.items():
            if all(column in column_names for column in read):
                return name
    return "generic"


def to_candidates(rows: Sequence[Mapping[str, Any]], where: Mapping[str, str] | None = None) -> list[Candidates]:
    """Validate normalized rows (``{"prompt", "responses", "ratings"}``) and return one :class:`Candidates` each.

    Args:
        rows: normalized rows, e.g. from :func:`from_generic` or :func:`from_ultrafeedback`.
        where: the data's own column for each normalized name, used in error messages.

    Raises:
        ChesError: a prompt, response or rating that is missing or of the wrong type; a NaN or infinite
            rating; a ratings list whose length differs from the responses list. The message names the
            row, the column and what was found.

    >>> to_candidates([{"prompt": "Hi", "responses": [" yes", " no"], "ratings": [2, 1]}])
    [Candidates(prompt='Hi', responses=[' yes', ' no'], ratings=[2.0, 1.0])]
    >>> to_candidates([{"prompt": "Hi", "responses": [" yes", " no"], "ratings": [2]}])
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: row 0, column 'ratings': 1 ratings for 2 responses; give one rating per response, in the same order.
    """
    where = {name: where.get(name, name) if where else name for name in CANDIDATE_COLUMNS}
    if not rows:
        raise ChesError("the data has no rows.")
    conversational = _first_response_is_messages(rows)
    out = []
    for index, row in enumerate(rows):
        problem = _row_problem(row, conversational, where)
        if problem:
            raise ChesError(f"row {index}, {problem}")
        out.append(Candidates(row["prompt"], list(row["responses"]), [float(value) for value in row["ratings"]]))
    return out


def _first_response_is_messages(rows: Sequence[Mapping[str, Any]]) -> bool:
    for row in rows:
        if isinstance(row.get("responses"), list) and row["responses"]:
            return isinstance(row["responses"][0], list)
    return False


def _row_problem(row: Mapping[str, Any], conversational: bool, where: Mapping[str, str]) -> str | None:
    """What is wrong with one normalized row (``"column 'x': ..."``), or None."""
    fmt = ("conversational: message lists, decided from the first response of the data" if conversational
           else "standard: strings, decided from the first response of the data")
    prompt, responses, ratings = row.get("prompt"), row.get("responses"), row.get("ratings")
    problem = _text_problem(prompt, conversational)
    if problem:
        return f"column {where['prompt']!r}: {problem} ({fmt})."
    if not isinstance(responses, list):
        return f"column {where['responses']!r}: expected a list of responses, found {_kind(responses)}."
    for position, response in enumerate(responses):
        problem = _text_problem(response, conversational)
        if problem:
            return f"column {where['responses']!r}, response {position}: {problem} ({fmt})."
    if not isinstance(ratings, list):
        return (f"column {where['ratings']!r}: expected a list of numbers (one per response), found {_kind(ratings)}; "
                "map your column with columns={'ratings': ...} (--columns ratings=...), or pick the UltraFeedback "
                "field with rating_field=.")
    if len(ratings) != len(responses):
        return (f"column {where['ratings']!r}: {len(ratings)} ratings for {len(responses)} responses; give one rating "
                "per response, in the same order.")
    for position, value in enumerate(ratings):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return (f"column {where['ratings']!r}, response {position}: expected a number, found {_kind(value)}; "
                    "drop unrated responses, or give them a rating.")
        if not math.isfinite(value):
            return (f"column {where['ratings']!r}, response {position}: the rating is {value}; ratings must be finite "
                    "numbers (drop unrated responses, or give them a rating).")
    return None


def _text_problem(value: Any, conversational: bool) -> str | None:
    if conversational:
        return _message_list_problem(value) if isinstance(value, list) else f"expected a message list, found {_kind(value)}"
    return None if isinstance(value, str) else f"expected a string, found {_kind(value)}"


def _check_rating_field(dataset: datasets.Dataset, rating_field: str) -> None:
    """Refuse a ``rating_field`` that no completion of raw UltraFeedback rows has, naming the fields they have
    (a misspelt name would otherwise leave every rating missing)."""
    fields: set[str] = set()
    for completions in dataset["completions"]:
        for completion in completions if isinstance(completions, list) else ():
            if isinstance(completion, dict):
                fields.update(completion)
    if fields and rating_field not in fields:
        close = difflib.get_close_matches(rating_field, sorted(fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ChesError(f"rating_field={rating_field!r} (--rating-field) is not a field of the completions{hint}; they "
                        f"have {', '.join(sorted(fields))}.")


def candidate_rows(dataset: datasets.Dataset, columns: Mapping[str, str] | None,
                   rating_field: str | None = None, format: str | None = None) -> list[Candidates]:
    """The rows of ``dataset`` as validated :class:`~ches.builder.candidates.Candidates` (the schema ``format``
    names, or detected: :func:`schema`)."""
    if len(dataset) == 0:
        raise ChesError("the data has no rows.")
    named = schema(dataset.column_names, None, format)
    if columns is not None:
        unknown = sorted(set(columns) - set(CANDIDATE_COLUMNS))
        if unknown:
            raise ChesError(f"columns= names {unknown}, but ches.pairs reads only {list(CANDIDATE_COLUMNS)}.")
        if named == "ultrafeedback":
            raise ChesError(f"these are raw UltraFeedback rows ({', '.join(ULTRAFEEDBACK_COLUMNS)}), which ches.pairs "
                            "reads by their own names; columns= is for generic rows: drop columns= (--columns), and "
                            "pick the rating with rating_field= (--rating-field).")
        if named == "nectar":
            raise ChesError(f"these are Nectar rows ({', '.join(NECTAR_COLUMNS)}), which ches.pairs reads by their own "
                            "names; columns= is for generic rows: drop columns= (--columns).")
    if named == "nectar":
        if rating_field is not None:
            raise ChesError(f"rating_field={rating_field!r} picks the rating field of raw UltraFeedback rows, but these "
                            "are Nectar rows, rated by each answer's rank; drop it (--rating-field).")
        return to_candidates([from_nectar(row) for row in dataset],
                             {"prompt": "prompt", "responses": "answers", "ratings": "answers[*].rank"})
    if named == "ultrafeedback":
        if rating_field is not None:  # a name given (the default's absence is reported row by row)
            _check_rating_field(dataset, rating_field)
        rating_field = rating_field or ULTRAFEEDBACK_RATING
        return to_candidates([from_ultrafeedback(row, rating_field) for row in dataset],
                             {"prompt": "instruction", "responses": "completions",
                              "ratings": f"completions[*].{rating_field}"})
    if rating_field is not None:
        raise ChesError(f"rating_field={rating_field!r} picks the rating field of raw UltraFeedback rows, but these rows "
                        f"are generic ({', '.join(dataset.column_names[:6])}); drop it, and map your ratings column "
                        "with columns={'ratings': ...} (--columns ratings=...).")
    where = {name: (columns or {}).get(name, name) for name in CANDIDATE_COLUMNS}
    check_distinct_roles({name: column for name, column in where.items() if column in dataset.column_names})
    missing = [name for name in where.values() if name not in dataset.column_names]
    if missing:
        raise ChesError(f"missing column(s) {missing}; the data has {dataset.column_names}. ches.pairs needs a prompt, "
                        "a list of responses and a list of ratings per row: map yours with columns={'prompt': ..., "
                        "'responses': ..., 'ratings': ...} (--columns), or pass raw UltraFeedback rows.")
    return to_candidates([from_generic(row, where) for row in dataset], where)
