"""metrics: /metrics in Prometheus text format (one view across the workers)
and /healthz, on the real relay process."""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mss_relay import __version__
from tests.conftest import PASSWORDS, Pki, Stack, base_config
from tests.support.filesystems import fill, small_tmpfs
from tests.support.mail import connect, make_message, send
from tests.support.processes import ROOT, Relay, Upstream, free_port, wait_for

SENDER = "jean.dupont@ch-exemple.mssante.fr"
NOT_HIS = "secretariat@ch-exemple.mssante.fr"  # msecret's BAL, not jdupont's
DEST = "dr.martin@chu-b.mssante.fr"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def fetch(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(port: int) -> Samples:
    """Every sample, by name and labels; the text must parse."""
    status, text = fetch(port, "/metrics")
    assert status == 200, text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def monitored(tmp_path: Path, pki: Pki, password_hashes: dict[str, str]) -> Iterator[Stack]:
    upstream = Upstream(tmp_path)
    upstream.start()
    port = free_port()
    config = base_config(pki, password_hashes, upstream.port, workers=2, metrics={"port": port})
    relay = Relay(tmp_path, config)
    relay.start()
    try:
        assert len(relay.wait_event("started", count=2)) == 2
        yield Stack(relay, upstream, pki)
    finally:
        assert relay.stop() == 0
        upstream.stop()


def metrics_port(stack: Stack) -> int:
    return int(stack.relay.config["metrics"]["port"])


def test_counters_add_up_across_the_workers(monitored: Stack) -> None:
    stack, port = monitored, metrics_port(monitored)
    before = scrape(port)
    assert value(before, "mss_relay_build_info", version=__version__) == 1
    delivered = {"listener": "submission", "outcome": "delivered"}
    assert value(before, "mss_relay_messages_total", **delivered) == 0

    sent, refused = 16, 4
    for i in range(sent + refused):  # one connection each: the kernel spreads them
        with connect(stack) as client:
            if i < sent:
                _, (code, _) = send(client, SENDER, [DEST], make_message())
                assert code == 250
            else:
                code, _ = client.mail(NOT_HIS)
                assert code == 553
    bad = smtplib.SMTP("127.0.0.1", stack.relay.port, timeout=30)
    bad.starttls(context=stack.pki.client_context())
    with bad, pytest.raises(smtplib.SMTPAuthenticationError):
        bad.login("jdupont", "wrong " + PASSWORDS["jdupont"])

    done = stack.relay.wait_event("transaction", count=sent)
    served = {e["worker"] for e in done}
    assert len(served) == 2, served  # both workers took some: (1/2)^15 otherwise

    def counted() -> bool:
        now = scrape(port)
        return (
            value(now, "mss_relay_messages_total", **delivered) == sent
            and value(now, "mss_relay_auth_attempts_total", result="failure") >= 1
        )

    assert wait_for(counted)
    after = scrape(port)
    rule = stack.relay.wait_event("decision", where=lambda e: e["verdict"] != "accept")[0]["rule"]
    assert (
        value(after, "mss_relay_refusals_total", listener="submission", stage="mail", rule=rule)
        == refused
    )
    assert value(after, "mss_relay_auth_attempts_total", result="success") == sent + refused
    assert value(after, "mss_relay_message_size_bytes_count") == sent
    assert value(after, "mss_relay_transaction_duration_seconds_count") == sent
    assert value(after, "mss_relay_conversations", state="open") == 0
    assert value(after, "mss_relay_upstream_failures_total", stage="data", kind="tempfailed") == 0
    # No address among the label values.
    for _, labels in after:
        for _, text in labels:
            assert "@" not in text and "127.0.0.1" not in text, labels


def test_the_gauges_follow_the_open_connections(monitored: Stack) -> None:
    stack, port = monitored, metrics_port(monitored)
    clients = [connect(stack) for _ in range(4)]
    try:
        assert wait_for(lambda: value(scrape(port), "mss_relay_connections_open") == 4)
    finally:
        for client in clients:
            client.quit()
    assert wait_for(lambda: value(scrape(port), "mss_relay_connections_open") == 0)
    assert value(scrape(port), "mss_relay_message_slots_busy") == 0


def docker_healthcheck(port: int) -> int:
    """The Dockerfile's HEALTHCHECK command, as written there, run here."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    line = next(li for li in text.splitlines() if li.startswith("HEALTHCHECK"))
    command = json.loads(line.partition(" CMD ")[2])
    assert command[0] == "python"
    url = f"http://127.0.0.1:{port}/healthz"
    env = {**os.environ, "MSS_RELAY_HEALTH_URL": url}
    return subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True).returncode


def test_healthz_turns_503_when_the_state_database_is_gone(monitored: Stack) -> None:
    stack, port = monitored, metrics_port(monitored)
    assert fetch(port, "/healthz") == (200, "ok\n")
    assert docker_healthcheck(port) == 0
    database = stack.relay.workdir / "var" / "state.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        database.with_name(database.name + suffix).unlink(missing_ok=True)
    status, body = fetch(port, "/healthz")
    assert status == 503
    assert f"state database {database}: deleted" in body
    assert docker_healthcheck(port) == 1
    assert fetch(port, "/nothing")[0] == 404


def start_one(tmp_path: Path, pki: Pki, hashes: dict[str, str], **overrides: object) -> Stack:
    """One worker, a metrics port, and a milter on a Unix socket."""
    upstream = Upstream(tmp_path)
    upstream.start()
    config = base_config(pki, hashes, upstream.port, metrics={"port": free_port()}, **overrides)
    socket = tmp_path / "milter.sock"
    config["listeners"].append({"name": "milter", "role": "milter", "path": str(socket)})
    relay = Relay(tmp_path, config)
    relay.start()
    relay.wait_event("started")
    return Stack(relay, upstream, pki)


def stop_one(stack: Stack) -> None:
    try:
        assert stack.relay.stop() == 0
    finally:
        stack.upstream.stop()


def test_probing_healthz_opens_no_session(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    """A load balancer probing every 2 s: no log line, no metric, no slot
    taken, even with the listener at its throttle.max_connections."""
    stack = start_one(
        tmp_path,
        pki,
        password_hashes,
        throttle={"max_connections": 1},
        trusted_clients={"127.0.0.1": "jdupont"},
    )
    try:
        port = metrics_port(stack)
        # The one connection allowed (once the start's readiness check has
        # gone): the listener is full.
        assert stack.relay.wait_event("disconnect")
        held = connect(stack)
        before, counted = stack.relay.events(), scrape(port)
        for _ in range(20):
            assert fetch(port, "/healthz") == (200, "ok\n")
        held.quit()
        # The held session's own disconnect, written after anything the
        # probes would have made the relay log.
        assert stack.relay.wait_event("disconnect", count=2)
        new = stack.relay.events()[len(before) :]
        assert [e["event"] for e in new] == ["disconnect"], new
        samples = scrape(port)
        for result in ("trusted_client", "success"):
            auth = ("mss_relay_auth_attempts_total", (("result", result),))
            assert samples.get(auth) == counted.get(auth), result
        refused = {k: n for k, n in samples.items() if k[0] == "mss_relay_refusals_total" and n}
        assert not refused

        socket = tmp_path / "milter.sock"
        socket.unlink()
        status, body = fetch(port, "/healthz")
        assert status == 503
        assert body == f"listener milter (unix:{socket}): socket file gone\n"
    finally:
        stop_one(stack)


def test_healthz_turns_503_while_a_required_log_cannot_be_written(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    with small_tmpfs(tmp_path / "fs") as disk:
        log = disk / "log.jsonl"
        stack = start_one(
            tmp_path, pki, password_hashes, log={"file": str(log), "rotate": "external"}
        )
        try:
            port = metrics_port(stack)
            assert fetch(port, "/healthz") == (200, "ok\n")
            filler = fill(disk)

            def refused() -> bool:
                # The writer learns of the full disk at its next write: a
                # session's lines (a probe writes none).
                connect(stack).quit()
                return fetch(port, "/healthz") == (503, f"log {log}: not writable\n")

            assert wait_for(refused, timeout=30)
            filler.unlink()
            # The lines held are written again (with a backoff): healthy again.
            assert wait_for(lambda: fetch(port, "/healthz") == (200, "ok\n"), timeout=30)
        finally:
            stop_one(stack)
