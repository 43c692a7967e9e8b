"""The throttles on PostgreSQL (state.database: postgresql://...), shared by
every relay and worker that names the same database: AUTH failures and
lockouts per user and per client address, a user's messages per minute and
recipients per hour. With SQLite (one machine) they stay in memory, per
process (core/throttle.py, throttles.py).

Each check-and-count is one transaction holding the advisory lock of its key
(PostgresDatabase.lock): two relays taking the last message of a user's
minute at once are serialised, one gets it, the other is refused; nothing is
lost or granted twice. A key keeps at most its limit of rows: the expired
ones are deleted as it is counted, a refused take inserts nothing, and a
sweep (once a minute per process) removes those of keys no one uses any more.

Times are wall-clock epoch seconds (time.time()), compared across relays:
their clocks must agree (NTP), as a skew of a few seconds only moves the
edges of a window or a lockout by as much. Monotonic clocks, per machine,
cannot be compared.

Whatever the server does not answer (unreachable, down, a statement that
fails) is a 451 4.3.0 (SHARED_STATE_UNAVAILABLE), at MAIL, RCPT and AUTH:
never an unchecked accept, never a password verified without its count.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from mss_relay.core.reply import AUTH_BUSY, AUTH_LOCKED, RATE_MESSAGES, RATE_RECIPIENTS, Reply
from mss_relay.core.reply import SHARED_STATE_UNAVAILABLE as UNAVAILABLE
from mss_relay.core.throttle import ThrottleSettings, client_key
from mss_relay.core.verdict import Verdict
from mss_relay.state.errors import STATE_ERRORS, SharedStateUnavailable
from mss_relay.state.postgres import PostgresDatabase

SWEEP_EVERY = 60.0  # seconds between two sweeps of unused keys, per process
_MESSAGES, _RECIPIENTS = "rate:messages:", "rate:recipients:"
_RATES_LONGEST = 3600.0  # the recipients' hour: no rate event is needed longer


def unavailable(rule: str, why: str) -> Verdict:
    """The 451 of a check the shared state could not make; rule: the check's
    name (as the conversation state's and the Annuaire's 451 are logged)."""
    return Verdict.tempfail(UNAVAILABLE, rule=rule, reason=f"shared state unavailable: {why}")


def _why(error: BaseException) -> str:
    # The error's type only: its text may quote a statement's parameters (a user name).
    return f"{type(error).__name__}"


class _Sweeper:
    """When this process last swept its unused keys."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._last = clock()

    def due(self) -> bool:
        now = self._clock()
        if now - self._last < SWEEP_EVERY:
            return False
        self._last = now
        return True


async def _count(
    connection: psycopg.AsyncConnection[Any], key: str, now: float, period: float
) -> int:
    """The events of `key` within `period`, the older ones deleted first (the
    caller holds the key's lock)."""
    await connection.execute(
        "DELETE FROM throttle_events WHERE key = %s AND at <= %s", [key, now - period]
    )
    cursor = await connection.execute("SELECT count(*) FROM throttle_events WHERE key = %s", [key])
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


