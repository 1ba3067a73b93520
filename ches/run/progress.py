"""ches' own progress bar. A scoring run's bar counts tokens, what the time is spent on: the rows run longest
first, so a bar counting pairs would open slow and promise hours for a run of seconds.

The rows are tokenized a few chunks ahead of the model, so the run's token count is known only for the
chunks tokenized so far; :class:`TokenProgress` estimates the rest from their characters (at the tokens
per character seen so far) and its total is exact once the last chunk is tokenized.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..data.tokens import SequencePair


def progress_bar(total: int | None, enabled: bool, unit: str = "pair", scale: bool = False):
    """A tqdm bar over ``total`` units (``None``: not known yet), or None when not ``enabled``; ``scale``
    writes large counts as 12.3k."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, desc="ches", unit_scale=scale)


def write_line(text: str, file=None) -> None:
    """Print a line of text (to ``file``, default stdout) without breaking a bar that is open (tqdm's ``write``)."""
    from tqdm.auto import tqdm

    tqdm.write(text, file=file)


def run_tokens(pairs: Sequence[SequencePair]) -> int:
    """The tokens the model runs for these pairs: both sequences (prompt + completion) of each.

    >>> from ches.data.tokens import TokenSequence
    >>> run_tokens([SequencePair(TokenSequence([1, 2, 3], 1, 2), TokenSequence([1, 2, 4, 5], 1, 3))])
    7
    """
    return sum(len(pair.chosen.input_ids) + len(pair.rejected.input_ids) for pair in pairs)


class TokenProgress:
    """A bar over the tokens of a run whose rows hold ``characters`` of text, made by :meth:`start`.

    >>> progress = TokenProgress(characters=1000, bar=None)
    >>> progress.planned(characters=400, tokens=100); progress.total
    250
    >>> progress.planned(characters=600, tokens=180); progress.total
    280
    """

    def __init__(self, characters: int, bar) -> None:
        self.bar = bar
        self.characters_left = characters
        self.characters_planned = 0
        self.tokens_planned = 0
        self.total: int | None = None

    @classmethod
    def start(cls, characters: int, enabled: bool) -> TokenProgress | None:
        """The bar of a run over ``characters`` of text, or None when not ``enabled``."""
        return cls(characters, progress_bar(None, True, unit="tok", scale=True)) if enabled else None

    def planned(self, characters: int, tokens: int) -> None:
        """A chunk of ``characters`` of text was tokenized into ``tokens`` to run: the total becomes the tokens
        planned plus the characters left at the tokens per character planned so far (exact after the last)."""
        self.characters_left -= characters
        self.characters_planned += characters
        self.tokens_planned += tokens
        if self.characters_left <= 0:
            self.total = self.tokens_planned
        elif self.characters_planned:
            self.total = self.tokens_planned + round(self.characters_left * self.tokens_planned / self.characters_planned)
        if self.bar is not None and self.total is not None:
            if self.bar.total is None and self.bar.n == 0:  # the first chunk: the clock starts with the model's work
                self.bar.reset(total=self.total)
            self.bar.total = self.total
            self.bar.refresh()

    def update(self, tokens: int) -> None:
        """``tokens`` more were run."""
        if self.bar is not None:
            self.bar.update(tokens)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
