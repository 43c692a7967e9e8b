"""The conversation store: which patient conversations are open, and the
Message-IDs exchanged in each.

Two aiosqlite connections per process, each in its own thread, its statements
serialized by a lock so that two SMTP sessions never interleave inside one
transaction: one writes, one reads. With WAL a reader never waits for a
writer, so a write waiting for another process's lock does not hold the
look-ups behind it. Every change is one IMMEDIATE transaction: a kill -9
leaves it whole or absent.

Patients are stored by their pseudonym (mss_relay/pseudonym.py), the same
string the log shows, never by their INS: every method taking a patient
address hashes it here, so no caller can look up or write one in clear. A
database of older versions, whose rows hold INS in clear, is rewritten at
open (one way), and the key that made its pseudonyms is checked at every open.
Message-IDs are stored and looked up as the log shows them: an INS in one
(« <295109912611193@patient.mssante.fr> ») masked the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiosqlite

from mss_relay.core.conversation import Change, ConversationFacts, Status
from mss_relay.log import Clock, iso_ms, utc_now
from mss_relay.pseudonym import Pseudonyms, mismatch
from mss_relay.state.database import FileId, connect, file_id, mark, refuse_lost


class KeyMismatch(Exception):
    """The pseudonym key is not the one that made the database's pseudonyms."""


