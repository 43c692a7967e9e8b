"""Opening the SQLite file: WAL, foreign keys, versioned migrations.

The schema version is SQLite's own user_version. Each migration runs in one
IMMEDIATE transaction with the version bump, so a crash (even kill -9) leaves
the file at the old version or the new one, never between; two processes
starting at once migrate once.

Beside the database, a marker file (« state.sqlite3.marker ») says that a
state existed there. A database that is gone while its marker is still there
was deleted (or its volume not mounted): the relay refuses to create a new,
empty one in its place, which would silently forget every conversation.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import aiosqlite

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: patient conversations and the Message-IDs exchanged in them.
    (
        """CREATE TABLE conversations (
            id INTEGER PRIMARY KEY,
            bal TEXT NOT NULL,
            patient TEXT NOT NULL,
            opened_at TEXT NOT NULL,
            opened_by TEXT NOT NULL,
            last_activity_at TEXT NOT NULL,
            closed_at TEXT,
            closed_by TEXT,
            close_reason TEXT
        )""",
        # At most one open conversation per BAL and patient.
        """CREATE UNIQUE INDEX conversations_open
            ON conversations (bal, patient) WHERE closed_at IS NULL""",
        "CREATE INDEX conversations_patient ON conversations (patient)",
        """CREATE INDEX conversations_idle
            ON conversations (last_activity_at) WHERE closed_at IS NULL""",
        """CREATE INDEX conversations_closed
            ON conversations (closed_at) WHERE closed_at IS NOT NULL""",
        """CREATE TABLE messages (
            message_id TEXT NOT NULL,
            conversation_id INTEGER NOT NULL
                REFERENCES conversations (id) ON DELETE CASCADE,
            direction TEXT NOT NULL,
            reply_to TEXT,
            at TEXT NOT NULL,
            PRIMARY KEY (message_id, conversation_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX messages_conversation ON messages (conversation_id)",
    ),
    # 2: the BAL lifecycle (state/activity.py): last AUTH of each user, last
    # message sent from and delivered to each BAL, the day the relay first saw
    # it, and the thresholds crossed (and noticed) per period of inactivity.
    (
        """CREATE TABLE user_activity (
            user TEXT PRIMARY KEY,
            last_auth_at TEXT NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE bal_activity (
            bal TEXT PRIMARY KEY,
            first_seen_at TEXT NOT NULL,
            last_sent_at TEXT,
            last_received_at TEXT
        ) WITHOUT ROWID""",
        # since: where that period of inactivity counts from; a BAL active
        # again starts a new period, whose thresholds are crossed anew.
        """CREATE TABLE bal_lifecycle (
            bal TEXT NOT NULL,
            flag TEXT NOT NULL,
            since TEXT NOT NULL,
            crossed_at TEXT NOT NULL,
            notice_sent_at TEXT,
            notice_txid TEXT,
            PRIMARY KEY (bal, flag, since)
        ) WITHOUT ROWID""",
    ),
    # 3: the Annuaire Santé (state/directory.py): one generation per import,
    # one of them current; the entries of each, looked up by address at RCPT.
    (
        """CREATE TABLE directory_imports (
            generation INTEGER PRIMARY KEY,
            imported_at TEXT NOT NULL,
            source TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('loading', 'current', 'old')),
            rows INTEGER NOT NULL,
            addresses INTEGER NOT NULL
        )""",
        """CREATE UNIQUE INDEX directory_imports_current
            ON directory_imports (status) WHERE status = 'current'""",
        """CREATE TABLE directory_entries (
            generation INTEGER NOT NULL,
            address TEXT NOT NULL,
            kind TEXT NOT NULL,
            civility TEXT NOT NULL,
            last_name TEXT NOT NULL,
            first_name TEXT NOT NULL,
            profession TEXT NOT NULL,
            specialty TEXT NOT NULL,
            structure TEXT NOT NULL,
            sign TEXT NOT NULL,
            service TEXT NOT NULL,
            postal_code TEXT NOT NULL,
            town TEXT NOT NULL,
            search TEXT NOT NULL
        )""",
        # Some addresses appear twice in an extraction: not unique.
        """CREATE INDEX directory_entries_address
            ON directory_entries (generation, address)""",
    ),
    # 4: patients stored by pseudonym (mss_relay/pseudonym.py): the check of
    # the key that made them. Rows of older versions, with INS in clear, are
    # rewritten by the relay itself when it opens the conversations (the
    # hash needs the key, which no SQL statement here has).
    (
        """CREATE TABLE pseudonym_key (
            fingerprint TEXT NOT NULL,
            set_at TEXT NOT NULL
        )""",
    ),
    # 5: the audit trail's heads (state/heads.py): the last seq and chain of
    # each log stream, so that the chain continues across restarts.
    (
        """CREATE TABLE log_heads (
            stream TEXT PRIMARY KEY,
            seq INTEGER NOT NULL,
            chain TEXT NOT NULL,
            saved_at TEXT NOT NULL
        ) WITHOUT ROWID""",
    ),
)


