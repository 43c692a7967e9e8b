"""BAL activity in the state database, for the lifecycle (mss_relay/lifecycle.py).

The sessions only note what happened (an AUTH, a message sent or delivered):
a note is a dictionary update, never a wait for the database, so that no
reply is slowed by it. One writer task per process writes what was noted,
coalesced (the latest date per user and per BAL), in one transaction now and
then; a write that fails is kept and tried again, and the graceful stop
flushes what is left. A lost note costs at most a day of a BAL's inactivity
count, never a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import aiosqlite
from structlog.typing import FilteringBoundLogger

from mss_relay.core.addresses import normalize_address
from mss_relay.core.mailbox import Bal
from mss_relay.lifecycle import Activity, Flag
from mss_relay.log import Clock, iso_ms, utc_now
from mss_relay.state.database import connect
from mss_relay.state.errors import STATE_ERRORS

if TYPE_CHECKING:
    from mss_relay.state.api import Activities

# Seconds the writer gathers notes before one transaction (at most one
# write per second per process, whatever the message rate).
GATHER = 1.0
RETRY_DELAY = 5.0  # after a failed write (locked, I/O)
# A date already written less than this long ago is not written again: the
# lifecycle counts days, a busy BAL need not cost a write per message.
RESOLUTION = timedelta(minutes=5)

_SENT, _RECEIVED = "last_sent_at", "last_received_at"


def _date(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


@dataclass(frozen=True, slots=True)
class Mark:
    """A threshold crossed by one BAL in one period of inactivity."""

    bal: str
    flag: Flag
    since: str
    notice_sent_at: str | None
    notice_txid: str | None


class ActivityStore:
    """The activity tables, through one connection of their own (SQLite in
    WAL: the conversation store's connections do not wait for it)."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, busy_timeout: float = 10.0) -> ActivityStore:
        """After the ConversationStore opened (and checked) the same file."""
        return cls(await connect(path, busy_timeout))

    async def close(self) -> None:
        await self._db.close()

    async def _write(self, statements: Iterable[tuple[str, list[object]]]) -> None:
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    await self._db.execute(sql, params)
                await self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                raise

    async def record(
        self, auths: Mapping[str, str], sent: Mapping[str, str], received: Mapping[str, str]
    ) -> None:
        """One transaction: each date kept only when later than the stored one."""
        statements: list[tuple[str, list[object]]] = [
            (
                "INSERT INTO user_activity (user, last_auth_at) VALUES (?, ?) ON CONFLICT (user)"
                " DO UPDATE SET last_auth_at = max(last_auth_at, excluded.last_auth_at)",
                [user, at],
            )
            for user, at in auths.items()
        ]
        for column, dates in ((_SENT, sent), (_RECEIVED, received)):
            statements += [
                (
                    f"INSERT INTO bal_activity (bal, first_seen_at, {column}) VALUES (?, ?, ?)"
                    f" ON CONFLICT (bal) DO UPDATE SET {column} ="
                    f" max(coalesce({column}, ''), excluded.{column})",
                    [bal, at, at],
                )
                for bal, at in dates.items()
            ]
        await self._write(statements)

    async def seen(self, bals: Iterable[str], now: datetime) -> None:
        """The day the relay first saw each BAL in its configuration."""
        at = iso_ms(now)
        await self._write(
            ("INSERT OR IGNORE INTO bal_activity (bal, first_seen_at) VALUES (?, ?)", [b, at])
            for b in bals
        )

    async def _all(self, sql: str, params: list[object] | None = None) -> list[sqlite3.Row]:
        async with self._lock:
            return list(await self._db.execute_fetchall(sql, params or []))

    async def activities(self, bals: Iterable[Bal]) -> dict[str, Activity]:
        """Each BAL's Activity, by its address as configured."""
        auths = {u: at for u, at in await self._all("SELECT user, last_auth_at FROM user_activity")}
        rows = {
            r[0]: r[1:]
            for r in await self._all(
                "SELECT bal, first_seen_at, last_sent_at, last_received_at FROM bal_activity"
            )
        }
        result = {}
        for bal in bals:
            first, sent, received = rows.get(normalize_address(bal.address), (None, None, None))
            auth = max((auths[u] for u in bal.users if u in auths), default=None)
            result[bal.address] = Activity(_date(first), _date(auth), _date(sent), _date(received))
        return result

    async def marks(self) -> list[Mark]:
        rows = await self._all(
            "SELECT bal, flag, since, notice_sent_at, notice_txid FROM bal_lifecycle"
        )
        return [Mark(r[0], Flag(r[1]), *r[2:]) for r in rows if r[1] in set(Flag)]

    async def cross(self, bal: str, flag: Flag, since: str, now: datetime) -> bool:
        """Record a threshold crossed; False when it already was (by this
        process before a restart, or by another relay on the same file)."""
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = await self._db.execute(
                    "INSERT OR IGNORE INTO bal_lifecycle (bal, flag, since, crossed_at)"
                    " VALUES (?, ?, ?, ?)",
                    [bal, flag.value, since, iso_ms(now)],
                )
                inserted = cursor.rowcount == 1
                await self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                raise
        return inserted

    async def notice_sent(self, bal: str, flag: Flag, since: str, now: datetime, txid: str) -> None:
        await self._write(
            [
                (
                    "UPDATE bal_lifecycle SET notice_sent_at = ?, notice_txid = ?"
                    " WHERE bal = ? AND flag = ? AND since = ?",
                    [iso_ms(now), txid, bal, flag.value, since],
                )
            ]
        )


@dataclass
class ActivityRecorder:
    """What the sessions call: notes, written in the background."""

    store: Activities
    log: FilteringBoundLogger
    clock: Clock = utc_now
    gather: float = GATHER
    retry_delay: float = RETRY_DELAY
    _auths: dict[str, str] = field(default_factory=dict)
    _sent: dict[str, str] = field(default_factory=dict)
    _received: dict[str, str] = field(default_factory=dict)
    _written: dict[tuple[str, str], datetime] = field(default_factory=dict)
    _work: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._writer())

    async def close(self, grace: float) -> None:
        """Graceful stop: what is noted gets `grace` seconds to be written."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pending():
            with contextlib.suppress(TimeoutError, *STATE_ERRORS):
                async with asyncio.timeout(grace):
                    await self._flush()
        if self._pending():
            self.log.warning("activity_write_failed", reason="stopping", pending=self._pending())

    # Notes (no I/O, no wait) ----------------------------------------------------
    def _note(self, kind: str, key: str, into: dict[str, str]) -> None:
        now = self.clock()
        written = self._written.get((kind, key))
        if written is not None and abs(now - written) < RESOLUTION:
            return
        into[key] = iso_ms(now)
        self._work.set()

    def auth(self, user: str) -> None:
        """A successful AUTH of this user."""
        self._note("auth", user, self._auths)

    def sent(self, bal: str) -> None:
        """A message from this BAL accepted (delivered upstream, or by the milter)."""
        self._note(_SENT, normalize_address(bal), self._sent)

    def received(self, bal: str) -> None:
        """A message to this BAL accepted on the incoming side (shown by
        `mss-relay bals`; not a connection, so inactivity does not count
        from it)."""
        self._note(_RECEIVED, normalize_address(bal), self._received)

    # The writer -------------------------------------------------------------------
    def _pending(self) -> int:
        return len(self._auths) + len(self._sent) + len(self._received)

    async def _flush(self) -> None:
        auths, sent, received = self._auths, self._sent, self._received
        self._auths, self._sent, self._received = {}, {}, {}
        try:
            await self.store.record(auths, sent, received)
        except BaseException:
            # Kept for the next try, merged with what was noted meanwhile.
            for old, new in ((auths, self._auths), (sent, self._sent), (received, self._received)):
                for key, at in old.items():
                    new[key] = max(at, new.get(key, at))
            raise
        for kind, dates in (("auth", auths), (_SENT, sent), (_RECEIVED, received)):
            for key, at in dates.items():
                self._written[kind, key] = datetime.fromisoformat(at)

    async def _writer(self) -> None:
        failing = False
        while True:
            await self._work.wait()
            await asyncio.sleep(self.gather)  # gather the notes of this second
            self._work.clear()
            try:
                await self._flush()
            except STATE_ERRORS as error:
                if not failing:  # once per streak of failures, not per try
                    self.log.warning(
                        "activity_write_failed",
                        reason=type(error).__name__,
                        pending=self._pending(),
                    )
                failing = True
                self._work.set()
                await asyncio.sleep(self.retry_delay)
                continue
            if failing:
                self.log.info("activity_write_retried")
            failing = False
