"""The monitoring endpoint (config « metrics »): /metrics and /healthz over
HTTP, served by worker 0 on the asyncio loop, and the wiring of the metrics
in every worker (Monitoring).

/healthz answers 200 « ok » when every listener accepts a connection (a TCP
connect, or a connect to the milter's Unix socket: the kernel's accept queue
answers for each worker sharing the port) and the state database answers (the
file is still the one opened, and a read returns within HEALTH_TIMEOUT);
otherwise 503 with one line per reason, for a load balancer or Docker's
HEALTHCHECK.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Callable, Sized
from dataclasses import dataclass, field
from pathlib import Path

from mss_relay import __version__
from mss_relay.config import Config, ConfigError, ListenerConfig, MetricsConfig
from mss_relay.errors import ListenError
from mss_relay.log import Processor
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
from mss_relay.state.conversations import ConversationStore

# Each check, and the reading of one request, at most this long.
HEALTH_TIMEOUT = 2.0
REQUEST_TIMEOUT = 5.0
MAX_REQUEST = 8192  # bytes of request line and headers
_LOOPBACK = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


async def _listener_problem(listener: ListenerConfig) -> str | None:
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT):
            if listener.path is not None:
                _, writer = await asyncio.open_unix_connection(str(listener.path))
            else:
                host = _LOOPBACK.get(listener.host, listener.host)
                _, writer = await asyncio.open_connection(host, listener.port)
    except TimeoutError:
        return f"listener {listener.name} ({listener.endpoint}): no answer"
    except OSError as error:
        # asyncio's strerror repeats the address: the errno's text says it.
        why = os.strerror(error.errno) if error.errno else type(error).__name__
        return f"listener {listener.name} ({listener.endpoint}): {why}"
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return None


async def _state_problem(store: ConversationStore) -> str | None:
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT):
            how = await store.vanished()
            if how is not None:
                return f"state database {store.path}: {how}"
            await store.ping()
    except TimeoutError:
        return f"state database {store.path}: no answer"
    except (OSError, sqlite3.Error, ValueError) as error:
        return f"state database {store.path}: {type(error).__name__}"
    return None


async def problems(listeners: tuple[ListenerConfig, ...], store: ConversationStore) -> list[str]:
    """Why the relay is not healthy: nothing when it is."""
    checks = [_listener_problem(li) for li in listeners]
    found = await asyncio.gather(*checks, _state_problem(store))
    return [problem for problem in found if problem is not None]


@dataclass
class Endpoint:
    """Worker 0's HTTP server: GET (or HEAD) /metrics and /healthz, one
    request per connection (Prometheus and probes open one each time)."""

    settings: MetricsConfig
    listeners: tuple[ListenerConfig, ...]
    store: ConversationStore
    directory: Path
    server: asyncio.Server | None = None

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
            found = await problems(self.listeners, self.store)
            if found:
                return "503 Service Unavailable", text, ("\n".join(found) + "\n").encode()
            return "200 OK", text, b"ok\n"
        if path == "/metrics":
            try:
                async with asyncio.timeout(HEALTH_TIMEOUT):
                    census: dict[str, int] | None = await self.store.census()
            except (TimeoutError, OSError, sqlite3.Error, ValueError):
                census = None  # the gauge is left out; /healthz says why
            try:
                body = await asyncio.to_thread(
                    render, self.directory, Snapshot(__version__, census)
                )
            except (OSError, ValueError) as error:
                return "500 Internal Server Error", text, f"{type(error).__name__}\n".encode()
            return "200 OK", content_type(), body
        return "404 Not Found", text, b"/metrics or /healthz\n"


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
        store: ConversationStore,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(sample(self.instruments, sessions, slots_busy)))
        if self.worker == 0:
            self._endpoint = Endpoint(self.settings, config.listeners, store, self.directory)
            await self._endpoint.start()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._endpoint is not None:
            await self._endpoint.close()
