"""« mss-relay state copy »: a SQLite state copied into a PostgreSQL one, the
move of an installation from one relay to several (docs/state-copy.md).

The source is opened through the conversation store first, with the
relay's key: rows of older versions holding an INS in clear are rewritten
to pseudonyms there, and a key that did not make its pseudonyms is refused.
What is streamed to the server goes through the same pseudonyms once more
(patients, reply-to addresses, Message-IDs masked as the log shows them), so
no INS in clear reaches PostgreSQL whatever the source holds.

The whole copy is one PostgreSQL transaction, its tables locked against
writers: interrupted, it leaves the target as it was, and run again it
starts over. Each table is streamed (COPY) into a temporary table, then
merged into the real one so that a row already there is never written
twice: a second run copies nothing and says 0 for each kind.

Conversation ids are kept: a Message-ID's row names its conversation by id,
and the same id in both databases makes « is this conversation already
there? » one comparison. A target holding other conversations under the
source's ids (another installation's) is refused rather than merged; once
copied, the identity sequence is moved past the greatest id, so that the
conversations the relays open afterwards never take one of them. Not
copied: log_heads (each relay's audit trail is its own: they stay in its
local SQLite file), and of the Annuaire only the current import (an old one
is kept by an import only until the next removes it).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import PoolTimeout

from mss_relay.pseudonym import KEY_KEY, Pseudonyms
from mss_relay.state.conversations import ConversationStore, KeyMismatch
from mss_relay.state.database import StateLost, stored_fingerprint
from mss_relay.state.postgres import PostgresDatabase, PostgresSettings, SchemaTooNew, shown

# What the command says it copied, in this order: the tables' names.
KINDS = (
    "pseudonym_key",
    "conversations",
    "messages",
    "user_activity",
    "bal_activity",
    "bal_lifecycle",
    "directory_imports",
    "directory_entries",
)
BATCH = 5000  # rows read from SQLite at a time (an Annuaire has 600,000)
_SCHEMES = ("postgresql://", "postgres://")
_TABLES = ", ".join(KINDS)
_CONVERSATION = (
    "id, bal, patient, opened_at, opened_by, last_activity_at, closed_at, closed_by, close_reason"
)
_MESSAGE = "message_id, conversation_id, direction, reply_to, at"
_ENTRY = (
    "address, kind, civility, last_name, first_name, profession, specialty, structure, sign,"
    " service, postal_code, town, search"
)
Row = tuple[Any, ...]


class CopyRefused(Exception):
    """Why nothing was copied, in one line."""


def source_path(text: str) -> Path:
    """--from sqlite:PATH (relative to the current folder). ValueError: usage."""
    if not text.startswith("sqlite:") or not text[len("sqlite:") :].strip():
        raise ValueError(f"--from {text}: give sqlite:PATH (the SQLite state file)")
    return Path(text[len("sqlite:") :])


def target_url(text: str) -> str:
    """--to postgresql://USER@HOST:PORT/DATABASE. ValueError: usage."""
    if not text.startswith(_SCHEMES):
        raise ValueError(f"--to: give a postgresql://USER@HOST:PORT/DATABASE URL, not {text}")
    try:
        params = conninfo_to_dict(text)
    except psycopg.ProgrammingError as error:
        raise ValueError(f"--to: not a PostgreSQL URL: {str(error).splitlines()[0]}") from None
    if not params.get("dbname"):
        raise ValueError("--to names no database: postgresql://USER@HOST:PORT/DATABASE")
    return text


def settings_for(url: str, configured: PostgresSettings | None) -> PostgresSettings:
    """The configuration's state.password_file (and timeout) when --to is its
    state.database; else libpq's own ways (the URL, PGPASSWORD, ~/.pgpass)."""
    if configured is not None and configured.url == url:
        return PostgresSettings(
            url=url,
            password_file=configured.password_file,
            connect_timeout=configured.connect_timeout,
        )
    return PostgresSettings(url=url)


