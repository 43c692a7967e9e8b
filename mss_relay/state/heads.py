"""The last line of each log stream (seq, chain): where the audit chain goes
on after a restart (mss_relay/audit/chain.py). Saved now and then, not at
each line: at start the log file's own last line is preferred when it is
further on (Head.later)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import aiosqlite

from mss_relay.audit.chain import Head
from mss_relay.log import iso_ms, utc_now
from mss_relay.state.database import connect


class HeadStore:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path, busy_timeout: float = 10.0) -> HeadStore:
        return cls(await connect(path, busy_timeout))

    @property
    def db(self) -> aiosqlite.Connection:
        return self._db

    async def load(self, stream: str) -> Head | None:
        async with self._db.execute(
            "SELECT seq, chain FROM log_heads WHERE stream = ?", (stream,)
        ) as cursor:
            row = await cursor.fetchone()
        return Head(int(row[0]), str(row[1])) if row else None

    async def heads(self) -> dict[str, Head]:
        """Every stream's head, by name (the audit_heads anchor)."""
        async with self._db.execute(
            "SELECT stream, seq, chain FROM log_heads ORDER BY stream"
        ) as cursor:
            rows = await cursor.fetchall()
        return {str(row[0]): Head(int(row[1]), str(row[2])) for row in rows}

    async def save(self, stream: str, head: Head) -> None:
        """Never backwards: another process of the same stream (a CLI command
        run twice at once) may have saved a later head meanwhile."""
        await self._db.execute(
            """INSERT INTO log_heads (stream, seq, chain, saved_at) VALUES (?, ?, ?, ?)
               ON CONFLICT (stream) DO UPDATE SET
                 seq = excluded.seq, chain = excluded.chain, saved_at = excluded.saved_at
               WHERE excluded.seq > log_heads.seq""",
            (stream, head.seq, head.chain, iso_ms(utc_now())),
        )

    async def close(self) -> None:
        await self._db.close()


def saved_head(database: Path, stream: str) -> Head | None:
    """The state's head, read only (blocking: in a thread, at start). Read
    before the stores open: a database that is not there is not created
    (the conversation store refuses a deleted one: state/database.py)."""
    if not database.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as db:
            row = db.execute(
                "SELECT seq, chain FROM log_heads WHERE stream = ?", (stream,)
            ).fetchone()
    except sqlite3.Error:  # not migrated yet: no head
        return None
    return Head(int(row[0]), str(row[1])) if row else None
