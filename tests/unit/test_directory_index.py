"""The Annuaire Santé's current import in memory (state/directory_index.py):
what the RCPT look-up answers once it is loaded, against a real SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
from array import array
from pathlib import Path

from mss_relay.directory import import_extraction
from mss_relay.state.directory import DirectoryStore
from mss_relay.state.directory_index import BUCKET_BITS, AddressIndex, digest, load_index
from tests.support.extraction import Bal, write

ONE = Bal("PER", "a.martin@chu-b.mssante.fr", "Martin", "Anne", "Médecin", "CHU B", "69003 LYON")
TWO = Bal("ORG", "secretariat@chu-b.mssante.fr", "", "", "", "CHU B", "69003 LYON")
OTHER = Bal("PER", "b.durand@ch-c.mssante.fr", "Durand", "Bruno", "Infirmier", "CH C", "38000")


def imported(tmp_path: Path, name: str, bals: list[Bal]) -> None:
    import_extraction(write(tmp_path / name, bals), tmp_path / "state.sqlite3")


def test_no_import_no_index(tmp_path: Path) -> None:
    imported(tmp_path, "one.txt", [ONE])
    with sqlite3.connect(tmp_path / "state.sqlite3") as db:
        db.execute("DELETE FROM directory_entries")
        db.execute("DELETE FROM directory_imports")
    assert load_index(tmp_path / "state.sqlite3") is None


def test_the_index_holds_each_distinct_address_once(tmp_path: Path) -> None:
    imported(tmp_path, "one.txt", [ONE, TWO, ONE])
    index = load_index(tmp_path / "state.sqlite3")
    assert index is not None and len(index) == 2
    assert ONE.address in index and TWO.address in index
    assert OTHER.address not in index
    assert list(index.digests) == sorted({digest(ONE.address), digest(TWO.address)})


def test_the_store_answers_from_memory_and_follows_a_new_import(tmp_path: Path) -> None:
    async def scenario() -> None:
        database = tmp_path / "state.sqlite3"
        await asyncio.to_thread(imported, tmp_path, "one.txt", [ONE])
        store = await DirectoryStore.open(database)
        try:
            assert (await store.answer(ONE.address, 5)).listed is True  # from the database
            loaded = await store.refresh()
            assert loaded is not None and len(loaded) == 1
            assert await store.refresh() is None  # the same import: nothing to load
            # Rows gone behind its back: the answer comes from memory.
            with sqlite3.connect(database) as db:
                db.execute("DELETE FROM directory_entries")
            assert (await store.answer(ONE.address, 5)).listed is True
            # A new import becomes current: the next refresh loads it.
            await asyncio.to_thread(imported, tmp_path, "two.txt", [OTHER])  # blocking: a thread
            loaded = await store.refresh()
            assert loaded is not None and OTHER.address in loaded
            assert (await store.answer(ONE.address, 5)).listed is False
            assert (await store.answer(OTHER.address, 5)).listed is True
            store.forget()  # mode off: back to the database
            assert store.index is None
        finally:
            await store.close()

    asyncio.run(scenario())


def test_every_address_is_found_in_its_bucket_and_no_other() -> None:
    listed = [f"bal{i}@hopital-{i % 97}.mssante.fr" for i in range(20_000)]
    index = AddressIndex.of(1, array("Q", sorted(digest(a) for a in listed)))
    assert len(index.starts) == (1 << BUCKET_BITS) + 1 and index.starts[-1] == len(listed)
    assert all(a in index for a in listed)
    assert not any(f"absent{i}@hopital-{i % 97}.mssante.fr" in index for i in range(20_000))
    edges = AddressIndex.of(1, array("Q", [0, 2**48 - 1, 2**48, 2**64 - 1]))
    assert list(edges.starts[:3]) == [0, 2, 3] and edges.starts[-2:].tolist() == [3, 4]