async def copy_state(
    source: Path, target: PostgresSettings, pseudonyms: Pseudonyms, key_file: Path
) -> dict[str, int]:
    """Copy the SQLite state at `source` into the PostgreSQL one: how many
    rows of each kind (KINDS) were written. CopyRefused, with the reason in
    one line, for every failure (nothing is then written)."""
    try:
        await _open_source(source, pseudonyms, key_file)
        database = await PostgresDatabase.open(target)
    except CopyRefused:
        raise
    except Exception as error:
        raise CopyRefused(_why(error, source, target)) from None
    try:
        reader = await aiosqlite.connect(source, isolation_level=None)
        try:
            await reader.execute("PRAGMA query_only = ON")
            await reader.execute("BEGIN")  # one snapshot of every table
            async with database.transaction() as pg:
                return await _copy(reader, pg, pseudonyms, key_file, database.where)
        finally:
            await reader.close()
    except CopyRefused:
        raise
    except Exception as error:
        raise CopyRefused(_why(error, source, target)) from None
    finally:
        await database.close()


def _why(error: Exception, source: Path, target: PostgresSettings) -> str:
    """A failure of either side, in one line naming the side (never a password)."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if isinstance(error, StateLost | KeyMismatch | SchemaTooNew):
        return first
    if isinstance(error, sqlite3.Error):
        return f"{source}: {first}"
    if isinstance(error, psycopg.Error | PoolTimeout):
        return f"{shown(target.url)}: {first}"
    if isinstance(error, OSError):  # the password file
        return f"state.password_file: {error.strerror or first}"
    return f"{type(error).__name__}: {first}"


async def _open_source(source: Path, pseudonyms: Pseudonyms, key_file: Path) -> None:
    """The store's open: its pseudonyms made whole, under this key."""
    if not await asyncio.to_thread(source.is_file):
        raise CopyRefused(f"{source}: no such SQLite state file")
    stored = await asyncio.to_thread(stored_fingerprint, source)
    if stored is not None and stored != pseudonyms.check():
        raise CopyRefused(
            f"{source} holds pseudonyms made with another key (its check is {stored}, this"
            f" key's {pseudonyms.check()}): give {KEY_KEY} ({key_file}) the key it was made with"
        )
    store = await ConversationStore.open(source, pseudonyms=pseudonyms)
    await store.close()


async def _copy(
    src: aiosqlite.Connection,
    pg: psycopg.AsyncConnection[Any],
    pseudonyms: Pseudonyms,
    key_file: Path,
    where: str,
) -> dict[str, int]:
    # Writers (a relay left running on the target) wait until the copy is
    # committed; readers do not.
    await pg.execute(f"LOCK TABLE {_TABLES} IN SHARE ROW EXCLUSIVE MODE")
    counts = {"pseudonym_key": await _key(src, pg, pseudonyms, key_file, where)}
    counts["conversations"] = await _conversations(src, pg, pseudonyms, where)
    counts["messages"] = await _messages(src, pg, pseudonyms)
    counts["user_activity"] = await _merge(
        src,
        pg,
        "user_activity",
        ["user", "last_auth_at"],
        'ON CONFLICT ("user") DO UPDATE SET last_auth_at = excluded.last_auth_at'
        " WHERE t.last_auth_at < excluded.last_auth_at",
    )
    # A date kept only when later (earlier for the first seen), as the relays merge theirs.
    counts["bal_activity"] = await _merge(
        src,
        pg,
        "bal_activity",
        ["bal", "first_seen_at", "last_sent_at", "last_received_at"],
        "ON CONFLICT (bal) DO UPDATE SET first_seen_at = least(t.first_seen_at,"
        " excluded.first_seen_at), last_sent_at = greatest(t.last_sent_at,"
        " excluded.last_sent_at), last_received_at = greatest(t.last_received_at,"
        " excluded.last_received_at)"
        " WHERE (t.first_seen_at, t.last_sent_at, t.last_received_at) IS DISTINCT FROM"
        " (least(t.first_seen_at, excluded.first_seen_at), greatest(t.last_sent_at,"
        " excluded.last_sent_at), greatest(t.last_received_at, excluded.last_received_at))",
    )
    # A threshold's notice: sent once, whichever database says so.
    counts["bal_lifecycle"] = await _merge(
        src,
        pg,
        "bal_lifecycle",
        ["bal", "flag", "since", "crossed_at", "notice_sent_at", "notice_txid"],
        "ON CONFLICT (bal, flag, since) DO UPDATE SET notice_sent_at = excluded.notice_sent_at,"
        " notice_txid = excluded.notice_txid"
        " WHERE t.notice_sent_at IS NULL AND excluded.notice_sent_at IS NOT NULL",
    )
    counts["directory_imports"], counts["directory_entries"] = await _directory(src, pg)
    return counts


