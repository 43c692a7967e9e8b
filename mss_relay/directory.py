"""The Annuaire Santé extraction (`Extraction_Correspondance_MSSante`): read,
normalised, imported into the state database; searched and shown.

The ANS publishes it daily (about 535,000 rows): a ZIP holding one .txt, or
the .txt; UTF-8, `|`-separated, one header line, 31 columns, matched here by
header name (not position). The rows are streamed: memory stays bounded
whatever the file's size (a batch at a time; the distinct addresses are
counted by the database's index, not in a set).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import unicodedata
import zipfile
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from mss_relay.core.addresses import normalize_address
from mss_relay.log import iso_ms, utc_now
from mss_relay.state.api import Directory
from mss_relay.state.database import connect, mark, refuse_lost
from mss_relay.state.directory import ENTRY_COLUMNS, DirectoryLoader, DirectoryStore, Entry
from mss_relay.state.pg_directory import PgDirectoryLoader, PgDirectoryStore
from mss_relay.state.postgres import PostgresDatabase, PostgresSettings

if TYPE_CHECKING:
    from mss_relay.config import Config

BATCH = 5000  # rows per executemany and transaction
# The share of the current import's addresses an import may remove without
# --force (as for the liste blanche: a cut or wrong file is no new Annuaire).
MAX_SHRINK = 0.20
KINDS = frozenset({"PER", "ORG"})  # applicative (APP) BALs are not in the extraction

# Entry's fields (state/directory.py, search apart) -> the header naming it.
# Required: what the look-up and the display need.
REQUIRED = {
    "address": "Adresse BAL",
    "kind": "Type de BAL",
    "last_name": "Nom d'exercice",
    "first_name": "Prénom d'exercice",
    "profession": "Libellé Profession",
    "structure": "Raison Sociale structure BAL",
    "town": "L6LIGNEACHEMINEMENT structure BAL",
}
OPTIONAL = {
    "civility": "Civilité d'exercice",
    "specialty": "Libellé savoir-faire",
    "sign": "Enseigne commerciale structure BAL",
    "service": "Service de rattachement",
    "postal_code": "Code postal structure BAL",
}
# An entry's fields, as the store keeps them (its last column is the search text).
FIELDS = ENTRY_COLUMNS[:-1]
# Searched: name, first name, structure (and its sign, service), address, town.
SEARCHED = ("last_name", "first_name", "structure", "sign", "service", "address", "town")

# Letters NFKD does not decompose into a base letter and a mark.
_LIGATURES = str.maketrans({"œ": "oe", "Œ": "OE", "æ": "ae", "Æ": "AE", "ß": "ss", "ø": "o"})
_NOT_WORD = re.compile(r"[^a-z0-9]+")


class ExtractionError(Exception):
    """The file cannot be imported; str(): the one line to print."""


def fold(text: str) -> str:
    """Accents, case and punctuation ignored: « Hélène D'Aubigné-Œuvre » ->
    « helene d aubigne oeuvre ». The search column and every searched word
    go through it."""
    if not text.isascii():
        text = unicodedata.normalize("NFKD", text.translate(_LIGATURES))
        text = text.encode("ascii", "ignore").decode("ascii")
    return _NOT_WORD.sub(" ", text.lower()).strip()


@dataclass
class Reading:
    """What reading the file found (the import's counts)."""

    rows: int = 0  # rows kept
    skipped: Counter[str] = field(default_factory=Counter)  # why -> lines


@contextlib.contextmanager
def open_extraction(path: Path) -> Iterator[IO[bytes]]:
    """The extraction's bytes: the .txt itself, or the one .txt of a ZIP
    (decoded line by line: a non-UTF-8 line is named by its number)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.lower().endswith(".txt")]
                if len(names) != 1:
                    found = ", ".join(names) if names else "none"
                    raise ExtractionError(
                        f"{path}: a ZIP must hold exactly one .txt file (found: {found})"
                    )
                with archive.open(names[0]) as member:
                    yield member
            return
        with path.open("rb") as data:
            yield data
    except zipfile.BadZipFile as error:
        raise ExtractionError(f"{path}: not a readable ZIP file ({error})") from None
    except OSError as error:
        raise ExtractionError(f"{path}: cannot read: {error.strerror or error}") from None


def _positions(header: str, path: Path) -> tuple[list[int | None], int]:
    """Where each of FIELDS is in a row, by header name (accents, case and
    spacing of the names ignored); the number of columns."""
    names = [fold(name) for name in header.rstrip("\r\n").split("|")]
    where = {name: i for i, name in reversed(list(enumerate(names)))}
    missing = [h for h in REQUIRED.values() if fold(h) not in where]
    if missing:
        raise ExtractionError(
            f"{path}: not an Annuaire Santé extraction: missing column(s) " + ", ".join(missing)
        )
    headers = REQUIRED | OPTIONAL
    return [where.get(fold(headers[name])) for name in FIELDS], len(names)


def rows(data: IO[bytes], path: Path, reading: Reading) -> Iterator[tuple[str, ...]]:
    """The rows to store (FIELDS, then the search column), one at a time;
    the lines left out are counted in reading.skipped, by reason."""
    line_number = 1
    try:
        header = data.readline().decode("utf-8").removeprefix("\ufeff")
        if not header.strip():
            raise ExtractionError(f"{path}: empty file (no header line)")
        positions, width = _positions(header, path)
        address_at, kind_at = positions[0], positions[1]
        assert address_at is not None and kind_at is not None
        for raw in data:
            line_number += 1
            line = raw.decode("utf-8")
            values = line.rstrip("\r\n").split("|")
            if len(values) != width:
                if line.strip():
                    reading.skipped[f"{len(values)} columns instead of {width}"] += 1
                else:
                    reading.skipped["empty line"] += 1
                continue
            kind = values[kind_at].strip().upper()
            if kind not in KINDS:
                reading.skipped[f"Type de BAL {kind[:10]!r} (PER or ORG expected)"] += 1
                continue
            address = normalize_address(values[address_at])
            if "@" not in address or " " in address:
                reading.skipped["no valid Adresse BAL"] += 1
                continue
            row = [address, kind]
            row += ["" if i is None else values[i].strip() for i in positions[2:]]
            searched = " ".join(row[FIELDS.index(name)] for name in SEARCHED)
            reading.rows += 1
            yield (*row, fold(searched))
    except UnicodeDecodeError:
        raise ExtractionError(f"{path}: not UTF-8 (line {line_number})") from None


@dataclass(frozen=True)
class Imported:
    rows: int
    addresses: int
    skipped: Counter[str]
    removed: int  # rows of the previous import removed

    @property
    def duplicates(self) -> int:
        return self.rows - self.addresses

    def lines(self) -> list[str]:
        out = [
            f"{self.rows} rows, {self.addresses} distinct addresses,"
            f" {self.duplicates} duplicate rows, {sum(self.skipped.values())} lines skipped"
        ]
        out += [f"  skipped: {count} x {why}" for why, count in self.skipped.most_common()]
        return out


async def _prepare(database: Path) -> None:
    """The database checked (not deleted under its marker) and migrated."""
    await asyncio.to_thread(refuse_lost, database)
    db = await connect(database)
    await db.close()
    await asyncio.to_thread(mark, database)


def import_extraction(
    path: Path, database: Path | PostgresSettings, batch: int = BATCH, *, force: bool = False
) -> Imported:
    """Load the extraction as a new generation, then make it current; on any
    error the previous import stays current. An extraction that would remove
    more than MAX_SHRINK of the current import's addresses is refused (a
    truncated download, a wrong file: with mode refuse, every recipient
    left out would get 550) unless force. Blocking (the command line).
    database: the SQLite file, or the PostgreSQL server (state/pg_directory.py)."""
    if isinstance(database, PostgresSettings):
        return asyncio.run(_import_postgres(path, database, batch, force=force))
    asyncio.run(_prepare(database))
    loader = DirectoryLoader(database)
    try:
        loader.begin(str(path), iso_ms(utc_now()))
        reading = Reading()
        with open_extraction(path) as data:
            for pending in _batches(rows(data, path, reading), batch):
                loader.add(pending)
        count, addresses = loader.counts()
        _check(path, reading, addresses, loader.current_addresses(), force)
        removed = loader.finish(count, addresses)
        return Imported(count, addresses, reading.skipped, removed)
    except BaseException:
        loader.abort()
        raise
    finally:
        loader.close()


def _batches(found: Iterator[tuple[str, ...]], batch: int) -> Iterator[list[tuple[str, ...]]]:
    """The rows by batch (the last one maybe empty)."""
    pending: list[tuple[str, ...]] = []
    for row in found:
        pending.append(row)
        if len(pending) >= batch:
            yield pending
            pending = []
    yield pending


def _check(path: Path, reading: Reading, addresses: int, previous: int, force: bool) -> None:
    """The import may become current: it has rows, and it does not shrink
    the current one by more than MAX_SHRINK (unless force)."""
    if not reading.rows:
        raise ExtractionError(f"{path}: no row to import (the previous import is kept)")
    if not force and previous and addresses < previous * (1 - MAX_SHRINK):
        raise ExtractionError(
            f"{path}: {addresses} distinct addresses where the current import has"
            f" {previous} (would remove {1 - addresses / previous:.0%}; more than"
            f" {MAX_SHRINK:.0%} needs --force): the previous import is kept"
        )


async def _import_postgres(
    path: Path, settings: PostgresSettings, batch: int, *, force: bool
) -> Imported:
    """import_extraction on PostgreSQL: the same steps. The file is read in a
    thread, a batch at a time (blocking reads, off the event loop)."""
    database = await PostgresDatabase.open(settings)
    try:
        async with PgDirectoryLoader.opened(database) as loader:
            try:
                await loader.begin(str(path), iso_ms(utc_now()))
                reading = Reading()
                with contextlib.ExitStack() as files:
                    data = await asyncio.to_thread(files.enter_context, open_extraction(path))
                    batches = _batches(rows(data, path, reading), batch)
                    while (pending := await asyncio.to_thread(next, batches, None)) is not None:
                        await loader.add(pending)
                count, addresses = await loader.counts()
                _check(path, reading, addresses, await loader.current_addresses(), force)
                removed = await loader.finish(count, addresses)
                return Imported(count, addresses, reading.skipped, removed)
            except BaseException:
                await loader.abort()
                raise
    finally:
        await database.close()


# Looking up ---------------------------------------------------------------------
SEARCH_LIMIT = 50


def describe(entry: Entry) -> str:
    """One BAL on one line: type, address, name, profession, structure, town."""
    name = " ".join(p for p in (entry.civility, entry.first_name, entry.last_name) if p)
    profession = entry.profession + (f" ({entry.specialty})" if entry.specialty else "")
    structure = entry.structure or entry.sign
    if entry.service:
        structure += f" / {entry.service}" if structure else entry.service
    town = entry.town or entry.postal_code
    parts = [entry.kind, entry.address, name, profession, structure, town]
    return " | ".join(p if p else "-" for p in parts)


async def open_directory(config: Config, database: PostgresDatabase | None) -> Directory:
    """The relay's Annuaire Santé: on the PostgreSQL database when the
    configuration names one (database: the relay's, opened; closed by its
    owner), else on the SQLite file (config.database, after the
    ConversationStore opened and checked it; closed by store.close()).
    OSError and STATE_ERRORS go to the caller."""
    if config.postgres is not None:
        if database is None:
            raise ValueError("state.database is postgresql://: open the PostgresDatabase first")
        return PgDirectoryStore(database)
    return await DirectoryStore.open(config.database)


@contextlib.asynccontextmanager
async def _store(where: Path | PostgresSettings) -> AsyncIterator[Directory]:
    """The commands' store, and its database closed afterwards."""
    if isinstance(where, PostgresSettings):
        database = await PostgresDatabase.open(where)
        try:
            yield PgDirectoryStore(database)
        finally:
            await database.close()
        return
    await _prepare(where)
    store = await DirectoryStore.open(where)
    try:
        yield store
    finally:
        await store.close()


async def search(
    database: Path | PostgresSettings, text: str, limit: int = SEARCH_LIMIT
) -> list[str]:
    """The BALs matching every word (at most limit + 1: the caller says when
    there are more)."""
    words = fold(text).split()
    async with _store(database) as store:
        info = await store.current()
        if info is None:
            return []
        return [describe(e) for e in await store.search(words, limit + 1)]


async def show(database: Path | PostgresSettings, address: str) -> tuple[bool, list[str]]:
    """(imported at all, the BALs at that address)."""
    async with _store(database) as store:
        info = await store.current()
        entries = await store.show(normalize_address(address)) if info else []
        return info is not None, [describe(e) for e in entries]
