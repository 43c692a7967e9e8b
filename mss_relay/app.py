"""Wiring: configuration in, listeners up, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from structlog.typing import FilteringBoundLogger

from mss_relay import __version__
from mss_relay.config import (
    Config,
    ConfigError,
    ListenerConfig,
    ListenerTls,
    Role,
    UpstreamConfig,
)
from mss_relay.core.mailbox import BalDirectory
from mss_relay.core.policy import Policy
from mss_relay.core.throttle import AuthGuard, SendingRates
from mss_relay.delivery.capture import CaptureUpstream
from mss_relay.delivery.upstream import SmtpUpstream, Upstream
from mss_relay.front.milter import listen_milter
from mss_relay.front.session import ClientSession, RelayContext
from mss_relay.front.smtp import RelayHandler, RelaySMTP
from mss_relay.front.smtp_setup import Introspection
from mss_relay.health import Monitoring
from mss_relay.log import LineWriter, make_logger, utc_now
from mss_relay.metrics import Slots
from mss_relay.signing import (
    Signer,
    UnusableKey,
    dns_record,
    generate_key,
    load_key,
    write_key,
)
from mss_relay.state.conversations import ConversationStore
from mss_relay.state.database import StateLost
from mss_relay.state.recorder import Recorder
from mss_relay.tls import server_context
from mss_relay.verification import Verifier, dns_lookup, file_lookup, load_answers

# On SIGTERM, how long transactions under way may take to finish (systemd's
# TimeoutStopSec is 30 s in the shipped unit).
DRAIN_TIMEOUT = 25.0
# Then how long the conversation writes still pending may take (within the
# unit's 30 s).
FLUSH_TIMEOUT = 4.0


async def drain(sessions: set[ClientSession], grace: float) -> int:
    """Let the transactions under way finish, then close every connection.
    Returns how many were still busy when the time ran out."""

    async def quiet() -> None:
        # Polling a handful of sessions, once, at shutdown: an Event per
        # transaction would cost every message for this one moment.
        while any(s.busy for s in sessions):  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(grace):
            await quiet()
    busy = sum(1 for s in sessions if s.busy)
    for session in list(sessions):
        session.disconnect()
    return busy


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


def prepare(config: Config, *, create_keys: bool = True) -> Prepared:
    """Everything that can fail on the configuration, before anything listens.
    create_keys: make the missing demo DKIM keys (the first worker only; the
    others find them made)."""
    tls = server_context(config.tls, config.hostname) if config.tls else None
    inbound = make_upstream(config, config.inbound_delivery) if config.inbound_delivery else None
    return Prepared(
        make_upstream(config, config.upstream) if config.upstream else None,
        inbound,
        tls,
        make_signer(config, create=create_keys),
        make_verifier(config),
    )


async def maintain(store: ConversationStore, config: Config, log: FilteringBoundLogger) -> None:
    """Close idle conversations and purge old ones, now and then, for ever."""
    settings = config.conversations
    while True:
        try:
            closed = await store.close_idle()
            if closed:
                log.info("conversations_auto_closed", count=closed, how="idle")
            conversations, messages = await store.purge(settings.retention_days)
            if conversations or messages:
                log.info(
                    "conversations_purged",
                    conversations=conversations,
                    message_ids=messages,
                    retention_days=settings.retention_days,
                )
        except Exception as error:
            log.error("maintenance_error", error=type(error).__name__)
        await asyncio.sleep(settings.purge_interval)


async def _listen(
    loop: asyncio.AbstractEventLoop,
    listener: ListenerConfig,
    context: RelayContext,
    config: Config,
    tls: ssl.SSLContext | None,
) -> asyncio.Server:
    implicit = listener.tls == ListenerTls.IMPLICIT
    starttls = listener.tls == ListenerTls.STARTTLS
    # What aiosmtpd would look up again at every connection.
    introspection = Introspection.of(RelaySMTP, RelayHandler)

    def factory() -> RelaySMTP:
        return RelaySMTP(
            RelayHandler(context),
            implicit_tls=implicit,
            data_size_limit=config.limits.wire_size_limit,
            hostname=config.hostname,
            ident="ESMTP mss-relay",
            tls_context=tls if starttls else None,
            require_starttls=starttls,
            auth_required=listener.role != Role.INBOUND,
            auth_require_tls=not implicit,
            timeout=config.timeouts.idle,
            loop=loop,
            introspection=introspection,
        )

    return await loop.create_server(
        factory,
        host=listener.host,
        port=listener.port,
        ssl=tls if implicit else None,
        reuse_port=config.workers > 1,
    )


async def _orphaned(parent: int, stop: asyncio.Event) -> None:
    """A worker whose first worker is gone (killed) stops too, gracefully."""
    # Nothing to wait on but the parent's pid changing: polled, once a second.
    while os.getppid() == parent:  # noqa: ASYNC110
        await asyncio.sleep(1.0)
    stop.set()


class Workers:
    """The other worker processes (workers: N), started by worker 0: each runs
    « mss-relay serve --worker K » on the same configuration and binds the
    same TCP ports (SO_REUSEPORT: the kernel spreads connections). A worker
    that dies is started again, as Postfix's master does."""

    RESTART_DELAY = 1.0

    def __init__(self, config: Config, log: FilteringBoundLogger) -> None:
        self.config = config
        self.log = log
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for worker in range(1, self.config.workers):
            self._tasks.append(loop.create_task(self._keep(worker)))

    async def _keep(self, worker: int) -> None:
        command = [sys.executable, "-m", "mss_relay", "serve", "--config", str(self.config.path)]
        while not self.stopping:
            process = await asyncio.create_subprocess_exec(
                *command, "--worker", str(worker), stdin=asyncio.subprocess.DEVNULL
            )
            self.processes[worker] = process
            code = await process.wait()
            if self.stopping:
                return
            self.log.error("worker_exited", worker=worker, pid=process.pid, code=code)
            await asyncio.sleep(self.RESTART_DELAY)  # no tight loop on a persistent failure

    async def stop(self) -> None:
        """SIGTERM each (each drains its own transactions), then wait for all."""
        self.stopping = True
        for process in self.processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
        for process in self.processes.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(process.wait(), timeout=DRAIN_TIMEOUT + 5)
        for task in self._tasks:
            task.cancel()


