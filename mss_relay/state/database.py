"""Opening the SQLite file: WAL, foreign keys, versioned migrations.

The schema version is SQLite's own user_version. Each migration runs in one
IMMEDIATE transaction with the version bump, so a crash (even kill -9) leaves
the file at the old version or the new one, never between; two processes
starting at once migrate once.
"""

from __future__ import annotations

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
)


async def connect(path: Path) -> aiosqlite.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = FULL")  # an accepted change survives power loss
        await db.execute("PRAGMA foreign_keys = ON")
        await db.execute("PRAGMA busy_timeout = 10000")
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
