"""The servers bench/compare.py measures, and what it reads about them in /proc.

    sink         smtp-sink alone: the box's limit (smtp-source talks to it directly)
    postfix      a private Postfix instance relaying everything to smtp-sink
    passthrough  bench/passthrough.py: aiosmtpd -> aiosmtplib, nothing between
    relay-Nw     « mss-relay serve » with every rule on, N worker processes

Each is started once, on its own loopback port, and stopped (with every
process it started) at the end. CPU and peak memory are read from /proc:
utime+stime of every process of the server, plus cutime+cstime (children that
exited and were reaped count too: Postfix's daemons come and go under
master), and VmHWM, reset before each run through /proc/PID/clear_refs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from compare_load import SENDER, Sink, stop_process

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))

from mss_relay.passwords import hash_password  # noqa: E402
from mss_relay.state.conversations import ConversationStore  # noqa: E402
from tests.support.processes import free_port, wait_port  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 60.0
IDLE_TIMEOUT = 120.0
LOG_WAIT = 3.0
KTHREADD = "2"  # every kernel thread is its child


# -- /proc ------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from the third on (after "(comm)", which may hold spaces)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """root and its live descendants (one pass over /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime+cutime+cstime (fields 14-17): a reaped child's time moves
    into its parent's cutime, so the sum over a tree never loses it."""
    ticks = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            ticks += sum(int(v) for v in fields[11:15])
    return ticks / CLK_TCK


def others_cpu_seconds() -> float:
    """CPU time of every user-space process this benchmark did not start
    (another job on the box: noise). Kernel threads are left out: they carry
    our own loopback traffic. A process that exits is reaped by its parent,
    whose cutime takes its time over."""
    ours = set(process_tree(os.getpid()))
    ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in ours:
            continue
        fields = _stat(int(entry.name))
        if fields is None or entry.name == KTHREADD or fields[1] == KTHREADD:
            continue
        ticks += sum(int(v) for v in fields[11:15])
    return ticks / CLK_TCK


def reset_peaks(pids: list[int]) -> None:
    """Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0)."""
    for pid in pids:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total


# -- a server process of ours --------------------------------------------------------


class Server:
    """A child process in a session of its own: Ctrl-C in the terminal reaches
    only bench/compare.py, which then stops it (and its workers) in order."""

    def __init__(self, args: list[str], workdir: Path, name: str) -> None:
        self.args = args
        self.workdir = workdir
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, port: int) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        out = self.workdir / f"{self.name}.out"
        with out.open("ab") as stream:
            self.proc = subprocess.Popen(
                self.args,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=stream,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        try:
            wait_port(port, self.proc, timeout=START_TIMEOUT)
        except RuntimeError as error:
            raise RuntimeError(f"{self.name}: {error}\n{self.output()[-2000:]}") from None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def output(self) -> str:
        path = self.workdir / f"{self.name}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is None:
            return
        tree = process_tree(self.proc.pid)
        stop_process(self.proc, grace=20.0)
        # A worker outliving its parent (it would notice within a second); the
        # command line is checked first: a pid may have been reused meanwhile.
        for pid in tree[1:]:
            if _command_line(pid).startswith(" ".join(self.args)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.proc = None


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


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
        args = [sys.executable, str(BENCH / "passthrough.py"), "--port", str(self.port)]
        self.server = Server([*args, "--upstream-port", str(sink.port)], workdir, "passthrough")
        self._seen = 0

    def start(self) -> None:
        self.server.start(self.port)

    def stop(self) -> None:
        self.server.stop()

    def pids(self) -> list[int]:
        return process_tree(self.server.pid) if self.server.proc else []

    def check(self, accepted: int) -> Check:
        out = self.server.output()
        new, self._seen = out[self._seen :], len(out)
        return Check(["passthrough: traceback in its output"] if "Traceback" in new else [], {})


class PostfixTarget(Target):
    key, label = "postfix", "Postfix relay → smtp-sink"

    def __init__(self, sink: Sink, workdir: Path) -> None:
        super().__init__(sink)
        from tests.support.postfix import PostfixInstance

        self.port = free_port()
        self.instance = PostfixInstance(
            workdir, smtp_port=self.port, relay_port=sink.port, milter=None
        )
        self.log = LogTail(self.instance.log_path)

    def start(self) -> None:
        self.instance.start()
        self.notes = {
            "version": postfix_version(),
            "queue_directory": str(self.instance.queue_dir),
            "settings": "tests/support/postfix.py defaults (relayhost = smtp-sink, no milter)",
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


def postfix_version() -> str:
    out = subprocess.run(["postconf", "-h", "mail_version"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


# -- mss-relay --------------------------------------------------------------------------

DKIM_DOMAIN, DKIM_SELECTOR = "ch-bench.mssante.fr", "bench"
DPI_USER = "dpi"


def relay_config(port: int, sink_port: int, workers: int, work: Path) -> dict[str, Any]:
    """A structure's relay as it would run: every rule at its default,
    DKIM signing, the state file, the transaction log; the DPI's connector
    on loopback taken for its user without AUTH (trusted_clients).

    Raised for the benchmark, and only these: the per-user sending rates
    (30 messages/minute and 500 recipients/hour by default would refuse the
    load within a second; they stay on, at values the load never reaches) and
    the connection caps (20 per client by default; 50 sessions are sent)."""
    hashed = hash_password("bench-password")
    humans = ["jdupont", "mleroy", "asecretaire"]
    config: dict[str, Any] = {
        "hostname": "relay.ch-bench.mssante.fr",
        "listeners": [
            {"name": "dpi", "role": "submission", "host": "127.0.0.1", "port": port, "tls": "none"}
        ],
        "dkim": [
            {
                "domain": DKIM_DOMAIN,
                "selector": DKIM_SELECTOR,
                "private_key": str(work.parent / "dkim" / "bench.key"),
            }
        ],
        "upstream": {"host": "127.0.0.1", "port": sink_port, "tls": "none", "timeout": 600},
        "limits": {
            "max_attachment_size": "20MiB",
            "max_message_size": "60MiB",
            "max_recipients": 50,
        },
        "throttle": {
            "messages_per_minute": 1_000_000,
            "recipients_per_hour": 10_000_000,
            "max_connections": 1000,
            "max_connections_per_client": 1000,
        },
        # 50 sessions queue for the default 4 message slots: no 451 while waiting.
        "timeouts": {"busy_wait": 600},
        "users": [{"name": n, "password_hash": hashed} for n in [DPI_USER, *humans]],
        "bals": [
            {"address": SENDER, "type": "organisationnelle", "users": [DPI_USER, "asecretaire"]},
            {
                "address": "jean.dupont@ch-bench.mssante.fr",
                "type": "nominative",
                "users": ["jdupont"],
            },
            {
                "address": "marie.leroy@ch-bench.mssante.fr",
                "type": "nominative",
                "users": ["mleroy"],
            },
            {
                "address": "accueil@ch-bench.mssante.fr",
                "type": "organisationnelle",
                "users": humans,
            },
        ],
        "trusted_clients": {"127.0.0.1": DPI_USER},
        "state": {"database": str(work / "state.sqlite3")},
        "log": {"file": str(work / "relay.jsonl")},
    }
    if workers > 1:
        config["workers"] = workers
    return config


def _bal(address: str, kind: str, users: list[str]) -> dict[str, Any]:
    return {"address": address, "type": kind, "users": users}


def make_dkim_key(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / "bench.key"
    if not key.exists():
        command = [sys.executable, "-m", "mss_relay", "dkim-keygen", DKIM_DOMAIN, DKIM_SELECTOR]
        subprocess.run([*command, "--output", str(key)], cwd=ROOT, check=True, capture_output=True)
    return key


def make_state(path: Path, conversations: int) -> float:
    """The state file, filled as bench/conversation_lookup.py fills it. Returns seconds."""
    from conversation_lookup import populate

    async def create() -> None:
        store = await ConversationStore.open(path)  # the relay's own schema
        await store.close()

    started = time.monotonic()
    asyncio.run(create())
    populate(path, conversations)
    with sqlite3.connect(path) as db:  # no -wal file left to copy
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return time.monotonic() - started


def workers_supported(work: Path, workers: int) -> str | None:
    """None if « check-config » takes workers: N, else why not."""
    work.mkdir(parents=True, exist_ok=True)
    probe = work / "probe.yaml"
    config = relay_config(free_port(), free_port(), max(workers, 2), work)
    probe.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [sys.executable, "-m", "mss_relay", "check-config", "--config", str(probe)]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    return None if out.returncode == 0 else (out.stderr or out.stdout).strip()[-300:]


class RelayTarget(Target):
    label = "mss-relay"

    def __init__(self, sink: Sink, workdir: Path, workers: int, state: Path) -> None:
        super().__init__(sink)
        self.key = f"relay-{workers}w"
        self.label = f"mss-relay, {workers} worker{'s' if workers > 1 else ''}"
        self.workers = workers
        self.work = workdir / self.key
        self.work.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(state, self.work / "state.sqlite3")
        self.port = free_port()
        self.config = relay_config(self.port, sink.port, workers, self.work)
        config_path = self.work / "relay.yaml"
        config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        args = [sys.executable, "-m", "mss_relay", "serve", "--config", str(config_path)]
        self.server = Server(args, self.work, "relay")
        self.log = LogTail(self.work / "relay.jsonl")

    @property
    def log_path(self) -> Path:
        return self.work / "relay.jsonl"

    def start(self) -> None:
        self.server.start(self.port)
        self._wait_workers()
        self.log.read()  # the start-up lines are not a run's
        self.notes = {
            "workers": self.workers,
            "config": str(self.work / "relay.yaml"),
            "log": str(self.log_path),
        }

    def _wait_workers(self) -> None:
        """Every worker has logged « started »: all of them take connections."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            started = sum(e.get("event") == "started" for e in self._read_all())
            if started >= self.workers:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.key}: not every worker started\n{self.server.output()[-2000:]}")

    def _read_all(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        data = self.log_path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]  # a line being written is read next time
        return [json.loads(line) for line in whole.splitlines() if line]

    def stop(self) -> None:
        self.server.stop()

    def pids(self) -> list[int]:
        return process_tree(self.server.pid) if self.server.proc else []

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
        return Check(problems, dict(outcomes))


def _delivered(lines: list[bytes]) -> int:
    events = (json.loads(line) for line in lines if line.strip())
    return sum(e.get("event") == "transaction" and e.get("outcome") == "delivered" for e in events)


def _failed(event: dict[str, Any]) -> bool:
    if event.get("event") == "transaction":
        return event.get("outcome") != "delivered"
    return event.get("level") in ("error", "critical")
