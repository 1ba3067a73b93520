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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Union

import datasets

from ..errors import ChesError, one_line
from .columns import all_types, column_feature, parse_columns, sidecar_reference, typed_cell, with_reference  # noqa: F401
from .formats import PAIR_COLUMNS, TEMPLATE_COLUMNS, Pair, to_pairs
from .frameworks import FORMATS, Format, detect_format, get_format, ranked_layout, to_trl_columns
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


#: ``format=`` for TRL's own columns, read as they are (no layout detected)
TRL_FORMAT = "trl"
#: the column a system text may be mapped from (``columns={"system": ...}``): a system turn of conversational rows
SYSTEM_ROLE = "system"
#: the names ``columns=`` maps for TRL's rows: the pair's columns, TRL's template inputs, a system text
TRL_ROLES = PAIR_COLUMNS + TEMPLATE_COLUMNS + (SYSTEM_ROLE,)


@dataclass(frozen=True)
class Reading:
    """How a table's rows are read as pairs: ``columns`` maps the names ches reads (TRL's roles, or a layout's
    columns) to the data's own columns, and ``format`` names the layout (:data:`TRL_FORMAT`, a name in
    :data:`ches.data.frameworks.FORMATS`, or None: detected from the columns, :func:`resolve_reading`).

    >>> Reading({"prompt": "q"}).roles({"q": 1, "chosen": 1})
    {'prompt': 'q', 'chosen': 'chosen'}
    """

    columns: Mapping[str, str] | None = None
    format: str | None = None

    @property
    def layout(self) -> Format | None:
        """The layout named (None for TRL's columns, or while undetected)."""
        return None if self.format in (None, TRL_FORMAT) else get_format(self.format)

    def names(self) -> tuple[str, ...]:
        """The names this reading reads: a layout's columns, or TRL's roles."""
        layout = self.layout
        return TRL_ROLES if layout is None else tuple(layout.reads) + tuple(getattr(layout, "optional", ()))

    def roles(self, column_names) -> dict[str, str]:
        """Each name read -> the data's column it is read from (mapped by ``columns``, or its own name), for the
        names the data has; TRL's rows read a system text only when ``columns`` maps it (TRL reads none)."""
        mapping = dict(self.columns or {}) if isinstance(self.columns, Mapping) else {}
        names = [name for name in self.names() if self.layout is not None or name != SYSTEM_ROLE or name in mapping]
        where = {name: mapping.get(name, name) for name in dict.fromkeys((*names, *mapping))}
        return {name: column for name, column in where.items() if column in column_names}


def reading_of(columns: Reading | Mapping[str, str] | None) -> Reading:
    """``columns`` as a :class:`Reading` (a mapping, or None, reads TRL's columns or a detected layout)."""
    return columns if isinstance(columns, Reading) else Reading(columns)


def check_format(format: str | None) -> str | None:
    """``format`` when it names a layout ches reads (:data:`TRL_FORMAT`, a :data:`~ches.data.frameworks.FORMATS`
    name) or is None, else a :class:`ChesError` listing the names.

    >>> check_format("trl"), check_format(None)
    ('trl', None)
    """
    if format is not None and format != TRL_FORMAT:
        if not isinstance(format, str) or format not in FORMATS:
            raise ChesError(f"format={format!r} (--format) is not a layout ches reads; use one of "
                            f"{[TRL_FORMAT, *sorted(FORMATS)]} (or leave it out to detect the layout).")
    return format


def resolve_reading(column_names, reading: Reading | Mapping[str, str] | None) -> Reading:
    """``reading`` with its layout decided: the one named, or detected from ``column_names`` (under the names
    ``columns=`` maps them to). A table with TRL's ``prompt``, ``chosen`` and ``rejected`` is read as TRL's (as
    always), and so is one that fits no layout, or only one reading no column TRL does not; an ambiguous table
    is refused naming the layouts that fit (:func:`~ches.data.frameworks.detect_format`).

    >>> resolve_reading(["system", "question", "chosen", "rejected"], None).format
    'axolotl.chatml.intel'
    >>> resolve_reading(["prompt", "chosen", "rejected", "system"], None).format
    'trl'
    """
    reading = reading_of(reading)
    if reading.format is not None:
        check_format(reading.format)
        return reading
    names = mapped_names(reading.columns, column_names)
    if all(name in names for name in PAIR_COLUMNS):  # TRL's explicit-prompt rows: always read as they are
        return replace(reading, format=TRL_FORMAT)
    beyond_trl = [item for item in FORMATS.values() if item.fits(names) and not set(item.reads) <= set(TRL_ROLES)]
    found = detect_format(names) if beyond_trl else None
    return replace(reading, format=TRL_FORMAT if found is None or set(found.reads) <= set(TRL_ROLES) else found.name)


