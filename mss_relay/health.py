"""The monitoring endpoint (config « metrics »): /metrics and /healthz over
HTTP, served by worker 0 on the asyncio loop, and the wiring of the metrics
in every worker (Monitoring).

/healthz answers 200 « ok » when every listener accepts (checked in process,
on worker 0's own servers: each is serving, and a Unix socket's path is still
a socket), the log is written (with log.required: otherwise every transaction
gets 451) and the state database answers (the file is still the one opened,
and a read returns within HEALTH_TIMEOUT); otherwise 503 with one line per
reason, for a load balancer or Docker's HEALTHCHECK. A probe opens no
session: no log line, no metric, no connection slot per probe (a load
balancer may probe every 2 s).

/metrics reads the conversations' census (a GROUP BY over the whole table,
on the read connection patient look-ups share) at most every CENSUS_TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path

from mss_relay import __version__
from mss_relay.config import Config, ConfigError, ListenerConfig, MetricsConfig
from mss_relay.errors import ListenError
from mss_relay.log import LineWriter, Processor
from mss_relay.metrics import (
    EventTap,
    Instruments,
    Snapshot,
    content_type,
    directory_for,
    enable,
    render,
    sample,
)
from mss_relay.state.api import Conversations
from mss_relay.state.errors import STATE_OR_OS

# What a check may meet besides a timeout.
HEALTH_ERRORS: tuple[type[Exception], ...] = (ValueError, *STATE_OR_OS)
CENSUS_ERRORS: tuple[type[Exception], ...] = (TimeoutError, *HEALTH_ERRORS)

# Each check, and the reading of one request, at most this long.
HEALTH_TIMEOUT = 2.0
REQUEST_TIMEOUT = 5.0
MAX_REQUEST = 8192  # bytes of request line and headers
# The conversations' gauge is this old at most: the census counts the whole
# table, and Prometheus may scrape every few seconds (several of them, too).
CENSUS_TTL = 30.0

# A listener as worker 0 serves it: its configuration and its own server.
Listening = tuple[ListenerConfig, asyncio.Server]


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.stat().st_mode)
    except FileNotFoundError:
        return False


async def _listener_problem(listener: ListenerConfig, server: asyncio.Server) -> str | None:
    """In process: connecting would be a session (a log line, an auth
    result, a connection slot taken) at every probe."""
    where = f"listener {listener.name} ({listener.endpoint})"
    if not server.is_serving():
        return f"{where}: not serving"
    if listener.path is not None:
        # Removed or replaced: new clients cannot reach the socket any more.
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):
                present = await asyncio.to_thread(_is_socket, listener.path)
        except TimeoutError:
            return f"{where}: no answer"
        except OSError as error:
            return f"{where}: {os.strerror(error.errno) if error.errno else type(error).__name__}"
        if not present:
            return f"{where}: socket file gone"
    return None


def _log_problem(writer: LineWriter | None) -> str | None:
    if writer is None or writer.healthy:
        return None
    return f"log {writer.path or 'standard output'}: not writable"


async def _state_problem(store: Conversations) -> str | None:
    try:
        down = store.down()  # a server not answering (PostgreSQL), seen by its probe
        if down is not None:
            return f"state database {store.path}: {down}"
        async with asyncio.timeout(HEALTH_TIMEOUT):
            how = await store.vanished()
            if how is not None:
                return f"state database {store.path}: {how}"
            await store.ping()
    except TimeoutError:
        return f"state database {store.path}: no answer"
    except HEALTH_ERRORS as error:
        return f"state database {store.path}: {type(error).__name__}"
    return None


async def problems(
    listening: tuple[Listening, ...], store: Conversations, log: LineWriter | None = None
) -> list[str]:
    """Why the relay is not healthy: nothing when it is. log: the writer
    when log.required (a log not written refuses mail then), else None."""
    checks = [_listener_problem(li, server) for li, server in listening]
    found = await asyncio.gather(*checks, _state_problem(store))
    found.insert(len(checks), _log_problem(log))
    return [problem for problem in found if problem is not None]


@dataclass
class Endpoint:
    """Worker 0's HTTP server: GET (or HEAD) /metrics and /healthz, one
    request per connection (Prometheus and probes open one each time)."""

    settings: MetricsConfig
    listening: tuple[Listening, ...]
    store: Conversations
    directory: Path
    log: LineWriter | None = None  # with log.required only
    clock: Callable[[], float] = time.monotonic
    server: asyncio.Server | None = None
    _census: tuple[float, dict[str, int]] | None = None  # when read, what

    async def start(self) -> None:
        host, port = self.settings.host, self.settings.port
        try:
            self.server = await asyncio.start_server(self._client, host, port, limit=MAX_REQUEST)
        except OSError as error:
            raise ListenError.of(f"{host}:{port}", "metrics", error) from None

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), timeout=5)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            status, kind, body = await self.answer(method, target.split("?", 1)[0])
            lines = [
                f"HTTP/1.1 {status}",
                f"Content-Type: {kind}",
                f"Content-Length: {len(body)}",
                "Cache-Control: no-store",
                "Connection: close",
            ]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (
            TimeoutError,
            ValueError,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass  # a bad, huge or slow request, or a client gone: no answer to give
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def answer(self, method: str, path: str) -> tuple[str, str, bytes]:
        text = "text/plain; charset=utf-8"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", text, b"GET or HEAD only\n"
        if path == "/healthz":
            found = await problems(self.listening, self.store, self.log)
            if found:
                return "503 Service Unavailable", text, ("\n".join(found) + "\n").encode()
            return "200 OK", text, b"ok\n"
        if path == "/metrics":
            try:
                body = await asyncio.to_thread(
                    render, self.directory, Snapshot(__version__, await self.census())
                )
            except (OSError, ValueError) as error:
                return "500 Internal Server Error", text, f"{type(error).__name__}\n".encode()
            return "200 OK", content_type(), body
        return "404 Not Found", text, b"/metrics or /healthz\n"

    async def census(self) -> dict[str, int] | None:
        """The conversations by state, read again once CENSUS_TTL has passed;
        None when the database does not answer (not kept: the next scrape
        asks again)."""
        now = self.clock()
        if self._census is not None and now - self._census[0] < CENSUS_TTL:
            return self._census[1]
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):
                counts = await self.store.census()
        except CENSUS_ERRORS:
            return None  # the gauge is left out; /healthz says why
        self._census = (now, counts)
        return counts


@dataclass
class Monitoring:
    """The metrics of one worker process: its tap on the log, its gauges, and
    in worker 0 the HTTP endpoint."""

    settings: MetricsConfig
    directory: Path
    worker: int
    tap: Processor
    instruments: Instruments
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _endpoint: Endpoint | None = None

    @classmethod
    def open(cls, config: Config, worker: int) -> Monitoring | None:
        """None without a metrics section. Before prometheus_client is
        imported, hence before anything else here."""
        if config.metrics is None:
            return None
        directory = directory_for(config.database)
        try:
            enable(directory, first=worker == 0)
        except OSError as error:
            raise ConfigError("metrics", f"cannot prepare {directory}: {error}") from None
        instruments = Instruments()
        tap = EventTap(instruments, counts_reloads=worker == 0)
        return cls(config.metrics, directory, worker, tap, instruments)

    async def start(
        self,
        config: Config,
        sessions: Sized,
        slots_busy: Callable[[], int] | None,
        store: Conversations,
        servers: Sequence[asyncio.Server],
        writer: LineWriter,
    ) -> None:
        """servers: the listeners' own, in the order of config.listeners
        (worker 0 serves them all); writer: the log's."""
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(sample(self.instruments, sessions, slots_busy)))
        if self.worker == 0:
            listening = tuple(zip(config.listeners, servers, strict=True))
            # log.required is restart-only: read once.
            log = writer if config.log.required else None
            self._endpoint = Endpoint(self.settings, listening, store, self.directory, log)
            await self._endpoint.start()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._endpoint is not None:
            await self._endpoint.close()
