"""A ``ches validate`` result as a file: read back (:func:`load_validation`, :func:`read_validation`) and checked
to hold every field that ``ches report`` and ``ches audit`` read, of its kind (:func:`check_validation`), so that a
hand-edited or foreign JSON is one line naming the field, never a traceback halfway through a report.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ChesError
from ..options import VALIDATE_PROTOCOLS


def load_validation(path: str) -> dict:
    """A ``ches validate --output`` file, checked to be one (for ``ches report --validation``): every field the
    report shows present and of its kind (:func:`check_validation`)."""
    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ChesError(f"{path} does not exist; write it with ches validate DATA --model M --output {path}.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ChesError(f"{path} is not a JSON file written by ches validate: {error}") from None
    if not isinstance(result, dict) or not {"settings", "evidence", "recommendation"} <= set(result):
        raise ChesError(f"{path} is not a ches validate result (no settings, evidence and recommendation); write it "
                        "with ches validate ... --output, from this version of ches.")
    check_validation(result, str(path))
    return result


#: what ``ches report`` reads of a validation result: field -> the kind of value (``"number?"``: or null)
SETTINGS_FIELDS = {"protocol": "protocol", "model": "text", "n": "count", "learning_rate": "number", "beta": "number",
                   "max_length": "count?", "scored": "count"}
EVIDENCE_FIELDS = {"statistic": "number", "ci95": "interval", "status": "text"}
ADVICE_FIELDS = {"action": "action", "reason": "text", "command": "text?"}
FILTER_FIELDS = {"measure": "text", "quantile": "number", "threshold": "number", "kept": "count?"}
ACTIONS = ("filter", "do not filter", "not enough evidence")


def check_validation(result: dict, where: str) -> None:
    """Refuse a validation result (what :func:`validate` returned, or a hand-edited JSON of it) that
    ``ches report`` cannot show: one line naming ``where`` and the field, what it should be and what it is.

    >>> check_validation({"settings": {"protocol": "subsets"}, "evidence": {}, "recommendation": {}}, "val.json")
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: val.json: field 'settings.model' is missing (it should be text); write the file with ches validate ... --output.
    """
    _check_fields(result, "settings", SETTINGS_FIELDS, where)
    evidence = _check_object(result, "evidence", where)
    for name in evidence:
        _check_fields(evidence, name, EVIDENCE_FIELDS, where, "evidence.")
    advice = _check_fields(result, "recommendation", ADVICE_FIELDS, where)
    if advice["action"] == "filter":
        _check_fields(result, "recommendation", FILTER_FIELDS, where)


def _check_object(parent: dict, name: str, where: str, prefix: str = "") -> dict:
    value = parent.get(name)
    if not isinstance(value, dict):
        raise ChesError(f"{where}: field {prefix + name!r} should be an object ({{...}}), found {_shown(value)}.")
    return value


def _check_fields(parent: dict, name: str, kinds: dict[str, str], where: str, prefix: str = "") -> dict:
    """``parent[name]`` is an object whose fields in ``kinds`` hold values of those kinds."""
    value = _check_object(parent, name, where, prefix)
    for field, kind in kinds.items():
        label = f"{prefix}{name}.{field}"
        optional = kind.endswith("?")
        if field not in value:
            if optional:
                continue
            raise ChesError(f"{where}: field {label!r} is missing (it should be {_KINDS[kind][0]}); write the file with "
                            "ches validate ... --output.")
        if not (optional and value[field] is None) and not _KINDS[kind.rstrip("?")][1](value[field]):
            raise ChesError(f"{where}: field {label!r} should be {_KINDS[kind][0]}, found {_shown(value[field])}.")
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_KINDS = {  # kind -> (as said, the check)
    "number": ("a number", _is_number),
    "count": ("a whole number", lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= 0),
    "text": ("text", lambda value: isinstance(value, str)),
    "interval": ("a list of two numbers [low, high]",
                 lambda value: isinstance(value, list) and len(value) == 2 and all(map(_is_number, value))),
    "protocol": (f"one of {', '.join(map(repr, VALIDATE_PROTOCOLS))}", lambda value: value in VALIDATE_PROTOCOLS),
    "action": (f"one of {', '.join(map(repr, ACTIONS))}", lambda value: value in ACTIONS),
}
_KINDS.update({f"{kind}?": (f"{said} or null", check) for kind, (said, check) in list(_KINDS.items())})


def _shown(value) -> str:
    """A found value, as the error names it (short)."""
    if isinstance(value, (dict, list)):
        return f"{'an object' if isinstance(value, dict) else 'a list'} {json.dumps(value)[:40]!s}"
    return "null" if value is None else repr(value)[:60]




def read_validation(validation, where: str = "validation=") -> dict | None:
    """``validation=`` of :func:`ches.audit` and :func:`ches.report.write_report`: a :func:`ches.validate` result
    (a dict) or the path of its JSON (str or ``os.PathLike``), checked (:func:`check_validation`); None stays None.

    >>> read_validation({"settings": {}, "evidence": {}, "recommendation": {}})
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: validation=: field 'settings.protocol' is missing (it should be one of 'subsets', 'probes'); write the file with ches validate ... --output.
    """
    if validation is None:
        return None
    if isinstance(validation, (str, os.PathLike)):
        return load_validation(os.fspath(validation))
    if not isinstance(validation, dict):
        raise ChesError(f"{where} must be a ches.validate result (a dict) or the path of its JSON file; got "
                        f"{type(validation).__name__}.")
    check_validation(validation, where)
    return validation
