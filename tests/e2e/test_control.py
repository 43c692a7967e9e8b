"""The control socket: « mss-relay unlock » lifts an AUTH lockout on the
running relay, in every worker; without a relay, one clear line."""

from __future__ import annotations

import re
import smtplib
import stat
from pathlib import Path

import pytest
import yaml

from tests.conftest import PASSWORDS, Pki, base_config
from tests.e2e.test_metrics import fetch
from tests.e2e.test_reload import mss_relay
from tests.support.processes import Relay, Upstream, free_port, wait_for

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


def failures(port: int) -> float:
    """mss_relay_auth_attempts_total{result="failure"}, 0 while absent."""
    pattern = r'^mss_relay_auth_attempts_total\{result="failure"\} (\S+)$'
    found = re.search(pattern, fetch(port, "/metrics")[1], re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_second_relay_on_the_same_state_leaves_the_running_one_alone(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    """An administrator trying « mss-relay serve » while the service runs: it
    stops at once (exit 1, one line), before touching what the running relay
    uses: its control socket stays (reload still answers) and so do its
    metrics."""
    upstream = Upstream(tmp_path)
    upstream.start()
    metrics_port = free_port()
    config = base_config(pki, password_hashes, upstream.port, metrics={"port": metrics_port})
    relay = Relay(tmp_path, config)
    relay.start()
    try:
        relay.wait_event("started")
        assert login(relay, pki, "wrong password")[0] == 535  # counted: auth failure 1
        # The counter moves as the auth line is logged, just after the reply.
        assert wait_for(lambda: failures(metrics_port) > 0)
        before = failures(metrics_port)
        second = dict(config, listeners=[dict(config["listeners"][0], port=free_port())])
        second["metrics"] = {"port": free_port()}
        path = tmp_path / "second.yaml"
        path.write_text(yaml.safe_dump(second))
        done = mss_relay("serve", "--config", str(path))
        assert done.returncode == 1, done
        database = (tmp_path / "var" / "state.sqlite3").resolve()
        assert relay.process.proc is not None
        assert done.stderr.splitlines() == [
            f"mss-relay: another relay (pid {relay.process.proc.pid}) runs on the state"
            f" database {database}"
        ], done.stderr
        assert (tmp_path / "var" / "control.socket").is_socket()
        reloaded = mss_relay("reload", "--config", str(relay.config_path))
        assert reloaded.returncode == 0, reloaded
        assert failures(metrics_port) == before  # not wiped by the second start
    finally:
        assert relay.stop() == 0
        upstream.stop()
