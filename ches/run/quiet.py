"""Other libraries' progress bars off for the duration of a ches call, so the user sees ches' own bar
(or, with ``progress=False`` / ``--no-progress``, none at all).

``datasets`` (map, filter, file conversion), ``transformers`` (weight loading) and ``huggingface_hub``
(downloads) each draw their own bars; inside :func:`library_bars_off` they are switched off and then
restored to what they were, so a caller's own use of those libraries is left as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def library_bars_off() -> Iterator[None]:
    """Switch the progress bars of ``datasets``, ``transformers`` and ``huggingface_hub`` off inside the block.

    >>> import datasets.utils.logging as logging
    >>> with library_bars_off():
    ...     logging.is_progress_bar_enabled()
    False
    """
    import datasets.utils.logging as datasets_logging
    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as transformers_logging

    restore = []
    if datasets_logging.is_progress_bar_enabled():
        datasets_logging.disable_progress_bar()
        restore.append(datasets_logging.enable_progress_bar)
    if transformers_logging.is_progress_bar_enabled():
        transformers_logging.disable_progress_bar()
        restore.append(transformers_logging.enable_progress_bar)
    if not hub_utils.are_progress_bars_disabled():
        hub_utils.disable_progress_bars()
        restore.append(hub_utils.enable_progress_bars)
    try:
        yield
    finally:
        for enable in restore:
            enable()
