"""One relay per state database: the first worker holds an exclusive lock.

A second « mss-relay serve » on the same state (an administrator trying the
command while the service runs) must stop before it touches anything the
running relay uses: its control socket, its metrics folder, its database.
flock(2) on a file beside the database: released by the kernel when the
process ends, however it ends (kill -9 included), so a stale lock never
blocks a start. The other workers of the same relay do not take it (the
first one's lock covers them; they do not inherit its descriptor).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from mss_relay.errors import AlreadyRunning


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


class StateLock:
    def __init__(self, database: Path) -> None:
        self.database = database
        self.path = lock_path(database)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or AlreadyRunning naming the pid that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise AlreadyRunning(
                f"another relay (pid {holder}) runs on the state database {self.database}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # the lock goes with the descriptor
            self._fd = None
