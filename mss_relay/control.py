"""The local control socket: « mss-relay reload » and « mss-relay unlock ».

A tiny line protocol on a Unix socket (control.socket, mode 600): one command
per connection (« reload », « unlock WHAT », « reopen », « directory »: load
the Annuaire Santé's current import now), one JSON object in
reply. Worker 0 serves it; with workers: N, each other worker serves a private
socket of its own beside it (« control.socket.K », mode 600 too) on which
worker 0 passes every command on, so that a reload or an unlock reaches all
the processes and the reply says how each did. Signals take the same way:
SIGHUP is « reload », SIGUSR1 « reopen » (logrotate).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Any

import yaml

from mss_relay.config import ConfigError, load_config
from mss_relay.directory_follower import load_current
from mss_relay.runtime import ReloadFailed, Runtime
from mss_relay.state.errors import SharedStateUnavailable

# How long a command may take (a reload reads files and loads keys): the
# command line waits longer than worker 0 waits for each other worker, so
# that a worker that does not answer is reported in the reply, not taken for
# the whole relay's silence.
COMMAND_TIMEOUT = 60.0
WORKER_TIMEOUT = 30.0
# How long a client may take to send its one line.
READ_TIMEOUT = 10.0
MAX_LINE = 1024

Reply = dict[str, Any]


class NotRunning(Exception):
    """No relay answers on the control socket (str(): why, in one line)."""


def worker_socket(path: Path, worker: int) -> Path:
    """Worker K's private control socket, beside the public one."""
    return path.with_name(f"{path.name}.{worker}")


