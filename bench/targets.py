"""The servers bench/compare.py measures, and what it reads about them in /proc.

    sink         smtp-sink alone: the box's limit (smtp-source talks to it directly)
    postfix      a private Postfix instance relaying everything to smtp-sink
    passthrough  bench/passthrough.py: aiosmtpd -> aiosmtplib, nothing between
    relay-Nw     « mss-relay serve » with every rule on, N worker processes
    relay-Nw-trust  the same with the liste blanche and the Annuaire Santé on
                 (--trust: bench/trust_space.py)

Each is started once, on its own loopback port, and stopped (with every
process it started) at the end; bench/procfs.py reads their CPU and memory.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .harness import (
    RelayProcess,
    Server,
    Sink,
    bench_postfix,
    copy_state,
    free_port,
    listener,
    postfix_version,
    python_module,
    relay_config,
)
from .trust_space import TrustSpace

IDLE_TIMEOUT = 120.0
LOG_WAIT = 3.0


# -- logs ----------------------------------------------------------------------------


class LogTail:
    """The complete lines appended to a log file since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> list[bytes]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as log:
            log.seek(self.offset)
            data = log.read()
        end = data.rfind(b"\n") + 1  # a line being written is read next time
        self.offset += end
        return data[:end].splitlines()


def poll_log(tail: LogTail, count: Callable[[list[bytes]], int], expected: int) -> list[bytes]:
    """Servers write their log from a thread (mss-relay) or a daemon (Postfix's
    postlogd), just after answering: read until `expected` is reached, or a moment."""
    lines: list[bytes] = []
    deadline = time.monotonic() + LOG_WAIT
    while True:
        lines += tail.read()
        if count(lines) >= expected or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


# -- targets -----------------------------------------------------------------------


@dataclass
class Check:
    problems: list[str]
    logged: dict[str, int]  # the server's own count of messages, by outcome


class Target:
    key = ""
    label = ""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.port = 0
        self.notes: dict[str, Any] = {}

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def pids(self) -> list[int]:
        raise NotImplementedError

    def wait_idle(self) -> bool:
        """Nothing left of the previous run: the sink has been quiet a moment."""
        return self.sink.counter.wait_quiet(0.1, IDLE_TIMEOUT)

    def check(self, accepted: int) -> Check:
        """What went wrong since the last call (refusals, deferrals...), and
        the server's own count of the `accepted` messages, where it logs them."""
        return Check([], {})


class SinkTarget(Target):
    key, label = "sink", "smtp-sink alone"

    def start(self) -> None:
        self.port = self.sink.port

    def pids(self) -> list[int]:
        return [self.sink.pid]


class PassthroughTarget(Target):
    key, label = "passthrough", "aiosmtpd → aiosmtplib pass-through"

    def __init__(self, sink: Sink, workdir: Path) -> None:
        super().__init__(sink)
        self.port = free_port()
        args = ["--port", str(self.port), "--upstream-port", str(sink.port)]
        self.server = Server(python_module("bench.passthrough", *args), workdir, "passthrough")
        self._seen = 0

    def start(self) -> None:
        self.server.start(self.port)

    def stop(self) -> None:
        self.server.stop()

    def pids(self) -> list[int]:
        return self.server.pids()

    def check(self, accepted: int) -> Check:
        out = self.server.output()
        new, self._seen = out[self._seen :], len(out)
        return Check(["passthrough: traceback in its output"] if "Traceback" in new else [], {})


class PostfixTarget(Target):
    key, label = "postfix", "Postfix relay → smtp-sink"

    def __init__(self, sink: Sink, workdir: Path) -> None:
        super().__init__(sink)
        self.port = free_port()
        self.instance = bench_postfix(workdir, self.port, sink.port)
        # The honest peer writes no log file (harness.PEER_SETTINGS): then
        # smtp-sink's count is the proof of delivery (run() compares it with
        # the 250s: a deferred or bounced message never reaches smtp-sink).
        self.logs = bool(self.instance.settings().get("maillog_file"))
        self.log = LogTail(self.instance.log_path)

    def start(self) -> None:
        self.instance.start()
        self.notes = {
            "version": postfix_version(),
            "queue_directory": str(self.instance.queue_dir),
            "settings": self.instance.settings(),
        }

    def stop(self) -> None:
        self.instance.stop()

    def pids(self) -> list[int]:
        return self.instance.processes()

    def wait_idle(self) -> bool:
        deadline = time.monotonic() + IDLE_TIMEOUT
        while self.instance.queued() and time.monotonic() < deadline:
            time.sleep(0.05)
        return super().wait_idle() and not self.instance.queued()

    def check(self, accepted: int) -> Check:
        """Deliveries in Postfix's log since the last call, by status: all « sent »."""
        if not self.logs:
            return Check([], {})
        lines = poll_log(self.log, _sent, accepted)
        statuses = Tally(m[1].decode() for line in lines if (m := STATUS.search(line)))
        bad = [
            line.decode(errors="replace") for line in lines if _status(line) not in (b"", b"sent")
        ]
        problems = [f"postfix: {len(bad)} not sent: {bad[0][-200:]}"] if bad else []
        if statuses["sent"] != accepted:
            problems.append(f"postfix: {statuses['sent']} sent in its log, {accepted} accepted")
        return Check(problems, dict(statuses))