async def _one(pg: psycopg.AsyncConnection[Any], query: str, params: Sequence[Any] = ()) -> Row:
    cursor = await pg.execute(query, params)
    row = await cursor.fetchone()
    return tuple(row) if row is not None else ()


async def _key(
    src: aiosqlite.Connection,
    pg: psycopg.AsyncConnection[Any],
    pseudonyms: Pseudonyms,
    key_file: Path,
    where: str,
) -> int:
    """The target's key check: recorded when missing, else the source's."""
    check = pseudonyms.check()
    target = await _one(pg, "SELECT fingerprint FROM pseudonym_key")
    if target and target[0] != check:
        raise CopyRefused(
            f"{where} holds pseudonyms made with another key (its check is {target[0]}, the"
            f" source's {check}): give {KEY_KEY} ({key_file}) the key of the relays on that"
            " database, or copy into another one"
        )
    if target:
        return 0
    async with src.execute("SELECT set_at FROM pseudonym_key") as cursor:
        row = await cursor.fetchone()
    await pg.execute(
        "INSERT INTO pseudonym_key (fingerprint, set_at) VALUES (%s, %s)",
        [check, row[0] if row else None],
    )
    return 1


async def _batches(
    src: aiosqlite.Connection, query: str, params: Sequence[Any] = ()
) -> AsyncIterator[list[Row]]:
    async with src.execute(query, params) as cursor:
        while batch := await cursor.fetchmany(BATCH):
            yield [tuple(row) for row in batch]


async def _stage(
    src: aiosqlite.Connection,
    pg: psycopg.AsyncConnection[Any],
    table: str,
    columns: Sequence[str],
    query: str,
    transform: Callable[[Row], Row] | None = None,
) -> str:
    """The source's rows streamed (COPY) into a temporary table like `table`,
    dropped at commit: its name."""
    staged = f"copy_{table}"
    await pg.execute(
        sql.SQL("CREATE TEMPORARY TABLE {} (LIKE {}) ON COMMIT DROP").format(
            sql.Identifier(staged), sql.Identifier(table)
        )
    )
    names = sql.SQL(", ").join(map(sql.Identifier, columns))
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(staged), names)
    async with pg.cursor().copy(statement) as copy:
        async for batch in _batches(src, query):
            for row in batch:
                await copy.write_row(transform(row) if transform else row)
    # A temporary table has no statistics until analysed: the joins that
    # follow would be planned for an empty one.
    await pg.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(staged)))
    return staged


async def _merge(
    src: aiosqlite.Connection,
    pg: psycopg.AsyncConnection[Any],
    table: str,
    columns: Sequence[str],
    conflict: str,
) -> int:
    """A table keyed by its primary key: rows inserted, or brought forward."""
    quoted = ", ".join(f'"{c}"' for c in columns)
    staged = await _stage(src, pg, table, columns, f"SELECT {quoted} FROM {table}")
    cursor = await pg.execute(
        f"INSERT INTO {table} AS t ({quoted}) SELECT {quoted} FROM {staged} {conflict}"
    )
    return max(cursor.rowcount, 0)