class Control:
    """What the control socket and the signals ask of one process; worker 0
    passes it on to the others."""

    def __init__(self, runtime: Runtime, worker: int) -> None:
        self.runtime = runtime
        self.worker = worker
        self._bound: int | None = None  # the inode of the socket this process bound
        config = runtime.config
        self.path = (
            config.control.socket if worker == 0 else worker_socket(config.control.socket, worker)
        )
        # Read once: both are restart-only keys.
        self.others = (
            [worker_socket(config.control.socket, k) for k in range(1, config.workers)]
            if worker == 0
            else []
        )
        self._tasks: set[asyncio.Task[None]] = set()

    # Commands in this process ------------------------------------------------
    async def _local(self, command: str, argument: str) -> Reply:
        if command == "reload":
            try:
                done = await self.runtime.reload()
            except ReloadFailed as failure:
                return {"ok": False, "error": str(failure)}
            return {"ok": True, "changed": done.changed, "restart_required": done.restart_required}
        if command == "unlock":
            try:
                lifted = await self.runtime.shared.guard.unlock(argument)
            except SharedStateUnavailable as why:
                self.runtime.shared.log.warning("unlock_failed", key=argument, reason=str(why))
                return {"ok": False, "error": f"shared state unavailable: {why}"}
            self.runtime.shared.log.info("unlocked", key=argument, lifted=lifted)
            return {"ok": True, "key": argument, "lifted": lifted}
        if command == "directory":
            shared = self.runtime.shared
            if shared.directory is None:
                return {"ok": False, "error": "no directory store"}
            return await load_current(
                shared.directory, self.runtime.config.directory.mode, shared.log
            )
        self.runtime.reopen_log()
        return {"ok": True}

    async def run(self, line: str) -> Reply:
        """One command line: in this process, then (worker 0) in the others."""
        command, _, argument = line.strip().partition(" ")
        argument = argument.strip()
        if command not in ("reload", "unlock", "reopen", "directory") or (
            command == "unlock"
        ) != bool(argument):
            return {"ok": False, "error": f"unknown command: {line.strip()[:40]!r}"}
        reply = await self._local(command, argument)
        if not reply["ok"] or not self.others:
            return reply | {"processes": 1 if reply["ok"] else 0}
        replies = await asyncio.gather(*(_ask(path, line.strip()) for path in self.others))
        failed = [f"worker {k}: {r['error']}" for k, r in enumerate(replies, 1) if not r["ok"]]
        if command == "unlock":
            reply["lifted"] = sorted(
                {kind for r in (reply, *replies) for kind in r.get("lifted", ())}
            )
        reply["processes"] = 1 + len(replies) - len(failed)
        if failed:
            reply |= {"ok": False, "error": "; ".join(failed)}
        return reply

    def signalled(self, line: str) -> None:
        """A signal handler's command: run it as a task of its own."""
        task = asyncio.get_running_loop().create_task(self._quietly(line))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _quietly(self, line: str) -> None:
        # The outcome is in the log (reloaded, reload_failed, log_reopened).
        try:
            await self.run(line)
        except Exception as error:
            self.runtime.shared.log.error("control_error", command=line, error=type(error).__name__)

    # The socket ---------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                raw = await reader.readline()
            line = raw[:MAX_LINE].decode("utf-8", "replace")
            try:
                reply = await self.run(line)
            except Exception as error:  # never a traceback, and the client hears of it
                self.runtime.shared.log.error(
                    "control_error", command=line.split(" ")[0], error=type(error).__name__
                )
                reply = {"ok": False, "error": f"internal error ({type(error).__name__})"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (OSError, TimeoutError, ValueError):
            pass  # the client went away, or sent no line in time
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def listen(self) -> asyncio.Server:
        """Bind the socket, mode 600 before it listens: no connection is ever
        accepted under a wider mode."""
        path = self.path
        if path.is_socket():
            if await _answers(path):
                raise ConfigError("control.socket", f"{path} is used by a relay already running")
            path.unlink()  # left by a relay that was killed
        elif path.exists():
            raise ConfigError("control.socket", f"{path} exists and is not a socket")
        if not path.parent.is_dir():
            # Not made here: a wrong path should say so, not grow folders.
            raise ConfigError("control.socket", f"{path.parent}: no such folder")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            os.chmod(path, 0o600)
            self._bound = path.stat().st_ino
            return await asyncio.start_unix_server(self._serve, sock=sock)
        except OSError as error:
            sock.close()
            raise ConfigError(
                "control.socket", f"cannot listen on {path}: {error.strerror or error}"
            ) from None

    def close(self) -> None:
        """Remove the socket this process made, and only that one: not one
        that another relay made at the same path."""
        if self._bound is None:
            return
        with contextlib.suppress(OSError):
            if self.path.is_socket() and self.path.stat().st_ino == self._bound:
                self.path.unlink()
        self._bound = None


async def _answers(path: Path) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 2.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def _ask(path: Path, line: str) -> Reply:
    """Worker 0 asking another worker, on its private socket."""
    try:
        async with asyncio.timeout(WORKER_TIMEOUT):
            reader, writer = await asyncio.open_unix_connection(str(path))
            try:
                writer.write(line.encode() + b"\n")
                await writer.drain()
                reply: Reply = json.loads(await reader.readline())
            finally:
                writer.close()
        return reply
    except (OSError, TimeoutError, ValueError) as error:
        # A worker being started again reads the configuration anew anyway.
        return {"ok": False, "error": f"no answer ({type(error).__name__})"}


# The client (the mss-relay command) -----------------------------------------
def socket_path(config_path: str | Path) -> Path:
    """The running relay's control socket, from its configuration; when the
    file does not load (a reload is often asked to learn why), from its
    control and state keys alone."""
    try:
        return load_config(config_path).control.socket
    except ConfigError as error:
        failure = error
    path = Path(config_path).resolve()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        control, state = data.get("control") or {}, data.get("state") or {}
        database = Path(state.get("database") or "var/state.sqlite3")
        raw = control.get("socket") or database.parent / "control.socket"
        return (path.parent / str(raw)).resolve()
    except (OSError, UnicodeError, yaml.YAMLError, AttributeError, TypeError):
        raise failure from None


def ask(path: Path, line: str, timeout: float = COMMAND_TIMEOUT) -> Reply:
    """Send one command to the running relay and return its reply; NotRunning
    when no relay answers (blocking: the command line's own process)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotRunning(f"the relay is not running (nothing listens on {path})") from None
        except PermissionError:
            raise NotRunning(f"permission denied on {path}: run as the relay's user") from None
        except OSError as error:
            raise NotRunning(
                f"cannot reach the relay on {path}: {error.strerror or error}"
            ) from None
        data = b""
        try:
            sock.sendall(line.encode("utf-8") + b"\n")
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            raise NotRunning(f"the relay did not answer within {timeout:.0f} s") from None
        except OSError as error:
            raise NotRunning(
                f"the relay closed the connection: {error.strerror or error}"
            ) from None
    try:
        reply: Reply = json.loads(data)
    except ValueError:
        raise NotRunning("the relay closed the connection without an answer") from None
    return reply
