"""The mss-relay command as an operator runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mss_relay.passwords import verify_password
from tests.conftest import Pki, base_config
from tests.support.processes import ROOT


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mss_relay", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def write(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def good(pki: Pki, password_hashes: dict[str, str]) -> dict[str, Any]:
    return base_config(pki, password_hashes, 10025)


def test_check_config_accepts_a_good_config(tmp_path: Path, good: dict[str, Any]) -> None:
    result = run("check-config", "--config", str(write(tmp_path, good)))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1
    assert "OK" in result.stdout and "3 BAL(s)" in result.stdout


def test_the_issue_example_shape_works(tmp_path: Path, password_hashes: dict[str, str]) -> None:
    """The configuration shape of the spine issue, as written (relative paths)."""
    (tmp_path / "certs").mkdir()
    pki_dir = tmp_path / "certs"
    import trustme

    issued = trustme.CA().issue_cert("localhost")
    issued.cert_chain_pems[0].write_to_path(str(pki_dir / "relay.pem"))
    issued.private_key_pem.write_to_path(str(pki_dir / "relay.key"))
    text = (ROOT / "config" / "example.yaml").read_text()
    text = text.replace("<output of mss-relay hash-password>", password_hashes["jdupont"])
    (tmp_path / "relay.yaml").write_text(text)
    result = run("check-config", "--config", str(tmp_path / "relay.yaml"))
    assert result.returncode == 0, result.stderr
    assert "secretariat" in result.stderr  # a BAL user not in users: a warning, not an error


def test_the_milter_issue_shape_works(tmp_path: Path, good: dict[str, Any]) -> None:
    """The milter issue's listener, with the usual sections and no tls or upstream."""
    config = {k: good[k] for k in ("users", "bals", "state", "log")}
    config["listeners"] = [{"name": "milter", "role": "milter", "host": "127.0.0.1", "port": 8890}]
    config["trusted_clients"] = {"10.0.0.12": "jdupont"}
    result = run("check-config", "--config", str(write(tmp_path, config)))
    assert result.returncode == 0, result.stderr
    assert "milter 127.0.0.1:8890 (none)" in result.stdout
    assert "upstream none (milter only)" in result.stdout
    config["listeners"][0]["host"] = "10.0.0.1"  # the protocol is not encrypted: said
    result = run("check-config", "--config", str(write(tmp_path, config)))
    assert result.returncode == 0 and "milter protocol is not encrypted" in result.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c["bals"][2].update(type="personnelle"),
            "bals[2].type: must be one of nominative, organisationnelle, applicative",
        ),
        (lambda c: c["upstream"].update(hots="x"), "upstream.hots: unknown key"),
        (
            lambda c: c["tls"].update(certificate="/nonexistent/relay.pem"),
            "tls.certificate: file not found",
        ),
        (
            lambda c: c["bals"].append(
                dict(c["bals"][0], address="Jean.Dupont@CH-EXEMPLE.mssante.fr")
            ),
            "bals[3].address: duplicate BAL",
        ),
        (
            lambda c: c["listeners"][0].update(host="0.0.0.0", tls="none"),
            "listeners[0].tls: none is refused on a non-loopback host",
        ),
        (
            lambda c: c["listeners"][0].update(port="smtp"),
            "listeners[0].port: must be a whole number",
        ),
        (lambda c: c["limits"].update(max_attachment_size="20 Mo"), "limits.max_attachment_size:"),
        (lambda c: c["users"][0].update(password_hash="secret"), "users[0].password_hash:"),
        (lambda c: c["bals"][0].update(address="jean@gmail.com"), "bals[0].address:"),
        (lambda c: c.pop("upstream"), "upstream: is required"),
        (lambda c: c["listeners"][0].update(role="relay"), "listeners[0].role: must be one of"),
        (lambda c: c.update(throttle={"auth_lockout": "15 minutes"}), "throttle.auth_lockout:"),
        (lambda c: c.update(throttle={"max_connections": 0}), "throttle.max_connections:"),
        (
            lambda c: c.update(throttle={"messages_per_min": 5}),
            "throttle.messages_per_min: unknown",
        ),
        (lambda c: c.update(timeouts={"idle": 0}), "timeouts.idle: must be more than zero"),
        (
            lambda c: c.update(dkim=[{"domain": "ch-exemple.mssante.fr", "private_key": "k.pem"}]),
            "dkim[0].selector: is required",
        ),
        (
            lambda c: c.update(
                dkim=[{"domain": "x.fr", "selector": "s", "private_key": "k", "algorithm": "dsa"}]
            ),
            "dkim[0].algorithm: must be one of rsa-sha256, ed25519-sha256",
        ),
        (
            lambda c: c.update(trusted_clients={"10.0.0.300": "jdupont"}),
            "trusted_clients.10.0.0.300: '10.0.0.300' is not an IP address",
        ),
        (
            lambda c: c.update(trusted_clients={"10.0.0.12": "dpi"}),
            "trusted_clients.10.0.0.12: 'dpi' is not one of the users",
        ),
        (
            lambda c: c.update(inbound={"dkim_dns_file": "/nonexistent.yaml"}),
            "inbound.dkim_dns_file: file not found",
        ),
        (
            lambda c: c["listeners"].append(
                {"name": "milter", "role": "milter", "port": 8890, "tls": "starttls"}
            ),
            "listeners[1].tls: a milter listener speaks the milter protocol, which has no TLS",
        ),
        (
            lambda c: c["listeners"].append(
                {"name": "milter", "role": "milter", "port": 8890, "path": "milter.sock"}
            ),
            "listeners[1].port: give either path (a Unix socket) or host and port",
        ),
        (
            lambda c: c["listeners"].append({"name": "milter", "role": "milter"}),
            "listeners[1].port: is required",
        ),
    ],
)
def test_check_config_names_the_key(
    tmp_path: Path, good: dict[str, Any], change: Any, message: str
) -> None:
    change(good)
    result = run("check-config", "--config", str(write(tmp_path, good)))
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [("listeners: [\n", "not valid YAML"), ("- just\n- a list\n", "must be a mapping")],
)
def test_check_config_on_broken_yaml(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text(text)
    result = run("check-config", "--config", str(path))
    assert result.returncode != 0 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    result = run("check-config", "--config", str(tmp_path / "none.yaml"))
    assert result.returncode != 0 and "no such configuration file" in result.stderr


def test_serve_refuses_a_bad_config_without_traceback(tmp_path: Path, good: dict[str, Any]) -> None:
    good["limits"]["max_recipients"] = 0
    result = run("serve", "--config", str(write(tmp_path, good)))
    assert result.returncode == 78
    assert "limits.max_recipients: must be between" in result.stderr
    assert "Traceback" not in result.stderr


def test_hash_password_output_verifies() -> None:
    result = run("hash-password", stdin="correct horse battery\n")
    assert result.returncode == 0
    encoded = result.stdout.strip()
    assert encoded.startswith("scrypt$") and "correct horse" not in encoded
    assert verify_password(b"correct horse battery", encoded)
    assert not verify_password(b"correct horse", encoded)
    other = run("hash-password", stdin="correct horse battery\n").stdout.strip()
    assert other != encoded  # salted


def test_python_dash_m_works_like_the_script() -> None:
    result = run("--version")
    assert result.returncode == 0 and result.stdout.startswith("mss-relay ")