MARKER_TEXT = """This file tells mss-relay that its state database (the file of the same
name, without ".marker") exists. If that database is gone, mss-relay refuses
to start with an empty one: restore it from a backup, or, to start afresh and
knowingly forget every patient conversation, remove this marker.
"""

# A file's identity: (st_dev, st_ino). Another identity at the same path is
# another file (replaced); no file there, a deleted one.
FileId = tuple[int, int]


class StateLost(Exception):
    """The state database is gone, or is no longer the file the relay opened."""


def marker_path(path: Path) -> Path:
    return path.with_name(path.name + ".marker")


def refuse_lost(path: Path) -> None:
    """Before opening (blocking: run it in a thread): a marker without its
    database is a deleted database, not a first start."""
    if marker_path(path).exists() and not path.exists():
        raise StateLost(
            f"{path} is gone but {marker_path(path).name} says it existed: restore it from"
            " a backup, or remove the marker to start with an empty state"
        )


def mark(path: Path) -> FileId:
    """After opening (blocking): write the marker if missing; the identity of
    the file opened."""
    marker = marker_path(path)
    if not marker.exists():
        marker.write_text(MARKER_TEXT, encoding="utf-8")
    return file_id(path)


def file_id(path: Path) -> FileId:
    """Blocking; FileNotFoundError when the file is gone."""
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


async def connect(path: Path, busy_timeout: float = 10.0) -> aiosqlite.Connection:
    """busy_timeout: how long one statement waits for another process's lock
    (seconds) before it fails with « database is locked »."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = FULL")  # an accepted change survives power loss
        await db.execute("PRAGMA foreign_keys = ON")
        # What is deleted or overwritten (a purged conversation, a row rewritten
        # to a pseudonym) is zeroed in the file, not left in its free space.
        await db.execute("PRAGMA secure_delete = ON")
        await db.execute(f"PRAGMA busy_timeout = {round(busy_timeout * 1000)}")
        await migrate(db)
    except BaseException:
        await db.close()
        raise
    return db


async def schema_version(db: aiosqlite.Connection) -> int:
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def migrate(db: aiosqlite.Connection) -> None:
    for version, statements in enumerate(MIGRATIONS, start=1):
        if await schema_version(db) >= version:
            continue
        await db.execute("BEGIN IMMEDIATE")
        try:
            if await schema_version(db) < version:  # another process may have done it
                for statement in statements:
                    await db.execute(statement)
                await db.execute(f"PRAGMA user_version = {version}")
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise


def stored_fingerprint(path: Path) -> str | None:
    """The check of the key that made the database's pseudonyms (blocking; for
    the commands and the start, before a key is read or made): None without
    a database, or one that has no pseudonyms yet (or cannot be read: the
    store's own check at open then decides)."""
    if not path.is_file():
        return None
    try:
        db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT fingerprint FROM pseudonym_key").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None
