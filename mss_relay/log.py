"""The horodated transaction log: structlog, one JSON object per line.

Every line has « ts » (UTC, ISO 8601, milliseconds), « level » and « event »
(a fixed verb: connect, auth, decision, transaction, ...). Subjects and bodies
are never logged (health data), nor passwords.

Rendering happens on the event loop; the write itself is handed to a thread so
that a slow disk never stalls the SMTP sessions.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import structlog
from structlog.typing import FilteringBoundLogger

Clock = Callable[[], datetime]
# A step applied to each rendered line, in order, before it is written: it
# takes the line's text and returns the text to write (the masking of health
# data, then the audit chain, which must see the bytes as written).
Finish = Callable[[str], str]
# Lines written at once at most (a write of a few tens of KB).
_BATCH = 64
# Lines waiting for the writer at most. While the log cannot be written they
# wait here, and past this bound the newest are dropped and counted: memory
# stays bounded (some 5 MB at 500 bytes a line; about 2 500 messages at 4 lines
# each), and the lines kept are the oldest, those of the transactions accepted
# before the failure (afterwards, with log.required, only refusals are logged).
MAX_QUEUED = 10_000
# Between two attempts to write while the log fails: doubling, up to a second.
RETRY_FIRST = 0.05
RETRY_MAX = 1.0
# How often the log's path is compared with the file open (rotated, removed).
PATH_CHECK = 1.0


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso_ms(moment: datetime) -> str:
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    # A UTC time's isoformat() always ends with "+00:00".
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"


def _error_name(error: Exception) -> str:
    if isinstance(error, OSError) and error.errno is not None:
        return errno.errorcode.get(error.errno, str(error.errno))
    return type(error).__name__


def _identity(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


@dataclass
class _Outage:
    """From the first failed write to the next one that works."""

    started: float  # monotonic
    since: datetime
    errors: list[str] = field(default_factory=list)


class LineWriter:
    """Writes rendered lines from a background thread, flushing each one.

    A write that fails (ENOSPC, EROFS, EIO, a file removed) never stops the
    thread: the lines not written are kept (up to MAX_QUEUED, then the newest
    are dropped and counted), the file is reopened by its path and the write
    tried again with a backoff, the failure is said once on stderr, and once
    writing works again a « log_recovered » line gives the outage and the count
    of lines dropped. `healthy` tells the sessions whether the log is written.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        limit: int = MAX_QUEUED,
        required: bool = False,
        fields: Mapping[str, Any] | None = None,
        current_path: Callable[[], Path] | None = None,
    ) -> None:
        # current_path: where to write now, asked before each batch (the
        # relay's daily files: mss_relay/audit/rotation.py).
        self._current_path = current_path
        self.path = current_path() if current_path is not None else path
        # The last finish step (the audit chain), for the lines the writer
        # makes itself (log_recovered): they join the chain too.
        self.seal: Finish | None = None
        # Told of the last line of each write, once written (the audit
        # chain's head as written: the state's copy never runs ahead of it).
        self.written: Callable[[str], None] | None = None
        self._limit = limit
        self._required = required  # only for what stderr says
        self._fields = dict(fields or {})
        self._stream: TextIO | None = None
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        if path is None:
            try:
                # Standard output by its descriptor, like the file: write(2)
                # says how much it took, so a retry never repeats a line.
                self._fd = sys.stdout.fileno()
            except (AttributeError, OSError, ValueError):
                self._stream = sys.stdout  # no descriptor (replaced in-process)
        else:
            self._open()
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        # Counted by write(), on the event loop's thread; read by the writer.
        # Each counter has one thread writing it: no lock on the hot path.
        self._dropped = 0
        # The writer thread's own state.
        self._reported = 0  # of _dropped, already in a log_recovered line
        self._cut = 0  # lines the writer lost itself (cut, or at exit)
        self._failing = False
        self._outage: _Outage | None = None
        self._next_check = time.monotonic() + PATH_CHECK
        # Set by reopen() (the event loop), taken by the writer before its
        # next write: one flag, no lock (a lost race only reopens once more).
        self._reopen_asked = False
        self._last_report = 0.0
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mss-relay-log", daemon=True)
        self._thread.start()

    # The event loop's side -------------------------------------------------
    def write(self, line: str) -> None:
        # Handed over at once: a line is on its way before the reply it
        # accompanies is sent (holding lines for the end of the loop's turn
        # saved 0.5 % of the CPU and let replies overtake their log lines).
        # qsize() is a C call without a lock: the bound costs next to nothing.
        if self._queue.qsize() >= self._limit:
            self._dropped += 1
            return
        self._queue.put(line)

    def reopen(self) -> bool:
        """Close the file and open it again by its path before the next line
        (logrotate: SIGUSR1, or a reload). False with standard output, where
        there is nothing to reopen."""
        if self.path is None:
            return False
        self._reopen_asked = True
        return True

    @property
    def healthy(self) -> bool:
        """The log is being written: the last write worked and nothing is
        being dropped. Plain reads (the GIL makes them safe): cheap at MAIL."""
        return not self._failing and self._queue.qsize() < self._limit

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def dropped(self) -> int:
        """Lines lost since the start (dropped at the bound, cut, or at exit)."""
        return self._dropped + self._cut

    def close(self) -> None:
        # A writer still retrying makes one last attempt, then gives up.
        self._closing.set()
        self._queue.put(None)
        self._thread.join(timeout=5)
        if self.path is not None and self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    # The writer thread -----------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                lines, stop = self._batch()
                if lines and not self._deliver(lines):
                    self._give_up(stop)
                    return
                if stop:
                    return
        except Exception as error:  # a bug here: say so, and let `healthy` say it too
            self._failing = True
            self._say(f"the log writer stopped: {_error_name(error)}: {error}")

    def _batch(self) -> tuple[list[str], bool]:
        """The next lines, waiting for the first: the lines that came meanwhile
        go in the same write(2), one system call instead of one per line.
        True with them when the end (None) was reached."""
        lines: list[str] = []
        line = self._queue.get()
        while line is not None:
            lines.append(line)
            if len(lines) == _BATCH:
                return lines, False
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return lines, False
        return lines, True

    def _deliver(self, lines: list[str]) -> bool:
        """Write the lines, however long it takes; then, after an outage or
        drops, the log_recovered line. False: given up (closing)."""
        data = ("\n".join(lines) + "\n").encode("utf-8")
        if self._current_path is not None and (path := self._current_path()) != self.path:
            self.path = path  # a new day: the next lines go to its file
            self._let_go()
        if self._reopen_asked:
            self._reopen_asked = False
            self._let_go()
        elif self.path is not None and time.monotonic() >= self._next_check:
            self._follow_path()
        if not self._write_all(data):
            return False
        if self.written is not None:
            self.written(lines[-1])
        outage, dropped = self._outage, self._dropped
        pending = dropped - self._reported + self._cut
        if outage is None and not (pending and time.monotonic() - self._last_report >= 1):
            return True
        line: dict[str, Any] = {"ts": iso_ms(utc_now()), "level": "warning"}
        line |= {"event": "log_recovered", **self._fields, "dropped": pending}
        if outage is not None:
            line["outage_s"] = round(time.monotonic() - outage.started, 3)
            line["since"] = iso_ms(outage.since)
            line["error"] = ", ".join(outage.errors)
        report = json.dumps(line, ensure_ascii=False)
        report = (self.seal(report) if self.seal is not None else report) + "\n"
        if not self._write_all(report.encode("utf-8")):
            return False
        if self.written is not None:
            self.written(report)
        self._reported, self._cut, self._outage = dropped, 0, None
        self._last_report = time.monotonic()
        if outage is not None:
            self._say(
                f"log written again to {self._where} after {line['outage_s']:.1f} s;"
                f" {pending} lines dropped"
            )
        return True

    def _write_all(self, data: bytes) -> bool:
        delay = RETRY_FIRST
        at_line_start = True
        while True:
            try:
                if self._fd is None and self._stream is None:
                    data = self._reopen(data, at_line_start)
                while data:
                    written = self._write_some(data)
                    if written:
                        at_line_start = data[written - 1] == 0x0A
                    data = data[written:]
                self._failing = False
                return True
            except (OSError, ValueError) as error:
                self._failed(error)
            if self._closing.is_set():
                self._cut += data.count(b"\n")
                return False
            # The writer thread may sleep: the event loop does not wait on it.
            # close() ends the wait at once, for one last attempt.
            self._closing.wait(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _write_some(self, data: bytes) -> int:
        if self._fd is not None:
            return os.write(self._fd, data)
        assert self._stream is not None
        self._stream.write(data.decode("utf-8"))
        self._stream.flush()
        return len(data)

    def _failed(self, error: Exception) -> None:
        name = _error_name(error)
        # Failing again, whatever came between: a batch written since the
        # outage began (its log_recovered line not yet) must not pass for health.
        self._failing = True
        if self._outage is None:
            self._outage = _Outage(time.monotonic(), utc_now(), [name])
            consequence = (
                "new mail transactions get 451 4.3.0 until it works again (log.required)"
                if self._required
                else "mail goes on without its audit trail (log.required: false)"
            )
            self._say(
                f"cannot write the log to {self._where}: {error}; retrying, keeping up to"
                f" {self._limit} lines in memory (the newest are dropped beyond); {consequence}"
            )
        elif name not in self._outage.errors:
            self._outage.errors.append(name)
            self._say(f"the log to {self._where} now fails with: {error}")
        if self.path is not None:
            # Reopened by its path on the next attempt: the same file if it is
            # still there, a new one if it was removed; and no file is held open
            # meanwhile (a file system can be remounted read-only, or unmounted).
            self._let_go()

    def _open(self) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One write(2) per line on an O_APPEND file: the lines of several
        # worker processes never interleave.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._fd, self._identity = fd, _identity(fd)

    def _reopen(self, data: bytes, at_line_start: bool) -> bytes:
        before = self._identity
        self._open()
        if before != self._identity and not at_line_start:
            # The line's start went to the file now gone: its end alone
            # would be no line at all in the new one.
            self._cut += 1
            data = data[data.find(b"\n") + 1 :]
        return data

    def _follow_path(self) -> None:
        """A log file renamed or removed (rotated) is made again at its path."""
        self._next_check = time.monotonic() + PATH_CHECK
        assert self.path is not None
        try:
            info = os.stat(self.path)
            moved = (info.st_dev, info.st_ino) != self._identity
        except OSError:
            moved = True
        if moved:
            self._let_go()

    def _let_go(self) -> None:
        """Close the file: _write_all opens it again by its path."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _give_up(self, stopped: bool) -> None:
        """Closing while the log still fails: what is left is lost, and said."""
        if not stopped:
            while self._queue.get() is not None:
                self._cut += 1
        lost = self._dropped - self._reported + self._cut
        self._say(f"log still not writable at exit: {lost} lines lost")

    @property
    def _where(self) -> str:
        return str(self.path) if self.path is not None else "standard output"

    @staticmethod
    def _say(message: str) -> None:
        # Once per outage (and per new error), never a traceback.
        with contextlib.suppress(OSError, ValueError):
            print(f"mss-relay: {message}", file=sys.stderr, flush=True)


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


def _encoder() -> Callable[[dict[str, Any]], str]:
    """JSONEncoder(ensure_ascii=False, default=_fallback).encode, the same
    text, with the standard library's C encoder made once: encode() makes a
    new one at every call (a third of its cost, on every line of the log).
    No check for circular containers, which a line's flat fields never are
    (one would raise RecursionError instead of ValueError); and no state kept
    from one line to the next, as the check's would be after an error."""
    make = getattr(json.encoder, "c_make_encoder", None)  # None without the C module
    if make is None:
        encode: Callable[[dict[str, Any]], str] = json.JSONEncoder(
            ensure_ascii=False, default=_fallback
        ).encode
        return encode
    # As JSONEncoder.iterencode() calls it: no markers, default, the string
    # encoder of ensure_ascii=False, indent, separators, sort_keys,
    # skipkeys, allow_nan.
    try:
        chunks = make(
            None, _fallback, json.encoder.encode_basestring, None, ": ", ", ", False, False, True
        )
        "".join(chunks({"ts": "x", "n": 1}, 0))
    except TypeError:  # a CPython whose private C encoder takes other arguments
        return json.JSONEncoder(ensure_ascii=False, default=_fallback).encode

    def fast(line: dict[str, Any]) -> str:
        return "".join(chunks(line, 0))

    return fast


def _render(
    clock: Clock, finish: Sequence[Finish] = ()
) -> Callable[[Any, str, MutableMapping[str, Any]], str]:
    """ts, level and event first, then the fields; one JSON line. What
    structlog's JSONRenderer would write, with one encoder made once
    (json.dumps with options builds a new one per line)."""
    encode = _encoder()
    steps = tuple(finish)

    def processor(_: Any, method: str, event: MutableMapping[str, Any]) -> str:
        line = {"ts": iso_ms(clock()), "level": method, "event": event.pop("event", "")}
        line.update(event)
        text = encode(line)
        for step in steps:
            text = step(text)
        return text

    return processor


Processor = Callable[[Any, str, MutableMapping[str, Any]], MutableMapping[str, Any]]


def make_logger(
    writer: LineWriter,
    clock: Clock = utc_now,
    tap: Processor | None = None,
    finish: Sequence[Finish] = (),
) -> FilteringBoundLogger:
    """tap: a processor that sees each event before it is rendered (the
    metrics count the log's events: mss_relay/metrics.py). finish: steps
    applied to each rendered line, in order (see Finish)."""
    render = _render(clock, finish)
    logger: FilteringBoundLogger = structlog.wrap_logger(
        _QueueLogger(writer),
        processors=[tap, render] if tap is not None else [render],
        wrapper_class=structlog.make_filtering_bound_logger(0),
        cache_logger_on_first_use=True,
    )
    return logger
