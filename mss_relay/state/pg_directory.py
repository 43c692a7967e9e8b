"""The Annuaire Santé on PostgreSQL (state.database: postgresql://...), shared
by every relay naming the database: one « mss-relay directory import », run
anywhere, is in force in all of them (each polls the current generation, as
on SQLite, and loads it in memory: directory_index.py).

The same generations as state/directory.py: an import writes a 'loading'
generation in batches, each its own short transaction, makes it current in
one transaction (a reader sees the previous import or the new one, never a
mix; an import that fails leaves the previous one current), then removes the
previous generation's rows in short transactions. Two imports at once (two
relays' crons) are serialised by a session advisory lock: the second waits,
then loads its file after the first, rather than removing the first's
'loading' rows under it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import AsyncConnection

from mss_relay.core.directory import DirectoryAnswer
from mss_relay.state.directory import DELETE_CHUNK, ENTRY_COLUMNS, Entry, ImportInfo, NotImported
from mss_relay.state.directory_index import AddressIndex, digest, index_of
from mss_relay.state.errors import STATE_ERRORS
from mss_relay.state.postgres import PostgresDatabase

_CURRENT = "(SELECT generation FROM directory_imports WHERE status = 'current')"
_SHOWN = ", ".join(ENTRY_COLUMNS[:-1])
# Byte order, as SQLite's BINARY collation: the same listing on both, whatever
# the database's locale.
_ORDER = 'last_name COLLATE "C", first_name COLLATE "C", address COLLATE "C"'
# The bulk path: COPY FROM STDIN, a batch per COPY (and per transaction).
# 100,000 generated rows load in 2.1 s by COPY against 7.0 s by executemany
# (psycopg's pipeline of INSERTs, the same 5,000-row batches), on this 2-CPU
# machine, server included: COPY sends a batch as one stream, parsed by the
# server without a statement per row. 600,000 rows: bench/directory_cost.py
# --postgres.
_COPY = f"COPY directory_entries (generation, {', '.join(ENTRY_COLUMNS)}) FROM STDIN"
IMPORT_LOCK = 0x6D73_6469  # « msdi »: one import at a time, whichever relay runs it
FETCH_ROWS = 10_000  # addresses per FETCH of the index's load


def _digests(rows: list[tuple[Any, ...]]) -> list[int]:
    return [digest(address) for (address,) in rows]


class PgDirectoryStore:
    """The relay's reads (and the commands' show and search), through the
    database's pool."""

    def __init__(self, database: PostgresDatabase) -> None:
        self._database = database
        self._index: AddressIndex | None = None  # as DirectoryStore's

    async def close(self) -> None:
        """The database (its pool) is closed by its owner."""

    async def listed(self, address: str) -> bool:
        rows = await self._database.fetch(
            f"SELECT {_CURRENT} IS NOT NULL, EXISTS (SELECT 1 FROM directory_entries"
            f" WHERE generation = {_CURRENT} AND address = %s)",
            [address],
        )
        imported, listed = rows[0]
        if not imported:
            raise NotImported("no Annuaire Santé extraction imported")
        return bool(listed)

    @property
    def index(self) -> AddressIndex | None:
        return self._index

    async def refresh(self) -> AddressIndex | None:
        """As DirectoryStore.refresh: the current import loaded when it is not
        the one held. psycopg errors go to the caller; the index held stays."""
        rows = await self._database.fetch(
            "SELECT generation FROM directory_imports WHERE status = 'current'"
        )
        held = self._index
        if not rows:
            self._index = None
            return None
        if held is not None and held.generation == rows[0][0]:
            return None
        index = await self._load()
        self._index = index
        return index

    async def _load(self) -> AddressIndex | None:
        """The current generation's addresses, streamed through a server-side
        cursor FETCH_ROWS at a time, each batch digested in a thread (the
        event loop keeps serving sessions): never all the rows in memory
        (4.8 MB of digests for 600,000, where a fetchall would hold some
        60 MB of str tuples). 588,001 addresses: 1.9 to 3.3 s wall, 1.9 to
        2.4 s CPU (bench/directory_cost.py --postgres, a 2-CPU machine
        under a load of 6; SQLite: 1.8 s), the digests most of it. COPY TO
        STDOUT was no better: psycopg hands its rows over one by one, 1.5 s
        for the iteration alone. The generation and
        its rows are read in one snapshot: an import finishing meanwhile,
        removing the rows read, is not seen half-way."""
        async with self._database.connection() as connection, connection.transaction():
            await connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cursor = await connection.execute(
                "SELECT generation FROM directory_imports WHERE status = 'current'"
            )
            row = await cursor.fetchone()
            if row is None:
                return None
            generation = int(row[0])
            values: list[int] = []
            async with connection.cursor(name="directory_index") as rows:
                await rows.execute(
                    "SELECT address FROM directory_entries WHERE generation = %s", [generation]
                )
                while batch := await rows.fetchmany(FETCH_ROWS):
                    values += await asyncio.to_thread(_digests, batch)
        return await asyncio.to_thread(index_of, generation, values)

    def forget(self) -> None:
        self._index = None

    async def answer(self, address: str, within: float) -> DirectoryAnswer:
        """As DirectoryStore.answer; a server known to be down answers at once
        (unavailable) rather than after the pool's wait."""
        index = self._index
        if index is not None:
            return DirectoryAnswer(address in index)
        if self._database.down is not None:
            return DirectoryAnswer(None, unavailable=f"look-up failed: {self._database.down}")
        try:
            async with asyncio.timeout(within):
                return DirectoryAnswer(await self.listed(address))
        except TimeoutError:
            why = "look-up timed out"
        except NotImported:
            why = "never imported"
        except STATE_ERRORS as error:
            why = f"look-up failed: {type(error).__name__}"
        return DirectoryAnswer(None, unavailable=why)

    async def current(self) -> ImportInfo | None:
        rows = await self._database.fetch(
            "SELECT generation, imported_at, source, rows, addresses FROM directory_imports"
            " WHERE status = 'current'"
        )
        return ImportInfo(*rows[0]) if rows else None

    async def show(self, address: str) -> list[Entry]:
        rows = await self._database.fetch(
            f"SELECT {_SHOWN} FROM directory_entries WHERE generation = {_CURRENT}"
            " AND address = %s ORDER BY id",
            [address],
        )
        return [Entry(*row) for row in rows]

    async def search(self, words: Sequence[str], limit: int) -> list[Entry]:
        """As DirectoryStore.search: a scan of the current import's rows."""
        where = "".join(" AND strpos(search, %s) > 0" for _ in words)
        rows = await self._database.fetch(
            f"SELECT {_SHOWN} FROM directory_entries WHERE generation = {_CURRENT}{where}"
            f" ORDER BY {_ORDER} LIMIT %s",
            [*words, limit],
        )
        return [Entry(*row) for row in rows]