async def serve(config: Config, worker: int = 0) -> int:
    prepared = prepare(config, create_keys=worker == 0)
    upstream, inbound_delivery, tls = prepared.upstream, prepared.inbound_delivery, prepared.tls
    try:
        writer = LineWriter(
            config.log.file,
            required=config.log.required,
            fields={"worker": worker} if config.workers > 1 else None,
        )
    except OSError as error:
        raise ConfigError("log.file", f"cannot open {config.log.file}: {error}") from None
    monitoring = Monitoring.open(config, worker)  # before the logger: it counts its events
    log = make_logger(writer, tap=monitoring.tap if monitoring else None)
    if config.workers > 1:
        log = log.bind(worker=worker)
    try:
        store = await ConversationStore.open(
            config.database,
            idle_days=config.conversations.close_after_days,
            # One write's wait for another process's lock; the reply does
            # not wait for it (Recorder), the writer retries.
            busy_timeout=config.record_timeout,
        )
    except StateLost as error:
        log.error("state_lost", database=str(config.database), how="deleted", at="start")
        writer.close()
        raise ConfigError("state.database", str(error)) from None
    except (OSError, sqlite3.Error) as error:
        writer.close()
        raise ConfigError("state.database", f"cannot open {config.database}: {error}") from None
    state = Recorder(store, log, timeout=config.record_timeout)
    state.start()
    # aiosmtpd logs peers and commands through the stdlib; only its errors matter.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    # dkimpy logs each failed verification as an error; our log has the result.
    logging.getLogger("dkimpy").setLevel(logging.CRITICAL)
    policy = Policy(
        config.limits,
        BalDirectory(config.bals),
        require_patient_dkim=config.inbound.require_dkim_for_patients,
        attachments=config.attachments,
    )
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    sessions: set[ClientSession] = set()
    # Shared by every listener: one process, one set of counters and slots.
    auth_guard = AuthGuard(config.throttle)
    rates = SendingRates(config.throttle)
    data_slots = Slots(config.throttle.max_concurrent_messages)
    auth_settled = asyncio.Condition()  # with the one AuthGuard
    maintenance: asyncio.Task[None] | None = None
    workers: Workers | None = None
    orphaned: asyncio.Task[None] | None = None
    try:
        for i, listener in enumerate(config.listeners):
            context = RelayContext(
                policy=policy,
                upstream=inbound_delivery
                if listener.role == Role.INBOUND and inbound_delivery
                else upstream,
                state=state,
                users=config.users,
                hostname=config.hostname,
                role=listener.role,
                log=log.bind(listener=listener.name),
                clock=utc_now,
                sessions=sessions,
                signer=prepared.signer,
                verifier=prepared.verifier,
                throttle=config.throttle,
                timeouts=config.timeouts,
                auth_guard=auth_guard,
                rates=rates,
                data_slots=data_slots,
                auth_settled=auth_settled,
                trusted_clients=config.trusted_clients,
                log_healthy=(lambda: writer.healthy) if config.log.required else None,
            )
            if worker and listener.path is not None:
                continue  # a Unix socket cannot be shared: worker 0 serves it
            try:
                if listener.role == Role.MILTER:
                    servers.append(await listen_milter(listener, context, config.workers > 1))
                else:
                    servers.append(await _listen(loop, listener, context, config, tls))
            except OSError as error:
                raise ConfigError(
                    f"listeners[{i}]",
                    f"cannot listen on {listener.endpoint}: {error.strerror or error}",
                ) from None
        if monitoring is not None:
            await monitoring.start(config, sessions, data_slots, store)
        if worker == 0:
            for warning in config.warnings:
                log.warning("config_warning", message=warning)
        log.info(
            "started",
            version=__version__,
            config=str(config.path),
            listeners=[f"{li.name}={li.endpoint}/{li.tls}" for li in config.listeners],
        )
        if worker == 0:
            print(
                f"mss-relay {__version__}: listening on "
                + ", ".join(f"{li.endpoint} ({li.name}, {li.tls})" for li in config.listeners)
                + (f", {config.workers} workers" if config.workers > 1 else ""),
                file=sys.stderr,
                flush=True,
            )
            # One process runs the periodic maintenance for all.
            maintenance = loop.create_task(maintain(store, config, log))
            if config.workers > 1:
                workers = Workers(config, log)
                workers.start()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        if worker:
            orphaned = loop.create_task(_orphaned(os.getppid(), stop))
        await stop.wait()
        log.info("stopping", connections=len(sessions))
        if maintenance is not None:
            maintenance.cancel()
        for server in servers:
            server.close()  # no new connections
        # Each worker drains its own transactions, at the same time.
        cut, _ = await asyncio.gather(
            drain(sessions, DRAIN_TIMEOUT), workers.stop() if workers else asyncio.sleep(0)
        )
        log.info("stopped", interrupted_transactions=cut)
    finally:
        if orphaned is not None:
            orphaned.cancel()
        if workers is not None and not workers.stopping:
            await workers.stop()  # worker 0 failed: the others must not go on alone
        for server in servers:
            server.close()
        for server in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), timeout=10)
        for delivery in (upstream, inbound_delivery):
            if delivery is not None:
                with contextlib.suppress(Exception):
                    await delivery.close_idle()
        if monitoring is not None:
            await monitoring.close()
        await state.close(FLUSH_TIMEOUT)
        await store.close()
        writer.close()
    return 0
