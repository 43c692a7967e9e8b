"""What every benchmark starts, in one place.

    free_port, wait_port   loopback ports (tests/support/processes.py's, shared)
    Server                 a child process in a session of its own, stopped with its tree
    Counter, Sink          smtp-sink counting what it receives, time-stamped
    bench_postfix          the private Postfix (tests/support/postfix.py) with the
                           honest peer's settings (PEER_SETTINGS)
    RecordingUpstream      tests/support/upstream_server.py as a process (--discard)
    relay_config           the relay's configuration, as the YAML structure an operator
                           writes (the public contract, not mss_relay's Python objects)
    RelayProcess           « mss-relay serve » on that configuration, every worker started
    make_dkim_key, make_state, workers_supported

Every process is on 127.0.0.1 and is stopped at the end, on Ctrl-C or on error too.
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
import threading
import time
from pathlib import Path
from typing import IO, Any

import yaml

from tests.support.postfix import PostfixInstance, postfix_available
from tests.support.processes import free_port, wait_port

from . import procfs

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
START_TIMEOUT = 60.0
# smtp-sink as root must drop privileges (-u); nobody exists everywhere.
SINK_USER = "nobody"

__all__ = ["free_port", "postfix_available", "wait_port"]


# -- processes -------------------------------------------------------------------------


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL to the process group it leads (it was started
    with start_new_session, so the group is ours only)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):  # gone meanwhile
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Server:
    """A child process in a session of its own: Ctrl-C in the terminal reaches
    only the benchmark, which then stops it (and its workers) in order. Its
    output goes to WORKDIR/NAME.out; it runs from the checkout's root, which is
    on its PYTHONPATH (so `-m tests.support...` and `-m bench...` resolve)."""

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

    def pids(self) -> list[int]:
        return procfs.process_tree(self.proc.pid) if self.proc else []

    def output(self) -> str:
        path = self.workdir / f"{self.name}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is None:
            return
        tree = procfs.process_tree(self.proc.pid)
        stop_process(self.proc, grace=20.0)
        # A worker outliving its parent (it would notice within a second); the
        # command line is checked first: a pid may have been reused meanwhile.
        for pid in tree[1:]:
            if procfs.command_line(pid).startswith(" ".join(self.args)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.proc = None


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


# -- smtp-sink ---------------------------------------------------------------------------


class Counter:
    """A number printed again and again on a pipe ("mesg=12\\r", "12\\r"),
    read by a thread; each change is time-stamped."""

    def __init__(self, pattern: bytes) -> None:
        self.pattern = re.compile(pattern)
        self.value = 0
        self.changed_at = 0.0
        self._cond = threading.Condition()

    def feed(self, stream: IO[bytes]) -> None:
        buffer = b""
        # read1: whatever the pipe holds now, without waiting for a full buffer.
        read = getattr(stream, "read1", stream.read)
        while chunk := read(65536):
            now = time.monotonic()
            buffer += chunk
            records = buffer.split(b"\r")
            buffer = records.pop()
            values = [int(m[1]) for r in records if (m := self.pattern.search(r))]
            if values and values[-1] != self.value:
                self._update(values[-1], now)

    def _update(self, value: int, now: float) -> None:
        with self._cond:
            self.value = value
            self.changed_at = now
            self._cond.notify_all()

    def wait_for(self, value: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.value >= value, timeout)

    def wait_quiet(self, quiet: float, timeout: float) -> bool:
        """Until nothing changed for `quiet` seconds (a previous run's tail)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if time.monotonic() - self.changed_at >= quiet:
                return True
            time.sleep(quiet / 4)
        return False

    def follow(self, stream: IO[bytes] | None) -> threading.Thread:
        """Read `stream` (a PIPE) in a thread of its own."""
        assert stream is not None  # started with stdout=PIPE
        thread = threading.Thread(target=self.feed, args=(stream,), daemon=True)
        thread.start()
        return thread


class Sink:
    """smtp-sink on 127.0.0.1, counting every message it received (-c)."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.counter = Counter(rb"mesg=(\d+)")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # -m: room for every session (load + relay upstream connections);
        # backlog 1024: no connection refused in a burst.
        args = ["smtp-sink", "-c", "-m", "1000", f"inet:127.0.0.1:{self.port}", "1024"]
        if os.geteuid() == 0:  # it refuses to run as root without -u
            args[1:1] = ["-u", SINK_USER]
        with (self.workdir / "smtp-sink.stderr").open("ab") as err:
            self.proc = subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=err, start_new_session=True
            )
        self.counter.follow(self.proc.stdout)
        wait_port(self.port, self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def __enter__(self) -> Sink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- Postfix ------------------------------------------------------------------------------

# The honest peer: Postfix as one would set it up to relay from a trusted
# network to one smarthost, on top of tests/support/postfix.py's loopback
# settings (no milter, no header checks, relayhost = smtp-sink in brackets: no
# MX look-up, smtpd_peername_lookup = no: no reverse DNS of 127.0.0.1).
# bench/postfix_variants.py measures each setting (postfix_variants.json).
PEER_SETTINGS = {
    # No log file: the loopback harness logs to a file through postlogd (the
    # tests read it); without maillog_file Postfix logs through syslog(3), a
    # syslog daemon's work, not Postfix's (and with no /dev/log, as in a
    # container, nothing is written: likely the independent run's case). On a
    # box shared with other jobs (CPU pressure ~70 %) one interleaved run gave
    # 3.96 -> 2.98 ms of Postfix CPU per 2 KB message, another 3.48 -> 3.31:
    # a quiet run of bench/postfix_variants.py settles what it is worth.
    "maillog_file": "",
    # No DNS at all on the delivery side (relayhost is a literal address).
    "smtp_dns_support_level": "disabled",
}


def bench_postfix(
    workdir: Path, port: int, relay_port: int, extra: dict[str, str] | None = None
) -> PostfixInstance:
    """A private Postfix relaying everything from 127.0.0.1 to relay_port."""
    settings = PEER_SETTINGS | (extra or {})
    return PostfixInstance(
        workdir, smtp_port=port, relay_port=relay_port, milter=None, extra=settings
    )


def postfix_version() -> str:
    # -d: the built-in value; there may be no /etc/postfix/main.cf to read.
    out = subprocess.run(["postconf", "-dh", "mail_version"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


# -- the recording upstream ------------------------------------------------------------------


class RecordingUpstream:
    """tests/support/upstream_server.py as a process, keeping the size and hashes
    of what it receives (--discard), not the bytes."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "upstream"
        self.port = free_port()
        args = ["--discard", "--port", str(self.port), "--dir", str(self.dir)]
        self.server = Server(python_module("tests.support.upstream_server", *args), workdir, "up")

    def start(self) -> None:
        self.server.start(self.port)

    def stop(self) -> None:
        self.server.stop()

    def received(self) -> list[dict[str, Any]]:
        """The envelope, size and hashes of every message received."""
        return [json.loads(p.read_text()) for p in sorted(self.dir.glob("*.json"))]

    def __enter__(self) -> RecordingUpstream:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the relay's configuration -----------------------------------------------------------------

DOMAIN = "ch-bench.mssante.fr"
DKIM_SELECTOR = "bench"
DPI_USER = "dpi"
PASSWORD = "bench-password"
DPI_BAL = f"secretariat.cardio@{DOMAIN}"
HUMANS = ("jdupont", "mleroy", "asecretaire")


def listener(name: str, port: int, tls: str = "none", role: str = "submission") -> dict[str, Any]:
    return {"name": name, "role": role, "host": "127.0.0.1", "port": port, "tls": tls}


def relay_config(
    work: Path,
    listeners: list[dict[str, Any]],
    upstream_port: int,
    *,
    workers: int = 1,
    tls: bool = False,
    dkim_key: Path | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """A structure's relay as it would run, as the YAML an operator writes:
    every rule at its default, DKIM signing (`dkim_key`, made once by
    make_dkim_key for relays sharing it, else WORK/dkim/bench.key generated by
    the relay at start), the state file and the JSON
    log under WORK, the DPI's connector on loopback taken for its user without
    AUTH (trusted_clients), its BAL and a few others.

    `sections` replace a top-level key (None: remove it), or are merged into
    it when both are mappings: the benchmark's own choices (e.g. throttle) are
    given by it, and seen in the YAML it writes. `tls`: the relay's
    self-signed certificate."""
    hashed = hash_password(PASSWORD)
    config: dict[str, Any] = {
        "hostname": f"relay.{DOMAIN}",
        "listeners": listeners,
        "dkim": [
            {
                "domain": DOMAIN,
                "selector": DKIM_SELECTOR,
                "private_key": str(dkim_key or work / "dkim" / "bench.key"),
                "generate": True,
            }
        ],
        "upstream": {"host": "127.0.0.1", "port": upstream_port, "tls": "none", "timeout": 600},
        "users": [{"name": n, "password_hash": hashed} for n in [DPI_USER, *HUMANS]],
        "bals": [
            {"address": DPI_BAL, "type": "organisationnelle", "users": [DPI_USER, "asecretaire"]},
            {"address": f"jean.dupont@{DOMAIN}", "type": "nominative", "users": ["jdupont"]},
            {"address": f"marie.leroy@{DOMAIN}", "type": "nominative", "users": ["mleroy"]},
            {"address": f"accueil@{DOMAIN}", "type": "organisationnelle", "users": list(HUMANS)},
        ],
        "trusted_clients": {"127.0.0.1": DPI_USER},
        "state": {"database": str(work / "state.sqlite3")},
        "log": {"file": str(work / "relay.jsonl"), "rotate": "external"},
    }
    if tls:
        config["tls"] = {
            "certificate": str(work / "tls" / "relay.pem"),
            "private_key": str(work / "tls" / "relay.key"),
            "self_signed": True,
        }
    if workers > 1:
        config["workers"] = workers
    for key, value in sections.items():
        current = config.get(key)
        if value is None:
            config.pop(key, None)
        elif isinstance(current, dict) and isinstance(value, dict):
            config[key] = {**current, **value}
        else:
            config[key] = value
    return config


def hash_password(password: str) -> str:
    # The relay's own scheme: the configuration holds what an operator would.
    from mss_relay.passwords import hash_password as relay_hash

    return relay_hash(password)


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class RelayProcess:
    """« mss-relay serve » on `config` (written to WORK/relay.yaml), in a
    session of its own; started once every worker has logged « started »."""

    def __init__(self, work: Path, config: dict[str, Any]) -> None:
        self.work = work
        self.config = config
        self.config_path = write_config(work / "relay.yaml", config)
        self.log_path = Path(config["log"]["file"])
        self.workers = int(config.get("workers", 1))
        self.ports = [int(li["port"]) for li in config["listeners"] if "port" in li]
        command = ["serve", "--config", str(self.config_path)]
        self.server = Server(python_module("mss_relay", *command), work, "relay")

    @property
    def port(self) -> int:
        return self.ports[0]

    def start(self) -> None:
        self.server.start(self.port)
        assert self.server.proc is not None  # started just now
        for port in self.ports[1:]:
            wait_port(port, self.server.proc)
        self._wait_workers()

    def _wait_workers(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if sum(e.get("event") == "started" for e in self.events()) >= self.workers:
                return
            time.sleep(0.1)
        raise RuntimeError(f"not every worker started\n{self.server.output()[-2000:]}")

    def events(self) -> list[dict[str, Any]]:
        """The log's whole lines (a line being written is read next time)."""
        if not self.log_path.exists():
            return []
        data = self.log_path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]
        return [json.loads(line) for line in whole.splitlines() if line]

    def pids(self) -> list[int]:
        return self.server.pids()

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> RelayProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_dkim_key(directory: Path) -> Path:
    """The signing key relay_config points to, made once for every relay of a run."""
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / "bench.key"
    if not key.exists():
        command = python_module("mss_relay", "dkim-keygen", DOMAIN, DKIM_SELECTOR)
        subprocess.run([*command, "--output", str(key)], cwd=ROOT, check=True, capture_output=True)
    return key


def make_state(path: Path, conversations: int) -> float:
    """The state file, filled as bench/conversation_lookup.py fills it. Returns seconds."""
    from mss_relay.state.conversations import ConversationStore

    from .conversation_lookup import key_beside, populate

    async def create() -> None:
        # The relay's own schema, and its key (default place) for populate.
        store = await ConversationStore.open(path, pseudonyms=key_beside(path))
        await store.close()

    started = time.monotonic()
    asyncio.run(create())
    populate(path, conversations)
    with sqlite3.connect(path) as db:  # no -wal file left to copy
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return time.monotonic() - started


def copy_state(state: Path, to: Path) -> None:
    """A state file and its pseudonym key beside it (the relay refuses a
    database of pseudonyms without the key that made them)."""
    shutil.copyfile(state, to)
    key = state.parent / "pseudonym.key"
    if key.exists():
        (to.parent / key.name).write_bytes(key.read_bytes())
        (to.parent / key.name).chmod(0o600)


def workers_supported(work: Path, workers: int) -> str | None:
    """None if « check-config » takes workers: N, else why not."""
    key = make_dkim_key(work / "dkim")
    config = relay_config(
        work, [listener("dpi", free_port())], free_port(), workers=workers, dkim_key=key
    )
    probe = write_config(work / "probe.yaml", config)
    command = python_module("mss_relay", "check-config", "--config", str(probe))
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    return None if out.returncode == 0 else (out.stderr or out.stdout).strip()[-300:]
