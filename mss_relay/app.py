"""Wiring: configuration in, listeners up, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from functools import partial

from structlog.typing import FilteringBoundLogger

from mss_relay import __version__, pseudonym
from mss_relay.audit.trail import Trail
from mss_relay.config import (
    Config,
    ConfigError,
    ConversationsConfig,
    ListenerConfig,
    ListenerTls,
    Role,
)
from mss_relay.control import Control
from mss_relay.directory import open_directory
from mss_relay.directory_follower import follow as follow_directory
from mss_relay.errors import ListenError
from mss_relay.front.milter import listen_milter
from mss_relay.front.session import ClientSession
from mss_relay.front.smtp import RelayHandler, RelaySMTP
from mss_relay.front.smtp_setup import Introspection
from mss_relay.health import Monitoring
from mss_relay.log import LineWriter, make_logger
from mss_relay.notifier import Notifier
from mss_relay.runtime import Runtime, Shared, listener_tls, prepare
from mss_relay.state.activity import ActivityRecorder
from mss_relay.state.api import Conversations
from mss_relay.state.errors import STATE_ERRORS, STATE_OR_OS
from mss_relay.state.lock import StateLock
from mss_relay.state.opening import (
    open_activity,
    open_conversations,
    open_postgres,
    stored_fingerprint,
)
from mss_relay.state.recorder import Recorder
from mss_relay.throttles import make_throttles
from mss_relay.trust.watcher import keep_current

# On SIGTERM, messages past their final dot may take timeouts.shutdown (30 s)
# to finish; then the conversation writes still pending this long (the unit's
# TimeoutStopSec, 45 s, stays above both).
FLUSH_TIMEOUT = 4.0


# A start that fails on the key, or on the server that records it.
STATE_ERRORS_OR_CONFIG: tuple[type[Exception], ...] = (ConfigError, *STATE_ERRORS)


async def drain(
    sessions: set[ClientSession], grace: float, log: FilteringBoundLogger | None = None
) -> int:
    """Tell every session (ClientSession.shut_down: 421 4.3.2 to a client
    still sending DATA, and to the next command of the others), let the
    messages past their final dot finish, then close every connection.
    Returns how many were still being finished when the time ran out."""
    for session in list(sessions):
        session.shut_down()
    if log is not None:
        finishing = sum(1 for s in sessions if s.finishing)
        log.info("draining", finishing=finishing, timeout=grace)

    async def quiet() -> None:
        # Polling a handful of sessions, once, at shutdown: an Event per
        # transaction would cost every message for this one moment.
        while any(s.finishing for s in sessions):  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(grace):
            await quiet()
    busy = sum(1 for s in sessions if s.finishing)
    for session in list(sessions):
        session.disconnect()
    return busy


async def maintain(
    store: Conversations,
    current: Callable[[], ConversationsConfig],
    log: FilteringBoundLogger,
    lifecycle: Notifier | None = None,
) -> None:
    """Close idle conversations and purge old ones, now and then, for ever
    (with the settings current at each round: a reload may change them); the
    BAL lifecycle check beside, at its own interval (cancelled with it)."""
    beside = asyncio.get_running_loop().create_task(lifecycle.run()) if lifecycle else None
    try:
        await _conversation_upkeep(store, current, log)
    finally:
        if beside is not None:
            beside.cancel()


async def _conversation_upkeep(
    store: Conversations,
    current: Callable[[], ConversationsConfig],
    log: FilteringBoundLogger,
) -> None:
    while True:
        settings = current()
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
    loop: asyncio.AbstractEventLoop, listener: ListenerConfig, index: int, runtime: Runtime
) -> asyncio.Server:
    implicit = listener.tls == ListenerTls.IMPLICIT
    starttls = listener.tls == ListenerTls.STARTTLS
    # What aiosmtpd would look up again at every connection.
    introspection = Introspection.of(RelaySMTP, RelayHandler)

    def factory() -> RelaySMTP:
        # Each connection takes the configuration current now and keeps it
        # to its end (a reload swaps runtime.generation for the next ones).
        generation = runtime.generation
        config = generation.config
        return RelaySMTP(
            RelayHandler(generation.contexts[index]),
            implicit_tls=implicit,
            data_size_limit=config.limits.wire_size_limit,
            hostname=config.hostname,
            ident="ESMTP mss-relay",
            tls_context=listener_tls(generation.prepared, listener.role) if starttls else None,
            require_starttls=starttls,
            auth_required=listener.role != Role.INBOUND,
            auth_require_tls=not implicit,
            timeout=config.timeouts.idle,
            loop=loop,
            introspection=introspection,
        )

    # Implicit TLS: the socket keeps this context, whose SNI callback hands
    # each handshake the current one (Runtime._current_tls).
    return await loop.create_server(
        factory,
        host=listener.host,
        port=listener.port,
        ssl=runtime.tls(listener.role) if implicit else None,
        # A worker started again by worker 0 reads the file on disk (as a
        # new smtpd reads main.cf): it shares the ports even if « workers »
        # was changed there since.
        reuse_port=runtime.config.workers > 1 or runtime.worker > 0,
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
    # A worker that keeps failing at start (its configuration file broken
    # since, its port taken) is started again less and less often.
    RESTART_DELAY_MAX = 30.0
    QUICK_EXIT = 10.0  # seconds: an exit this soon after the start is a failure to start

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
        delay = self.RESTART_DELAY
        loop = asyncio.get_running_loop()
        while not self.stopping:
            started = loop.time()
            process = await asyncio.create_subprocess_exec(
                *command, "--worker", str(worker), stdin=asyncio.subprocess.DEVNULL
            )
            self.processes[worker] = process
            code = await process.wait()
            if self.stopping:
                return
            quick = loop.time() - started < self.QUICK_EXIT
            delay = min(delay * 2, self.RESTART_DELAY_MAX) if quick else self.RESTART_DELAY
            self.log.error(
                "worker_exited", worker=worker, pid=process.pid, code=code, restart_in=delay
            )
            await asyncio.sleep(delay)  # no tight loop on a persistent failure

    async def stop(self, grace: float | None = None) -> None:
        """SIGTERM each (each drains its own transactions, within grace:
        timeouts.shutdown), then wait for all."""
        grace = self.config.timeouts.shutdown if grace is None else grace
        self.stopping = True
        for process in self.processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
        for process in self.processes.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(process.wait(), timeout=grace + 5)
        for task in self._tasks:
            task.cancel()


async def serve(config: Config, worker: int = 0) -> int:
    """Run the relay (one worker of it) until SIGTERM or SIGINT."""
    # SIGHUP and SIGUSR1 kill a process by default: until the relay can act
    # on them (a reload or logrotate during the start), they are kept and
    # acted on once it listens.
    early: list[str] = []

    def keep(signum: int, _frame: object) -> None:
        early.append("reload" if signum == signal.SIGHUP else "reopen")

    signal.signal(signal.SIGHUP, keep)
    signal.signal(signal.SIGUSR1, keep)
    # The first worker holds the state database's lock before it touches
    # anything a relay already running on it would be using.
    lock = StateLock(config.database) if worker == 0 else None
    if lock is not None:
        try:
            lock.acquire()
        except OSError as error:
            raise ConfigError(
                "state.database", f"cannot lock {config.database}: {error.strerror or error}"
            ) from None
    try:
        return await _run(config, worker, early)
    finally:
        if lock is not None:
            lock.release()


async def _run(config: Config, worker: int, early: list[str]) -> int:
    prepared = prepare(config, create_keys=worker == 0)
    trail = await Trail.prepare(config, worker)  # where this worker's chain goes on
    try:
        writer = LineWriter(
            trail.path,
            required=config.log.required,
            fields={"worker": worker} if config.workers > 1 else None,
            current_path=trail.current_path,
        )
    except OSError as error:
        raise ConfigError("log.file", f"cannot open {config.log.file}: {error}") from None
    writer.seal = trail.chain
    writer.written = trail.chain.written
    # With PostgreSQL, the server first: the key is checked against the one
    # it records before a key is made (state/opening.py).
    try:
        database = await open_postgres(config)
    except ConfigError:
        writer.close()
        raise
    try:
        # Made by the first process to start (atomically: workers may race).
        if database is not None:
            pseudonyms = pseudonym.for_server(
                config, database.where, await stored_fingerprint(database)
            )
        else:
            pseudonyms = pseudonym.for_config(config)
    except STATE_ERRORS_OR_CONFIG as error:
        if database is not None:
            await database.close()
        writer.close()
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(
            "state.database",
            f"cannot read {database.where if database else ''}: {type(error).__name__}",
        ) from None
    monitoring = Monitoring.open(config, worker)  # before the logger: it counts its events
    # The masking of patients first, the chain last: it seals the bytes written.
    masking = [pseudonyms.mask] if config.log.pseudonymize_patients else []
    log = make_logger(
        writer, tap=monitoring.tap if monitoring else None, finish=[*masking, trail.chain]
    )
    if config.workers > 1:
        log = log.bind(worker=worker)
    opened: list[Callable[[], Awaitable[None]]] = []  # closed in reverse on a failed start
    if database is not None:
        opened.append(database.close)

    async def failed_start() -> None:
        for close in reversed(opened):
            with contextlib.suppress(Exception):
                await close()
        writer.close()

    try:
        store = await open_conversations(config, pseudonyms, database)
    except ConfigError as error:
        if "is gone but" in str(error):
            log.error("state_lost", database=str(config.database), how="deleted", at="start")
        await failed_start()
        raise
    opened.append(store.close)
    if store.pseudonymized:
        log.info("patients_pseudonymized", count=store.pseudonymized)
    try:
        activity = ActivityRecorder(await open_activity(config, database), log)
        opened.append(activity.store.close)
        directory = await open_directory(config, database)
        opened.append(directory.close)
        await trail.start(log)
    except ConfigError:
        await failed_start()
        raise
    except STATE_OR_OS as error:
        await failed_start()
        raise ConfigError("state.database", f"cannot open {config.database}: {error}") from None
    if database is not None:
        database.watch()  # the probe: `down` while the server does not answer
    state = Recorder(store, log, timeout=config.record_timeout)
    state.start()
    activity.start()
    # aiosmtpd logs peers and commands through the stdlib; only its errors matter.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    # dkimpy logs each failed verification as an error; our log has the result.
    logging.getLogger("dkimpy").setLevel(logging.CRITICAL)
    # Shared by every listener and every configuration: one process, one set
    # of counters; a reload gives them new settings (runtime.py).
    shared = Shared(
        log,
        writer,
        store,
        state,
        *make_throttles(config.throttle, database),
        activity=activity,
        directory=directory,
        log_reopened=trail.reopened,
    )
    runtime = Runtime(config, prepared, shared, worker)
    control = Control(runtime, worker)
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    sessions: set[ClientSession] = shared.sessions
    maintenance: asyncio.Task[None] | None = None
    whitelist: asyncio.Task[None] | None = None
    annuaire: asyncio.Task[None] | None = None
    workers: Workers | None = None
    orphaned: asyncio.Task[None] | None = None
    try:
        for i, listener in enumerate(config.listeners):
            if worker and listener.path is not None:
                continue  # a Unix socket cannot be shared: worker 0 serves it
            try:
                if listener.role == Role.MILTER:
                    current = partial(runtime.context, i)
                    servers.append(
                        await listen_milter(listener, current, config.workers > 1 or worker > 0)
                    )
                else:
                    servers.append(await _listen(loop, listener, i, runtime))
            except OSError as error:
                raise ListenError.of(listener.endpoint, f"listeners[{i}]", error) from None
        listening = list(servers)  # /healthz checks these, in process
        servers.append(await control.listen())
        if monitoring is not None:
            await monitoring.start(config, sessions, runtime.slots_busy, store, listening, writer)
        if worker == 0:
            for warning in config.warnings:
                log.warning("config_warning", message=warning)
        log.info(
            "started",
            version=__version__,
            config=str(config.path),
            listeners=[f"{li.name}={li.endpoint}/{li.tls}" for li in config.listeners],
            # Where the state is (never a password: postgres.shown).
            state=database.where if database is not None else str(config.database),
        )
        # The liste blanche followed (every worker), refreshed (worker 0).
        whitelist = loop.create_task(
            keep_current(
                lambda: runtime.config.trust_space,
                lambda: runtime.generation.prepared.whitelist,
                lambda: [bal.address for bal in runtime.config.bals],
                log,
                worker,
            )
        )
        # The Annuaire Santé's current import, in memory (every worker).
        annuaire = loop.create_task(
            follow_directory(directory, lambda: runtime.config.directory.mode, log)
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
            lifecycle = Notifier(runtime.lifecycle_inputs, activity.store, log)
            maintenance = loop.create_task(
                maintain(store, lambda: runtime.config.conversations, log, lifecycle)
            )
            if config.workers > 1:
                workers = Workers(config, log)
                workers.start()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        # Worker 0 passes both on to the other workers (control.py).
        loop.add_signal_handler(signal.SIGHUP, control.signalled, "reload")
        loop.add_signal_handler(signal.SIGUSR1, control.signalled, "reopen")
        for line in dict.fromkeys(early):  # received during the start: once each
            control.signalled(line)
        if worker:
            orphaned = loop.create_task(_orphaned(os.getppid(), stop))
        await stop.wait()
        log.info("stopping", connections=len(sessions))
        if maintenance is not None:
            maintenance.cancel()
        whitelist.cancel()
        annuaire.cancel()
        for server in servers:
            server.close()  # no new connections
        # Each worker drains its own transactions, at the same time.
        cut, _ = await asyncio.gather(
            drain(sessions, runtime.config.timeouts.shutdown, log),
            workers.stop(runtime.config.timeouts.shutdown) if workers else asyncio.sleep(0),
        )
        log.info("stopped", interrupted_transactions=cut)
    finally:
        if orphaned is not None:
            orphaned.cancel()
        if whitelist is not None:
            whitelist.cancel()
        if annuaire is not None:
            annuaire.cancel()
        if workers is not None and not workers.stopping:
            await workers.stop()  # worker 0 failed: the others must not go on alone
        for server in servers:
            server.close()
        for server in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), timeout=10)
        control.close()
        for delivery in runtime.upstreams():
            with contextlib.suppress(Exception):
                await delivery.close_idle()
        if monitoring is not None:
            await monitoring.close()
        await state.close(FLUSH_TIMEOUT)
        await activity.close(FLUSH_TIMEOUT)
        await store.close()
        await activity.store.close()
        await directory.close()
        await trail.close()
        if database is not None:
            await database.close()
        writer.close()
    return 0
