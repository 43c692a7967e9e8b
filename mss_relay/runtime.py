"""The running configuration and what is built from it, swapped whole on reload.

A Generation is one configuration with everything made from it (policy,
upstreams, TLS context, DKIM keys, one RelayContext per listener). Each
connection takes the generation current when it is accepted and keeps it to
the end: a reload builds a complete new one off the event loop, then swaps one
reference, so sessions in progress finish under the configuration they started
with and no connection is dropped. What must outlive a reload (the AUTH
lockouts, the sending-rate counters, the open sessions, the log, the state
database) is in Shared and only gets the new settings.

What cannot change without a restart (the listening sockets, the number of
workers, the files held open) is kept from the running configuration, and
named in the `reloaded` line's restart_required.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import yaml
from structlog.typing import FilteringBoundLogger

from mss_relay.config import Config, ConfigError, ListenerTls, Role, UpstreamConfig, load_config
from mss_relay.core.mailbox import BalDirectory
from mss_relay.core.policy import Policy
from mss_relay.delivery.capture import CaptureUpstream
from mss_relay.delivery.upstream import SmtpUpstream, Upstream
from mss_relay.front.session import ClientSession, RelayContext
from mss_relay.inspect.antivirus import Antivirus
from mss_relay.log import LineWriter, utc_now
from mss_relay.metrics import Slots
from mss_relay.notifier import Inputs
from mss_relay.signing import Signer, UnusableKey, dns_record, generate_key, load_key, write_key
from mss_relay.state.activity import ActivityRecorder
from mss_relay.state.api import Conversations, Directory
from mss_relay.state.recorder import Recorder
from mss_relay.throttles import Guard, Rates
from mss_relay.tls import inbound_context, server_context
from mss_relay.trust.watcher import WhitelistView, warn_unlisted_bals
from mss_relay.trust.whitelist import InvalidWhitelist
from mss_relay.verification import Verifier, dns_lookup, file_lookup, load_answers


def read_upstream_password(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError("upstream.password_file", f"cannot read: {error}") from None


def make_upstream(config: Config, delivery: UpstreamConfig) -> Upstream:
    if delivery.capture is not None:
        return CaptureUpstream(delivery.capture)
    password = read_upstream_password(delivery.password_file)
    return SmtpUpstream(delivery, config.hostname, password)


def make_signer(config: Config, *, create: bool) -> Signer:
    """Load every DKIM key; with create, make the demo keys that are missing
    (and say what to publish), otherwise skip them."""
    keys = []
    for i, entry in enumerate(config.dkim):
        path = entry.private_key
        if entry.generate and not path.exists():
            if not create:
                continue
            pem, public = generate_key(entry.algorithm)
            write_key(path, pem)
            record = dns_record(entry.domain, entry.selector, entry.algorithm, public)
            print(f"mss-relay: created DKIM key {path}; publish: {record}", file=sys.stderr)
        try:
            keys.append(load_key(path, entry.domain, entry.selector, entry.algorithm))
        except UnusableKey as error:
            raise ConfigError(f"dkim[{i}].private_key", str(error)) from None
    return Signer(keys)


def make_verifier(config: Config) -> Verifier:
    path = config.inbound.dkim_dns_file
    if path is None:
        # dkimpy passes its own timeout to each look-up, in place of the
        # lookup's default: inbound.dns_timeout must be given to both.
        timeout = config.inbound.dns_timeout
        return Verifier(config.hostname, dns_lookup(timeout), timeout)
    try:
        answers = load_answers(path)
    except (OSError, UnicodeError, ValueError, yaml.YAMLError) as error:
        raise ConfigError("inbound.dkim_dns_file", f"{path}: {error}") from None
    return Verifier(config.hostname, file_lookup(answers))


@dataclass(frozen=True)
class Prepared:
    """What serve() needs, built from the configuration before anything listens."""

    upstream: Upstream | None  # None with only milter listeners
    inbound_delivery: Upstream | None
    tls: ssl.SSLContext | None
    signer: Signer
    verifier: Verifier
    # The ANS liste blanche in force (None: trust_space.whitelist not set).
    whitelist: WhitelistView | None = None
    # Inbound listeners' context when they ask for a client certificate
    # (tls.verify_client); None: they use tls.
    inbound_tls: ssl.SSLContext | None = None


def open_whitelist(config: Config) -> WhitelistView | None:
    path = config.trust_space.whitelist
    if path is None:
        return None
    try:
        return WhitelistView.open(path)
    except FileNotFoundError:
        raise ConfigError(
            "trust_space.whitelist", f"{path}: no such file (run « mss-relay whitelist update »)"
        ) from None
    except OSError as error:
        raise ConfigError("trust_space.whitelist", f"{path}: {error.strerror}") from None
    except InvalidWhitelist as error:
        raise ConfigError("trust_space.whitelist", f"{path}: {error}") from None


def prepare(
    config: Config, *, create_keys: bool = True, whitelist: WhitelistView | None = None
) -> Prepared:
    """Everything that can fail on the configuration, before anything listens.
    create_keys: make the missing demo DKIM keys (the first worker only; the
    others find them made). whitelist: the view of the list in force, kept."""
    tls = server_context(config.tls, config.hostname) if config.tls else None
    inbound = make_upstream(config, config.inbound_delivery) if config.inbound_delivery else None
    return Prepared(
        make_upstream(config, config.upstream) if config.upstream else None,
        inbound,
        tls,
        make_signer(config, create=create_keys),
        make_verifier(config),
        whitelist if whitelist is not None else open_whitelist(config),
        inbound_context(config.tls, config.hostname) if config.tls else None,
    )


def listener_tls(prepared: Prepared, role: Role) -> ssl.SSLContext | None:
    if role == Role.INBOUND and prepared.inbound_tls is not None:
        return prepared.inbound_tls
    return prepared.tls


# --- what changed, and what needs a restart

# Config fields under another name in the file; those not listed are named
# as in the file (a new section is compared without a line here).
_SECTION = {"database": "state", "postgres": "state", "record_timeout": "state"}
_NOT_SECTIONS = frozenset({"path", "warnings"})


def _keep(name: str) -> Callable[[Config, Config], Config]:
    return lambda new, old: replace(new, **{name: getattr(old, name)})


# Keys read once at start (a socket bound, a process started, a file opened):
# their name, how to read them, how to keep the running value in a new
# configuration. Listeners are compared key by key (restart_required).
RESTART_ONLY: tuple[
    tuple[str, Callable[[Config], object], Callable[[Config, Config], Config]], ...
] = (
    ("listeners", lambda c: c.listeners, _keep("listeners")),
    ("workers", lambda c: c.workers, _keep("workers")),
    (
        "state.database",
        lambda c: (c.database, c.postgres),
        lambda new, old: replace(new, database=old.database, postgres=old.postgres),
    ),
    ("control.socket", lambda c: c.control, _keep("control")),
    ("log.file", lambda c: c.log.file, lambda new, old: replace(new, log=old.log)),
    ("metrics", lambda c: c.metrics, _keep("metrics")),
)
_LISTENER_KEYS = ("name", "role", "host", "port", "tls", "path")


def restart_required(old: Config, new: Config) -> list[str]:
    keys = []
    for name, read, _ in RESTART_ONLY:
        if read(old) == read(new):
            continue
        if name != "listeners" or len(old.listeners) != len(new.listeners):
            keys.append(name)
            continue
        for i, (was, now) in enumerate(zip(old.listeners, new.listeners, strict=True)):
            keys += [
                f"listeners[{i}].{k}" for k in _LISTENER_KEYS if getattr(was, k) != getattr(now, k)
            ]
    return keys


def running_shape(old: Config, new: Config) -> Config:
    """The new configuration with what needs a restart kept as it runs; a
    ConfigError when the running listeners could not work with the rest."""
    for _name, read, keep in RESTART_ONLY:
        if read(old) != read(new):
            new = keep(new, old)
    for i, listener in enumerate(new.listeners):
        needs = {
            Role.SUBMISSION: ("upstream", new.upstream),
            Role.INBOUND: ("inbound_delivery", new.inbound_delivery),
        }.get(listener.role)
        if needs is not None and needs[1] is None:
            raise ConfigError(
                needs[0], f"is required by the running listeners[{i}] (restart to change them)"
            )
        if listener.tls != ListenerTls.NONE and new.tls is None:
            raise ConfigError(
                "tls", f"is required by the running listeners[{i}] (restart to change them)"
            )
    return new


def _digest(paths: Iterable[Path | None]) -> str:
    """The contents of the files a section names: a renewed certificate, a new
    DKIM key or password at the same path is a change."""
    hashed = hashlib.sha256()
    for path in paths:
        if path is None:
            continue
        try:
            hashed.update(path.read_bytes())
        except OSError as error:
            hashed.update(f"{path}: {error.strerror}".encode())
        hashed.update(b"\0")
    return hashed.hexdigest()


def file_digests(config: Config) -> dict[str, str]:
    def upstream(up: UpstreamConfig | None) -> str:
        if up is None:
            return ""
        return _digest((up.password_file, up.ca_file, up.client_certificate, up.client_key))

    return {
        "tls": _digest(
            (config.tls.certificate, config.tls.private_key, config.tls.client_ca)
            if config.tls
            else ()
        ),
        "dkim": _digest(key.private_key for key in config.dkim),
        "upstream": upstream(config.upstream),
        "inbound_delivery": upstream(config.inbound_delivery),
        "inbound": _digest((config.inbound.dkim_dns_file,)),
    }


def changed_sections(
    old: Config, new: Config, old_files: Mapping[str, str], new_files: Mapping[str, str]
) -> list[str]:
    changed = {
        _SECTION.get(f.name, f.name)
        for f in fields(Config)
        if f.name not in _NOT_SECTIONS and getattr(old, f.name) != getattr(new, f.name)
    }
    changed |= {name for name, digest in new_files.items() if old_files.get(name) != digest}
    return sorted(changed)


# --- the running relay's state


@dataclass
class Shared:
    """What lives as long as the process, across reloads."""

    log: FilteringBoundLogger
    writer: LineWriter
    store: Conversations
    state: Recorder
    # throttles.make_throttles(): in memory (SQLite) or shared by the relays
    # (PostgreSQL), behind one async interface.
    guard: Guard
    sending_rates: Rates
    # The open sessions of the whole process, for a graceful stop.
    sessions: set[ClientSession] = field(default_factory=set)
    auth_settled: asyncio.Condition = field(default_factory=asyncio.Condition)
    activity: ActivityRecorder | None = None  # the BAL lifecycle's dates
    directory: Directory | None = None  # the Annuaire Santé's look-ups
    # Told when the log is reopened (the audit chain saves its head then).
    log_reopened: Callable[[], None] | None = None


@dataclass(frozen=True)
class Generation:
    config: Config
    prepared: Prepared
    files: Mapping[str, str]  # section -> digest of the files it names
    contexts: tuple[RelayContext, ...]  # one per listener, in order


class ReloadFailed(Exception):
    """The new configuration is not applied; str(): the one-line reason."""


@dataclass(frozen=True)
class Reloaded:
    changed: list[str]
    restart_required: list[str]


@dataclass(frozen=True)
class _Built:
    config: Config
    prepared: Prepared
    files: Mapping[str, str]
    restart_required: list[str]


class Runtime:
    """The current generation, and the reload that replaces it."""

    def __init__(self, config: Config, prepared: Prepared, shared: Shared, worker: int) -> None:
        self.shared = shared
        self.worker = worker
        self._lock = asyncio.Lock()  # one reload at a time
        self._retired: list[Upstream] = []  # replaced: their idle connections closed later
        self.generation = self._generation(
            config,
            prepared,
            file_digests(config),
            Slots(config.throttle.max_concurrent_messages),
        )

    @property
    def config(self) -> Config:
        return self.generation.config

    def context(self, index: int) -> RelayContext:
        return self.generation.contexts[index]

    def slots_busy(self) -> int:
        """The message slots taken, for the gauge: those of the current
        generation (after a reload that resized them, the sessions still on
        the old slots are not counted until they end: a moment)."""
        contexts = self.generation.contexts
        slots = contexts[0].data_slots if contexts else None
        return slots.busy if isinstance(slots, Slots) else 0

    def lifecycle_inputs(self) -> Inputs:
        """What the BAL lifecycle check reads, from the generation in force."""
        prepared = self.generation.prepared
        return Inputs(self.config, prepared.upstream, prepared.signer)

    def tls(self, role: Role = Role.SUBMISSION) -> ssl.SSLContext | None:
        """The TLS context of a listener of that role, in the current generation."""
        return listener_tls(self.generation.prepared, role)

    def _current_tls(
        self, ssl_object: ssl.SSLObject, _name: str | None, context: ssl.SSLContext
    ) -> None:
        """On every ClientHello (OpenSSL calls it with or without SNI): serve
        the certificate of the current generation. The new context was built
        and checked whole before it became current: swapping a reference is
        atomic, where loading a new pair into the live context would not be
        (a certificate loaded and its key refused leaves a broken context).
        The context of the same kind: an inbound one verifies client
        certificates against its own CAs (OpenSSL verifies with the store of
        the context set here), the submission one asks for none. None of
        that kind now (tls.verify_client set to or from none since an
        implicit-TLS socket was made): the context it was made with stays,
        until a restart."""
        prepared = self.generation.prepared
        asks = context.verify_mode != ssl.CERT_NONE
        current = prepared.inbound_tls if asks else prepared.tls
        if current is not None and current is not context:
            ssl_object.context = current

    def _generation(
        self, config: Config, prepared: Prepared, files: Mapping[str, str], slots: asyncio.Semaphore
    ) -> Generation:
        shared = self.shared
        policy = Policy(
            config.limits,
            BalDirectory(config.bals),
            require_patient_dkim=config.inbound.require_dkim_for_patients,
            attachments=config.attachments,
            directory=config.directory,
            whitelist=prepared.whitelist,
            require_operator_certificate=config.inbound.require_operator_certificate,
            accept_unscanned=config.antivirus is not None and config.antivirus.accepts_unscanned,
            xdm=config.xdm,
        )
        # Stateless (a connection per message): a reload's settings apply to
        # the sessions of the new generation.
        antivirus = Antivirus(config.antivirus) if config.antivirus is not None else None
        store = shared.directory
        timeout = config.record_timeout  # a look-up before the verdict, like the state's
        directory = (lambda a: store.answer(a, timeout)) if store is not None else None
        if prepared.tls is not None:
            # Implicit TLS: the listening socket keeps the context it was made
            # with; a STARTTLS, the one of its connection's time. Every
            # handshake is handed the current one (_current_tls): a renewed
            # certificate is served at once, also to connections already open.
            prepared.tls.sni_callback = self._current_tls
        if prepared.inbound_tls is not None:
            prepared.inbound_tls.sni_callback = self._current_tls
        writer = shared.writer
        contexts = tuple(
            RelayContext(
                policy=policy,
                upstream=prepared.inbound_delivery
                if listener.role == Role.INBOUND and prepared.inbound_delivery
                else prepared.upstream,
                state=shared.state,
                users=config.users,
                hostname=config.hostname,
                role=listener.role,
                log=shared.log.bind(listener=listener.name),
                clock=utc_now,
                sessions=shared.sessions,
                signer=prepared.signer,
                verifier=prepared.verifier,
                throttle=config.throttle,
                timeouts=config.timeouts,
                auth_guard=shared.guard,
                rates=shared.sending_rates,
                data_slots=slots,
                auth_settled=shared.auth_settled,
                trusted_clients=config.trusted_clients,
                log_healthy=(lambda: writer.healthy) if config.log.required else None,
                activity=shared.activity,
                directory=directory,
                antivirus=antivirus,
            )
            for listener in config.listeners
        )
        return Generation(config, prepared, files, contexts)

    def _build(self, old: Generation) -> _Built:
        """In a thread: files read, keys and certificates loaded."""
        loaded = load_config(old.config.path)
        config = running_shape(old.config, loaded)
        same_list = config.trust_space.whitelist == old.config.trust_space.whitelist
        # The same file keeps its view (followed by trust.watcher.follow):
        # sessions of the old generation see its next list too.
        kept = old.prepared.whitelist if same_list else None
        prepared = prepare(config, create_keys=self.worker == 0, whitelist=kept)
        files = file_digests(config)
        # An upstream unchanged keeps its pool of idle connections.
        for name in ("upstream", "inbound_delivery"):
            same = (
                getattr(config, name) == getattr(old.config, name)
                and config.hostname == old.config.hostname
                and files[name] == old.files[name]
            )
            if same:
                prepared = replace(prepared, **{name: getattr(old.prepared, name)})
        return _Built(config, prepared, files, restart_required(old.config, loaded))

    async def reload(self) -> Reloaded:
        """Read the configuration again and make it current: a ConfigError
        (logged as reload_failed) leaves the running one as it was."""
        log = self.shared.log
        async with self._lock:
            old = self.generation
            self.reopen_log()  # logrotate may have run: the new lines go to the new file
            try:
                built = await asyncio.to_thread(self._build, old)
            except ConfigError as error:
                # The line check-config prints, naming the key.
                log.error("reload_failed", error=str(error))
                raise ReloadFailed(str(error)) from None
            except Exception as error:  # e.g. a certificate file unreadable mid-renewal
                line = f"{type(error).__name__}: {error}"
                log.error("reload_failed", error=line)
                raise ReloadFailed(line) from None
            config = built.config
            slots = old.contexts[0].data_slots if old.contexts else None
            if (
                slots is None
                or config.throttle.max_concurrent_messages
                != old.config.throttle.max_concurrent_messages
            ):
                # Sessions in progress release their slots on the old one.
                slots = Slots(config.throttle.max_concurrent_messages)
            self.generation = self._generation(config, built.prepared, built.files, slots)
            shared = self.shared
            shared.guard.reconfigure(config.throttle)
            shared.sending_rates.reconfigure(config.throttle)
            shared.state.timeout = config.record_timeout
            shared.store.idle_days = config.conversations.close_after_days
            retiring = [
                was
                for name in ("upstream", "inbound_delivery")
                if (was := getattr(old.prepared, name)) is not None
                and was is not getattr(built.prepared, name)
            ]
            # Those retired at the last reload are closed a second time (and
            # let go): a session that was still using one has given it back.
            await self._close(self._retired + retiring)
            self._retired = retiring
            changed = changed_sections(old.config, config, old.files, built.files)
            if self.worker == 0:
                for warning in config.warnings:
                    log.warning("config_warning", message=warning)
                listed = built.prepared.whitelist
                if listed is not None:  # the BALs of the new configuration
                    warn_unlisted_bals((b.address for b in config.bals), listed.current, log)
            log.info("reloaded", changed=changed, restart_required=built.restart_required)
            return Reloaded(changed, built.restart_required)

    async def _close(self, upstreams: list[Upstream]) -> None:
        """The idle connections of replaced upstreams."""
        for upstream in upstreams:
            try:
                await upstream.close_idle()
            except Exception as error:
                self.shared.log.warning("upstream_close_error", error=type(error).__name__)

    def upstreams(self) -> list[Upstream]:
        prepared = self.generation.prepared
        current = [u for u in (prepared.upstream, prepared.inbound_delivery) if u is not None]
        return current + self._retired

    def reopen_log(self) -> None:
        if self.shared.writer.reopen():
            self.shared.log.info("log_reopened", file=str(self.shared.writer.path))
            if self.shared.log_reopened is not None:
                self.shared.log_reopened()