def mapped_names(columns: Mapping[str, str] | None, column_names) -> list[str]:
    """The data's column names under the names ``columns=`` maps them to (what layouts are fitted to).

    >>> mapped_names({"question": "q"}, ["q", "chosen"])
    ['question', 'chosen']
    """
    inverse = {column: name for name, column in (dict(columns) if isinstance(columns, Mapping) else {}).items()}
    return [inverse.get(name, name) for name in column_names]


def pair_columns(dataset: datasets.Dataset, columns: Reading | Mapping[str, str] | None = None,
                 first_row: int = 0) -> dict[str, list]:
    """The columns :func:`ches.data.formats.to_pairs` reads (prompt/chosen/rejected and TRL's template inputs),
    under TRL's names: TRL's columns as they are (``columns`` maps a ches name to the data's own column,
    ``{"chosen": "answer_a"}``; a mapped ``system`` text becomes the system turn of conversational rows), or a
    layout's rows (``columns`` a :class:`Reading` naming it, or detected) as the TRL rows they mean.

    >>> sorted(pair_columns(datasets.Dataset.from_list([{"chosen": "a", "rejected": "b", "id": 1}])))
    ['chosen', 'rejected']
    >>> pair_columns(datasets.Dataset.from_list([{"q": "Hi?", "good": " Yes", "bad": " No"}]),
    ...              {"prompt": "q", "chosen": "good", "rejected": "bad"})
    {'prompt': ['Hi?'], 'chosen': [' Yes'], 'rejected': [' No']}
    >>> pair_columns(datasets.Dataset.from_list([{"system": "", "question": "Hi?", "chosen": "Yes", "rejected": "No"}]))["prompt"]
    [[{'role': 'user', 'content': 'Hi?'}]]
    """
    reading = resolve_reading(dataset.column_names, reading_of(columns))
    check_columns(dataset, reading)
    read = {name: column(dataset, source) for name, source in reading.roles(dataset.column_names).items()}
    if reading.layout is not None:
        return to_trl_columns(read, reading.layout, first_row) if len(dataset) else {}
    system = read.pop(SYSTEM_ROLE, None)
    return read if system is None else with_system(read, system, first_row)


def with_system(columns: dict[str, list], system: list, first_row: int = 0) -> dict[str, list]:
    """TRL's columns with a system text per row (``columns={"system": ...}``) as the first turn of each
    conversational row's prompt (of both transcripts, for an implicit prompt; none where the text is empty or
    None). Standard rows have no chat template to put it in (TRL has no system text for them): refused.

    >>> with_system({"prompt": [[{"role": "user", "content": "Hi"}]], "chosen": [[]], "rejected": [[]]}, ["Be kind."])["prompt"]
    [[{'role': 'system', 'content': 'Be kind.'}, {'role': 'user', 'content': 'Hi'}]]
    >>> with_system({"prompt": ["Hi"], "chosen": [" a"], "rejected": [" b"]}, ["Be kind."])
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: columns= maps 'system', but these rows are standard strings (row 0 of 'chosen'): TRL has no chat template, so no system turn, for them; write them as conversational rows, or name their layout with format= (--format), e.g. axolotl.chatml.intel.
    """
    if not isinstance((columns.get("chosen") or [None])[0], list):
        raise ChesError(f"columns= maps 'system', but these rows are standard strings (row {first_row} of 'chosen'): TRL "
                        "has no chat template, so no system turn, for them; write them as conversational rows, or name "
                        "their layout with format= (--format), e.g. axolotl.chatml.intel.")
    bad = [row for row, text in enumerate(system, first_row) if text is not None and not isinstance(text, str)]
    if bad:
        raise ChesError(f"the system column must hold a string (or None) in every row; row {bad[0]} holds "
                        f"{type(system[bad[0] - first_row]).__name__}.")
    carries = ["prompt"] if "prompt" in columns else ["chosen", "rejected"]
    out = dict(columns)
    for name in carries:
        out[name] = [[{"role": "system", "content": text}, *value] if text and isinstance(value, list) else value
                     for value, text in zip(columns[name], system)]
    return out


def check_columns(dataset: datasets.Dataset, columns: Reading | Mapping[str, str] | None) -> dict[str, str]:
    """``columns`` (of a :class:`Reading`) checked against the names its layout reads (TRL's roles, a
    ``system`` text, or a layout's columns) and the data's columns (``{}`` for None)."""
    reading = reading_of(columns)
    columns = reading.columns
    if reading.layout is not None:
        lacking = [name for name in reading.layout.reads if name not in reading.roles(dataset.column_names)]
        if lacking:
            raise ChesError(f"format={reading.format!r} reads the column(s) {list(reading.layout.reads)}, and the data "
                            f"has no {lacking} (its columns are {dataset.column_names}); map yours with columns= "
                            f"(--columns {lacking[0]}=COLUMN), or name its layout (format=, --format).")
    if columns is None:
        return {}
    if not isinstance(columns, Mapping):
        raise ChesError(f"columns= must map ches' names to your columns, e.g. {{'chosen': 'answer_a'}}; got "
                        f"{type(columns).__name__}.")
    roles = reading.names()
    unknown = sorted(set(columns) - set(roles))
    if unknown:
        what = f"the layout {reading.format} reads" if reading.layout is not None else "ches reads"
        raise ChesError(f"columns= names {unknown}, but {what} only {list(roles)}; map those to your columns.")
    absent = {role: name for role, name in columns.items() if name not in dataset.column_names}
    if absent:
        raise ChesError(f"columns= maps to {sorted(absent.values())}, which the data does not have; its columns are "
                        f"{dataset.column_names}.")
    check_distinct_roles(reading.roles(dataset.column_names))
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


