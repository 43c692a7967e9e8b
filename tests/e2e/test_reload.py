"""Reload (SIGHUP, « mss-relay reload ») and log reopening (SIGUSR1), on the
real relay: new sessions get the new configuration, open ones finish under
theirs, nothing is dropped; a broken file is not applied."""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mss_relay.passwords import hash_password
from tests.conftest import PASSWORDS, Pki, Stack, base_config
from tests.support.mail import connect, make_message, send
from tests.support.processes import ROOT, Relay, Upstream, free_port

SENDER = "jean.dupont@ch-exemple.mssante.fr"
DESTS = ["dr.martin@chu-b.mssante.fr", "dr.durand@chu-b.mssante.fr"]
NEW_USER, NEW_PASSWORD = "nouveau", "nouveau-Secret-3"


def mss_relay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mss_relay", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=90,
    )


def signal_relay(relay: Relay, signum: int) -> None:
    assert relay.process.proc is not None
    relay.process.proc.send_signal(signum)


def running(relay: Relay) -> bool:
    return relay.process.proc is not None and relay.process.proc.poll() is None


def rewrite(relay: Relay, change: Any) -> None:
    """Edit the relay's configuration file in place, as an administrator does."""
    config = yaml.safe_load(relay.config_path.read_text())
    change(config)
    relay.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def own_certificate(tmp: Path, pki: Pki) -> tuple[Path, Path]:
    """A copy of the certificate for this relay: the test replaces it."""
    cert, key = tmp / "tls" / "relay.pem", tmp / "tls" / "relay.key"
    cert.parent.mkdir()
    shutil.copy(pki.cert, cert)
    shutil.copy(pki.key, key)
    return cert, key


def renew(pki: Pki, cert: Path, key: Path) -> bytes:
    """A new certificate and key at the same paths (as certbot renews):
    the DER of the new certificate."""
    issued = pki.ca.issue_cert("localhost", "127.0.0.1")
    issued.private_key_pem.write_to_path(str(key))
    issued.cert_chain_pems[0].write_to_path(str(cert))
    for blob in issued.cert_chain_pems[1:]:
        blob.write_to_path(str(cert), append=True)
    return ssl.PEM_cert_to_DER_cert(issued.cert_chain_pems[0].bytes().decode())


def starttls_client(pki: Pki, port: int, user: str, password: str) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    client.ehlo("client.test")
    client.starttls(context=pki.client_context())
    client.ehlo("client.test")
    client.login(user, password)
    return client


def implicit_client(pki: Pki, port: int, user: str, password: str) -> smtplib.SMTP:
    client = smtplib.SMTP_SSL("127.0.0.1", port, timeout=30, context=pki.client_context())
    client.ehlo("client.test")
    client.login(user, password)
    return client


def certificate(client: smtplib.SMTP) -> bytes:
    der = client.sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
    assert der is not None
    return der


def reload_config(
    tmp: Path, pki: Pki, hashes: dict[str, str], upstream: int, workers: int
) -> dict[str, Any]:
    cert, key = own_certificate(tmp, pki)
    config = base_config(pki, hashes, upstream, workers=workers)
    config["tls"] = {"certificate": str(cert), "private_key": str(key)}
    config["listeners"].append(
        {
            "name": "smtps",
            "role": "submission",
            "host": "127.0.0.1",
            "port": free_port(),
            "tls": "implicit",
        }
    )
    return config


@pytest.mark.parametrize("workers", [1, 2])
def test_a_reload_applies_to_new_sessions_and_spares_open_ones(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str], workers: int
) -> None:
    upstream = Upstream(tmp_path)
    upstream.start()
    config = reload_config(tmp_path, pki, password_hashes, upstream.port, workers)
    relay = Relay(tmp_path, config)
    relay.start()
    starttls, implicit = relay.port_of("submission"), relay.port_of("smtps")
    try:
        assert len(relay.wait_event("started", count=workers)) == workers
        # Opened before the reload, authenticated, one message sent.
        before = [
            starttls_client(pki, starttls, "jdupont", PASSWORDS["jdupont"]),
            implicit_client(pki, implicit, "jdupont", PASSWORDS["jdupont"]),
        ]
        # And one not yet in TLS: its STARTTLS comes after the reload.
        waiting = smtplib.SMTP("127.0.0.1", starttls, timeout=30)
        waiting.ehlo("client.test")
        old_certificate = certificate(before[0])
        assert certificate(before[1]) == old_certificate
        for client in before:
            _, (code, _) = send(client, SENDER, DESTS, make_message())
            assert code == 250

        # A user added, a limit changed, the certificate renewed in place.
        new_hash = hash_password(NEW_PASSWORD)

        def change(c: dict[str, Any]) -> None:
            c["users"].append({"name": NEW_USER, "password_hash": new_hash})
            c["limits"]["max_recipients"] = 1

        rewrite(relay, change)
        new_certificate = renew(pki, *own_paths(config))
        signal_relay(relay, signal.SIGHUP)
        reloaded = relay.wait_event("reloaded", count=workers)
        assert len(reloaded) == workers, relay.events("reload_failed")
        assert {e.get("worker", 0) for e in reloaded} == set(range(workers))
        for event in reloaded:
            assert {"limits", "tls", "users"} <= set(event["changed"])
            assert event["restart_required"] == []
        assert running(relay)  # SIGHUP no longer kills it

        # The open sessions go on under the configuration they started with:
        # two recipients, as before.
        for client in before:
            rcpts, (code, _) = send(client, SENDER, DESTS, make_message())
            assert [c for c, _ in rcpts] == [250, 250] and code == 250

        # Its STARTTLS gets the new certificate (a renewed one is served at
        # once), the rest of its session the old configuration.
        waiting.starttls(context=pki.client_context())
        assert certificate(waiting) == new_certificate
        waiting.ehlo("client.test")
        waiting.login("jdupont", PASSWORDS["jdupont"])
        rcpts, (code, _) = send(waiting, SENDER, DESTS, make_message())
        assert [c for c, _ in rcpts] == [250, 250] and code == 250
        before.append(waiting)

        # New sessions, on both listeners (and on every worker: the kernel
        # spreads connections), get the new user, limit and certificate.
        for port, connect in [(starttls, starttls_client), (implicit, implicit_client)] * 4:
            client = connect(pki, port, NEW_USER, NEW_PASSWORD)
            try:
                assert certificate(client) == new_certificate != old_certificate
                client.quit()
            except smtplib.SMTPServerDisconnected:
                pytest.fail("a new session was dropped")
            client = connect(pki, port, "jdupont", PASSWORDS["jdupont"])
            rcpts, (code, _) = send(client, SENDER, DESTS, make_message())
            assert rcpts[0][0] == 250 and rcpts[1][0] == 452 and b"4.5.3" in rcpts[1][1]
            assert code == 250
            client.quit()

        # No connection dropped: the old ones end as they would have.
        for client in before:
            assert client.quit()[0] == 221
        assert relay.events("stopping") == []
        assert len(upstream.messages()) == 5 + 8
    finally:
        assert relay.stop() == 0
        upstream.stop()
    assert len(relay.events("started")) == workers  # nothing was restarted


