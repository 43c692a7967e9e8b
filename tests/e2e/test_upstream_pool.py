"""The upstream connection is kept for the next client session (a pool of idle
connections), and one the upstream closed meanwhile is replaced unnoticed."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Pki, Stack, relay_with
from tests.support.mail import connect, make_message, send

SENDER = "jean.dupont@ch-exemple.mssante.fr"
DEST = "dr.martin@chu-b.mssante.fr"


def send_one(stack: Stack) -> None:
    with connect(stack) as client:
        _, (code, text) = send(client, SENDER, [DEST], make_message())
    assert code == 250, text


def test_next_session_reuses_the_connection_and_survives_its_loss(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    with relay_with(tmp_path, pki, password_hashes) as stack:
        send_one(stack)
        send_one(stack)
        ports = [meta["peer_port"] for meta, _ in stack.upstream.messages()]
        assert ports[0] == ports[1]  # one upstream connection for both sessions
        # The upstream goes away and comes back: the idle connection is dead.
        stack.upstream.stop()
        stack.upstream.start()
        send_one(stack)
        assert len(stack.upstream.messages()) == 3
        assert not stack.relay.events("upstream")  # no failure seen by anybody


def test_pool_size_zero_opens_a_connection_per_session(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    with relay_with(tmp_path, pki, password_hashes, pool_size=0) as stack:
        send_one(stack)
        send_one(stack)
        ports = [meta["peer_port"] for meta, _ in stack.upstream.messages()]
        assert ports[0] != ports[1]