class PgDirectoryLoader:
    """The import's writes, on one pooled connection held for the whole
    import (it holds the import lock): begin(), add() batches, finish() or
    abort(), as DirectoryLoader's."""

    def __init__(self, connection: AsyncConnection[Any]) -> None:
        self._db = connection
        self.generation = 0

    @classmethod
    @asynccontextmanager
    async def opened(cls, database: PostgresDatabase) -> AsyncIterator[PgDirectoryLoader]:
        """A loader holding the import lock (waiting for another import to end)."""
        async with database.connection() as connection:
            await connection.execute("SELECT pg_advisory_lock(%s)", [IMPORT_LOCK])
            try:
                yield cls(connection)
            finally:
                if not connection.broken:
                    await connection.execute("SELECT pg_advisory_unlock(%s)", [IMPORT_LOCK])

    async def _one(self, sql: str, params: Sequence[object] = ()) -> tuple[Any, ...] | None:
        cursor = await self._db.execute(sql, params)
        return await cursor.fetchone()

    async def _chunked_delete(self, generation: int) -> int:
        deleted = 0
        while True:
            cursor = await self._db.execute(
                "DELETE FROM directory_entries WHERE id IN (SELECT id FROM directory_entries"
                " WHERE generation = %s LIMIT %s)",
                [generation, DELETE_CHUNK],
            )
            deleted += cursor.rowcount
            if cursor.rowcount < DELETE_CHUNK:
                return deleted

    async def _remove(self, status: str) -> int:
        removed = 0
        cursor = await self._db.execute(
            "SELECT generation FROM directory_imports WHERE status = %s", [status]
        )
        for (generation,) in await cursor.fetchall():
            removed += await self._chunked_delete(generation)
            await self._db.execute(
                "DELETE FROM directory_imports WHERE generation = %s", [generation]
            )
        return removed

    async def begin(self, source: str, at: str) -> int:
        """A new generation, after removing what imports cut short left."""
        await self._remove("loading")
        row = await self._one(
            "INSERT INTO directory_imports (imported_at, source, status, rows, addresses)"
            " VALUES (%s, %s, 'loading', 0, 0) RETURNING generation",
            [at, source],
        )
        assert row is not None
        self.generation = int(row[0])
        return self.generation

    async def add(self, rows: Iterable[Sequence[str]]) -> None:
        """One batch, one COPY, one transaction. Its commit needs no flush to
        disk (synchronous_commit off: until finish() the rows are not
        current, and an import cut short is removed); finish()'s commit is
        flushed, and with it every batch's before it."""
        generation = self.generation
        async with self._db.transaction():
            await self._db.execute("SET LOCAL synchronous_commit = off")
            async with self._db.cursor().copy(_COPY) as copy:
                for row in rows:
                    await copy.write_row((generation, *row))

    async def counts(self) -> tuple[int, int]:
        row = await self._one(
            "SELECT count(*), count(DISTINCT address) FROM directory_entries WHERE generation = %s",
            [self.generation],
        )
        assert row is not None
        return int(row[0]), int(row[1])

    async def current_addresses(self) -> int:
        row = await self._one("SELECT addresses FROM directory_imports WHERE status = 'current'")
        return int(row[0]) if row else 0

    async def finish(self, rows: int, addresses: int) -> int:
        """The swap, one transaction; then the previous generations' rows
        removed in short transactions (autocommit: a statement each)."""
        async with self._db.transaction():
            await self._db.execute(
                "UPDATE directory_imports SET status = 'old' WHERE status = 'current'"
            )
            await self._db.execute(
                "UPDATE directory_imports SET status = 'current', rows = %s, addresses = %s"
                " WHERE generation = %s",
                [rows, addresses, self.generation],
            )
        removed = await self._remove("old")
        # The planner's figures for a table that changed by a whole import.
        await self._db.execute("ANALYZE directory_entries")
        return removed

    async def abort(self) -> None:
        """The generation's rows removed; when the server is gone, the next
        import removes them (begin)."""
        if self._db.broken or not self.generation:
            return
        try:
            await self._chunked_delete(self.generation)
            await self._db.execute(
                "DELETE FROM directory_imports WHERE generation = %s", [self.generation]
            )
        except psycopg.OperationalError:
            pass  # lost meanwhile: begin() of the next import
