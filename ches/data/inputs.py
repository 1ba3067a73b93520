"""Input rows: turn whatever the user passes as ``data`` into a :class:`datasets.Dataset`.

Accepted: a ``Dataset``; a ``DatasetDict`` (one split chosen with ``split``, or all of them); a list
of dicts; a pandas DataFrame; a local ``.jsonl``/``.json``/``.parquet``/``.csv`` file (optionally
``.gz``); a folder written by ``save_to_disk``; or a Hugging Face Hub dataset id.

JSON Lines are read here line by line, so a broken line is reported by its number instead of as a
parser error from deep inside Arrow.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import datasets

from ..errors import ChesError, one_line
from .columns import all_types, column_feature, parse_columns, sidecar_reference, typed_cell, with_reference  # noqa: F401
from .formats import PAIR_COLUMNS, TEMPLATE_COLUMNS, Pair, to_pairs
from .paths import DATA_SUFFIXES, check_data_exists, read_sidecar, sidecar_path

Data = Union[datasets.Dataset, datasets.DatasetDict, Sequence[Mapping[str, Any]], "pandas.DataFrame", str, os.PathLike]  # noqa: F821

SUFFIXES = DATA_SUFFIXES


def load_data(data: Data, split: str | None = None) -> datasets.Dataset | datasets.DatasetDict:
    """Return ``data`` as a ``Dataset`` (or a ``DatasetDict`` when it has splits and none was chosen).

    Args:
        data: any of the accepted inputs (see the module docstring).
        split: the split to take from a ``DatasetDict``, a Hub dataset or a ``save_to_disk`` folder.

    Raises:
        ChesError: the path does not exist, the format is unknown, a line is not valid JSON, or the
            split is not in the data.

    >>> load_data([{"prompt": "Hi", "chosen": " yes", "rejected": " no"}]).column_names
    ['prompt', 'chosen', 'rejected']
    """
    if isinstance(data, datasets.DatasetDict):
        return _pick_split(data, split, "the DatasetDict")
    if isinstance(data, datasets.Dataset):
        if split is not None and data.split is not None and str(data.split) != split:
            raise ChesError(f"split={split!r} was given, but the Dataset passed is split {str(data.split)!r}; drop split=.")
        return data
    if _is_dataframe(data):
        try:
            return datasets.Dataset.from_pandas(data, preserve_index=False)
        except Exception as error:  # pyarrow: a column whose cells are of several types
            raise ChesError(f"the DataFrame's columns do not each hold one type ({type(error).__name__}: "
                            f"{one_line(error)}).") from None
    if isinstance(data, (str, os.PathLike)):
        return _load_path(str(data), split)
    if isinstance(data, Sequence) and all(isinstance(row, Mapping) for row in data):
        if not data:
            raise ChesError("data is an empty list; pass at least one row with 'chosen' and 'rejected'.")
        return _from_rows("data", list(data))
    raise ChesError(
        f"data of type {type(data).__name__} is not supported; pass a datasets.Dataset or DatasetDict, a list "
        f"of dicts, a pandas DataFrame, a path to a {'/'.join(SUFFIXES)} file or save_to_disk folder, or a Hub id."
    )


def _pick_split(dataset_dict: datasets.DatasetDict, split: str | None, what: str):
    if split is None:
        return dataset_dict
    if split not in dataset_dict:
        raise ChesError(f"split {split!r} is not in {what}; it has {sorted(dataset_dict)}.")
    return dataset_dict[split]


def _is_dataframe(data: Any) -> bool:
    return type(data).__name__ == "DataFrame" and hasattr(data, "to_dict")


def _load_path(path: str, split: str | None):
    local = Path(path)
    if local.is_dir():
        try:
            loaded = datasets.load_from_disk(path)
        except FileNotFoundError as error:
            raise ChesError(f"{path} is a folder but not one written by save_to_disk ({error}).") from None
        except Exception as error:  # a damaged save_to_disk folder: JSON, Arrow or OS errors
            raise ChesError(f"{path}: a save_to_disk folder that cannot be read ({type(error).__name__}: "
                            f"{one_line(error)}).") from None
        return load_data(loaded, split)
    if local.is_file():
        if split is not None:
            raise ChesError(f"split={split!r} was given, but {path} is a single file with no splits; drop --split/split=.")
        dataset, sidecar = _load_file(local), read_sidecar(local)
        check_rows_written(dataset, local, sidecar)
        reference = sidecar_reference(sidecar)  # what log-probs in the file were computed with, for a trainer
        return dataset if reference is None else with_reference(dataset, reference)
    check_data_exists(path)  # a local path that does not exist is not tried as a Hub id
    return _load_hub(path, split)


def check_rows_written(dataset: datasets.Dataset, path: Path, sidecar: dict | None) -> None:
    """Refuse a data file ches wrote whose rows, as read, are not as many as its sidecar records written.

    Only a sidecar ches wrote for a dataset file is compared (it has ``rows_written``, and no
    ``rows_written_per_split``: that is a folder's). A mismatch is always an error, never a warning:

    - the file is byte for byte the one ches wrote (the ``output_sha256`` its sidecar records): the reader
      split or joined rows, e.g. a text field holding a line break (a lone ``\\r`` in a CSV file an older
      ches wrote) read as two rows, each after it shifted; the file must be written again;
    - it is not (or the sidecar predates ``output_sha256``): the file was most likely edited after ches wrote
      it (rows dropped or added in pandas, a spreadsheet), and its sidecar no longer describes it. Such an edit
      is the user's right, but read on, the rows would carry a record (a run, log-probs' reference, a cut) of
      other rows, and a misread file looks the same; so the user says which it is, by moving or deleting the
      sidecar when the edit was intended. An edit that keeps the number of rows passes.

    >>> rows = datasets.Dataset.from_list([{"chosen": "a", "rejected": "b"}])
    >>> check_rows_written(rows, Path("s.csv"), {"rows_written": 1})
    >>> check_rows_written(rows, Path("s.csv"), {"rows_written": 2})
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: s.csv: 1 rows read, but its sidecar s.csv.meta.json records 2 rows written by ches; the file was changed after ches wrote it, or a text field holding a line break was read as two rows: if the change was intended, move or delete s.csv.meta.json (it describes the file as ches wrote it); if not, write the file again.
    """
    written = sidecar.get("rows_written") if isinstance(sidecar, dict) else None
    if not isinstance(written, int) or isinstance(written, bool) or "rows_written_per_split" in sidecar:
        return
    read = dataset.num_rows
    if read == written:
        return
    from .export import file_sha256

    record = sidecar_path(path)
    digest = sidecar.get("output_sha256")
    if isinstance(digest, str) and path.is_file() and file_sha256(path) == digest:
        cause = ("the file is as ches wrote it, so the reader split its rows: a text field holding a line break (a "
                 "lone \\r in a CSV file an older ches wrote) read as two rows; write the file again with this ches "
                 "(from a Parquet or JSON Lines copy, or by the command its sidecar records)")
    else:
        cause = (f"the file was changed after ches wrote it, or a text field holding a line break was read as two "
                 f"rows: if the change was intended, move or delete {record} (it describes the file as ches wrote "
                 "it); if not, write the file again")
    raise ChesError(f"{path}: {read} rows read, but its sidecar {record} records {written} rows written by ches; "
                    f"{cause}.")


def _load_file(path: Path) -> datasets.Dataset:
    suffixes = path.suffixes[-2:] if path.suffix == ".gz" else path.suffixes[-1:]
    kind = suffixes[0] if suffixes else ""
    if kind == ".jsonl":
        return _from_rows(path, _read_json_lines(path))
    if kind == ".json":
        return _from_rows(path, _read_json(path))
    if kind == ".parquet":
        import pyarrow.parquet

        try:
            rows = pyarrow.parquet.ParquetFile(path).metadata.num_rows
            if rows:
                return datasets.Dataset.from_parquet(str(path))
        except Exception as error:  # pyarrow's errors for a damaged or foreign file
            raise ChesError(f"{path}: not a readable Parquet file ({type(error).__name__}: {one_line(error)}).") from None
        raise ChesError(f"{path} holds no rows.")
    if kind == ".csv":
        import pandas

        try:
            # every cell as a Python str (dtype=str is pandas 3's Arrow strings, large_string in datasets: not the
            # string type the same rows have read from Parquet or JSON); no cell read as NaN
            frame = pandas.read_csv(path, dtype=object, keep_default_na=False, na_values=[])
        except (pandas.errors.ParserError, pandas.errors.EmptyDataError, UnicodeDecodeError) as error:
            raise ChesError(f"{path}: not a readable CSV file ({one_line(error)}).") from None
        dataset = datasets.Dataset.from_pandas(frame, preserve_index=False)
        return _typed_score_columns(dataset, path)
    raise ChesError(f"cannot tell the format of {path}: expected a name ending in {', '.join(SUFFIXES)} (optionally + .gz).")


def _typed_score_columns(dataset: datasets.Dataset, path: Path | str = "the CSV file") -> datasets.Dataset:
    """The columns ches writes (:func:`ches.data.columns.all_types`: scores, log-probs, ranks, audit columns) of a
    CSV file, read as text, back in their types (empty cells as NaN / None), so that a CSV file ches wrote
    reads back as its Parquet file does, and goes through ``ches filter``, ``ches audit`` and ``ches report``
    alike; the other columns stay text."""
    order = dataset.column_names
    present = [name for name in all_types() if name in order]
    for name in present:
        texts = dataset[name]
        try:
            values = [typed_cell(name, text) for text in texts]
        except ValueError:
            row, text = next((row, text) for row, text in enumerate(texts) if not _fits(name, text))
            kind = all_types()[name]
            raise ChesError(f"{path}, row {row}, column {name!r}: {text!r} is not a {kind} value, which ches writes "
                            "there; is it a file ches wrote? Rename your own column if it only shares the name."
                            ) from None
        dataset = dataset.remove_columns(name).add_column(name, values, feature=column_feature(name))
    return dataset.select_columns(order) if present else dataset


def _fits(name: str, text: str) -> bool:
    """Whether :func:`ches.data.columns.typed_cell` reads ``text`` as a value of column ``name``."""
    try:
        typed_cell(name, text)
    except ValueError:
        return False
    return True


def _open(path: Path, mode: str = "rt"):
    opener = gzip.open if path.suffix == ".gz" else open
    return opener(path, mode, encoding="utf-8") if "t" in mode else opener(path, mode)


def _read_json_lines(path: Path) -> list[dict]:
    """Rows of a JSON Lines file; blank lines are allowed, anything else broken is named by line number."""
    rows = []
    line_number = 0
    try:
        with _open(path, "rb") as handle:
            for line_number, raw in enumerate(handle, start=1):
                line = raw.decode("utf-8")
                if line.strip():
                    rows.append(_json_object(line, path, line_number))
    except UnicodeDecodeError:
        raise ChesError(f"{path}, line {line_number}: not valid UTF-8 text; re-encode the file as UTF-8.") from None
    except (EOFError, OSError) as error:
        raise ChesError(f"{path}: truncated or unreadable after line {line_number} ({error}).") from None
    return rows


def _json_object(line: str, path: Path, line_number: int) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise ChesError(f"{path}, line {line_number}: not valid JSON ({error.msg} at column {error.colno}).") from None
    if not isinstance(row, dict):
        raise ChesError(f"{path}, line {line_number}: expected a JSON object, found {type(row).__name__}.")
    return row


def _read_json(path: Path) -> list[dict]:
    try:
        with _open(path) as handle:
            content = json.load(handle)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":  # JSON Lines under a .json name, as Dataset.to_json writes by default
            return _read_json_lines(path)
        raise ChesError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}).") from None
    except UnicodeDecodeError:
        raise ChesError(f"{path}: not valid UTF-8 text.") from None
    if isinstance(content, dict) and isinstance(content.get("data"), list):
        content = content["data"]
    if not isinstance(content, list) or not all(isinstance(row, dict) for row in content):
        raise ChesError(f"{path}: expected a JSON list of row objects (or {{'data': [...]}}).")
    return content


def _from_rows(path: Path | str, rows: list) -> datasets.Dataset:
    if not rows:
        raise ChesError(f"{path} holds no rows.")
    try:
        return datasets.Dataset.from_list([dict(row) for row in rows])
    except Exception as error:  # pyarrow raises several types for inconsistent rows
        invalid = invalid_text(rows)
        if invalid is not None:
            row, name, text = invalid
            raise ChesError(f"{path}, row {row}, column {name!r}: the text holds {text}, which is not valid Unicode "
                            "(a lone UTF-16 surrogate, e.g. half of an escaped emoji); fix or drop the row.") from None
        raise ChesError(f"{path}: rows do not share one schema, e.g. a column holding text in one row and a list "
                        f"or number in another ({type(error).__name__}: {one_line(error)}).") from None


def invalid_text(rows: list) -> tuple[int, str, str] | None:
    """The first ``(row, column, character)`` whose text cannot be written as UTF-8 (a lone surrogate such as
    ``"\\ud800"``, which JSON allows), searched in nested lists and dicts too; None if every text can.

    >>> invalid_text([{"chosen": "ok"}, {"chosen": [{"content": "bad \\ud800"}]}])
    (1, 'chosen', "'\\\\ud800'")
    """
    def bad(value):
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as error:
                return repr(value[error.start])
            return None
        items = value.values() if isinstance(value, Mapping) else value if isinstance(value, (list, tuple)) else ()
        return next((found for found in map(bad, items) if found is not None), None)

    for index, row in enumerate(rows):
        for name, value in dict(row).items():
            found = bad(value)
            if found is not None:
                return index, name, found
    return None


def _load_hub(name: str, split: str | None):
    from .hub import offline_unless_reachable

    with offline_unless_reachable(name) as reason:
        try:
            return datasets.load_dataset(name, split=split)
        except Exception as error:
            if reason:
                raise ChesError(f"{name!r} is not an existing local path, and as a Hub dataset id it cannot be "
                                f"loaded: {reason}, and it is not in the local datasets cache.") from None
            raise ChesError(
                f"{name!r} is neither an existing local path nor a loadable Hub dataset ({type(error).__name__}: "
                f"{one_line(error)})."
            ) from None


def column(dataset: datasets.Dataset, name: str) -> list:
    """A whole column as a Python list, fetched in one Arrow read (not row by row).

    >>> column(datasets.Dataset.from_list([{"a": 1}, {"a": 2}]), "a")
    [1, 2]
    """
    return list(dataset[name][:])


def pair_columns(dataset: datasets.Dataset, columns: Mapping[str, str] | None = None) -> dict[str, list]:
    """The columns :func:`ches.data.formats.to_pairs` reads (prompt/chosen/rejected and TRL's template inputs),
    under ches' names; ``columns`` maps a ches name to the data's own column (``{"chosen": "answer_a"}``).

    >>> sorted(pair_columns(datasets.Dataset.from_list([{"chosen": "a", "rejected": "b", "id": 1}])))
    ['chosen', 'rejected']
    >>> pair_columns(datasets.Dataset.from_list([{"q": "Hi?", "good": " Yes", "bad": " No"}]),
    ...              {"prompt": "q", "chosen": "good", "rejected": "bad"})
    {'prompt': ['Hi?'], 'chosen': [' Yes'], 'rejected': [' No']}
    """
    mapping = check_columns(dataset, columns)
    return {name: column(dataset, mapping.get(name, name)) for name in PAIR_COLUMNS + TEMPLATE_COLUMNS
            if mapping.get(name, name) in dataset.column_names}


def check_columns(dataset: datasets.Dataset, columns: Mapping[str, str] | None) -> dict[str, str]:
    """``columns`` checked against ches' names and the data's columns (``{}`` for None)."""
    if columns is None:
        return {}
    if not isinstance(columns, Mapping):
        raise ChesError(f"columns= must map ches' names to your columns, e.g. {{'chosen': 'answer_a'}}; got "
                        f"{type(columns).__name__}.")
    roles = PAIR_COLUMNS + TEMPLATE_COLUMNS
    unknown = sorted(set(columns) - set(roles))
    if unknown:
        raise ChesError(f"columns= names {unknown}, but ches reads only {list(roles)}; map those to your columns.")
    absent = {role: name for role, name in columns.items() if name not in dataset.column_names}
    if absent:
        raise ChesError(f"columns= maps to {sorted(absent.values())}, which the data does not have; its columns are "
                        f"{dataset.column_names}.")
    check_distinct_roles({role: columns.get(role, role) for role in roles
                          if columns.get(role, role) in dataset.column_names})
    return dict(columns)


def check_distinct_roles(where: Mapping[str, str]) -> None:
    """Refuse one column read for two roles (``chosen`` and ``rejected`` from one column score every pair
    as identical); ``where`` maps each role to the column it reads, mapped or by its own name.

    >>> check_distinct_roles({"prompt": "q", "chosen": "answer", "rejected": "answer"})
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: column 'answer' would be read as both 'chosen' and 'rejected'; map each role to its own column (columns=, --columns).
    """
    readers: dict[str, list[str]] = {}
    for role, name in where.items():
        readers.setdefault(name, []).append(role)
    shared = {name: roles for name, roles in readers.items() if len(roles) > 1}
    if shared:
        name, roles = next(iter(shared.items()))
        raise ChesError(f"column {name!r} would be read as both {' and '.join(map(repr, roles))}; map each role to its "
                        "own column (columns=, --columns).")


def read_columns(dataset: datasets.Dataset, columns: Mapping[str, str] | None = None) -> list[str]:
    """The columns of ``dataset`` that ches reads for a role (mapped by ``columns``, or by ches' own names).

    >>> read_columns(datasets.Dataset.from_list([{"q": "Hi", "chosen": " a", "rejected": " b", "id": 1}]), {"prompt": "q"})
    ['q', 'chosen', 'rejected']
    """
    mapping = dict(columns or {}) if isinstance(columns, Mapping) else {}
    where = [mapping.get(role, role) for role in PAIR_COLUMNS + TEMPLATE_COLUMNS]
    return [name for name in where if name in dataset.column_names]


def preference_pairs(dataset: datasets.Dataset, split_name: str | None = None,
                     columns: Mapping[str, str] | None = None, first_row: int = 0, *, warn: bool = True) -> list[Pair]:
    """The rows of ``dataset`` as normalized pairs, or a :class:`ChesError` naming what is wrong (no
    rows, missing columns, bad cells), prefixed with the split's name when there is one; ``first_row``
    is the row number of ``dataset``'s first row (in errors), when it is a block of a larger table."""
    if len(dataset) == 0:
        raise ChesError(f"the data{f' (split {split_name!r})' if split_name else ''} has no rows.")
    mapping = check_columns(dataset, columns)
    missing = [name for name in ("chosen", "rejected") if mapping.get(name, name) not in dataset.column_names]
    if missing:
        raise ChesError(
            f"missing column(s) {missing}; the data has {dataset.column_names}. A preference data set needs 'chosen' "
            "and 'rejected' (and optionally 'prompt'): map yours with columns={'chosen': 'answer_a', ...} "
            "(--columns chosen=answer_a,... on the command line)."
        )
    try:
        return to_pairs(pair_columns(dataset, mapping), first_row, warn=warn)
    except ChesError as error:
        if split_name is None:
            raise
        raise ChesError(f"split {split_name!r}: {error}") from None
