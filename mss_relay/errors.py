"""Failures at start that are not configuration errors."""

from __future__ import annotations

import os


class ListenError(Exception):
    """A listening address could not be opened (in use, most often): not a
    configuration error, so exit 1, which systemd restarts (EX_CONFIG, 78,
    it does not)."""

    @classmethod
    def of(cls, endpoint: str, key: str, error: OSError) -> ListenError:
        # asyncio's strerror repeats the address: the system's words only.
        why = (os.strerror(error.errno) if error.errno else str(error)).lower()
        return cls(f"cannot listen on {endpoint} ({key}): {why}")


class AlreadyRunning(Exception):
    """Another relay runs on the same state database: exit 1, touching
    nothing of it (its control socket, its metrics, its database)."""
