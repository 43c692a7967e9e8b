"""The AUTH guard and the sending rates as the fronts use them: one async
interface, two backends. With SQLite (one machine) they are the in-memory
counters of core/throttle.py, per process, as before issue 18; with
PostgreSQL, the counters every relay shares (state/shared_throttle.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from mss_relay.core.throttle import AuthGuard, SendingRates, ThrottleSettings
from mss_relay.core.verdict import Verdict
from mss_relay.state.postgres import PostgresDatabase
from mss_relay.state.shared_throttle import SharedGuard, SharedRates


class Guard(Protocol):
    """Failed AUTH attempts and lockouts (core/throttle.py AuthGuard says how)."""

    async def begin(self, client: str, user: str) -> Verdict | None:
        """A refusal, or None: the attempt is reserved until settled."""

    def succeeded(self, client: str, user: str) -> None:
        """A reserved attempt whose password was right: released."""

    async def failed(self, client: str, user: str) -> tuple[float, list[str]]:
        """A reserved attempt that failed, counted: the delay before answering,
        what it locked out. SharedStateUnavailable: released, not counted."""

    async def unlock(self, what: str) -> list[str]:
        """Lift the lockout of a user name or client address: what was lifted.
        SharedStateUnavailable: nothing lifted."""

    def reconfigure(self, settings: ThrottleSettings) -> None: ...


class Rates(Protocol):
    """A user's messages per minute (at MAIL) and recipients per hour (at RCPT)."""

    async def message(self, user: str | None) -> Verdict | None:
        """Check and count one more message: a refusal, or None (counted)."""

    async def recipient(self, user: str | None) -> Verdict | None: ...

    def reconfigure(self, settings: ThrottleSettings) -> None: ...


class LocalGuard:
    """AuthGuard behind the async interface: this process's memory, its
    monotonic clock; never unavailable."""

    def __init__(self, guard: AuthGuard, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.guard = guard
        self._clock = clock

    async def begin(self, client: str, user: str) -> Verdict | None:
        return self.guard.begin(client, user, self._clock())

    def succeeded(self, client: str, user: str) -> None:
        self.guard.succeeded(client, user)

    async def failed(self, client: str, user: str) -> tuple[float, list[str]]:
        return self.guard.failed(client, user, self._clock())

    async def unlock(self, what: str) -> list[str]:
        return self.guard.unlock(what)

    def reconfigure(self, settings: ThrottleSettings) -> None:
        self.guard.reconfigure(settings)


class LocalRates:
    """SendingRates behind the async interface (this process's memory)."""

    def __init__(self, rates: SendingRates, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rates = rates
        self._clock = clock

    async def message(self, user: str | None) -> Verdict | None:
        return self.rates.message(user, self._clock())

    async def recipient(self, user: str | None) -> Verdict | None:
        return self.rates.recipient(user, self._clock())

    def reconfigure(self, settings: ThrottleSettings) -> None:
        self.rates.reconfigure(settings)


def make_throttles(
    settings: ThrottleSettings, database: PostgresDatabase | None
) -> tuple[Guard, Rates]:
    """The AUTH guard and the sending rates of this process: shared on the
    PostgreSQL database when there is one (Config.postgres), else in memory."""
    if database is None:
        return LocalGuard(AuthGuard(settings)), LocalRates(SendingRates(settings))
    return SharedGuard(database, settings), SharedRates(database, settings)