MAX_REFERENCES = 50  # the most recent Message-IDs a reply names are enough
Event = tuple[str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class ConversationRow:
    id: int
    bal: str
    patient: str
    opened_at: str
    opened_by: str
    last_activity_at: str
    closed_at: str | None
    closed_by: str | None
    close_reason: str | None
    messages: int

    @property
    def is_open(self) -> bool:
        return self.closed_at is None


_COLUMNS = (
    "c.id, c.bal, c.patient, c.opened_at, c.opened_by, c.last_activity_at, c.closed_at,"
    " c.closed_by, c.close_reason,"
    " (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id)"
)


def facts_of(rows: Sequence[Any], cutoff: str) -> ConversationFacts:
    """The look-up's rows (bal, closed_at, close_reason, last_activity_at,
    reply_to, is_open_marker), as both stores' one statement returns them."""
    has_open = any(r[5] for r in rows)
    rows = [r for r in rows if not r[5]]
    open_rows = [r for r in rows if r[1] is None and r[3] >= cutoff]
    if open_rows:
        bal, _, _, _, reply_to, _ = open_rows[0]
        return ConversationFacts(Status.OPEN, bal=bal, reply_to=reply_to, patient_has_open=True)
    if rows:
        bal, _, reason, _, reply_to, _ = rows[0]
        return ConversationFacts(
            Status.CLOSED,
            bal=bal,
            reply_to=reply_to,
            closed_how=reason or "idle",
            patient_has_open=bool(has_open),
        )
    return ConversationFacts(Status.NONE, patient_has_open=bool(has_open))


class ConversationStore:
    def __init__(
        self,
        db: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        path: Path,
        identity: FileId,
        clock: Clock,
        idle_days: int | None,
        pseudonyms: Pseudonyms,
    ) -> None:
        self._db = db
        self._reader = reader
        self.path = path
        self._identity = identity
        self._clock = clock
        self.idle_days = idle_days  # a reload may change it
        self._lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()
        self._pseudonyms = pseudonyms
        # How many rows the opening found with an INS in clear (and rewrote).
        self.pseudonymized = 0

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        pseudonyms: Pseudonyms,
        clock: Clock = utc_now,
        idle_days: int | None = None,
        busy_timeout: float = 10.0,
    ) -> ConversationStore:
        """Raises StateLost rather than create an empty database where one was."""
        await asyncio.to_thread(refuse_lost, path)
        db = await connect(path, busy_timeout)
        try:
            reader = await connect(path, busy_timeout)
            try:
                await reader.execute("PRAGMA query_only = ON")
                identity = await asyncio.to_thread(mark, path)
            except BaseException:
                await reader.close()
                raise
        except BaseException:
            await db.close()
            raise
        store = cls(db, reader, path, identity, clock, idle_days, pseudonyms)
        try:
            store.pseudonymized = await store._pseudonymize()
            if store.pseudonymized:
                await store._scrub()
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        await self._reader.close()
        await self._db.close()

    async def _pseudonymize(self) -> int:
        """The key's check, and the rows an older version wrote with INS in
        clear rewritten to pseudonyms, in one transaction (two processes
        opening at once: the second finds nothing left to do). A key other
        than the one that made the stored pseudonyms would find no patient
        again: refused (KeyMismatch), never silently."""
        check = self._pseudonyms.check()
        async with self._transaction() as db:
            async with db.execute("SELECT fingerprint FROM pseudonym_key") as cursor:
                row = await cursor.fetchone()
            if row is not None and row[0] != check:
                raise KeyMismatch(mismatch(self.path, row[0], check))
            if row is None:
                await db.execute(
                    "INSERT INTO pseudonym_key (fingerprint, set_at) VALUES (?, ?)",
                    [check, self._now()],
                )
            of = self._pseudonyms.of
            # The range excludes pseudonyms (« ins:... »): the index finds the
            # rows to rewrite, none at all on a database already done.
            async with db.execute(
                "SELECT id, patient FROM conversations WHERE patient < 'ins:' OR patient >= 'ins;'"
            ) as cursor:
                clear = [(of(patient), i) for i, patient in await cursor.fetchall()]
            await db.executemany("UPDATE conversations SET patient = ? WHERE id = ?", clear)
            async with db.execute(
                "SELECT message_id, conversation_id, reply_to FROM messages"
                " WHERE reply_to LIKE '%@patient.mssante.fr'"
            ) as cursor:
                replies = [(of(r), m, c) for m, c, r in await cursor.fetchall()]
            await db.executemany(
                "UPDATE messages SET reply_to = ? WHERE message_id = ? AND conversation_id = ?",
                replies,
            )
            if row is None:  # the first open under a key: older Message-IDs too
                await self._mask_message_ids(db)
        return len(clear)

    async def _mask_message_ids(self, db: aiosqlite.Connection) -> None:
        """The Message-IDs an older version stored as sent, rewritten as the
        log shows them (an INS in one masked): SQLite picks the few that may
        hold one (the patient domain, or 8 digits in a row, which every
        matricule ends with), the masking decides."""
        mask = self._pseudonyms.mask_text
        async with db.execute(
            "SELECT message_id, conversation_id FROM messages"
            " WHERE message_id LIKE '%patient.mssante.fr%'"
            " OR message_id GLOB '*[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]*'"
        ) as cursor:
            rows = [(mask(m), m, c) for m, c in await cursor.fetchall()]
        await db.executemany(
            "UPDATE OR REPLACE messages SET message_id = ? WHERE message_id = ?"
            " AND conversation_id = ?",
            [r for r in rows if r[0] != r[1]],
        )

    async def _scrub(self) -> None:
        """After rows were rewritten: no INS left in the file's bytes. The
        old values stay in the main file until a checkpoint copies the new
        pages over them, and an older version (without secure_delete) left
        those of purged rows in free pages: VACUUM rebuilds the file without
        them, once, and the checkpoint empties the -wal."""
        async with self._lock:
            await self._db.execute("VACUUM")
            await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def vanished(self) -> str | None:
        """Whether the file at the path is still the one opened: None, or
        "deleted" or "replaced" (the writes then go to a file nobody will
        open again). A stat in a worker thread."""
        try:
            identity = await asyncio.to_thread(file_id, self.path)
        except FileNotFoundError:
            return "deleted"
        return None if identity == self._identity else "replaced"

    def down(self) -> str | None:
        """A file is never « down » (vanished() says whether it is gone)."""
        return None

    async def ping(self) -> None:
        """A cheap read (the health check): raises when the database does not answer."""
        await self._all("SELECT 1 FROM conversations LIMIT 1")

    async def census(self) -> dict[str, int]:
        """How many conversations are open and closed (the metrics' gauge)."""
        rows = await self._all("SELECT closed_at IS NULL, count(*) FROM conversations GROUP BY 1")
        counts = {"open": 0, "closed": 0}
        for is_open, count in rows:
            counts["open" if is_open else "closed"] = int(count)
        return counts

    def _now(self) -> str:
        return iso_ms(self._clock())

    def _idle_cutoff(self) -> str | None:
        if self.idle_days is None:
            return None
        return iso_ms(self._clock() - timedelta(days=self.idle_days))

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                await self._db.execute("COMMIT")
            except BaseException:
                # Also when COMMIT itself failed (locked, I/O): a transaction
                # left open would make every later BEGIN fail.
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                raise

    async def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async with self._read_lock:
            return list(await self._reader.execute_fetchall(sql, params))

    # Look-ups ----------------------------------------------------------------
    async def lookup(
        self, patient: str, references: Sequence[str], *, sent_only: bool = False
    ) -> ConversationFacts:
        """The conversation a patient's message replies to (cost: index look-ups on
        the Message-IDs named, whatever the number of conversations stored).
        sent_only: among the Message-IDs sent to the patient only (a read
        receipt reports on one of those, not on the patient's own)."""
        patient = self._pseudonyms.of(patient)
        cutoff = self._idle_cutoff() or ""
        direction = " AND m.direction = 'out'" if sent_only else ""
        # Stored as the log shows them (masked): looked up so too.
        mask = self._pseudonyms.mask_text
        refs = [mask(r) for r in list(references)[:MAX_REFERENCES]] or [""]
        marks = ",".join("?" * len(refs))
        # One statement, one trip to the database thread: the conversations the
        # Message-IDs belong to, then one row saying whether any is open.
        rows = await self._all(
            "SELECT c.bal, c.closed_at, c.close_reason, c.last_activity_at, m.reply_to, 0"
            " FROM messages m JOIN conversations c ON c.id = m.conversation_id"
            f" WHERE m.message_id IN ({marks}) AND c.patient = ?{direction}"
            " UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, 1 FROM (SELECT 1 FROM conversations"
            " WHERE patient = ? AND closed_at IS NULL AND last_activity_at >= ? LIMIT 1)",
            [*refs, patient, patient, cutoff],
        )
        return facts_of(rows, cutoff)

    async def listing(
        self, state: str | None = None, bal: str | None = None
    ) -> list[ConversationRow]:
        where, params = [], []
        if state == "open":
            where.append("c.closed_at IS NULL")
        elif state == "closed":
            where.append("c.closed_at IS NOT NULL")
        if bal:
            where.append("c.bal = ?")
            params.append(bal)
        sql = f"SELECT {_COLUMNS} FROM conversations c"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = await self._all(sql + " ORDER BY c.last_activity_at DESC, c.id DESC", params)
        return [ConversationRow(*r) for r in rows]

    async def history(self, patient: str) -> list[tuple[ConversationRow, list[Any]]]:
        """A patient's conversations, by address, INS or pseudonym."""
        patient = self._pseudonyms.of(patient)
        rows = await self._all(
            f"SELECT {_COLUMNS} FROM conversations c WHERE c.patient = ? ORDER BY c.id", [patient]
        )
        result = []
        for row in rows:
            messages = await self._all(
                "SELECT at, direction, message_id FROM messages WHERE conversation_id = ?"
                " ORDER BY at",
                [row[0]],
            )
            result.append((ConversationRow(*row), messages))
        return result

    # Changes -----------------------------------------------------------------
    async def _open_id(
        self, db: aiosqlite.Connection, bal: str, patient: str, now: str
    ) -> int | None:
        async with db.execute(
            "SELECT id, last_activity_at FROM conversations"
            " WHERE bal = ? AND patient = ? AND closed_at IS NULL",
            [bal, patient],
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        cutoff = self._idle_cutoff()
        if cutoff is not None and row[1] < cutoff:
            await db.execute(
                "UPDATE conversations SET closed_at = ?, closed_by = 'system',"
                " close_reason = 'idle' WHERE id = ?",
                [now, row[0]],
            )
            return None
        return int(row[0])

    async def apply(self, change: Change, actor: str) -> list[Event]:
        """Record a delivered message: open, continue and perhaps close."""
        now = self._now()
        events: list[Event] = []
        base = {"bal": change.bal, "patient": change.patient, "message_id": change.message_id}
        patient = self._pseudonyms.of(change.patient)
        reply_to = self._pseudonyms.of(change.reply_to) if change.reply_to else None
        # As the log shows it: an INS in a Message-ID masked there, and here.
        message_id = self._pseudonyms.mask_text(change.message_id) if change.message_id else ""
        async with self._transaction() as db:
            conversation = await self._open_id(db, change.bal, patient, now)
            if conversation is None:
                if change.direction == "in" and not change.opened_by_patient:
                    return []  # nothing open to continue (closed meanwhile)
                opened_by = "patient" if change.opened_by_patient else "professional"
                cursor = await db.execute(
                    "INSERT INTO conversations (bal, patient, opened_at, opened_by,"
                    " last_activity_at) VALUES (?, ?, ?, ?, ?)",
                    [change.bal, patient, now, opened_by, now],
                )
                conversation = int(cursor.lastrowid or 0)
                events.append(("conversation_opened", {**base, "opened_by": opened_by}))
            else:
                await db.execute(
                    "UPDATE conversations SET last_activity_at = ? WHERE id = ?",
                    [now, conversation],
                )
                events.append(("conversation_continued", {**base, "direction": change.direction}))
            if message_id:
                await db.execute(
                    "INSERT OR IGNORE INTO messages (message_id, conversation_id, direction,"
                    " reply_to, at) VALUES (?, ?, ?, ?, ?)",
                    [message_id, conversation, change.direction, reply_to, now],
                )
            if change.close:
                await db.execute(
                    "UPDATE conversations SET closed_at = ?, closed_by = ?, close_reason = ?"
                    " WHERE id = ?",
                    [now, actor, change.close, conversation],
                )
                events.append(("conversation_closed", {**base, "how": change.close, "by": actor}))
        for _, fields in events:
            fields["conversation"] = conversation
        return events

    async def close_conversation(self, bal: str, patient: str, how: str, actor: str) -> int | None:
        now = self._now()
        patient = self._pseudonyms.of(patient)
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE conversations SET closed_at = ?, closed_by = ?, close_reason = ?"
                " WHERE bal = ? AND patient = ? AND closed_at IS NULL RETURNING id",
                [now, actor, how, bal, patient],
            )
            row = await cursor.fetchone()
            await cursor.close()
        return int(row[0]) if row else None

    async def close_idle(self) -> int:
        cutoff = self._idle_cutoff()
        if cutoff is None:
            return 0
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE conversations SET closed_at = ?, closed_by = 'system',"
                " close_reason = 'idle' WHERE closed_at IS NULL AND last_activity_at < ?",
                [self._now(), cutoff],
            )
            return int(cursor.rowcount)

    async def purge(self, retention_days: int) -> tuple[int, int]:
        """Remove conversations closed more than retention_days ago, and their
        Message-IDs. Returns (conversations, messages) removed."""
        cutoff = iso_ms(self._clock() - timedelta(days=retention_days))
        async with self._transaction() as db:
            cursor = await db.execute(
                "DELETE FROM messages WHERE conversation_id IN (SELECT id FROM conversations"
                " WHERE closed_at IS NOT NULL AND closed_at < ?)",
                [cutoff],
            )
            messages = int(cursor.rowcount)
            cursor = await db.execute(
                "DELETE FROM conversations WHERE closed_at IS NOT NULL AND closed_at < ?",
                [cutoff],
            )
            return int(cursor.rowcount), messages
