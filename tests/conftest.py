from __future__ import annotations

import contextlib
import datetime
import os
import secrets
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from hypothesis import settings

from mss_relay.passwords import hash_password
from tests.support.clamd import Clamd, clamd_available
from tests.support.postgres import PostgresServer, postgres_available, unique_name
from tests.support.processes import Relay, Upstream, free_port

# In CI the examples are the same on every run: a submission is judged on its
# own code, not on a new example found by chance (run locally to explore).
# No deadline: a property is about what the code computes, not how fast, and
# a shared 2-core box ran a 200 ms example at 360 ms (a flaky failure).
settings.register_profile("default", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

PASSWORDS = {"jdupont": "jdupont-Secret-1", "msecret": "msecret-Secret-2"}


@dataclass(frozen=True)
class Pki:
    ca: trustme.CA
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def ca_file(self, directory: Path) -> Path:
        """The CA's certificate in PEM (a tls.client_ca for the tests)."""
        path = directory / "client-ca.pem"
        self.ca.cert_pem.write_to_path(str(path))
        return path

    def client_certificate(self, directory: Path, subject: str, name: str = "client") -> Path:
        """A client certificate this CA signs, for the RFC 4514 subject given
        (« CN=...,OU=...,C=FR »: encoded C first, as certificates usually
        are); one PEM file holding the certificate and its key."""
        return issue_client_certificate(self.ca, directory / f"{name}.pem", subject)

    def operator_context(self, certificate: Path | None) -> ssl.SSLContext:
        """A client context trusting the relay, presenting certificate (if any)."""
        context = self.client_context()
        if certificate is not None:
            context.load_cert_chain(certificate)
        return context


def issue_client_certificate(ca: trustme.CA, path: Path, subject: str) -> Path:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string(subject))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    path.write_bytes(
        certificate.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1", "relay.ch-exemple.mssante.fr")
    cert, key = directory / "relay.pem", directory / "relay.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    for blob in issued.cert_chain_pems[1:]:
        blob.write_to_path(str(cert), append=True)
    issued.private_key_pem.write_to_path(str(key))
    return Pki(ca, cert, key)


@pytest.fixture(scope="session")
def password_hashes() -> dict[str, str]:
    return {name: hash_password(pw) for name, pw in PASSWORDS.items()}


def base_config(
    pki: Pki, hashes: dict[str, str], upstream_port: int, **overrides: Any
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "hostname": "relay.ch-exemple.mssante.fr",
        "listeners": [
            {
                "name": "submission",
                "role": "submission",
                "host": "127.0.0.1",
                "port": free_port(),
                "tls": "starttls",
            },
        ],
        "tls": {"certificate": str(pki.cert), "private_key": str(pki.key)},
        "upstream": {"host": "127.0.0.1", "port": upstream_port, "tls": "none", "timeout": 5},
        "limits": {
            "max_attachment_size": "20MiB",
            "max_message_size": "60MiB",
            "max_recipients": 5,
        },
        "users": [{"name": n, "password_hash": h} for n, h in hashes.items()],
        "bals": [
            {
                "address": "jean.dupont@ch-exemple.mssante.fr",
                "type": "nominative",
                "users": ["jdupont"],
            },
            {
                "address": "accueil@ch-exemple.mssante.fr",
                "type": "organisationnelle",
                "users": ["jdupont", "msecret"],
            },
            {
                "address": "secretariat@ch-exemple.mssante.fr",
                "type": "organisationnelle",
                "users": ["msecret"],
            },
        ],
        "state": {"database": "var/state.sqlite3"},
        # A plain file: the tests that remove, fill or rename the log test what
        # logrotate's users see, and none breaks at midnight. The default
        # (daily files) is tried by tests/e2e/test_audit_trail.py and test_demo.py.
        "log": {"file": "var/log/mss-relay.jsonl", "rotate": "external"},
    }
    config.update(overrides)
    return config


def with_inbound(config: dict[str, Any], mailbox_port: int) -> dict[str, Any]:
    """The configuration with an inbound listener delivering to mailbox_port."""
    config["listeners"].append(
        {
            "name": "inbound",
            "role": "inbound",
            "host": "127.0.0.1",
            "port": free_port(),
            "tls": "none",
        }
    )
    config["inbound_delivery"] = {"host": "127.0.0.1", "port": mailbox_port, "tls": "none"}
    return config


@contextlib.contextmanager
def two_sided(
    tmp: Path, pki: Pki, hashes: dict[str, str], **overrides: Any
) -> Iterator[tuple[Relay, Upstream, Upstream]]:
    """The relay with its incoming side too: (relay, operator, mailbox), the
    operator taking outgoing mail, the mailbox server the incoming. An override
    replaces a key of the base configuration, or, as a function, transforms it."""
    operator, mailbox = Upstream(tmp / "op"), Upstream(tmp / "mb")
    operator.start()
    mailbox.start()
    config = with_inbound(base_config(pki, hashes, operator.port), mailbox.port)
    for key, value in overrides.items():
        config[key] = value(config[key]) if callable(value) else value
    relay = Relay(tmp, config)
    try:
        relay.start()
        yield relay, operator, mailbox
    finally:
        relay.stop()
        operator.stop()
        mailbox.stop()


@dataclass
class Stack:
    relay: Relay
    upstream: Upstream
    pki: Pki


@contextlib.contextmanager
def relay_with(tmp: Path, pki: Pki, hashes: dict[str, str], **upstream: object) -> Iterator[Stack]:
    """A relay and its upstream; upstream: keys added to the relay's upstream section."""
    server = Upstream(tmp)
    server.start()
    config = base_config(pki, hashes, server.port)
    config["upstream"].update(upstream)
    relay = Relay(tmp, config)
    relay.start()
    try:
        yield Stack(relay, server, pki)
    finally:
        relay.stop()
        server.stop()


def _stack(
    tmp: Path, pki: Pki, hashes: dict[str, str], upstream_dsn: bool = False, **overrides: Any
) -> Iterator[Stack]:
    """upstream_dsn: the upstream advertises DSN (RFC 3461)."""
    upstream = Upstream(tmp, dsn=upstream_dsn)
    upstream.start()
    relay = Relay(tmp, base_config(pki, hashes, upstream.port, **overrides))
    try:
        relay.start()
        yield Stack(relay, upstream, pki)
    finally:
        relay.stop()
        upstream.stop()


@pytest.fixture(scope="module")
def shared_stack(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, password_hashes: dict[str, str]
) -> Iterator[Stack]:
    """One relay and one upstream for the tests that do not disturb them."""
    yield from _stack(tmp_path_factory.mktemp("stack"), pki, password_hashes)


@pytest.fixture
def stack(tmp_path: Path, pki: Pki, password_hashes: dict[str, str]) -> Iterator[Stack]:
    """A relay and an upstream of the test's own (to stop, restart or misconfigure)."""
    yield from _stack(tmp_path, pki, password_hashes)


# -- PostgreSQL: a private server for the session, a fresh database per test --


@dataclass(frozen=True)
class PgDatabase:
    """A test's own database and login role on the session's server."""

    url: str  # postgresql://user:password@127.0.0.1:PORT/name
    url_without_password: str  # the same, for configurations taking the password apart
    password: str
    user: str
    name: str
    server: PostgresServer


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One private PostgreSQL (tests/support/postgres.py) for the whole session."""
    reason = postgres_available()
    if reason is not None:
        # scripts/test.sh installs PostgreSQL: in CI a missing one is a
        # failure, never a silently skipped end-to-end check.
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {reason}")
        pytest.skip(reason)
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_db(postgres_server: PostgresServer) -> Iterator[PgDatabase]:
    """A fresh role and database (owned by it) for one test, dropped afterwards."""
    name = unique_name("mss")
    password = secrets.token_urlsafe(18)
    postgres_server.start()  # a no-op, unless an earlier test left it stopped
    postgres_server.create_role(name, password)
    postgres_server.create_database(name, owner=name)
    try:
        yield PgDatabase(
            url=postgres_server.url(name, name, password),
            url_without_password=postgres_server.url(name, name),
            password=password,
            user=name,
            name=name,
            server=postgres_server,
        )
    finally:
        # The test may have stopped or killed the server: bring it back, for
        # the drop and for the tests after it.
        postgres_server.start()
        postgres_server.drop_database(name)
        postgres_server.drop_role(name)


# -- clamd: a private daemon for the session (tests/support/clamd.py) --


@pytest.fixture(scope="session")
def clamd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    """One private clamd, with the test signature only, for the whole session."""
    reason = clamd_available()
    if reason is not None:
        # scripts/test.sh installs clamav-daemon: in CI a missing one is a
        # failure, never a silently skipped antivirus check.
        if os.environ.get("CI"):
            pytest.fail(f"clamd is required in CI: {reason}")
        pytest.skip(reason)
    with Clamd(tmp_path_factory.mktemp("clamd")) as server:
        yield server


@pytest.fixture
def clamd(clamd_server: Clamd) -> Iterator[Clamd]:
    """The session's clamd, running and answering; brought back afterwards
    for the tests after this one (a test may stop or freeze it)."""
    clamd_server.start()
    try:
        yield clamd_server
    finally:
        clamd_server.start()
