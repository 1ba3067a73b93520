"""A Hub id with no connection fails at once, in one line."""

from __future__ import annotations

import pytest
from edges import assert_one_line_error, digest, run_cli


@pytest.mark.parametrize("offline", [True, False])
def test_a_hub_id_without_a_connection_fails_at_once_in_one_line(offline, workdir, capsys, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: refused at once
    why = r"offline mode is on \(HF_HUB_OFFLINE=1\)" if offline else r"http://127.0.0.1:9 cannot be reached"
    before = digest(workdir)
    assert_one_line_error(*run_cli(["score", "pairs.jsonl", "-m", "some-org/some-model"], capsys),
                          rf"could not load model 'some-org/some-model': it is not a local folder, {why}")
    assert_one_line_error(*run_cli(["score", "some-org/some-data", "-m", "model"], capsys),
                          rf"'some-org/some-data' is not an existing local path, and as a Hub dataset id .*{why}")
    assert digest(workdir) == before and constants.HF_HUB_OFFLINE == offline  # the switch is given back
