"""Prometheus metrics, derived from the log's events (config « metrics »).

The counters and histograms are fed by a structlog processor (EventTap) put in
front of the log's renderer: every event the relay logs (transaction, decision,
auth, upstream, connection_refused, reloaded, reload_failed) is counted where it
is written, so that a new outcome logged anywhere is counted without the code
that logs it knowing of metrics. Two gauges are sampled instead (Sampler): the
connections open and the message slots busy of each process.

One view across all workers: prometheus_client's multiprocess mode. Every
process writes its values to memory-mapped files in one private folder beside
the state database (« state.sqlite3.metrics/ »), which worker 0 empties at
start; worker 0's HTTP server (mss_relay/health.py) sums them at each scrape.
The folder must be named in PROMETHEUS_MULTIPROC_DIR before prometheus_client
is first imported (it picks its value class then): this module imports it only
inside functions, after enable() has set it, and nothing else imports it.

Labels are bounded names only (listener, outcome, stage, rule, result, kind,
state): a value that is not a short name (an address, an IP, a subject) is
counted as « other », whatever a log event carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

ENV = "PROMETHEUS_MULTIPROC_DIR"
# How often each process writes its gauges (connections, slots): a scrape
# every 15 s or more sees them at most this old.
SAMPLE_INTERVAL = 1.0
# A label value: a name from the code or the configuration (a rule, a
# listener), starting with a letter, no « @ », no « : »; anything else, such as
# an IP address or a mail address, is « other ».
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
OTHER = "other"
# Bytes on the wire: 1 KB to 64 MB, by fours (the limits default to 20 MiB
# per attachment, 60 MiB per message).
SIZE_BUCKETS = (1e3, 4e3, 16e3, 64e3, 256e3, 1e6, 4e6, 16e6, 32e6, 64e6)
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
UPSTREAM_FAILED = frozenset({"tempfailed", "permfailed"})


def label(value: object) -> str:
    """A log field as a label value: a bounded name, or « other »."""
    if value is None:
        return "none"
    text = str(value)
    return text if _NAME.fullmatch(text) and "@" not in text else OTHER


def directory_for(database: Path) -> Path:
    return database.with_name(database.name + ".metrics")


def enable(directory: Path, *, first: bool) -> None:
    """Before prometheus_client is imported: the shared folder, made private
    and emptied by the first worker (values of a previous run would be
    summed with this one's), named for this process and its children."""
    if first:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
        for stale in directory.glob("*.db"):
            stale.unlink()
    os.environ[ENV] = str(directory)


class Instruments:
    """The metrics this process writes, registered in a registry of their own
    (given, or a new one): never prometheus_client's global REGISTRY, so
    that no state is shared between two Instruments of one process. In
    multiprocess mode the values go to the shared folder whatever the
    registry; the scrape reads them there (render)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        if registry is None:
            registry = CollectorRegistry()
        self.registry = registry

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        self.messages = counter(
            "mss_relay_messages_total",
            "Mail transactions ended, by listener and outcome (delivered, accepted,"
            " rejected, tempfailed, permfailed, abandoned).",
            ("listener", "outcome"),
        )
        self.refusals = counter(
            "mss_relay_refusals_total",
            "Refusals (5xx and 4xx verdicts), by listener, SMTP stage and rule.",
            ("listener", "stage", "rule"),
        )
        self.auth = counter(
            "mss_relay_auth_attempts_total",
            "AUTH attempts, by result (success, failure, locked, unavailable, trusted_client).",
            ("result",),
        )
        self.upstream_failures = counter(
            "mss_relay_upstream_failures_total",
            "Upstream steps that failed, by stage (mail, rcpt, data) and kind"
            " (tempfailed, permfailed).",
            ("stage", "kind"),
        )
        self.reloads = counter(
            "mss_relay_config_reloads_total",
            "Configuration reloads, by result (success, failure).",
            ("result",),
        )
        # The known label values start at 0, so that a series exists (and a
        # rate() or an alert on it works) before its first event.
        for result in ("success", "failure", "locked", "unavailable"):
            self.auth.labels(result)
        for stage in ("mail", "rcpt", "data"):
            for kind in ("tempfailed", "permfailed"):
                self.upstream_failures.labels(stage, kind)
        for result in ("success", "failure"):
            self.reloads.labels(result)
        self.sizes = Histogram(
            "mss_relay_message_size_bytes",
            "Size of the messages received (bytes on the wire).",
            buckets=SIZE_BUCKETS,
            registry=registry,
        )
        self.durations = Histogram(
            "mss_relay_transaction_duration_seconds",
            "Duration of a mail transaction, from MAIL to its outcome.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        # livesum: the sum over the processes alive (a dead worker's value is
        # dropped at the next scrape).
        self.connections = Gauge(
            "mss_relay_connections_open",
            "Client connections open (SMTP and milter), all workers together.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.slots = Gauge(
            "mss_relay_message_slots_busy",
            "Messages being received at once (throttle.max_concurrent_messages per worker).",
            registry=registry,
            multiprocess_mode="livesum",
        )


Handler = Callable[[Mapping[str, Any]], None]


class EventTap:
    """A structlog processor: counts the events it sees, changes nothing.

    counts_reloads: the reload events of this process are counted (worker 0
    only: every worker reloads, and logs it, for one reload)."""

    def __init__(self, instruments: Instruments, *, counts_reloads: bool = True) -> None:
        self.m = instruments
        # The children of each labelled metric, made once per label values
        # (bounded: label() folds anything else into « other »).
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._handlers: dict[str, Handler] = {
            "transaction": self._transaction,
            "decision": self._decision,
            "connection_refused": self._connection_refused,
            "auth": self._auth,
            "upstream": self._upstream,
        }
        if counts_reloads:
            self._handlers["reloaded"] = lambda _: self._inc("reloads", "success")
            self._handlers["reload_failed"] = lambda _: self._inc("reloads", "failure")

    def __call__(
        self, _: Any, __: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        handler = self._handlers.get(event.get("event", ""))
        if handler is not None:
            # Counting never stands in the way of the log line, nor of mail.
            with contextlib.suppress(Exception):
                handler(event)
        return event

    def _inc(self, metric: str, *values: object) -> None:
        labels = tuple(label(v) for v in values)
        child = self._children.get((metric, labels))
        if child is None:
            child = getattr(self.m, metric).labels(*labels)
            self._children[metric, labels] = child
        child.inc()

    def _transaction(self, event: Mapping[str, Any]) -> None:
        outcome = event.get("outcome")
        self._inc("messages", event.get("listener"), outcome)
        size = event.get("size")
        if isinstance(size, int):
            self.m.sizes.observe(size)
        duration = event.get("duration_ms")
        if isinstance(duration, int | float):
            self.m.durations.observe(duration / 1000)
        # The end of DATA passed upstream and refused there (an internal
        # error is tempfailed too, but with no upstream answer).
        if outcome in UPSTREAM_FAILED and event.get("upstream") is not None:
            self._inc("upstream_failures", "data", outcome)

    def _decision(self, event: Mapping[str, Any]) -> None:
        if event.get("verdict") != "accept":
            self._inc("refusals", event.get("listener"), event.get("stage"), event.get("rule"))

    def _connection_refused(self, event: Mapping[str, Any]) -> None:
        self._inc("refusals", event.get("listener"), "connect", event.get("rule"))

    def _auth(self, event: Mapping[str, Any]) -> None:
        # smtplib retries a refused AUTH PLAIN as AUTH LOGIN with the same
        # password: the relay counts that once, and so do the metrics.
        if event.get("repeated") is not True:
            self._inc("auth", event.get("result"))

    def _upstream(self, event: Mapping[str, Any]) -> None:
        self._inc("upstream_failures", event.get("stage"), event.get("outcome"))


class Slots(asyncio.Semaphore):
    """The message slots (throttle.max_concurrent_messages), counting how
    many are taken, for the gauge (asyncio.Semaphore does not say)."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.busy = 0

    async def acquire(self) -> Literal[True]:
        await super().acquire()
        self.busy += 1
        return True

    def release(self) -> None:
        self.busy -= 1
        super().release()


async def sample(
    instruments: Instruments, sessions: Sized, slots_busy: Callable[[], int] | None
) -> None:
    """This process's gauges, now and every SAMPLE_INTERVAL, for ever."""
    while True:
        instruments.connections.set(len(sessions))
        if slots_busy is not None:
            instruments.slots.set(slots_busy())
        await asyncio.sleep(SAMPLE_INTERVAL)


@dataclass(frozen=True)
class Snapshot:
    """What worker 0 adds at scrape time to what the files hold."""

    version: str
    conversations: Mapping[str, int] | None  # None: the state database did not answer


class _Fixed:
    """A collector of the scrape's own values (build info, conversations)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        info = GaugeMetricFamily(
            "mss_relay_build_info", "The running mss-relay's version.", labels=("version",)
        )
        info.add_metric((self.snapshot.version,), 1)
        yield info
        if self.snapshot.conversations is not None:
            family = GaugeMetricFamily(
                "mss_relay_conversations",
                "Patient conversations in the state database, by state (open, closed).",
                labels=("state",),
            )
            for state, count in sorted(self.snapshot.conversations.items()):
                family.add_metric((label(state),), count)
            yield family


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def render(directory: Path, snapshot: Snapshot) -> bytes:
    """The text exposition of every process's values (blocking: reads the
    files; run it in a thread). A dead worker's live gauges are dropped first
    (its counters stay: they only ever go up)."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    for path in directory.glob("gauge_live*_*.db"):
        pid = path.stem.rpartition("_")[2]
        if pid.isdigit() and not _alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), str(directory))  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    registry.register(_Fixed(snapshot))
    return generate_latest(registry)


def content_type() -> str:
    from prometheus_client import CONTENT_TYPE_LATEST

    return CONTENT_TYPE_LATEST
