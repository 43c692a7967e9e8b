"""The configuration: YAML -> one immutable Config, validated once.

Each section of the file is a frozen dataclass below; each key, its type and
its default are declared once, as a field (constraints in `Annotated[...]`),
and read by the generic loader of mss_relay.schema. What relates two keys is
checked in the sections' validate(). Every error names the key path
(« bals[2].type: must be one of ... ») so that the operator can fix the file
without reading a traceback. Relative paths are relative to the configuration
file's folder. load_config(path) builds the whole Config in one call, so that
a running relay can build a new one and swap it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NamedTuple

import yaml
from psycopg import ProgrammingError
from psycopg.conninfo import conninfo_to_dict

from mss_relay.core.addresses import (
    domain_of,
    in_trust_space,
    normalize_address,
    normalize_domain,
    split_address,
)
from mss_relay.core.directory import DirectoryMode, DirectorySettings
from mss_relay.core.filetypes import AttachmentRules
from mss_relay.core.findings import Mode as XdmMode
from mss_relay.core.mailbox import Bal, BalType
from mss_relay.core.policy import Limits
from mss_relay.core.rules.size import wire_size_limit
from mss_relay.core.throttle import ThrottleSettings, ip_address
from mss_relay.core.xdm import XdmSettings
from mss_relay.passwords import is_password_hash
from mss_relay.schema import (
    REQUIRED,
    Convert,
    DefaultBy,
    Duration,
    File,
    Fold,
    Overlay,
    Range,
    Size,
    Where,
    load,
)
from mss_relay.schema import ConfigError as ConfigError  # raised by the loader, caught by callers
from mss_relay.sizes import parse_size
from mss_relay.state.postgres import PostgresSettings
from mss_relay.trust.url import url_problem


class Role(StrEnum):
    SUBMISSION = "submission"  # the structure's own clients, AUTH required
    INBOUND = "inbound"  # mail from the operator to the structure's BALs
    MILTER = "milter"  # Postfix asks; Postfix delivers


class ListenerTls(StrEnum):
    STARTTLS = "starttls"
    IMPLICIT = "implicit"
    NONE = "none"


class UpstreamTls(StrEnum):
    NONE = "none"
    STARTTLS = "starttls"
    IMPLICIT = "implicit"


class VerifyClient(StrEnum):
    """tls.verify_client: whether inbound listeners ask the operator's server
    for a certificate (signed by tls.client_ca), and whether one is needed."""

    REQUIRED = "required"  # the TLS handshake fails without one
    OPTIONAL = "optional"  # asked for; its absence is for the policy to judge
    NONE = "none"


class LogRotation(StrEnum):
    DAILY = "daily"
    EXTERNAL = "external"


class DkimAlgorithm(StrEnum):
    RSA_SHA256 = "rsa-sha256"
    ED25519_SHA256 = "ed25519-sha256"


Port = Annotated[int, Range(1, 65535)]
Seconds = Annotated[float, Duration()]
Bytes = Annotated[int, Size()]
AnyFile = Annotated[Path, File()]
ExistingFile = Annotated[Path, File(must_exist=True)]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z"
)


def _check_host(host: str, where: Where) -> None:
    """An address to listen on: an IP address or a host name (refused here,
    a configuration error, rather than when the relay starts)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.match(host):
            where.key("host").fail("must be an IP address or a host name")


# --- listeners: the keys a listener takes depend on its role (and, for a
# milter, on a Unix socket or a port); the runtime ListenerConfig is one shape.


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    name: str
    role: Role
    host: str
    port: int  # 0 for a milter on a Unix socket
    tls: ListenerTls
    path: Path | None = None  # a milter's Unix socket, instead of host and port

    @property
    def endpoint(self) -> str:
        return f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"


@dataclass(frozen=True, kw_only=True)
class _Listener:
    role: Role
    name: str


@dataclass(frozen=True, kw_only=True)
class _OnPort(_Listener):
    host: str = "127.0.0.1"
    port: Port

    def validate(self, where: Where) -> None:
        _check_host(self.host, where)


@dataclass(frozen=True, kw_only=True)
class _SmtpListener(_OnPort):
    tls: ListenerTls = ListenerTls.STARTTLS

    def validate(self, where: Where) -> None:
        super().validate(where)
        if self.tls == ListenerTls.NONE and not _is_loopback(self.host):
            where.key("tls").fail(
                "none is refused on a non-loopback host (mail and passwords would"
                " cross the network in clear); use starttls or implicit"
            )

    def runtime(self) -> ListenerConfig:
        return ListenerConfig(self.name, self.role, self.host, self.port, self.tls)


@dataclass(frozen=True, kw_only=True)
class _Milter(_Listener):
    path: Annotated[Path | None, File()] = None  # a Unix socket, instead of host and port
    tls: str = "none"  # Postfix speaks the milter protocol in clear

    def validate(self, where: Where) -> None:
        if self.tls != "none":
            where.key("tls").fail(
                "a milter listener speaks the milter protocol, which has no TLS:"
                " leave tls out (listen on loopback or on a Unix socket: path)"
            )

    def runtime(self) -> ListenerConfig:
        return ListenerConfig(self.name, self.role, "", 0, ListenerTls.NONE, self.path)


