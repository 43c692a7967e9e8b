"""The horodated transaction log: structlog, one JSON object per line.

Every line has « ts » (UTC, ISO 8601, milliseconds), « level » and « event »
(a fixed verb: connect, auth, decision, transaction, ...). Subjects and bodies
are never logged (health data), nor passwords.

Rendering happens on the event loop; the write itself is handed to a thread so
that a slow disk never stalls the SMTP sessions.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
from collections.abc import Callable, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import structlog
from structlog.typing import FilteringBoundLogger

Clock = Callable[[], datetime]
# Lines written at once at most (a write of a few tens of KB).
_BATCH = 64


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso_ms(moment: datetime) -> str:
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    # A UTC time's isoformat() always ends with "+00:00".
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"


class LineWriter:
    """Writes rendered lines from a background thread, flushing each one."""

    def __init__(self, path: Path | None) -> None:
        self._stream: TextIO | None = None
        self._fd: int | None = None
        if path is None:
            self._stream = sys.stdout
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            # One write(2) per line on an O_APPEND file: the lines of several
            # worker processes never interleave.
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="mss-relay-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (line := self._queue.get()) is not None:
            # The lines that came meanwhile go in the same write(2): whole
            # lines still, and one system call instead of one per line.
            lines = [line]
            while len(lines) < _BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._write(lines)
                    return
                lines.append(more)
            self._write(lines)

    def _write(self, lines: list[str]) -> None:
        text = "\n".join(lines) + "\n"
        if self._fd is not None:
            data = text.encode("utf-8")
            while data:
                data = data[os.write(self._fd, data) :]
        elif self._stream is not None:
            self._stream.write(text)
            self._stream.flush()

    def write(self, line: str) -> None:
        # Handed over at once: a line is on its way before the reply it
        # accompanies is sent (holding lines for the end of the loop's turn
        # saved 0.5 % of the CPU and let replies overtake their log lines).
        self._queue.put(line)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _QueueLogger:
    def __init__(self, writer: LineWriter) -> None:
        self._writer = writer

    def msg(self, message: str) -> None:
        self._writer.write(message)

    debug = info = warning = error = critical = msg


def _fallback(value: Any) -> Any:
    """What structlog's JSONRenderer writes for a value JSON has no form for."""
    structlog_form = getattr(value, "__structlog__", None)
    return structlog_form() if callable(structlog_form) else repr(value)


def _render(
    clock: Clock,
) -> Callable[[Any, str, MutableMapping[str, Any]], str]:
    """ts, level and event first, then the fields; one JSON line. What
    structlog's JSONRenderer would write, with one encoder made once
    (json.dumps with options builds a new one per line)."""
    encode = json.JSONEncoder(ensure_ascii=False, default=_fallback).encode

    def processor(_: Any, method: str, event: MutableMapping[str, Any]) -> str:
        line = {"ts": iso_ms(clock()), "level": method, "event": event.pop("event", "")}
        line.update(event)
        return encode(line)

    return processor


def make_logger(writer: LineWriter, clock: Clock = utc_now) -> FilteringBoundLogger:
    logger: FilteringBoundLogger = structlog.wrap_logger(
        _QueueLogger(writer),
        processors=[_render(clock)],
        wrapper_class=structlog.make_filtering_bound_logger(0),
        cache_logger_on_first_use=True,
    )
    return logger
