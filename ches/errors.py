"""The one error type of ches."""

from __future__ import annotations


class ChesError(ValueError):
    """Bad input to ches: the message names the row, column or value, what was expected, and the fix.

    A subclass of :class:`ValueError`, so ``except ValueError`` catches it too.
    """


def describe_rows(rows: list[int], limit: int = 5) -> str:
    """Name up to ``limit`` row indices, e.g. ``"rows 3, 17 and 2 more"``.

    >>> describe_rows([4])
    'row 4'
    >>> describe_rows([1, 2, 3, 4, 5, 6, 7], limit=3)
    'rows 1, 2, 3 and 4 more'
    """
    if len(rows) == 1:
        return f"row {rows[0]}"
    shown = ", ".join(str(row) for row in rows[:limit])
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return f"rows {shown}{more}"


def one_line(message: object, limit: int = 400) -> str:
    r"""``message`` (an error or text) on one line, at most ``limit`` characters: libraries' messages often
    span several lines, and ches prints every error as one.

    >>> one_line(ValueError("offsets\n   not monotonic"))
    'offsets not monotonic'
    """
    text = " ".join(str(message).split()) or "(no message)"
    return text if len(text) <= limit else text[: limit - 1] + "…"
