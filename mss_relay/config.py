"""YAML configuration -> frozen dataclasses, validated once at start-up.

Every error names the key path (« bals[2].type: must be one of ... ») so that
the operator can fix the file without reading a traceback. Relative paths are
relative to the configuration file's folder.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

import yaml

from mss_relay.core.addresses import (
    domain_of,
    in_trust_space,
    normalize_address,
    normalize_domain,
    split_address,
)
from mss_relay.core.filetypes import AttachmentRules
from mss_relay.core.mailbox import Bal, BalType
from mss_relay.core.policy import Limits
from mss_relay.core.throttle import ThrottleSettings, ip_address
from mss_relay.passwords import is_password_hash
from mss_relay.sizes import parse_duration, parse_size

DKIM_ALGORITHMS = ("rsa-sha256", "ed25519-sha256")

LISTENER_ROLES = ("submission", "inbound", "milter")
LISTENER_TLS = ("starttls", "implicit", "none")
UPSTREAM_TLS = ("none", "starttls", "implicit")
# Mon espace santé is reported to accept about 25 MB per message.
DEFAULT_PER_DOMAIN = {"patient.mssante.fr": 25_000_000}
DEFAULT_LIMITS = Limits(
    max_attachment_size=20 * 1024**2,
    max_message_size=60 * 1024**2,
    max_recipients=50,
    per_domain=DEFAULT_PER_DOMAIN,
)


class ConfigError(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    name: str
    role: str
    host: str
    port: int  # 0 for a milter on a Unix socket
    tls: str
    path: Path | None = None  # a milter's Unix socket, instead of host and port

    @property
    def endpoint(self) -> str:
        return f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TlsConfig:
    certificate: Path
    private_key: Path
    self_signed: bool  # create a self-signed pair when missing (demo only)


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    host: str
    port: int
    tls: str
    ca_file: Path | None = None
    client_certificate: Path | None = None
    client_key: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    timeout: float = 60.0
    capture: Path | None = None  # write .eml files there instead of relaying (demo)
    # Idle upstream connections kept for the next client session (0: none),
    # and for how long at most: a new connection per message costs a TCP
    # handshake, a greeting, EHLO (and TLS, AUTH) to both sides.
    pool_size: int = 8
    pool_idle: float = 10.0


@dataclass(frozen=True, slots=True)
class ConversationsConfig:
    close_after_days: int | None = None  # close conversations idle this long
    retention_days: int = 92  # purge closed conversations after three months (seed 000 §8)
    purge_interval: float = 3600.0  # seconds between two purges


@dataclass(frozen=True, slots=True)
class DkimKeyConfig:
    domain: str
    selector: str
    private_key: Path
    algorithm: str = "rsa-sha256"
    generate: bool = False  # create the key when missing (demo only)


@dataclass(frozen=True, slots=True)
class InboundConfig:
    require_dkim_for_patients: bool = False
    # Answers to DKIM key look-ups, instead of DNS (tests, closed networks).
    dkim_dns_file: Path | None = None
    dns_timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class TimeoutsConfig:
    idle: float = 300.0  # RFC 5321 §4.5.3.2.7: at least 5 minutes without a byte
    data: float = 1800.0  # the whole DATA phase, however slowly it trickles in
    busy_wait: float = 60.0  # waiting for a free message slot before 451 4.3.2
    # A message slot is precious (memory): after data_rate_grace, a DATA phase
    # slower on average than min_data_rate (bytes/s) is cut (a trickle attack).
    min_data_rate: int = 1024
    data_rate_grace: float = 60.0


@dataclass(frozen=True, slots=True)
class LogConfig:
    file: Path | None  # None: standard output
    # Traceability is a duty: while the log cannot be written, new
    # transactions get 451 4.3.0 (false: mail goes on, reported on stderr).
    required: bool = True


@dataclass(frozen=True, slots=True)
class Config:
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
    database: Path
    log: LogConfig
    # state.record_timeout: how long a client's reply may wait for the
    # conversation state (a write after delivery, a look-up before the
    # verdict); a write not done by then goes on in the background.
    record_timeout: float = 2.0
    dkim: tuple[DkimKeyConfig, ...] = ()
    inbound: InboundConfig = field(default_factory=InboundConfig)
    throttle: ThrottleSettings = field(default_factory=ThrottleSettings)
    attachments: AttachmentRules = field(default_factory=AttachmentRules)
    # Client address -> the user it is taken for, without AUTH (a DPI server
    # on a fixed address). Normalized addresses.
    trusted_clients: Mapping[str, str] = field(default_factory=dict)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    # Processes sharing the listening sockets (SO_REUSEPORT) and the SQLite
    # file: one Python process uses one core.
    workers: int = 1
    warnings: tuple[str, ...] = field(default=())

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


def _fail(path: str, message: str) -> NoReturn:
    raise ConfigError(path, message)


def _key(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Section:
    """A mapping read key by key; keys nobody asked for are errors (typos)."""

    def __init__(self, value: object, path: str, base: Path) -> None:
        if not isinstance(value, dict):
            _fail(path, "must be a mapping of keys to values")
        self.data: dict[Any, Any] = value
        self.path = path
        self.base = base
        self.seen: set[str] = set()

    def _get(self, key: str, default: object) -> object:
        self.seen.add(key)
        if key in self.data and self.data[key] is not None:
            return self.data[key]
        if default is _REQUIRED:
            _fail(_key(self.path, key), "is required")
        return default

    def text(self, key: str, default: object = None) -> Any:
        value = self._get(key, default)
        if value is not None and not isinstance(value, str):
            _fail(_key(self.path, key), "must be a string")
        if isinstance(value, str) and not value.strip() and default is _REQUIRED:
            _fail(_key(self.path, key), "must not be empty")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: object = None) -> Any:
        value = self.text(key, default)
        if value is not None and value not in choices:
            _fail(_key(self.path, key), "must be one of " + ", ".join(choices))
        return value

    def integer(self, key: str, default: object, low: int, high: int) -> Any:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(_key(self.path, key), "must be a whole number")
        if not low <= value <= high:
            _fail(_key(self.path, key), f"must be between {low} and {high}")
        return value

    def number(self, key: str, default: float) -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            _fail(_key(self.path, key), "must be a positive number")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            _fail(_key(self.path, key), "must be true or false")
        return value

    def size(self, key: str, default: int) -> int:
        value = self._get(key, default)
        try:
            return parse_size(value)
        except ValueError as error:
            _fail(_key(self.path, key), str(error))

    def duration(self, key: str, default: float, *, positive: bool = True) -> float:
        value = self._get(key, default)
        try:
            seconds = parse_duration(value)
        except ValueError as error:
            _fail(_key(self.path, key), str(error))
        if positive and seconds <= 0:
            _fail(_key(self.path, key), "must be more than zero")
        return seconds

    def file(self, key: str, *, must_exist: bool, default: object = None) -> Path | None:
        value: str | None = self.text(key, default)
        if value is None:
            return None
        resolved = (self.base / value).resolve()
        if must_exist and not resolved.is_file():
            _fail(_key(self.path, key), f"file not found: {resolved}")
        return resolved

    def section(self, key: str, required: bool = False) -> _Section | None:
        value = self._get(key, _REQUIRED if required else None)
        return None if value is None else _Section(value, _key(self.path, key), self.base)

    def items(self, key: str, required: bool = False) -> list[_Section]:
        value = self._get(key, _REQUIRED if required else [])
        if not isinstance(value, list):
            _fail(_key(self.path, key), "must be a list")
        return [_Section(v, f"{_key(self.path, key)}[{i}]", self.base) for i, v in enumerate(value)]

    def done(self) -> None:
        for key in self.data:
            if key not in self.seen:
                expected = ", ".join(sorted(self.seen))
                _fail(_key(self.path, str(key)), f"unknown key (expected one of: {expected})")


_REQUIRED = object()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listener(item: _Section, warnings: list[str]) -> ListenerConfig:
    role = item.choice("role", LISTENER_ROLES, _REQUIRED)
    if role != "milter":
        listener = ListenerConfig(
            name=item.text("name", _REQUIRED),
            role=role,
            host=item.text("host", "127.0.0.1"),
            port=item.integer("port", _REQUIRED, 1, 65535),
            tls=item.choice("tls", LISTENER_TLS, "starttls"),
        )
        if listener.tls == "none" and not _is_loopback(listener.host):
            _fail(
                _key(item.path, "tls"),
                "none is refused on a non-loopback host (mail and passwords would"
                " cross the network in clear); use starttls or implicit",
            )
        return listener
    # Postfix speaks the milter protocol in clear: no tls key, a loopback
    # address or a Unix socket.
    name = item.text("name", _REQUIRED)
    path = item.file("path", must_exist=False)
    if item.text("tls", "none") != "none":
        _fail(
            _key(item.path, "tls"),
            "a milter listener speaks the milter protocol, which has no TLS:"
            " leave tls out (listen on loopback or on a Unix socket: path)",
        )
    if path is not None:
        if "port" in item.data:
            _fail(_key(item.path, "port"), "give either path (a Unix socket) or host and port")
        return ListenerConfig(name=name, role=role, host="", port=0, tls="none", path=path)
    listener = ListenerConfig(
        name=name,
        role=role,
        host=item.text("host", "127.0.0.1"),
        port=item.integer("port", _REQUIRED, 1, 65535),
        tls="none",
    )
    if not _is_loopback(listener.host):
        warnings.append(
            f"{item.path}: the milter protocol is not encrypted; {listener.host} is not"
            " loopback: make sure only the Postfix host can reach it"
        )
    return listener


def _listeners(root: _Section, warnings: list[str]) -> tuple[ListenerConfig, ...]:
    listeners = []
    names: dict[str, str] = {}
    endpoints: dict[str, str] = {}
    for item in root.items("listeners", required=True):
        listener = _listener(item, warnings)
        item.done()
        if listener.name in names:
            _fail(
                _key(item.path, "name"), f"duplicate listener name (already {names[listener.name]})"
            )
        names[listener.name] = item.path
        if listener.endpoint in endpoints:
            where = "path" if listener.path else "port"
            _fail(_key(item.path, where), f"same endpoint as {endpoints[listener.endpoint]}")
        endpoints[listener.endpoint] = item.path
        listeners.append(listener)
    if not listeners:
        _fail("listeners", "must list at least one listener")
    return tuple(listeners)


def _tls(root: _Section, listeners: tuple[ListenerConfig, ...]) -> TlsConfig | None:
    section = root.section("tls")
    if section is None:
        for i, listener in enumerate(listeners):
            if listener.tls != "none":
                _fail(f"listeners[{i}].tls", f"{listener.tls} needs a top-level tls section")
        return None
    self_signed = section.flag("self_signed", False)
    cert = section.file("certificate", must_exist=not self_signed, default=_REQUIRED)
    key = section.file("private_key", must_exist=not self_signed, default=_REQUIRED)
    section.done()
    assert cert is not None and key is not None
    return TlsConfig(certificate=cert, private_key=key, self_signed=self_signed)


def _delivery(root: _Section, key: str, required: bool) -> UpstreamConfig | None:
    """upstream and inbound_delivery: the same keys."""
    section = root.section(key, required=required)
    if section is None:
        return None
    capture = section.file("capture", must_exist=False)
    host_default = None if capture else _REQUIRED
    tls = section.choice("tls", UPSTREAM_TLS, "starttls")
    default_port = 465 if tls == "implicit" else 25
    upstream = UpstreamConfig(
        host=section.text("host", host_default) or "",
        port=section.integer("port", default_port, 1, 65535),
        tls=tls,
        ca_file=section.file("ca_file", must_exist=True),
        client_certificate=section.file("client_certificate", must_exist=True),
        client_key=section.file("client_key", must_exist=True),
        username=section.text("username"),
        password_file=section.file("password_file", must_exist=True),
        timeout=section.number("timeout", 60.0),
        capture=capture,
        pool_size=section.integer("pool_size", 8, 0, 1000),
        pool_idle=section.duration("pool_idle", 10.0),
    )
    section.done()
    if (upstream.username is None) != (upstream.password_file is None):
        _fail(f"{key}.password_file", "username and password_file go together")
    if (upstream.client_certificate is None) != (upstream.client_key is None):
        _fail(f"{key}.client_key", "client_certificate and client_key go together")
    return upstream


def _dkim(root: _Section) -> tuple[DkimKeyConfig, ...]:
    keys: list[DkimKeyConfig] = []
    seen: dict[tuple[str, str], str] = {}
    for item in root.items("dkim"):
        domain = normalize_domain(item.text("domain", _REQUIRED))
        selector = item.text("selector", _REQUIRED).strip()
        generate = item.flag("generate", False)
        key = DkimKeyConfig(
            domain=domain,
            selector=selector,
            private_key=item.file("private_key", must_exist=False, default=_REQUIRED) or Path(),
            algorithm=item.choice("algorithm", DKIM_ALGORITHMS, "rsa-sha256"),
            generate=generate,
        )
        item.done()
        if "." not in domain or not all(label for label in domain.split(".")):
            _fail(_key(item.path, "domain"), f"{domain!r} is not a domain name")
        if not selector.replace("-", "").replace("_", "").replace(".", "").isalnum():
            _fail(_key(item.path, "selector"), f"{selector!r} is not a DKIM selector")
        if (domain, selector) in seen:
            _fail(
                _key(item.path, "selector"), f"same domain and selector as {seen[domain, selector]}"
            )
        seen[domain, selector] = item.path
        keys.append(key)
    return tuple(keys)


def _inbound(root: _Section) -> InboundConfig:
    section = root.section("inbound")
    if section is None:
        return InboundConfig()
    config = InboundConfig(
        require_dkim_for_patients=section.flag("require_dkim_for_patients", False),
        dkim_dns_file=section.file("dkim_dns_file", must_exist=True),
        dns_timeout=section.number("dns_timeout", 5.0),
    )
    section.done()
    return config


def _throttle(root: _Section) -> ThrottleSettings:
    section = root.section("throttle")
    d = ThrottleSettings()
    if section is None:
        return d
    settings = ThrottleSettings(
        auth_max_failures_per_user=section.integer(
            "auth_max_failures_per_user", d.auth_max_failures_per_user, 1, 10_000
        ),
        auth_max_failures_per_client=section.integer(
            "auth_max_failures_per_client", d.auth_max_failures_per_client, 1, 100_000
        ),
        auth_window=section.duration("auth_window", d.auth_window),
        auth_lockout=section.duration("auth_lockout", d.auth_lockout),
        auth_failure_delay=section.duration(
            "auth_failure_delay", d.auth_failure_delay, positive=False
        ),
        auth_max_delay=section.duration("auth_max_delay", d.auth_max_delay, positive=False),
        messages_per_minute=section.integer("messages_per_minute", d.messages_per_minute, 0, 10**6),
        recipients_per_hour=section.integer("recipients_per_hour", d.recipients_per_hour, 0, 10**7),
        max_connections=section.integer("max_connections", d.max_connections, 1, 100_000),
        max_connections_per_client=section.integer(
            "max_connections_per_client", d.max_connections_per_client, 1, 100_000
        ),
        max_concurrent_messages=section.integer(
            "max_concurrent_messages", d.max_concurrent_messages, 1, 10_000
        ),
    )
    section.done()
    return settings


def _names(section: _Section, key: str, default: frozenset[str], dotted: bool) -> frozenset[str]:
    raw = section._get(key, None)
    if raw is None:
        return default
    if not isinstance(raw, list) or not all(isinstance(v, str) and v.strip() for v in raw):
        _fail(_key(section.path, key), "must be a list of names")
    values = {v.strip().lower().lstrip(".") if dotted else v.strip().lower() for v in raw}
    return frozenset(values)


def _attachments(root: _Section) -> AttachmentRules:
    section = root.section("attachments")
    d = AttachmentRules()
    if section is None:
        return d
    extensions = _names(section, "refused_extensions", d.extensions, dotted=True)
    extensions |= _names(section, "also_refused_extensions", frozenset(), dotted=True)
    types = _names(section, "refused_content_types", d.content_types, dotted=False)
    types |= _names(section, "also_refused_content_types", frozenset(), dotted=False)
    rules = AttachmentRules(
        extensions=extensions,
        content_types=types,
        inspect_archives=section.flag("inspect_archives", True),
    )
    section.done()
    return rules


def _trusted_clients(root: _Section, users: Mapping[str, str]) -> dict[str, str]:
    raw = root._get("trusted_clients", None)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        _fail("trusted_clients", "must map client addresses to user names")
    trusted = {}
    for address, user in raw.items():
        path = f"trusted_clients.{address}"
        try:
            ipaddress.ip_address(str(address))
        except ValueError:
            _fail(path, f"{address!r} is not an IP address")
        if not isinstance(user, str) or user not in users:
            _fail(path, f"{user!r} is not one of the users")
        trusted[ip_address(str(address))] = user  # spelled as connections are looked up
    return trusted


def _timeouts(root: _Section) -> TimeoutsConfig:
    section = root.section("timeouts")
    d = TimeoutsConfig()
    if section is None:
        return d
    config = TimeoutsConfig(
        idle=section.duration("idle", d.idle),
        data=section.duration("data", d.data),
        busy_wait=section.duration("busy_wait", d.busy_wait),
        min_data_rate=section.size("min_data_rate", d.min_data_rate),
        data_rate_grace=section.duration("data_rate_grace", d.data_rate_grace),
    )
    section.done()
    return config


def _conversations(root: _Section) -> ConversationsConfig:
    section = root.section("conversations")
    if section is None:
        return ConversationsConfig()
    idle = section._get("close_after_days", None)
    config = ConversationsConfig(
        close_after_days=None
        if idle is None
        else section.integer("close_after_days", None, 1, 3650),
        retention_days=section.integer("retention_days", 92, 1, 36500),
        purge_interval=section.number("purge_interval", 3600.0),
    )
    section.done()
    return config


def _per_domain(section: _Section) -> dict[str, int]:
    raw = section._get("per_domain", None)
    if raw is None:
        return dict(DEFAULT_PER_DOMAIN)
    if not isinstance(raw, dict):
        _fail(_key(section.path, "per_domain"), "must map domains to sizes")
    limits = {}
    for domain, value in raw.items():
        path = f"{_key(section.path, 'per_domain')}.{domain}"
        if not isinstance(domain, str) or "." not in domain:
            _fail(path, "must be a domain name")
        try:
            limits[normalize_domain(domain)] = parse_size(value)
        except ValueError as error:
            _fail(path, str(error))
    return limits


def _limits(root: _Section) -> Limits:
    section = root.section("limits")
    if section is None:
        return DEFAULT_LIMITS
    limits = Limits(
        max_attachment_size=section.size("max_attachment_size", DEFAULT_LIMITS.max_attachment_size),
        max_message_size=section.size("max_message_size", DEFAULT_LIMITS.max_message_size),
        max_recipients=section.integer("max_recipients", DEFAULT_LIMITS.max_recipients, 1, 100_000),
        per_domain=_per_domain(section),
    )
    section.done()
    if limits.max_attachment_size > limits.max_message_size:
        _fail("limits.max_attachment_size", "must not exceed limits.max_message_size")
    return limits


def _users(root: _Section) -> dict[str, str]:
    users: dict[str, str] = {}
    for item in root.items("users"):
        name = item.text("name", _REQUIRED)
        password_hash = item.text("password_hash", _REQUIRED)
        item.done()
        if name in users:
            _fail(_key(item.path, "name"), f"duplicate user {name!r}")
        if not is_password_hash(password_hash):
            _fail(
                _key(item.path, "password_hash"),
                "not a hash made by « mss-relay hash-password »",
            )
        users[name] = password_hash
    return users


def _bals(root: _Section, users: Mapping[str, str], warnings: list[str]) -> tuple[Bal, ...]:
    bals: list[Bal] = []
    seen: dict[str, str] = {}
    for item in root.items("bals"):
        address = item.text("address", _REQUIRED).strip()
        bal_type = item.choice("type", tuple(t.value for t in BalType), _REQUIRED)
        raw_users = item._get("users", [])
        may_initiate = item.flag("patients_may_initiate", False)
        auto_close = item.flag("auto_close", False)
        item.done()
        local, domain = split_address(address)
        if not local or not domain or " " in address:
            _fail(_key(item.path, "address"), f"{address!r} is not an e-mail address")
        if not in_trust_space(domain):
            _fail(_key(item.path, "address"), f"{address} is not an MSSanté address (*.mssante.fr)")
        normalized = normalize_address(address)
        if normalized in seen:
            _fail(
                _key(item.path, "address"), f"duplicate BAL {address} (already {seen[normalized]})"
            )
        seen[normalized] = item.path
        if not isinstance(raw_users, list) or not all(isinstance(u, str) for u in raw_users):
            _fail(_key(item.path, "users"), "must be a list of user names")
        for user in raw_users:
            if user not in users:
                warnings.append(f"{_key(item.path, 'users')}: user {user!r} is not in users")
        bals.append(
            Bal(
                address=address,
                type=BalType(bal_type),
                users=frozenset(raw_users),
                patients_may_initiate=may_initiate,
                auto_close=auto_close,
            )
        )
    return tuple(bals)


def parse_config(data: object, path: Path) -> Config:
    base = path.parent
    root = _Section({} if data is None else data, "", base)
    warnings: list[str] = []
    listeners = _listeners(root, warnings)
    users = _users(root)
    state = root.section("state")
    database = (
        state.file("database", must_exist=False, default="var/state.sqlite3")
        if state
        else (base / "var/state.sqlite3").resolve()
    )
    record_timeout = state.duration("record_timeout", 2.0) if state else 2.0
    if record_timeout > 60:
        _fail("state.record_timeout", "must be at most 60 seconds (a client waits that long)")
    if state:
        state.done()
    # A milter needs no upstream: Postfix delivers.
    upstream = _delivery(
        root, "upstream", required=any(li.role == "submission" for li in listeners)
    )
    inbound_delivery = _delivery(root, "inbound_delivery", required=False)
    if inbound_delivery is None:
        for i, listener in enumerate(listeners):
            if listener.role == "inbound":
                _fail(f"listeners[{i}].role", "inbound needs a top-level inbound_delivery section")
    log = root.section("log")
    log_file = log.text("file", "-") if log else "-"
    log_required = log.flag("required", True) if log else True
    if log:
        log.done()
    config = Config(
        path=path,
        hostname=root.text("hostname") or socket.getfqdn(),
        listeners=listeners,
        tls=_tls(root, listeners),
        upstream=upstream,
        inbound_delivery=inbound_delivery,
        conversations=_conversations(root),
        limits=_limits(root),
        users=users,
        bals=_bals(root, users, warnings),
        database=database or base / "var/state.sqlite3",
        record_timeout=record_timeout,
        log=LogConfig(
            file=None if log_file == "-" else (base / log_file).resolve(), required=log_required
        ),
        dkim=_dkim(root),
        inbound=_inbound(root),
        throttle=_throttle(root),
        attachments=_attachments(root),
        trusted_clients=_trusted_clients(root, users),
        timeouts=_timeouts(root),
        workers=root.integer("workers", 1, 1, 64),
        warnings=tuple(warnings),
    )
    root.done()
    if config.dkim:
        domains = {k.domain for k in config.dkim}
        for bal in config.bals:
            labels = domain_of(bal.address).split(".")
            if not any(".".join(labels[i:]) in domains for i in range(len(labels))):
                warnings.append(f"bals: {bal.address} has no DKIM key (dkim): sent unsigned")
        config = replace(config, warnings=tuple(warnings))
    return config


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
        raise ConfigError("", f"{config_path}: not valid YAML: {error}") from None
    return parse_config(data, config_path)