def read_columns(dataset: datasets.Dataset, columns: Reading | Mapping[str, str] | None = None) -> list[str]:
    """The columns of ``dataset`` that ches reads (for TRL's roles, mapped by ``columns`` or by their own names,
    or the columns of the layout a :class:`Reading` names or the columns fit).

    >>> read_columns(datasets.Dataset.from_list([{"q": "Hi", "chosen": " a", "rejected": " b", "id": 1}]), {"prompt": "q"})
    ['q', 'chosen', 'rejected']
    """
    reading = resolve_reading(dataset.column_names, reading_of(columns))
    return list(dict.fromkeys(reading.roles(dataset.column_names).values()))


def as_trl_rows(dataset: datasets.Dataset, columns: Reading | Mapping[str, str] | None) -> datasets.Dataset:
    """``dataset`` as TRL's trainer reads it: the columns a layout's rows (or TRL's rows under other names, or
    with a ``system`` text) are read from replaced by the TRL columns they mean (:func:`pair_columns`), every
    other column kept; TRL's own columns under their names come back as they are.

    >>> rows = datasets.Dataset.from_list([{"system": "", "question": "Hi?", "chosen": "Yes", "rejected": "No", "id": 7}])
    >>> as_trl_rows(rows, None)[0]["prompt"], sorted(as_trl_rows(rows, None).column_names)
    ([{'role': 'user', 'content': 'Hi?'}], ['chosen', 'id', 'prompt', 'rejected'])
    """
    reading = resolve_reading(dataset.column_names, reading_of(columns))
    read = reading.roles(dataset.column_names)
    if reading.layout is None and all(name == role for role, name in read.items()) and SYSTEM_ROLE not in read:
        return dataset
    taken = [name for name in PAIR_COLUMNS + TEMPLATE_COLUMNS if name in dataset.column_names and name not in read.values()]
    if taken:
        raise ChesError(f"the rows are read from {sorted(set(read.values()))}, but TRL's trainer reads {taken[0]!r}, "
                        f"which is another column of the data; rename or drop {taken[0]!r}.")

    def convert(block: dict[str, list], indices: list[int]) -> dict[str, list]:
        table = datasets.Dataset.from_dict({name: block[name] for name in set(read.values())})
        return pair_columns(table, reading, first_row=indices[0] if indices else 0)

    return dataset.map(convert, batched=True, with_indices=True, remove_columns=sorted(set(read.values())),
                       desc=None, load_from_cache_file=False)


def preference_pairs(dataset: datasets.Dataset, split_name: str | None = None,
                     columns: Reading | Mapping[str, str] | None = None, first_row: int = 0, *, warn: bool = True) -> list[Pair]:
    """The rows of ``dataset`` as normalized pairs, or a :class:`ChesError` naming what is wrong (no
    rows, missing columns, bad cells), prefixed with the split's name when there is one; ``first_row``
    is the row number of ``dataset``'s first row (in errors), when it is a block of a larger table."""
    if len(dataset) == 0:
        raise ChesError(f"the data{f' (split {split_name!r})' if split_name else ''} has no rows.")
    reading = resolve_reading(dataset.column_names, reading_of(columns))
    mapping = check_columns(dataset, reading)
    missing = [name for name in ("chosen", "rejected") if mapping.get(name, name) not in dataset.column_names]
    if missing and reading.layout is None:
        ranked = ranked_layout(dataset.column_names)
        hint = (f" These look like {ranked} rows, several rated responses per prompt: build pairs from them with "
                "ches.pairs (ches pairs)." if ranked else "")
        raise ChesError(
            f"missing column(s) {missing}; the data has {dataset.column_names}. A preference data set needs 'chosen' "
            "and 'rejected' (and optionally 'prompt'): map yours with columns={'chosen': 'answer_a', ...} "
            f"(--columns chosen=answer_a,... on the command line).{hint}"
        )
    try:
        return to_pairs(pair_columns(dataset, reading, first_row), first_row, warn=warn)
    except ChesError as error:
        if split_name is None:
            raise
        raise ChesError(f"split {split_name!r}: {error}") from None