def own_paths(config: dict[str, Any]) -> tuple[Path, Path]:
    return Path(config["tls"]["certificate"]), Path(config["tls"]["private_key"])


def test_a_broken_configuration_is_not_applied(stack: Stack) -> None:
    relay = stack.relay
    good = relay.config_path.read_text()
    rewrite(relay, lambda c: c["limits"].update(max_recipients=0))
    check = mss_relay("check-config", "--config", str(relay.config_path))
    assert check.returncode == 78
    line = check.stderr.strip().removeprefix("mss-relay: configuration error: ")
    assert line.startswith("limits.max_recipients: ")

    # By signal: logged, with the very line check-config gives.
    signal_relay(relay, signal.SIGHUP)
    failed = relay.wait_event("reload_failed")
    assert failed and failed[0]["error"] == line
    assert relay.events("reloaded") == []

    # By the command (the configuration taken from $MSS_RELAY_CONFIG): the
    # same line, and a failure's exit code.
    done = mss_relay("reload", env={"MSS_RELAY_CONFIG": str(relay.config_path)})
    assert done.returncode == 1, done
    assert done.stderr.strip() == f"mss-relay: reload failed: {line}"
    assert len(relay.wait_event("reload_failed", count=2)) == 2

    # Still serving, with the old configuration (five recipients allowed).
    with connect(stack) as client:
        rcpts, (code, _) = send(client, SENDER, DESTS, make_message())
        assert [c for c, _ in rcpts] == [250, 250] and code == 250

    # Fixed: the command says what changed.
    relay.config_path.write_text(good.replace("max_recipients: 5", "max_recipients: 4"))
    done = mss_relay("reload", "--config", str(relay.config_path))
    assert done.returncode == 0, done
    assert done.stdout.strip() == "mss-relay: reloaded (1 process(es)); changed: limits"
    assert relay.wait_event("reloaded")[0]["changed"] == ["limits"]


def test_listener_changes_wait_for_a_restart(stack: Stack) -> None:
    relay = stack.relay
    old_port, new_port = relay.port, free_port()
    rewrite(relay, lambda c: (c["listeners"][0].update(port=new_port), c.update(workers=2)))
    done = mss_relay("reload", "--config", str(relay.config_path))
    assert done.returncode == 0, done
    assert "not applied until a restart: listeners[0].port, workers" in done.stdout
    event = relay.wait_event("reloaded")[0]
    assert event["restart_required"] == ["listeners[0].port", "workers"]
    assert event["changed"] == []
    with connect(stack) as client:  # still on the old port
        assert client.sock.getpeername()[1] == old_port  # type: ignore[attr-defined]


@pytest.mark.parametrize("workers", [1, 2])
def test_sigusr1_reopens_the_log_after_a_rename(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str], workers: int
) -> None:
    upstream = Upstream(tmp_path)
    upstream.start()
    relay = Relay(tmp_path, base_config(pki, password_hashes, upstream.port, workers=workers))
    relay.start()
    try:
        assert len(relay.wait_event("started", count=workers)) == workers
        rotated = relay.log_path.with_name(relay.log_path.name + ".1")
        relay.log_path.rename(rotated)  # what logrotate does, before its postrotate
        signal_relay(relay, signal.SIGUSR1)
        reopened = relay.wait_event("log_reopened", count=workers)
        assert len(reopened) == workers
        assert {e.get("worker", 0) for e in reopened} == set(range(workers))
        assert "log_reopened" not in rotated.read_text()
        assert running(relay)
    finally:
        assert relay.stop() == 0
        upstream.stop()
    assert len(relay.events("stopped")) == workers  # each process writes the new file
