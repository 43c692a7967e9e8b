"""The Annuaire Santé in the state database: the entries of each import (a
generation), and which import is current.

An import (mss-relay directory import) writes a new generation in batches,
each its own short transaction (the relay's conversation writes are never
held behind the whole load), then makes it current in one transaction: a
reader sees the previous import or the new one, never a mix, and an import
that fails half-way leaves the previous one current (its rows are removed by
the next import). Each worker holds the current import's addresses in
memory for the RCPT look-up (directory_index.py: a bisection, no I/O); until
it is loaded, the look-up is one indexed point query on (generation,
address). Neither cost grows much with the number of rows.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from mss_relay.core.directory import DirectoryAnswer
from mss_relay.state.database import connect
from mss_relay.state.directory_index import AddressIndex, load_index

# The entry's columns, in the order of Entry (search last).
ENTRY_COLUMNS = (
    "address",
    "kind",
    "civility",
    "last_name",
    "first_name",
    "profession",
    "specialty",
    "structure",
    "sign",
    "service",
    "postal_code",
    "town",
    "search",
)
_INSERT = (
    f"INSERT INTO directory_entries (generation, {', '.join(ENTRY_COLUMNS)})"
    f" VALUES (?, {', '.join('?' * len(ENTRY_COLUMNS))})"
)
_CURRENT = "(SELECT generation FROM directory_imports WHERE status = 'current')"
_SHOWN = ", ".join(ENTRY_COLUMNS[:-1])
DELETE_CHUNK = 20_000  # old rows removed per transaction


@dataclass(frozen=True, slots=True)
class Entry:
    """One row of the extraction, as shown (search: the normalised words)."""

    address: str
    kind: str  # PER or ORG
    civility: str
    last_name: str
    first_name: str
    profession: str
    specialty: str
    structure: str
    sign: str
    service: str
    postal_code: str
    town: str


@dataclass(frozen=True, slots=True)
class ImportInfo:
    generation: int
    imported_at: str
    source: str
    rows: int
    addresses: int


class NotImported(Exception):
    """No extraction was ever imported: the directory cannot answer."""


class DirectoryStore:
    """Reads, through one read-only connection of its own (WAL: never waits
    for a writer)."""

    def __init__(self, reader: aiosqlite.Connection, path: Path) -> None:
        self._reader = reader
        self._lock = asyncio.Lock()
        self._path = path
        # The current import in memory (directory_index.py), once loaded:
        # until then, and when none was ever imported, the database answers.
        self._index: AddressIndex | None = None

    @classmethod
    async def open(cls, path: Path, busy_timeout: float = 10.0) -> DirectoryStore:
        """After the ConversationStore opened (and checked) the same file."""
        reader = await connect(path, busy_timeout)
        try:
            await reader.execute("PRAGMA query_only = ON")
        except BaseException:
            await reader.close()
            raise
        return cls(reader, path)

    async def close(self) -> None:
        await self._reader.close()

    async def _all(self, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
        async with self._lock:
            return list(await self._reader.execute_fetchall(sql, params))

    async def listed(self, address: str) -> bool:
        """Whether the normalized address is a BAL of the current import.
        One statement: the current generation and the point look-up."""
        rows = await self._all(
            f"SELECT {_CURRENT} IS NOT NULL, EXISTS (SELECT 1 FROM directory_entries"
            f" WHERE generation = {_CURRENT} AND address = ?)",
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
        """Load the current import into memory when it is not the one held
        (a new import, or none held yet). Returns the index newly loaded,
        None when nothing changed. sqlite3.Error and OSError go to the
        caller; the index held stays."""
        rows = await self._all("SELECT generation FROM directory_imports WHERE status = 'current'")
        held = self._index
        if not rows:
            self._index = None  # the database says « never imported »
            return None
        if held is not None and held.generation == rows[0][0]:
            return None
        index = await asyncio.to_thread(load_index, self._path)
        self._index = index
        return index

    def forget(self) -> None:
        """directory.mode off: the memory back."""
        self._index = None

    async def answer(self, address: str, within: float) -> DirectoryAnswer:
        """The RCPT fact: listed or not, or why the database could not say
        within `within` seconds (the policy tempfails it: fail closed).
        From memory once the current import is loaded (no I/O, no wait);
        the index held is a copy of what the database said, kept while the
        database cannot be read."""
        index = self._index
        if index is not None:
            return DirectoryAnswer(address in index)
        try:
            async with asyncio.timeout(within):
                return DirectoryAnswer(await self.listed(address))
        except TimeoutError:
            why = "look-up timed out"
        except NotImported:
            why = "never imported"
        except sqlite3.Error as error:
            why = f"look-up failed: {type(error).__name__}"
        return DirectoryAnswer(None, unavailable=why)

    async def current(self) -> ImportInfo | None:
        rows = await self._all(
            "SELECT generation, imported_at, source, rows, addresses FROM directory_imports"
            " WHERE status = 'current'"
        )
        return ImportInfo(*rows[0]) if rows else None

    async def show(self, address: str) -> list[Entry]:
        rows = await self._all(
            f"SELECT {_SHOWN} FROM directory_entries WHERE generation = {_CURRENT}"
            " AND address = ? ORDER BY rowid",
            [address],
        )
        return [Entry(*row) for row in rows]

    async def search(self, words: Sequence[str], limit: int) -> list[Entry]:
        """Entries whose search column holds every word (normalised by the
        caller). A scan of the current import's rows: linear in their number
        (about 0.1-0.3 s for 600,000 rows, bench/directory_cost.py)."""
        where = "".join(" AND instr(search, ?) > 0" for _ in words)
        rows = await self._all(
            f"SELECT {_SHOWN} FROM directory_entries WHERE generation = {_CURRENT}{where}"
            " ORDER BY last_name, first_name, address LIMIT ?",
            [*words, limit],
        )
        return [Entry(*row) for row in rows]


class DirectoryLoader:
    """The import's writes (blocking sqlite3: the command-line import, not
    the relay). begin() a generation, add() batches, finish() to make it
    current, or abort()."""

    def __init__(self, path: Path, busy_timeout: float = 30.0) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute(f"PRAGMA busy_timeout = {round(busy_timeout * 1000)}")
        self._db.execute("PRAGMA journal_mode = WAL")
        # The batches need no fsync each: until finish() they are not current,
        # and an import cut short is removed. finish() commits with FULL.
        self._db.execute("PRAGMA synchronous = NORMAL")
        self.generation = 0

    def close(self) -> None:
        self._db.close()

    def _chunked_delete(self, where: str, params: Sequence[object]) -> int:
        deleted = 0
        while True:
            cursor = self._db.execute(
                "DELETE FROM directory_entries WHERE rowid IN (SELECT rowid FROM"
                f" directory_entries WHERE {where} LIMIT {DELETE_CHUNK})",
                params,
            )
            deleted += cursor.rowcount
            if cursor.rowcount < DELETE_CHUNK:
                return deleted

    def begin(self, source: str, at: str) -> int:
        """A new generation, after removing what imports cut short left."""
        for (generation,) in self._db.execute(
            "SELECT generation FROM directory_imports WHERE status = 'loading'"
        ).fetchall():
            self._chunked_delete("generation = ?", [generation])
            self._db.execute("DELETE FROM directory_imports WHERE generation = ?", [generation])
        cursor = self._db.execute(
            "INSERT INTO directory_imports (imported_at, source, status, rows, addresses)"
            " VALUES (?, ?, 'loading', 0, 0)",
            [at, source],
        )
        assert cursor.lastrowid is not None
        self.generation = cursor.lastrowid
        return self.generation

    def add(self, rows: Iterable[Sequence[str]]) -> None:
        """One batch, one transaction."""
        generation = self.generation
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(_INSERT, ((generation, *row) for row in rows))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def counts(self) -> tuple[int, int]:
        """Rows and distinct addresses of the generation (the index: no set
        of addresses held in memory)."""
        rows, addresses = self._db.execute(
            "SELECT count(*), count(DISTINCT address) FROM directory_entries WHERE generation = ?",
            [self.generation],
        ).fetchone()
        return int(rows), int(addresses)

    def current_addresses(self) -> int:
        """The distinct addresses of the import in force (0: none)."""
        row = self._db.execute(
            "SELECT addresses FROM directory_imports WHERE status = 'current'"
        ).fetchone()
        return int(row[0]) if row else 0

    def finish(self, rows: int, addresses: int) -> int:
        """The swap, one transaction; then the previous generations' rows
        removed in short transactions. Returns the rows removed."""
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("UPDATE directory_imports SET status = 'old' WHERE status = 'current'")
            self._db.execute(
                "UPDATE directory_imports SET status = 'current', rows = ?, addresses = ?"
                " WHERE generation = ?",
                [rows, addresses, self.generation],
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        removed = 0
        for (generation,) in self._db.execute(
            "SELECT generation FROM directory_imports WHERE status = 'old'"
        ).fetchall():
            removed += self._chunked_delete("generation = ?", [generation])
            self._db.execute("DELETE FROM directory_imports WHERE generation = ?", [generation])
        return removed

    def abort(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        if self.generation:
            self._chunked_delete("generation = ?", [self.generation])
            self._db.execute(
                "DELETE FROM directory_imports WHERE generation = ?", [self.generation]
            )
