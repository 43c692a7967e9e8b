"""The conversation store on PostgreSQL: the same methods, rows and events as
the SQLite one (state/conversations.py), shared by every relay on the
database.

Concurrency: apply() takes an advisory lock on the (BAL, patient) pair, so
two relays recording a first message to the same patient at once leave one
conversation (the second continues it), and a « [FIN] » and a patient's
reply are recorded in the order their transactions took the lock. A reply
already accepted when the [FIN] is recorded was delivered (its look-up saw
the conversation open); a reply looked up after it is refused. The unique
index on open conversations (bal, patient) holds the rule in the schema too.

Patients are stored by pseudonym only, as with SQLite; the database records
the key's check, and another key is refused (KeyMismatch) at open.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import psycopg

from mss_relay.core.conversation import Change, ConversationFacts
from mss_relay.log import Clock, iso_ms, utc_now
from mss_relay.pseudonym import Pseudonyms
from mss_relay.state.conversations import (
    MAX_REFERENCES,
    ConversationRow,
    Event,
    KeyMismatch,
    facts_of,
)
from mss_relay.state.postgres import PostgresDatabase

_COLUMNS = (
    "c.id, c.bal, c.patient, c.opened_at, c.opened_by, c.last_activity_at, c.closed_at,"
    " c.closed_by, c.close_reason,"
    " (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id)"
)


def key_mismatch(where: str, stored: str, check: str, key_file: object) -> str:
    """One line naming the key file: relays on one database share one key."""
    return (
        f"{where} holds pseudonyms made with another key (its check is {stored}, this"
        f" key's {check}): give log.pseudonym_key_file ({key_file}) the key of the other"
        " relays on this database"
    )


class PgConversationStore:
    def __init__(
        self,
        database: PostgresDatabase,
        clock: Clock,
        idle_days: int | None,
        pseudonyms: Pseudonyms,
    ) -> None:
        self.database = database
        self.path = database.where
        self._clock = clock
        self.idle_days = idle_days  # a reload may change it
        self._pseudonyms = pseudonyms
        self.pseudonymized = 0  # never INS in clear here: nothing to rewrite

    @classmethod
    async def open(
        cls,
        database: PostgresDatabase,
        *,
        pseudonyms: Pseudonyms,
        key_file: object = None,
        clock: Clock = utc_now,
        idle_days: int | None = None,
    ) -> PgConversationStore:
        store = cls(database, clock, idle_days, pseudonyms)
        await store._check_key(key_file)
        return store

    async def close(self) -> None:
        """The database (its pool) is closed by its owner."""

    async def _check_key(self, key_file: object) -> None:
        """The first relay records its key's check; the others must have the
        same key, or their pseudonyms would never meet (KeyMismatch)."""
        check = self._pseudonyms.check()
        async with self.database.transaction() as db:
            await self.database.lock(db, "pseudonym_key")
            cursor = await db.execute("SELECT fingerprint FROM pseudonym_key")
            row = await cursor.fetchone()
            if row is None:
                await db.execute(
                    "INSERT INTO pseudonym_key (fingerprint, set_at) VALUES (%s, %s)",
                    [check, self._now()],
                )
            elif row[0] != check:
                raise KeyMismatch(key_mismatch(self.path, row[0], check, key_file))

    async def vanished(self) -> str | None:
        """A server has no file to lose (the SQLite store's check)."""
        return None

    def down(self) -> str | None:
        return self.database.down

    async def ping(self) -> None:
        await self.database.ping()

    async def census(self) -> dict[str, int]:
        rows = await self.database.fetch(
            "SELECT closed_at IS NULL, count(*) FROM conversations GROUP BY 1"
        )
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

    # Look-ups ----------------------------------------------------------------
    async def lookup(
        self, patient: str, references: Sequence[str], *, sent_only: bool = False
    ) -> ConversationFacts:
        """As the SQLite store's: one statement, index look-ups only."""
        patient = self._pseudonyms.of(patient)
        cutoff = self._idle_cutoff() or ""
        direction = " AND m.direction = 'out'" if sent_only else ""
        mask = self._pseudonyms.mask_text
        refs = [mask(r) for r in list(references)[:MAX_REFERENCES]] or [""]
        rows = await self.database.fetch(
            "SELECT c.bal, c.closed_at, c.close_reason, c.last_activity_at, m.reply_to, 0"
            " FROM messages m JOIN conversations c ON c.id = m.conversation_id"
            f" WHERE m.message_id = ANY(%s) AND c.patient = %s{direction}"
            " UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, 1 FROM (SELECT 1 FROM conversations"
            " WHERE patient = %s AND closed_at IS NULL AND last_activity_at >= %s LIMIT 1) o",
            [refs, patient, patient, cutoff],
        )
        return facts_of(rows, cutoff)

    async def listing(
        self, state: str | None = None, bal: str | None = None
    ) -> list[ConversationRow]:
        where: list[str] = []
        params: list[Any] = []
        if state == "open":
            where.append("c.closed_at IS NULL")
        elif state == "closed":
            where.append("c.closed_at IS NOT NULL")
        if bal:
            where.append("c.bal = %s")
            params.append(bal)
        sql = f"SELECT {_COLUMNS} FROM conversations c"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = await self.database.fetch(
            sql + " ORDER BY c.last_activity_at DESC, c.id DESC", params
        )
        return [ConversationRow(*r) for r in rows]

    async def history(self, patient: str) -> list[tuple[ConversationRow, list[Any]]]:
        patient = self._pseudonyms.of(patient)
        rows = await self.database.fetch(
            f"SELECT {_COLUMNS} FROM conversations c WHERE c.patient = %s ORDER BY c.id",
            [patient],
        )
        result = []
        for row in rows:
            messages = await self.database.fetch(
                "SELECT at, direction, message_id FROM messages WHERE conversation_id = %s"
                " ORDER BY at",
                [row[0]],
            )
            result.append((ConversationRow(*row), [tuple(m) for m in messages]))
        return result

    # Changes -----------------------------------------------------------------
    async def _open_id(
        self, db: psycopg.AsyncConnection[Any], bal: str, patient: str, now: str
    ) -> int | None:
        cursor = await db.execute(
            "SELECT id, last_activity_at FROM conversations"
            " WHERE bal = %s AND patient = %s AND closed_at IS NULL",
            [bal, patient],
        )
        row = await cursor.fetchone()
        if row is None:
            return None
        cutoff = self._idle_cutoff()
        if cutoff is not None and row[1] < cutoff:
            await db.execute(
                "UPDATE conversations SET closed_at = %s, closed_by = 'system',"
                " close_reason = 'idle' WHERE id = %s",
                [now, row[0]],
            )
            return None
        return int(row[0])

    async def apply(self, change: Change, actor: str) -> list[Event]:
        """Record a delivered message: open, continue and perhaps close, in
        one transaction serialised with every relay on this conversation."""
        now = self._now()
        events: list[Event] = []
        base = {"bal": change.bal, "patient": change.patient, "message_id": change.message_id}
        patient = self._pseudonyms.of(change.patient)
        reply_to = self._pseudonyms.of(change.reply_to) if change.reply_to else None
        message_id = self._pseudonyms.mask_text(change.message_id) if change.message_id else ""
        async with self.database.transaction() as db:
            await self.database.lock(db, f"conversation\t{change.bal}\t{patient}")
            conversation = await self._open_id(db, change.bal, patient, now)
            if conversation is None:
                if change.direction == "in" and not change.opened_by_patient:
                    return []  # nothing open to continue (closed meanwhile)
                opened_by = "patient" if change.opened_by_patient else "professional"
                cursor = await db.execute(
                    "INSERT INTO conversations (bal, patient, opened_at, opened_by,"
                    " last_activity_at) VALUES (%s, %s, %s, %s, %s) RETURNING id",
                    [change.bal, patient, now, opened_by, now],
                )
                row = await cursor.fetchone()
                conversation = int(row[0]) if row else 0
                events.append(("conversation_opened", {**base, "opened_by": opened_by}))
            else:
                await db.execute(
                    "UPDATE conversations SET last_activity_at = %s WHERE id = %s",
                    [now, conversation],
                )
                events.append(("conversation_continued", {**base, "direction": change.direction}))
            if message_id:
                await db.execute(
                    "INSERT INTO messages (message_id, conversation_id, direction, reply_to, at)"
                    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    [message_id, conversation, change.direction, reply_to, now],
                )
            if change.close:
                await db.execute(
                    "UPDATE conversations SET closed_at = %s, closed_by = %s, close_reason = %s"
                    " WHERE id = %s",
                    [now, actor, change.close, conversation],
                )
                events.append(("conversation_closed", {**base, "how": change.close, "by": actor}))
        for _, fields in events:
            fields["conversation"] = conversation
        return events

    async def close_conversation(self, bal: str, patient: str, how: str, actor: str) -> int | None:
        now = self._now()
        patient = self._pseudonyms.of(patient)
        async with self.database.transaction() as db:
            await self.database.lock(db, f"conversation\t{bal}\t{patient}")
            cursor = await db.execute(
                "UPDATE conversations SET closed_at = %s, closed_by = %s, close_reason = %s"
                " WHERE bal = %s AND patient = %s AND closed_at IS NULL RETURNING id",
                [now, actor, how, bal, patient],
            )
            row = await cursor.fetchone()
        return int(row[0]) if row else None

    async def close_idle(self) -> int:
        cutoff = self._idle_cutoff()
        if cutoff is None:
            return 0
        return await self.database.execute(
            "UPDATE conversations SET closed_at = %s, closed_by = 'system',"
            " close_reason = 'idle' WHERE closed_at IS NULL AND last_activity_at < %s",
            [self._now(), cutoff],
        )

    async def purge(self, retention_days: int) -> tuple[int, int]:
        cutoff = iso_ms(self._clock() - timedelta(days=retention_days))
        async with self.database.transaction() as db:
            cursor = await db.execute(
                "DELETE FROM messages WHERE conversation_id IN (SELECT id FROM conversations"
                " WHERE closed_at IS NOT NULL AND closed_at < %s)",
                [cutoff],
            )
            messages = cursor.rowcount
            cursor = await db.execute(
                "DELETE FROM conversations WHERE closed_at IS NOT NULL AND closed_at < %s",
                [cutoff],
            )
            return cursor.rowcount, messages
