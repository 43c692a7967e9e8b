"""An unexpected failure inside the relay: 451 4.3.0 with an id, never 5xx, never the
exception's text, and the relay goes on serving."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import Pki, Stack, base_config
from tests.support.mail import connect, make_message, send
from tests.support.processes import Relay, Upstream

SENDER = "jean.dupont@ch-exemple.mssante.fr"


def test_internal_error_is_451_430_with_an_id(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    # A capture « directory » that is a file: writing the message fails inside the
    # relay with an error nobody planned for.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    config = base_config(pki, password_hashes, 1, upstream={"capture": str(blocker / "sub")})
    relay = Relay(tmp_path, config)
    relay.start()
    try:
        stack = Stack(relay, Upstream(tmp_path), pki)
        for _ in range(2):  # and again: the relay is still there
            with connect(stack) as client:
                _, (code, text) = send(client, SENDER, ["a@chu.mssante.fr"], make_message())
            assert code == 451 and text.startswith(b"4.3.0"), text
            ref = re.search(rb"id ([0-9A-F]{12})", text)
            assert ref is not None
            assert b"NotADirectory" not in text and b"Errno" not in text
        errors = relay.wait_event("internal_error", count=2)
        assert [e["txid"] for e in errors][-1] == ref.group(1).decode()
        assert "Traceback" not in relay.process.stderr()
    finally:
        relay.stop()