class SharedRates:
    """Per-user sending rates counted in the shared database (throttles.Rates)."""

    def __init__(
        self,
        database: PostgresDatabase,
        settings: ThrottleSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._database = database
        self.settings = settings
        self._clock = clock
        self._sweeper = _Sweeper(clock)

    def reconfigure(self, settings: ThrottleSettings) -> None:
        """New settings (a reload): the events counted so far still count,
        judged by the new limits (a lower one: the surplus ages out)."""
        self.settings = settings

    async def message(self, user: str | None) -> Verdict | None:
        """Check and count one more message for the user."""
        limit = self.settings.messages_per_minute
        return await self._take(_MESSAGES, user, limit, 60.0, RATE_MESSAGES, "messages_per_minute")

    async def recipient(self, user: str | None) -> Verdict | None:
        limit = self.settings.recipients_per_hour
        return await self._take(
            _RECIPIENTS, user, limit, 3600.0, RATE_RECIPIENTS, "recipients_per_hour"
        )

    async def _take(
        self, prefix: str, user: str | None, limit: int, period: float, reply: Reply, rule: str
    ) -> Verdict | None:
        if not limit or user is None:
            return None  # 0: no limit; no user (the incoming side): nothing to count
        database = self._database
        if database.down is not None:  # not even a wait for the pool: the probe knows
            return unavailable(rule, database.down)
        key = prefix + user
        try:
            async with database.transaction() as connection:
                await database.lock(connection, key)
                now = self._clock()  # once the lock is held: the order of the takes
                count = await _count(connection, key, now, period)
                if count >= limit:
                    # Refused: nothing inserted. The slot frees when the event
                    # `limit` places from the newest leaves the window.
                    cursor = await connection.execute(
                        "SELECT at FROM throttle_events WHERE key = %s"
                        " ORDER BY at DESC OFFSET %s LIMIT 1",
                        [key, limit - 1],
                    )
                    row = await cursor.fetchone()
                    wait = max(0.0, float(row[0]) + period - now) if row else 0.0
                    return Verdict.tempfail(
                        reply, rule=rule, reason=f"limit {limit}, retry in {wait:.0f} s"
                    )
                await connection.execute(
                    "INSERT INTO throttle_events (key, at) VALUES (%s, %s)", [key, now]
                )
            if self._sweeper.due():
                await database.execute(
                    "DELETE FROM throttle_events WHERE key LIKE 'rate:%%' AND at <= %s",
                    [self._clock() - _RATES_LONGEST],
                )
        except STATE_ERRORS as error:
            return unavailable(rule, database.down or _why(error))
        return None


class SharedGuard:
    """Failed AUTH attempts and lockouts in the shared database (throttles.Guard).

    A lockout earned on one relay refuses on all of them, and unlock() lifts
    it for all. The reservation of an attempt being verified (core/throttle.py
    AuthGuard.begin) stays in this process: each relay lets at most the
    limit less the shared failures be verified at once, so that R relays
    together verify at most R times that before the failures are known;
    those failures are then counted for all, and the lockout follows.
    """

    def __init__(
        self,
        database: PostgresDatabase,
        settings: ThrottleSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._database = database
        self.settings = settings
        self._clock = clock
        self._sweeper = _Sweeper(clock)
        self._in_flight: dict[str, int] = {}  # a key -> attempts being verified here

    def reconfigure(self, settings: ThrottleSettings) -> None:
        """New settings (a reload): failures and lockouts under way are kept,
        judged by the new limits, window and lockout length."""
        self.settings = settings

    def _keys(self, client: str, user: str) -> list[tuple[str, str, int]]:
        """(kind, key, limit), in the order their locks are taken (always the
        same: two relays locking both keys never deadlock)."""
        settings = self.settings
        return sorted(
            [
                (
                    "client",
                    f"auth:client:{client_key(client)}",
                    settings.auth_max_failures_per_client,
                ),
                ("user", f"auth:user:{user}", settings.auth_max_failures_per_user),
            ],
            key=lambda k: k[1],
        )

    async def begin(self, client: str, user: str) -> Verdict | None:
        """Before a password is verified: a refusal (locked out, the limit
        taken up by failures and attempts still being verified here, or the
        shared state unavailable), or None, the attempt then reserved until
        succeeded() or failed() settles it."""
        database = self._database
        if database.down is not None:
            return unavailable("auth_lockout", database.down)
        keys = self._keys(client, user)
        names = [key for _, key, _ in keys]
        settings = self.settings
        try:
            async with database.connection() as connection:
                now = self._clock()
                cursor = await connection.execute(
                    "SELECT key, since FROM throttle_locks WHERE key = ANY(%s) AND since > %s",
                    [names, now - settings.auth_lockout],
                )
                locks: dict[str, float] = {k: float(s) for k, s in await cursor.fetchall()}
                cursor = await connection.execute(
                    "SELECT key, count(*) FROM throttle_events"
                    " WHERE key = ANY(%s) AND at > %s GROUP BY key",
                    [names, now - settings.auth_window],
                )
                counts: dict[str, int] = {k: int(n) for k, n in await cursor.fetchall()}
        except STATE_ERRORS as error:
            return unavailable("auth_lockout", database.down or _why(error))
        for kind, key, _ in keys:
            since = locks.get(key)
            if since is not None:
                until = since + settings.auth_lockout
                return Verdict.tempfail(
                    AUTH_LOCKED,
                    rule="auth_lockout",
                    reason=f"{kind} locked for {until - now:.0f} s",
                )
        for kind, key, limit in keys:
            pending = self._in_flight.get(key, 0)
            if counts.get(key, 0) + pending >= limit:
                return Verdict.tempfail(
                    AUTH_BUSY,
                    rule="auth_in_flight",
                    reason=f"{kind}: {pending} attempts being verified, limit {limit}",
                )
        for _, key, _ in keys:
            self._in_flight[key] = self._in_flight.get(key, 0) + 1
        return None

    def _release(self, client: str, user: str) -> None:
        for _, key, _ in self._keys(client, user):
            left = self._in_flight.get(key, 0) - 1
            if left > 0:
                self._in_flight[key] = left
            else:
                self._in_flight.pop(key, None)

    def succeeded(self, client: str, user: str) -> None:
        """A reserved attempt whose password was right: released, nothing
        forgiven (failures age out of auth_window, as in core/throttle.py)."""
        self._release(client, user)

    async def failed(self, client: str, user: str) -> tuple[float, list[str]]:
        """A reserved attempt that failed, counted for every relay: the delay
        before answering, and what got locked out by it ("client", "user").
        SharedStateUnavailable when it could not be counted (released all the
        same)."""
        self._release(client, user)  # first: whatever happens next
        database = self._database
        if database.down is not None:
            raise SharedStateUnavailable(database.down)
        settings = self.settings
        locked: list[str] = []
        failures = 0
        try:
            async with database.transaction() as connection:
                keys = self._keys(client, user)
                for _, key, _ in keys:
                    await database.lock(connection, key)
                now = self._clock()
                for kind, key, limit in keys:
                    await connection.execute(
                        "INSERT INTO throttle_events (key, at) VALUES (%s, %s)", [key, now]
                    )
                    count = await _count(connection, key, now, settings.auth_window)
                    failures = max(failures, count)
                    if count >= limit:
                        # Locked once, by whichever relay counted the last
                        # failure; its failures start again from none.
                        await connection.execute(
                            "INSERT INTO throttle_locks (key, since) VALUES (%s, %s)"
                            " ON CONFLICT (key) DO UPDATE SET since = excluded.since",
                            [key, now],
                        )
                        await connection.execute(
                            "DELETE FROM throttle_events WHERE key = %s", [key]
                        )
                        locked.append(kind)
            await self._sweep()
        except STATE_ERRORS as error:
            raise SharedStateUnavailable(database.down or _why(error)) from None
        order = {"client": 0, "user": 1}  # as core/throttle.py reports them
        locked.sort(key=order.__getitem__)
        return min(settings.auth_failure_delay * failures, settings.auth_max_delay), locked

    async def _sweep(self) -> None:
        if not self._sweeper.due():
            return
        now, settings = self._clock(), self.settings
        await self._database.execute(
            "DELETE FROM throttle_events WHERE key LIKE 'auth:%%' AND at <= %s",
            [now - settings.auth_window],
        )
        await self._database.execute(
            "DELETE FROM throttle_locks WHERE since <= %s", [now - settings.auth_lockout]
        )

    async def unlock(self, what: str) -> list[str]:
        """Lift the lockout of a user name or of a client address (its /64
        for IPv6) on every relay, and forget its failures: what was lifted
        ("user", "client"). SharedStateUnavailable when the server cannot."""
        keys: Sequence[tuple[str, str]] = [("user", f"auth:user:{what}")]
        try:
            ipaddress.ip_address(what)
            keys = [*keys, ("client", f"auth:client:{client_key(what)}")]
        except ValueError:
            pass  # not an address: a user name only
        lifted = []
        database = self._database
        try:
            async with database.transaction() as connection:
                for _, key in sorted(keys, key=lambda k: k[1]):
                    await database.lock(connection, key)
                for kind, key in keys:
                    cursor = await connection.execute(
                        "DELETE FROM throttle_locks WHERE key = %s", [key]
                    )
                    if cursor.rowcount:
                        lifted.append(kind)
                    await connection.execute("DELETE FROM throttle_events WHERE key = %s", [key])
        except STATE_ERRORS as error:
            raise SharedStateUnavailable(database.down or _why(error)) from None
        return lifted
