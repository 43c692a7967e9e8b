"""Start the real relay and the real upstream as processes on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 30.0


# The ports handed out by this test process. The kernel may give the same
# free port to two calls in a row (nothing listens on it yet): a relay
# configured with both would refuse to start (same endpoint twice).
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll a condition until it holds (True) or the time is up (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = READY_TIMEOUT) -> None:
    """Readiness, not timing: poll until the port accepts or the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class Process:
    def __init__(self, args: list[str], workdir: Path, name: str) -> None:
        self.args = args
        self.workdir = workdir
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def stderr_path(self) -> Path:
        return self.workdir / f"{self.name}.stderr"

    def start(self, *ports: int) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with (
            (self.workdir / f"{self.name}.stdout").open("ab") as out,
            self.stderr_path.open("ab") as err,
        ):
            self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=out, stderr=err, env=env)
        for port in ports:
            wait_port(port, self.proc)

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""


class Upstream:
    """The recording upstream SMTP server (tests/support/upstream_server.py)."""

    def __init__(
        self, workdir: Path, tls: tuple[Path, Path] | None = None, dsn: bool = False
    ) -> None:
        self.dir = workdir / "upstream"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        args = [sys.executable, "-m", "tests.support.upstream_server"]
        args += ["--port", str(self.port), "--dir", str(self.dir)]
        if tls:
            args += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        if dsn:
            args.append("--dsn")
        self.process = Process(args, workdir, "upstream")

    def start(self) -> None:
        self.process.start(self.port)

    def stop(self) -> None:
        self.process.stop()

    def control(self, **settings: Any) -> None:
        # Atomically (a rename): the server reads the file at each command,
        # and a half-written one made it answer 500 to a MAIL it had taken.
        staged = self.dir / "control.json.new"
        staged.write_text(json.dumps(settings))
        staged.replace(self.dir / "control.json")

    def journal(self) -> list[dict[str, Any]]:
        """What each connection did (upstream_server.py's journal.jsonl), whole lines only."""
        path = self.dir / "journal.jsonl"
        data = path.read_bytes() if path.exists() else b""
        return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]

    def wait_journal(
        self, where: Callable[[list[dict[str, Any]]], bool], timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        """The journal once `where` accepts it (or when the time is up)."""
        deadline = time.monotonic() + timeout
        while True:
            journal = self.journal()
            if where(journal) or time.monotonic() > deadline:
                return journal
            time.sleep(0.02)

    def messages(self) -> list[tuple[dict[str, Any], bytes]]:
        return [
            (json.loads(p.with_suffix(".json").read_text()), p.read_bytes())
            for p in sorted(self.dir.glob("*.eml"))
        ]


class Relay:
    """The real « mss-relay serve » process with a configuration written for it."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.workdir = workdir
        self.config = config
        self.port = int(config["listeners"][0]["port"])
        self.config_path = workdir / "relay.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.process = Process(
            [sys.executable, "-m", "mss_relay", "serve", "--config", str(self.config_path)],
            workdir,
            "relay",
        )

    @property
    def log_path(self) -> Path:
        return self.workdir / self.config["log"]["file"]

    def port_of(self, name: str) -> int:
        return int(next(li["port"] for li in self.config["listeners"] if li["name"] == name))

    def start(self) -> None:
        self.process.start(*(int(li["port"]) for li in self.config["listeners"] if "port" in li))

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        return self.process.stop(sig)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """« mss-relay ARGS --config » this relay's file (reload, directory, whitelist)."""
        return subprocess.run(
            [sys.executable, "-m", "mss_relay", *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def pseudonym(self, patient: str) -> str:
        """How the log and the state show a patient (issue 17): under the key
        the relay made at its first start, beside its state database."""
        from mss_relay.pseudonym import load_key

        state = self.config.get("state", {})
        key = self.config.get("log", {}).get("pseudonym_key_file")
        if key is None:
            database = str(state.get("database", "var/state.sqlite3"))
            if database.startswith(("postgresql://", "postgres://")):  # beside the relay's files
                key = f"{state.get('directory', 'var')}/pseudonym.key"
            else:
                key = str(Path(database).parent / "pseudonym.key")
        return load_key(self.workdir / key, create=False).of(patient)

    def log_text(self) -> str:
        """The log's whole lines. A reader may catch the writer thread in the
        middle of its write(2) (Linux lets read(2) see part of a write to a
        regular file, even cut inside a UTF-8 character), as any log shipper
        tailing the file may; the rest of the line comes later."""
        data = self.log_path.read_bytes() if self.log_path.exists() else b""
        return data[: data.rfind(b"\n") + 1].decode("utf-8")

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.log_text().splitlines() if line.strip()]
        return [e for e in lines if name is None or e.get("event") == name]

    def wait_event(
        self,
        name: str,
        count: int = 1,
        timeout: float = 10.0,
        where: Callable[[dict[str, Any]], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """The log is written by a thread: wait until the lines are there
        (`count` of them, among those `where` accepts)."""
        deadline = time.monotonic() + timeout
        while True:
            events = [e for e in self.events(name) if where is None or where(e)]
            if len(events) >= count or time.monotonic() > deadline:
                return events
            time.sleep(0.02)