@dataclass(frozen=True, kw_only=True)
class _MilterOnSocket(_Milter):
    path: AnyFile


@dataclass(frozen=True, kw_only=True)
class _MilterOnPort(_OnPort, _Milter):
    def validate(self, where: Where) -> None:
        _OnPort.validate(self, where)
        _Milter.validate(self, where)

    def runtime(self) -> ListenerConfig:
        return ListenerConfig(self.name, self.role, self.host, self.port, ListenerTls.NONE)


def _listener(raw: object, where: Where) -> ListenerConfig:
    shape: type[_SmtpListener | _Milter] = _SmtpListener
    keys: dict[object, object] = raw if isinstance(raw, dict) else {}
    if keys.get("role") == Role.MILTER:
        shape = _MilterOnPort if keys.get("path") is None else _MilterOnSocket
        if shape is _MilterOnSocket and "port" in keys:
            where.key("port").fail("give either path (a Unix socket) or host and port")
    return load(shape, raw, where).runtime()


# --- sections whose runtime object is the section itself


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    self_signed: bool = False  # create a self-signed pair when missing (demo only)
    certificate: AnyFile
    private_key: AnyFile
    # Inbound listeners only (the submission listener authenticates people
    # with AUTH): the CAs a client certificate must chain to (the IGC Santé's).
    client_ca: ExistingFile | None = None
    verify_client: VerifyClient = VerifyClient.NONE

    def validate(self, where: Where) -> None:
        for key, path in (("certificate", self.certificate), ("private_key", self.private_key)):
            if not self.self_signed and not path.is_file():
                where.key(key).fail(f"file not found: {path}")
        if self.verify_client != VerifyClient.NONE and self.client_ca is None:
            where.key("client_ca").fail(
                f"is required with verify_client: {self.verify_client} (the CAs a client"
                " certificate must chain to)"
            )

    @property
    def asks_client(self) -> bool:
        return self.verify_client != VerifyClient.NONE


def _host_needed(keys: Mapping[str, object]) -> object:
    return "" if keys["capture"] else REQUIRED


def _port_for(keys: Mapping[str, object]) -> object:
    return 465 if keys["tls"] == UpstreamTls.IMPLICIT else 25


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamConfig:
    """upstream and inbound_delivery: the same keys."""

    capture: Annotated[Path | None, File()] = None  # .eml files instead of relaying (demo)
    tls: UpstreamTls = UpstreamTls.STARTTLS
    host: Annotated[str, DefaultBy(_host_needed)]
    port: Annotated[int, Range(1, 65535), DefaultBy(_port_for)]
    ca_file: ExistingFile | None = None
    client_certificate: ExistingFile | None = None
    client_key: ExistingFile | None = None
    username: str | None = None
    password_file: ExistingFile | None = None
    timeout: float = 60.0
    # Idle upstream connections kept for the next client session (0: none),
    # and for how long at most: a new connection per message costs a TCP
    # handshake, a greeting, EHLO (and TLS, AUTH) to both sides.
    pool_size: Annotated[int, Range(0, 1000)] = 8
    pool_idle: Seconds = 10.0

    def validate(self, where: Where) -> None:
        if (self.username is None) != (self.password_file is None):
            where.key("password_file").fail("username and password_file go together")
        if (self.client_certificate is None) != (self.client_key is None):
            where.key("client_key").fail("client_certificate and client_key go together")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConversationsConfig:
    close_after_days: Annotated[int | None, Range(1, 3650)] = None  # close idle conversations
    # Purge closed conversations after three months (seed 000 §8).
    retention_days: Annotated[int, Range(1, 36500)] = 92
    purge_interval: float = 3600.0  # seconds between two purges


@dataclass(frozen=True, slots=True, kw_only=True)
class LifecycleConfig:
    """The BAL lifecycle (mss_relay/lifecycle.py): notices of inactivity."""

    notify: bool = False  # send each BAL its notices (worker 0, through the upstream)
    notify_from: Annotated[str, Fold(str.strip)] | None = None  # a BAL of the configuration
    check_interval: Seconds = 3600.0  # seconds between two checks (and one at start)


@dataclass(frozen=True, slots=True, kw_only=True)
class DkimKeyConfig:
    domain: Annotated[str, Fold(normalize_domain)]
    selector: Annotated[str, Fold(str.strip)]
    generate: bool = False  # create the key when missing (demo only)
    private_key: AnyFile
    algorithm: DkimAlgorithm = DkimAlgorithm.RSA_SHA256


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundConfig:
    require_dkim_for_patients: bool = False
    # Answers to DKIM key look-ups, instead of DNS (tests, closed networks).
    dkim_dns_file: ExistingFile | None = None
    dns_timeout: float = 5.0
    # The delivering server's certificate must be one the liste blanche lists
    # for the envelope sender's domain (core/rules/operator.py).
    require_operator_certificate: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutsConfig:
    idle: Seconds = 300.0  # RFC 5321 §4.5.3.2.7: at least 5 minutes without a byte
    data: Seconds = 1800.0  # the whole DATA phase, however slowly it trickles in
    busy_wait: Seconds = 60.0  # waiting for a free message slot before 451 4.3.2
    # A message slot is precious (memory): after data_rate_grace, a DATA phase
    # slower on average than min_data_rate (bytes/s) is cut (a trickle attack).
    min_data_rate: Bytes = 1024
    data_rate_grace: Seconds = 60.0
    # On SIGTERM, how long messages already past their final dot may take to
    # be delivered (the systemd unit's TimeoutStopSec must stay above it).
    shutdown: Seconds = 30.0


