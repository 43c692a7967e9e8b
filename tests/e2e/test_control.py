"""The control socket: « mss-relay unlock » lifts an AUTH lockout on the
running relay, in every worker; without a relay, one clear line."""

from __future__ import annotations

import smtplib
import stat
from pathlib import Path

import pytest

from tests.conftest import PASSWORDS, Pki, base_config
from tests.e2e.test_reload import mss_relay
from tests.support.processes import Relay, Upstream

THROTTLE = {"auth_max_failures_per_user": 2, "auth_failure_delay": 0, "auth_lockout": "1h"}


def login(relay: Relay, pki: Pki, password: str) -> tuple[int, bytes]:
    client = smtplib.SMTP("127.0.0.1", relay.port, timeout=30)
    try:
        client.ehlo("client.test")
        client.starttls(context=pki.client_context())
        client.ehlo("client.test")
        try:
            client.login("jdupont", password)
        except smtplib.SMTPAuthenticationError as error:
            return error.smtp_code, error.smtp_error
        return 235, b""
    finally:
        client.close()


def locked_workers(relay: Relay) -> set[int]:
    return {e.get("worker", 0) for e in relay.events("auth") if e.get("result") == "locked"}


@pytest.mark.parametrize("workers", [1, 2])
def test_unlock_lifts_a_lockout_in_every_worker(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str], workers: int
) -> None:
    upstream = Upstream(tmp_path)
    upstream.start()
    config = base_config(pki, password_hashes, upstream.port, workers=workers, throttle=THROTTLE)
    relay = Relay(tmp_path, config)
    relay.start()
    try:
        assert len(relay.wait_event("started", count=workers)) == workers
        socket = tmp_path / "var" / "control.socket"  # beside the state database
        assert stat.S_IMODE(socket.stat().st_mode) == 0o600
        # Wrong passwords until every worker has locked the user out (each
        # process counts its own: the kernel spreads the connections).
        for _ in range(200):
            if locked_workers(relay) == set(range(workers)):
                break
            login(relay, pki, "wrong password")
        assert locked_workers(relay) == set(range(workers))
        assert login(relay, pki, PASSWORDS["jdupont"])[0] == 454  # even the right one

        done = mss_relay("unlock", "jdupont", "--config", str(relay.config_path))
        assert done.returncode == 0, done
        assert done.stdout.strip() == (
            f"mss-relay: jdupont: lockout lifted (user) ({workers} process(es))"
        )
        unlocked = relay.wait_event("unlocked", count=workers)
        assert {e.get("worker", 0) for e in unlocked} == set(range(workers))
        assert all(e["key"] == "jdupont" and e["lifted"] == ["user"] for e in unlocked)
        for _ in range(8):  # whichever worker takes the connection
            assert login(relay, pki, PASSWORDS["jdupont"])[0] == 235

        again = mss_relay("unlock", "jdupont", "--config", str(relay.config_path))
        assert again.returncode == 0
        assert "jdupont: was not locked out" in again.stdout
    finally:
        assert relay.stop() == 0
        upstream.stop()
    assert not socket.exists()  # removed at the stop

    # No relay: one line, exit 1, no traceback.
    for command in (["unlock", "jdupont"], ["reload"]):
        done = mss_relay(*command, "--config", str(relay.config_path))
        assert done.returncode == 1
        assert done.stderr == (
            f"mss-relay: {command[0]}: the relay is not running (nothing listens on {socket})\n"
        )


def test_unlock_by_client_address(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    upstream = Upstream(tmp_path)
    upstream.start()
    throttle = {"auth_max_failures_per_client": 2, "auth_failure_delay": 0}
    relay = Relay(tmp_path, base_config(pki, password_hashes, upstream.port, throttle=throttle))
    relay.start()
    try:
        for _ in range(50):
            if locked_workers(relay):
                break
            login(relay, pki, "wrong password")
        done = mss_relay("unlock", "127.0.0.1", "--config", str(relay.config_path))
        assert done.returncode == 0, done
        assert "127.0.0.1: lockout lifted (client)" in done.stdout
        assert login(relay, pki, PASSWORDS["jdupont"])[0] == 235
    finally:
        assert relay.stop() == 0
        upstream.stop()