async def _conversations(
    src: aiosqlite.Connection,
    pg: psycopg.AsyncConnection[Any],
    pseudonyms: Pseudonyms,
    where: str,
) -> int:
    of = pseudonyms.of

    def pseudonymous(row: Row) -> Row:
        return (row[0], row[1], of(row[2]), *row[3:])

    staged = await _stage(
        src,
        pg,
        "conversations",
        _CONVERSATION.split(", "),
        f"SELECT {_CONVERSATION} FROM conversations",
        pseudonymous,
    )
    # The same id must be the same conversation (what a relay never changes
    # in one: its BAL, patient, opening); a target holding conversations at
    # the source's ids, none of them the source's, is another installation's.
    other = await _one(
        pg,
        f"SELECT min(c.id) FROM conversations c JOIN {staged} s USING (id)"
        " WHERE (c.bal, c.patient, c.opened_at, c.opened_by)"
        " IS DISTINCT FROM (s.bal, s.patient, s.opened_at, s.opened_by)",
    )
    interleaved = await _one(
        pg,
        f"SELECT EXISTS (SELECT 1 FROM conversations WHERE id <= (SELECT max(id) FROM {staged}))"
        f" AND NOT EXISTS (SELECT 1 FROM conversations JOIN {staged} USING (id))",
    )
    if other[0] is not None or interleaved[0]:
        at = f" (id {other[0]} is another conversation)" if other[0] is not None else ""
        raise CopyRefused(
            f"{where} already holds conversations that did not come from this source{at}:"
            " copy into an empty database"
        )
    try:
        cursor = await pg.execute(
            f"INSERT INTO conversations ({_CONVERSATION}) SELECT {_CONVERSATION} FROM {staged} s"
            " WHERE NOT EXISTS (SELECT 1 FROM conversations c WHERE c.id = s.id)"
        )
    except psycopg.errors.UniqueViolation:
        raise CopyRefused(
            f"{where} already has an open conversation of a BAL and a patient that the source"
            " has another one open for: was a relay running on it? copy into an empty database"
        ) from None
    copied = max(cursor.rowcount, 0)
    # The conversations the relays open next take ids past the copied ones.
    # (The sequence's current value: none before its first use.)
    await pg.execute(
        "SELECT setval(pg_get_serial_sequence('conversations', 'id'), greatest(m,"
        " coalesce(pg_sequence_last_value(pg_get_serial_sequence('conversations', 'id')), 0)))"
        " FROM (SELECT max(id) AS m FROM conversations) AS greatest_id WHERE m IS NOT NULL"
    )
    return copied


async def _messages(
    src: aiosqlite.Connection, pg: psycopg.AsyncConnection[Any], pseudonyms: Pseudonyms
) -> int:
    of, mask = pseudonyms.of, pseudonyms.mask_text

    def pseudonymous(row: Row) -> Row:
        reply_to = of(row[3]) if row[3] else row[3]
        return (mask(row[0]), row[1], row[2], reply_to, row[4])

    staged = await _stage(
        src, pg, "messages", _MESSAGE.split(", "), f"SELECT {_MESSAGE} FROM messages", pseudonymous
    )
    cursor = await pg.execute(
        f"INSERT INTO messages ({_MESSAGE}) SELECT {_MESSAGE} FROM {staged}"
        " ON CONFLICT (message_id, conversation_id) DO NOTHING"
    )
    return max(cursor.rowcount, 0)


async def _directory(
    src: aiosqlite.Connection, pg: psycopg.AsyncConnection[Any]
) -> tuple[int, int]:
    """The source's current import, made the target's current one unless the
    target has it already (same date and file) or a later one."""
    async with src.execute(
        "SELECT generation, imported_at, source, rows, addresses FROM directory_imports"
        " WHERE status = 'current'"
    ) as cursor:
        current = await cursor.fetchone()
    if current is None:
        return 0, 0
    generation, imported_at, origin, rows, addresses = current
    there = await _one(
        pg,
        "SELECT count(*) FROM directory_imports WHERE (imported_at = %s AND source = %s)"
        " OR (status = 'current' AND imported_at > %s)",
        [imported_at, origin, imported_at],
    )
    if there[0]:
        return 0, 0
    await pg.execute("UPDATE directory_imports SET status = 'old' WHERE status = 'current'")
    # The target's own generation number (an identity: its imports count on).
    row = await _one(
        pg,
        "INSERT INTO directory_imports (imported_at, source, status, rows, addresses)"
        " VALUES (%s, %s, 'current', %s, %s) RETURNING generation",
        [imported_at, origin, rows, addresses],
    )
    generation = int(row[0])
    copied = 0
    statement = f"COPY directory_entries (generation, {_ENTRY}) FROM STDIN"
    async with pg.cursor().copy(statement) as copy:
        async for batch in _batches(
            src,
            f"SELECT {_ENTRY} FROM directory_entries WHERE generation = ?",
            [current[0]],
        ):
            for row in batch:
                await copy.write_row((generation, *row))
            copied += len(batch)
    return 1, copied