STATUS = re.compile(rb" status=(\w+)")


def _status(line: bytes) -> bytes:
    found = STATUS.search(line)
    return found[1] if found else b""


def _sent(lines: list[bytes]) -> int:
    return sum(_status(line) == b"sent" for line in lines)


# -- mss-relay --------------------------------------------------------------------------

# Raised for the benchmark, and only these: the per-user sending rates (30
# messages/minute and 500 recipients/hour by default would refuse the load
# within a second; they stay on, at values the load never reaches) and the
# connection caps (20 per client by default; 50 sessions are sent); 50
# sessions queue for the default 4 message slots: no 451 while waiting.
RELAY_SECTIONS: dict[str, Any] = {
    "limits": {"max_attachment_size": "20MiB", "max_message_size": "60MiB", "max_recipients": 50},
    "throttle": {
        "messages_per_minute": 1_000_000,
        "recipients_per_hour": 10_000_000,
        "max_connections": 1000,
        "max_connections_per_client": 1000,
    },
    "timeouts": {"busy_wait": 600},
}


class RelayTarget(Target):
    """mss-relay with every rule on (harness.relay_config, RELAY_SECTIONS);
    with `trust`, trust_space.whitelist and directory.mode: refuse too."""

    def __init__(
        self, sink: Sink, workdir: Path, workers: int, state: Path, trust: TrustSpace | None = None
    ) -> None:
        super().__init__(sink)
        self.trust = trust
        self.plain_key = f"relay-{workers}w"  # the same relay without the trust space
        self.key = self.plain_key + ("-trust" if trust else "")
        self.label = f"mss-relay, {workers} worker{'s' if workers > 1 else ''}"
        if trust:
            self.label += ", liste blanche + Annuaire"
        self.work = workdir / self.key
        self.work.mkdir(parents=True, exist_ok=True)
        copy_state(trust.state if trust else state, self.work / "state.sqlite3")
        self.port = free_port()
        config = relay_config(
            self.work,
            [listener("dpi", self.port)],
            sink.port,
            workers=workers,
            dkim_key=workdir / "dkim" / "bench.key",
            **RELAY_SECTIONS,
            **(trust.sections() if trust else {}),
        )
        self.relay = RelayProcess(self.work, config)
        self.log = LogTail(self.relay.log_path)

    def start(self) -> None:
        self.relay.start()
        self.log.read()  # the start-up lines are not a run's
        self.notes = {
            "workers": self.relay.workers,
            "config": str(self.relay.config_path),
            "log": str(self.relay.log_path),
        }
        if self.trust:
            self.notes["trust_space"] = self.trust.notes

    def stop(self) -> None:
        self.relay.stop()

    def pids(self) -> list[int]:
        return self.relay.pids()

    def check(self, accepted: int) -> Check:
        """The transactions logged since the last call: each must be « delivered »."""
        lines = poll_log(self.log, _delivered, accepted)
        events = [json.loads(line) for line in lines if line.strip()]
        outcomes = Tally(e.get("outcome", "?") for e in events if e.get("event") == "transaction")
        bad = [e for e in events if _failed(e)]
        problems = []
        if bad:
            first = bad[0]
            why = first.get("reply") or first.get("reason") or first.get("error")
            problems.append(
                f"{self.key}: {len(bad)} refused/failed in its log, e.g."
                f" {first.get('event')} {first.get('outcome', '')}: {why}"
            )
        if outcomes["delivered"] != accepted:
            problems.append(
                f"{self.key}: {outcomes['delivered']} delivered in its log, {accepted} accepted"
            )
        logged = dict(outcomes)
        if self.trust:
            # Proof that the Annuaire Santé was asked at each RCPT (and said
            # listed): a relay skipping it would measure nothing.
            rcpts = [e for e in events if e.get("event") == "decision" and e.get("stage") == "rcpt"]
            logged["directory_listed"] = sum(e.get("directory") == "listed" for e in rcpts)
            if logged["directory_listed"] != len(rcpts) or len(rcpts) < accepted:
                problems.append(
                    f"{self.key}: {logged['directory_listed']} RCPTs « directory: listed » in"
                    f" its log, of {len(rcpts)}, {accepted} accepted"
                )
        return Check(problems, logged)


def _delivered(lines: list[bytes]) -> int:
    events = (json.loads(line) for line in lines if line.strip())
    return sum(e.get("event") == "transaction" and e.get("outcome") == "delivered" for e in events)


def _failed(event: dict[str, Any]) -> bool:
    if event.get("event") == "transaction":
        return event.get("outcome") != "delivered"
    return event.get("level") in ("error", "critical")