# The issue: « any duration from 1 s »; below, worker 0 would hammer the ANS.
MIN_REFRESH = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustSpaceConfig:
    """The ANS liste blanche (mss_relay/trust/): absent, the trust space is
    « ends in mssante.fr »."""

    whitelist: AnyFile | None = None  # the file in force (mss-relay whitelist update writes it)
    whitelist_url: str | None = None  # where to download it from (HTTPS), every refresh
    whitelist_ca: ExistingFile | None = None  # the only CA trusted for the download
    refresh: Seconds = 86400.0
    max_age: Seconds = 7 * 86400.0  # older (by DateDeGeneration): used, with whitelist_stale

    def validate(self, where: Where) -> None:
        if self.whitelist_url is not None:
            problem = url_problem(self.whitelist_url)
            if problem is not None:
                where.key("whitelist_url").fail(problem)
            if self.whitelist is None:
                where.key("whitelist").fail("is required with whitelist_url (the file it updates)")
        if self.refresh < MIN_REFRESH:
            where.key("refresh").fail("must be at least 1s")


# The keys and defaults of throttle are ThrottleSettings' own (core/throttle.py).
_THROTTLE = Overlay(
    {
        "auth_max_failures_per_user": (Range(1, 10_000),),
        "auth_max_failures_per_client": (Range(1, 100_000),),
        "auth_window": (Duration(),),
        "auth_lockout": (Duration(),),
        "auth_failure_delay": (Duration(positive=False),),
        "auth_max_delay": (Duration(positive=False),),
        "messages_per_minute": (Range(0, 10**6),),
        "recipients_per_hour": (Range(0, 10**7),),
        "max_connections": (Range(1, 100_000),),
        "max_connections_per_client": (Range(1, 100_000),),
        "max_concurrent_messages": (Range(1, 10_000),),
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    """Prometheus /metrics and /healthz (mss_relay/metrics.py), on one HTTP
    address of worker 0; absent: no such server."""

    host: str = "127.0.0.1"
    port: Port = 9464

    def validate(self, where: Where) -> None:
        _check_host(self.host, where)


class OnScanError(StrEnum):
    """antivirus.on_error: what becomes of a message clamd could not scan."""

    REFUSE = "refuse"  # 451 4.3.0: the client retries; never accepted unscanned
    ACCEPT = "accept"  # accepted unscanned, with a warning at every such message


class ClamdAddress(NamedTuple):
    """Where clamd listens: its LocalSocket (path) or its TCPAddr and TCPSocket.
    (A tuple, not a dataclass: the loader reads a dataclass as a section.)"""

    path: Path | None = None
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


_CLAMD_FORM = "must be unix:/path/to/clamd.ctl or tcp:host:port"
_TCP = re.compile(r"\A(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]+)):(?P<port>[0-9]{1,5})\Z")


def _clamd(raw: object, where: Where) -> ClamdAddress:
    """unix:PATH (relative to the configuration's folder) or tcp:HOST:PORT
    (an IPv6 address in brackets): clamd's two kinds of socket."""
    if not isinstance(raw, str):
        where.fail(_CLAMD_FORM)
    kind, _, rest = raw.strip().partition(":")
    if kind == "unix" and rest.strip():
        return ClamdAddress(path=(where.base / rest.strip()).resolve())
    match = _TCP.match(rest.strip()) if kind == "tcp" else None
    if match is None:
        where.fail(_CLAMD_FORM)
    host, port = match["v6"] or match["host"], int(match["port"])
    if not _HOSTNAME.match(host):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            where.fail(f"{host!r} is not an IP address or a host name")
    if not 0 < port < 65536:
        where.fail(f"port {port} is not a TCP port (1-65535)")
    return ClamdAddress(host=host, port=port)


# clamd's StreamMaxLength cannot be set above 4 GB (clamd.conf(5)).
CLAMD_MAX_STREAM = 4 * 1000**3


@dataclass(frozen=True, slots=True, kw_only=True)
class AntivirusConfig:
    """clamd (mss_relay/inspect/antivirus.py): every message the policy
    accepts is streamed to it (INSTREAM) at the end of DATA, before it is
    signed and sent on; absent: no scanning.

    clamd's own StreamMaxLength (clamd.conf, 25M by default in Debian's
    package) must be at least max_size: beyond it clamd stops reading and
    answers « INSTREAM size limit exceeded », an error, hence a 451 to the
    client (or, with on_error: accept, a message accepted unscanned)."""

    clamd: Annotated[ClamdAddress, Convert(_clamd)]
    # The whole exchange (connecting, sending, clamd's verdict), at most.
    timeout: Seconds = 30.0
    # The largest message sent to clamd; a larger one is not scanned (an
    # error, as above). check-config refuses one below what limits admit.
    max_size: Bytes = 100 * 1024**2
    on_error: OnScanError = OnScanError.REFUSE

    def validate(self, where: Where) -> None:
        if self.max_size > CLAMD_MAX_STREAM:
            where.key("max_size").fail("must be at most 4GB (clamd's StreamMaxLength limit)")

    @property
    def accepts_unscanned(self) -> bool:
        return self.on_error == OnScanError.ACCEPT


def _xdm_mode(raw: object, where: Where) -> XdmMode:
    # YAML 1.1 reads a bare « off » as false: the same word to the operator.
    text = "off" if raw is False else raw
    choices = [m.value for m in XdmMode]
    if not isinstance(text, str) or text not in choices:
        where.fail("must be one of " + ", ".join(choices))
    return XdmMode(text)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Xdm:
    """IHE-XDM packages and the X-MSS fields at the end of DATA (core/xdm.py,
    core/mss_headers.py): findings logged (warn, the default: a structure
    refuses once its software is known to send clean packages), refused
    (refuse), or nothing read (off)."""

    mode: Annotated[XdmMode, Convert(_xdm_mode)] = XdmMode.WARN
    # The INS test OIDs (…4.10, …4.11): for a test platform only.
    allow_test_identities: bool = False


# --- sections whose runtime object differs (converted in _runtime below)


_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _database(raw: object, where: Where) -> Path | str:
    """A SQLite file (a path, relative to the configuration's folder) or a
    PostgreSQL server (a postgresql:// URL, libpq's syntax), checked here."""
    if not isinstance(raw, str) or not raw.strip():
        where.fail("must be a string")
    if not raw.startswith(_POSTGRES_SCHEMES):
        if "://" in raw:
            where.fail(
                f"{raw.split('://', 1)[0]}:// is not a database this relay knows:"
                " a SQLite file path or a postgresql:// URL"
            )
        return (where.base / raw).resolve()
    try:
        params = conninfo_to_dict(raw)
    except ProgrammingError as error:
        where.fail(f"not a PostgreSQL URL: {str(error).splitlines()[0]}")
    if not params.get("dbname"):
        where.fail("names no database: postgresql://USER@HOST:PORT/DATABASE")
    for port in str(params.get("port") or "5432").split(","):
        if not port.isdigit() or not 0 < int(port) < 65536:
            where.fail(f"port {port} is not a TCP port (1-65535)")
    sslmode = params.get("sslmode")
    if sslmode is not None and sslmode not in _SSLMODES:
        where.fail(f"sslmode={sslmode} is not one of " + ", ".join(_SSLMODES))
    return raw


@dataclass(frozen=True, slots=True, kw_only=True)
class _State:
    # A path (SQLite, the default: one machine) or postgresql://... (several
    # relays sharing one state: README « Several relays »).
    database: Annotated[Path | str, File(), Convert(_database)] = Path("var/state.sqlite3")
    # PostgreSQL only: the password, first line of this file (else libpq's
    # own ways: the URL, PGPASSWORD, ~/.pgpass).
    password_file: Annotated[Path | None, File(must_exist=True)] = None
    # PostgreSQL only: connections per process, at most.
    pool_size: Annotated[int, Range(1, 100)] = 10
    connect_timeout: Seconds = 5.0
    # The relay's own files (control socket, metrics, pseudonym key, audit
    # heads, the lock) when the state is on PostgreSQL; with SQLite, the
    # database's folder.
    directory: Annotated[Path, File()] = Path("var")
    # How long a client's reply may wait for the conversation state (a write
    # after delivery, a look-up before the verdict); a write not done by then
    # goes on in the background.
    record_timeout: Seconds = 2.0

    def validate(self, where: Where) -> None:
        if self.record_timeout > 60:
            where.key("record_timeout").fail(
                "must be at most 60 seconds (a client waits that long)"
            )
        if isinstance(self.database, Path) and self.password_file is not None:
            where.key("password_file").fail("is for a postgresql:// database only")

    @property
    def postgres(self) -> PostgresSettings | None:
        if isinstance(self.database, Path):
            return None
        return PostgresSettings(
            url=self.database,
            password_file=self.password_file,
            pool_size=self.pool_size,
            connect_timeout=self.connect_timeout,
            wait=self.record_timeout,
        )

    @property
    def local(self) -> Path:
        """The SQLite file, or with PostgreSQL the local one beside the relay's
        own files (the audit heads: each relay's log is its own)."""
        if isinstance(self.database, Path):
            return self.database
        return self.directory / "local.sqlite3"


@dataclass(frozen=True, slots=True, kw_only=True)
class _Control:
    # The local control socket (« mss-relay reload », « unlock »); default:
    # beside the state database.
    socket: Annotated[Path | None, File()] = None


@dataclass(frozen=True, slots=True)
class ControlConfig:
    socket: Path


@dataclass(frozen=True, slots=True)
class LogConfig:
    file: Path | None  # None: standard output
    # Traceability is a duty: while the log cannot be written, new
    # transactions get 451 4.3.0 (false: mail goes on, reported on stderr).
    required: bool
    # Patients' INS as keyed pseudonyms (mss_relay/pseudonym.py); false writes
    # them in clear (not recommended: the log then holds health data).
    pseudonymize_patients: bool = True
    pseudonym_key_file: Path | None = None  # None: beside the state database
    # Days the relay's daily files are kept (log.rotate: daily), six months
    # by default (the ANS guidance for MSSanté logs).
    retention_days: int = 183
    rotate: LogRotation = LogRotation.EXTERNAL


@dataclass(frozen=True, slots=True, kw_only=True)
class _Log:
    file: str = "-"  # "-": standard output
    required: bool = True
    pseudonymize_patients: bool = True
    pseudonym_key_file: Annotated[Path | None, File()] = None
    retention_days: Annotated[int, Range(1, 36500)] = 183
    # daily: the relay's own dated files, purged past retention_days
    # (mss_relay/audit/rotation.py); external: logrotate and SIGUSR1
    # (contrib/logrotate). Unset: daily for a file, nothing to rotate on
    # standard output (journald's or Docker's).
    rotate: LogRotation | None = None

    def validate(self, where: Where) -> None:
        if self.rotate == LogRotation.DAILY and self.file == "-":
            where.key("rotate").fail("daily needs log.file (a directory for the daily files)")


def _log_path(path: Path) -> Path:
    """Absolute, its directory resolved but not the name itself: with
    log.rotate: daily, log.file is a symbolic link to today's file, and the
    path kept must stay the link's."""
    return path.parent.resolve() / path.name


def _domain_sizes(raw: object, where: Where) -> Mapping[str, int]:
    if not isinstance(raw, dict):
        where.fail("must map domains to sizes")
    limits = {}
    for domain, value in raw.items():
        here = Where(f"{where.path}.{domain}", where.base)
        if not isinstance(domain, str) or "." not in domain:
            here.fail("must be a domain name")
        try:
            limits[normalize_domain(domain)] = parse_size(value)
        except ValueError as error:
            here.fail(str(error))
    return types.MappingProxyType(limits)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Limits:
    max_attachment_size: Bytes = 20 * 1024**2
    max_message_size: Bytes = 60 * 1024**2
    max_recipients: Annotated[int, Range(1, 100_000)] = 50
    # Mon espace santé is reported to accept about 25 MB per message.
    per_domain: Annotated[Mapping[str, int], Convert(_domain_sizes)] = field(
        default_factory=lambda: types.MappingProxyType({"patient.mssante.fr": 25_000_000})
    )

    def validate(self, where: Where) -> None:
        if self.max_attachment_size > self.max_message_size:
            where.key("max_attachment_size").fail("must not exceed limits.max_message_size")


def _names(dotted: bool) -> Convert:
    def read(raw: object, where: Where) -> frozenset[str]:
        items: list[object] = raw if isinstance(raw, list) else [None]
        names = [v.strip().lower() for v in items if isinstance(v, str) and v.strip()]
        if len(names) < len(items):
            where.fail("must be a list of names")
        return frozenset(v.lstrip(".") if dotted else v for v in names)

    return Convert(read)


_RULES = AttachmentRules()


@dataclass(frozen=True, slots=True, kw_only=True)
class _Attachments:
    refused_extensions: Annotated[frozenset[str], _names(dotted=True)] = _RULES.extensions
    also_refused_extensions: Annotated[frozenset[str], _names(dotted=True)] = frozenset()
    refused_content_types: Annotated[frozenset[str], _names(dotted=False)] = _RULES.content_types
    also_refused_content_types: Annotated[frozenset[str], _names(dotted=False)] = frozenset()
    inspect_archives: bool = _RULES.inspect_archives


def _directory_mode(raw: object, where: Where) -> DirectoryMode:
    # YAML 1.1 reads a bare « off » as false: the same word to the operator.
    text = "off" if raw is False else raw
    if not isinstance(text, str) or text not in tuple(DirectoryMode):
        where.fail("must be one of " + ", ".join(DirectoryMode))
    return DirectoryMode(text)


def _accepted(raw: object, where: Where) -> frozenset[str]:
    """Addresses (with « @ ») and domains, normalized."""
    items: list[object] = raw if isinstance(raw, list) else [None]
    names = [v.strip() for v in items if isinstance(v, str) and v.strip()]
    if len(names) < len(items):
        where.fail("must be a list of addresses or domains")
    for name in names:
        local, at, domain = name.rpartition("@")
        labels = domain.removesuffix(".").split(".")
        if (at and not local) or " " in name or "@" in local or len(labels) < 2 or not all(labels):
            where.fail(f"{name!r} is neither an address nor a domain")
    return frozenset(normalize_address(n) if "@" in n else normalize_domain(n) for n in names)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Directory:
    """The Annuaire Santé at RCPT (mss_relay/core/directory.py)."""

    mode: Annotated[DirectoryMode, Convert(_directory_mode)] = DirectoryMode.OFF
    also_accept: Annotated[frozenset[str], Convert(_accepted)] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class _User:
    name: str
    password_hash: str


def _user_names(raw: object, where: Where) -> frozenset[str]:
    if not isinstance(raw, list) or not all(isinstance(u, str) for u in raw):
        where.fail("must be a list of user names")
    return frozenset(raw)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Bal:
    address: Annotated[str, Fold(str.strip)]
    type: BalType
    users: Annotated[frozenset[str], Convert(_user_names)] = frozenset()
    patients_may_initiate: bool = False
    auto_close: bool = False


def _client_addresses(raw: object, where: Where) -> Mapping[str, object]:
    """Client address, as written -> the user it is taken for (checked in validate)."""
    if not isinstance(raw, dict):
        where.fail("must map client addresses to user names")
    for address in raw:
        try:
            ipaddress.ip_address(str(address))
        except ValueError:
            Where(f"{where.path}.{address}", where.base).fail(f"{address!r} is not an IP address")
    return types.MappingProxyType({str(k): v for k, v in raw.items()})


@dataclass(frozen=True, slots=True, kw_only=True)
class _File:
    """The file's top level, in the order the keys are read."""

    listeners: tuple[Annotated[ListenerConfig, Convert(_listener)], ...]
    users: tuple[_User, ...] = ()
    state: _State
    control: _Control
    upstream: UpstreamConfig | None = None
    inbound_delivery: UpstreamConfig | None = None
    log: _Log
    hostname: str | None = None  # default: this machine's FQDN
    tls: TlsConfig | None = None
    conversations: ConversationsConfig
    limits: _Limits
    bals: tuple[_Bal, ...] = ()
    dkim: tuple[DkimKeyConfig, ...] = ()
    inbound: InboundConfig
    trust_space: TrustSpaceConfig
    throttle: Annotated[ThrottleSettings, _THROTTLE]
    attachments: _Attachments
    # Client address -> the user it is taken for, without AUTH (a DPI server
    # on a fixed address).
    trusted_clients: Annotated[Mapping[str, object], Convert(_client_addresses)] = field(
        default_factory=lambda: types.MappingProxyType({})
    )
    timeouts: TimeoutsConfig
    lifecycle: LifecycleConfig
    # Processes sharing the listening sockets (SO_REUSEPORT) and the SQLite
    # file: one Python process uses one core.
    workers: Annotated[int, Range(1, 64)] = 1
    metrics: MetricsConfig | None = None
    directory: _Directory
    antivirus: AntivirusConfig | None = None
    xdm: _Xdm

    def validate(self, where: Where) -> None:
        """What relates keys of different sections."""
        self._check_listeners()
        self._check_antivirus(where)
        metrics = self.metrics
        for i, listener in enumerate(self.listeners):
            if metrics is not None and listener.endpoint == f"{metrics.host}:{metrics.port}":
                Where("metrics.port", where.base).fail(f"same endpoint as listeners[{i}]")
        users: dict[str, str] = {}
        for i, user in enumerate(self.users):
            if user.name in users:
                Where(f"users[{i}].name", where.base).fail(f"duplicate user {user.name!r}")
            if not is_password_hash(user.password_hash):
                Where(f"users[{i}].password_hash", where.base).fail(
                    "not a hash made by « mss-relay hash-password »"
                )
            users[user.name] = user.password_hash
        # A milter needs no upstream: Postfix delivers.
        if self.upstream is None and any(li.role == Role.SUBMISSION for li in self.listeners):
            where.key("upstream").fail("is required")
        for i, listener in enumerate(self.listeners):
            if listener.role == Role.INBOUND and self.inbound_delivery is None:
                Where(f"listeners[{i}].role", where.base).fail(
                    "inbound needs a top-level inbound_delivery section"
                )
            if listener.tls != ListenerTls.NONE and self.tls is None:
                Where(f"listeners[{i}].tls", where.base).fail(
                    f"{listener.tls} needs a top-level tls section"
                )
        self._check_operator_certificate(where)
        self._check_bals()
        self._check_lifecycle(where.key("lifecycle"))
        self._check_dkim()
        for address, name in self.trusted_clients.items():
            if not isinstance(name, str) or name not in users:
                Where(f"trusted_clients.{address}", where.base).fail(
                    f"{name!r} is not one of the users"
                )

    def _check_listeners(self) -> None:
        if not self.listeners:
            raise ConfigError("listeners", "must list at least one listener")
        names: dict[str, str] = {}
        endpoints: dict[str, str] = {}
        for i, listener in enumerate(self.listeners):
            path = f"listeners[{i}]"
            if listener.name in names:
                raise ConfigError(
                    f"{path}.name", f"duplicate listener name (already {names[listener.name]})"
                )
            names[listener.name] = path
            if listener.endpoint in endpoints:
                where = "path" if listener.path else "port"
                raise ConfigError(
                    f"{path}.{where}", f"same endpoint as {endpoints[listener.endpoint]}"
                )
            endpoints[listener.endpoint] = path

    def _check_antivirus(self, where: Where) -> None:
        """No message is ever passed unscanned for its size: clamd is sent
        every message the limits admit, up to their size on the wire (the
        SMTP listener's data_size_limit, the milter's wire_size)."""
        if self.antivirus is None:
            return
        largest = wire_size_limit(self.limits.max_message_size)
        if self.antivirus.max_size < largest:
            Where("antivirus.max_size", where.base).fail(
                f"must be at least {largest} bytes: the largest message limits.max_message_size"
                " admits, as sent on the wire (base64 and headers); raise it (and clamd's"
                " StreamMaxLength with it) or lower limits.max_message_size"
            )

    def _check_operator_certificate(self, where: Where) -> None:
        """inbound.require_operator_certificate needs what it compares: the
        listed DNs, and a certificate asked for on every inbound listener."""
        if not self.inbound.require_operator_certificate:
            return
        key = Where("inbound.require_operator_certificate", where.base)
        if self.trust_space.whitelist is None:
            key.fail(
                "needs trust_space.whitelist (the operators' certificate DNs are listed there)"
            )
        if self.tls is None or not self.tls.asks_client:
            key.fail(
                "needs tls.verify_client: required or optional (and tls.client_ca):"
                " no client certificate is asked for otherwise"
            )
        for i, listener in enumerate(self.listeners):
            if listener.role == Role.INBOUND and listener.tls == ListenerTls.NONE:
                Where(f"listeners[{i}].tls", where.base).fail(
                    "none: inbound.require_operator_certificate needs TLS on inbound listeners"
                    " (the certificate comes with it)"
                )
            if listener.role == Role.MILTER:
                Where(f"listeners[{i}].role", where.base).fail(
                    "milter: inbound.require_operator_certificate cannot be checked through"
                    " the milter (Postfix passes the certificate's CN only, as {cert_subject}):"
                    " check it in Postfix (smtpd_tls_ask_ccert, check_ccert_access)"
                )

    def _check_bals(self) -> None:
        seen: dict[str, str] = {}
        for i, bal in enumerate(self.bals):
            path, address = f"bals[{i}].address", bal.address
            local, domain = split_address(address)
            if not local or not domain or " " in address:
                raise ConfigError(path, f"{address!r} is not an e-mail address")
            if self.trust_space.whitelist is None:
                if not in_trust_space(domain):
                    raise ConfigError(path, f"{address} is not an MSSanté address (*.mssante.fr)")
            # With the liste blanche, the trust space is what it lists, and a
            # structure may be in it outside mssante.fr (mssante.apicrypt.org):
            # an unlisted BAL domain is a warning at start (trust.watcher), not
            # an error, since a new domain takes days to be published.
            elif len(labels := domain.removesuffix(".").split(".")) < 2 or not all(labels):
                raise ConfigError(path, f"{address!r} is not an e-mail address")
            normalized = normalize_address(address)
            if normalized in seen:
                raise ConfigError(path, f"duplicate BAL {address} (already {seen[normalized]})")
            seen[normalized] = f"bals[{i}]"

    def _check_lifecycle(self, where: Where) -> None:
        notify_from = self.lifecycle.notify_from
        if notify_from is not None:
            bals = {normalize_address(b.address) for b in self.bals}
            if normalize_address(notify_from) not in bals:
                where.key("notify_from").fail(f"{notify_from!r} is not one of the BALs (bals)")
        if self.lifecycle.notify:
            if notify_from is None:
                where.key("notify_from").fail("is required when notify is true")
            if self.upstream is None:
                where.key("notify").fail("needs an upstream section (notices are sent through it)")

    def _check_dkim(self) -> None:
        seen: dict[tuple[str, str], str] = {}
        for i, key in enumerate(self.dkim):
            path, domain, selector = f"dkim[{i}]", key.domain, key.selector
            if "." not in domain or not all(label for label in domain.split(".")):
                raise ConfigError(f"{path}.domain", f"{domain!r} is not a domain name")
            if not selector.replace("-", "").replace("_", "").replace(".", "").isalnum():
                raise ConfigError(f"{path}.selector", f"{selector!r} is not a DKIM selector")
            if (domain, selector) in seen:
                raise ConfigError(
                    f"{path}.selector", f"same domain and selector as {seen[domain, selector]}"
                )
            seen[domain, selector] = path

    def warnings(self) -> tuple[str, ...]:
        """What is allowed but probably not meant."""
        warnings = [
            f"listeners[{i}]: the milter protocol is not encrypted; {li.host} is not"
            " loopback: make sure only the Postfix host can reach it"
            for i, li in enumerate(self.listeners)
            if li.role == Role.MILTER and li.path is None and not _is_loopback(li.host)
        ]
        names = {user.name for user in self.users}
        for i, bal in enumerate(self.bals):
            for user in bal.users:
                if user not in names:
                    warnings.append(f"bals[{i}].users: user {user!r} is not in users")
        domains = {k.domain for k in self.dkim}
        for bal in self.bals if domains else ():
            labels = domain_of(bal.address).split(".")
            if not any(".".join(labels[i:]) in domains for i in range(len(labels))):
                warnings.append(f"bals: {bal.address} has no DKIM key (dkim): sent unsigned")
        return tuple(warnings)


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration, immutable: reload builds a new one."""

    path: Path
    hostname: str
    listeners: tuple[ListenerConfig, ...]
    tls: TlsConfig | None
    upstream: UpstreamConfig | None
    inbound_delivery: UpstreamConfig | None
    conversations: ConversationsConfig
    limits: Limits
    users: Mapping[str, str]  # name -> password hash
    bals: tuple[Bal, ...]
    database: Path  # SQLite: the state; with postgres, the relay's local file
    control: ControlConfig
    log: LogConfig
    record_timeout: float  # state.record_timeout
    dkim: tuple[DkimKeyConfig, ...]
    inbound: InboundConfig
    throttle: ThrottleSettings
    attachments: AttachmentRules
    trusted_clients: Mapping[str, str]  # normalized client address -> user name
    timeouts: TimeoutsConfig
    workers: int
    warnings: tuple[str, ...]
    lifecycle: LifecycleConfig
    metrics: MetricsConfig | None = None
    directory: DirectorySettings = field(default_factory=DirectorySettings)
    trust_space: TrustSpaceConfig = field(default_factory=TrustSpaceConfig)
    postgres: PostgresSettings | None = None  # state.database: postgresql://...
    antivirus: AntivirusConfig | None = None  # None: no scanning
    xdm: XdmSettings = field(default_factory=XdmSettings)

    def summary(self) -> str:
        listeners = ", ".join(f"{li.name} {li.endpoint} ({li.tls})" for li in self.listeners)
        up = (
            "none (milter only)"
            if self.upstream is None
            else f"capture to {self.upstream.capture}"
            if self.upstream.capture
            else f"{self.upstream.host}:{self.upstream.port} ({self.upstream.tls})"
        )
        return (
            f"{self.path}: OK: {len(self.listeners)} listener(s) [{listeners}],"
            f" upstream {up}, {len(self.users)} user(s), {len(self.bals)} BAL(s),"
            f" {len(self.dkim)} DKIM key(s)"
        )


def _runtime(file: _File, path: Path) -> Config:
    """Where the file's shape and the running relay's differ: here only."""
    limits, rules = file.limits, file.attachments
    return Config(
        path=path,
        hostname=file.hostname or socket.getfqdn(),
        listeners=file.listeners,
        tls=file.tls,
        upstream=file.upstream,
        inbound_delivery=file.inbound_delivery,
        conversations=file.conversations,
        limits=Limits(
            max_attachment_size=limits.max_attachment_size,
            max_message_size=limits.max_message_size,
            max_recipients=limits.max_recipients,
            per_domain=limits.per_domain,
        ),
        users=types.MappingProxyType({u.name: u.password_hash for u in file.users}),
        bals=tuple(
            Bal(b.address, b.type, b.users, b.patients_may_initiate, b.auto_close)
            for b in file.bals
        ),
        database=file.state.local,
        postgres=file.state.postgres,
        control=ControlConfig(file.control.socket or file.state.local.parent / "control.socket"),
        log=LogConfig(
            file=None if file.log.file == "-" else _log_path(path.parent / file.log.file),
            required=file.log.required,
            pseudonymize_patients=file.log.pseudonymize_patients,
            pseudonym_key_file=file.log.pseudonym_key_file
            or file.state.local.parent / "pseudonym.key",
            retention_days=file.log.retention_days,
            rotate=file.log.rotate
            or (LogRotation.EXTERNAL if file.log.file == "-" else LogRotation.DAILY),
        ),
        record_timeout=file.state.record_timeout,
        dkim=file.dkim,
        inbound=file.inbound,
        throttle=file.throttle,
        attachments=AttachmentRules(
            extensions=rules.refused_extensions | rules.also_refused_extensions,
            content_types=rules.refused_content_types | rules.also_refused_content_types,
            inspect_archives=rules.inspect_archives,
        ),
        # Spelled as connections are looked up (validate made sure of str users).
        trusted_clients=types.MappingProxyType(
            {ip_address(a): str(u) for a, u in file.trusted_clients.items()}
        ),
        timeouts=file.timeouts,
        workers=file.workers,
        warnings=file.warnings(),
        lifecycle=file.lifecycle,
        metrics=file.metrics,
        directory=DirectorySettings(file.directory.mode, file.directory.also_accept),
        trust_space=file.trust_space,
        antivirus=file.antivirus,
        xdm=XdmSettings(file.xdm.mode, file.xdm.allow_test_identities),
    )


def parse_config(data: object, path: Path) -> Config:
    """The Config of already parsed YAML (None: an empty file)."""
    return _runtime(load(_File, {} if data is None else data, Where("", path.parent)), path)


def yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's message in one line (its own spans several, with a caret
    drawing): what is wrong, and where (line and column, from 1)."""
    problem = getattr(error, "problem", None) or getattr(error, "context", None)
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    text = str(problem) if problem else " ".join(str(error).split())
    if mark is not None:
        text += f" (line {mark.line + 1}, column {mark.column + 1})"
    return text


def load_config(path: str | Path) -> Config:
    config_path = Path(path).resolve()
    try:
        text = config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", f"{config_path}: no such configuration file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError("", f"{config_path}: cannot read: {error}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError("", f"{config_path}: not valid YAML: {yaml_problem(error)}") from None
    return parse_config(data, config_path)
