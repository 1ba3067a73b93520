"""The Hugging Face Hub, asked once before anything is fetched from it: is it there at all?

Without this, a model or data set named by Hub id on a machine with no connection costs tens of
seconds of retries (each logged) before failing. Here a Hub id on such a machine is looked up in the
local cache only, and if it is not there the error says so in one line, in seconds.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlparse


def is_local(name: str) -> bool:
    """Whether ``name`` is a path on this machine rather than a Hub id."""
    return os.path.exists(os.path.expanduser(str(name)))


def unreachable(timeout: float = 3.0) -> str | None:
    """``None`` when the Hub can be reached; else why not (offline mode set, or no connection).

    >>> import huggingface_hub.constants as constants, unittest.mock as mock
    >>> with mock.patch.object(constants, "HF_HUB_OFFLINE", True):
    ...     unreachable()
    'offline mode is on (HF_HUB_OFFLINE=1)'
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "offline mode is on (HF_HUB_OFFLINE=1)"
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
    except OSError as error:
        return f"{constants.ENDPOINT} cannot be reached ({error.strerror or error})"
    return None


@contextlib.contextmanager
def offline_unless_reachable(name: str) -> Iterator[str | None]:
    """Inside the block, the Hub libraries work from the local cache only if ``name`` is a Hub id and the
    Hub cannot be reached (their offline switches set, then restored); yields why, or ``None``."""
    reason = None if is_local(name) else unreachable()
    if reason is None:
        yield None
        return
    import datasets.config
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield reason
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved
