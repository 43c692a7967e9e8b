"""The conversation store on a real SQLite file, with a clock the test moves."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mss_relay.core.conversation import Change, Status
from mss_relay.state.conversations import ConversationStore
from mss_relay.state.database import MIGRATIONS
from tests.support.keys import TEST_PSEUDONYMS

P = "295109912611193@patient.mssante.fr"
DR = "dr@ch.mssante.fr"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_open_continue_close_and_lookup(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = Clock()
        store = await ConversationStore.open(
            tmp_path / "s.db", clock=clock, pseudonyms=TEST_PSEUDONYMS
        )
        try:
            events = await store.apply(Change(DR, P, "<m1@x>", "out"), "dr")
            assert [e for e, _ in events] == ["conversation_opened"]
            assert (await store.lookup(P, ["<m1@x>"])).status is Status.OPEN
            assert (await store.lookup(P, ["<other@x>"])).status is Status.NONE
            assert (await store.lookup(P, ["<other@x>"])).patient_has_open
            assert (await store.lookup("x@patient.mssante.fr", ["<m1@x>"])).status is Status.NONE
            events = await store.apply(Change(DR, P, "<m2@x>", "out", close="fin"), "dr")
            assert [e for e, _ in events] == ["conversation_continued", "conversation_closed"]
            facts = await store.lookup(P, ["<m1@x>"])
            assert facts.status is Status.CLOSED and facts.closed_how == "fin"
            # A new message opens a new conversation; the old one stays closed.
            await store.apply(Change(DR, P, "<m3@x>", "out"), "dr")
            assert (await store.lookup(P, ["<m3@x>"])).status is Status.OPEN
            assert (await store.lookup(P, ["<m1@x>"])).status is Status.CLOSED
            rows = await store.listing()
            assert [r.is_open for r in rows] == [True, False]
        finally:
            await store.close()

    run(scenario())


def test_idle_and_purge(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = Clock()
        store = await ConversationStore.open(
            tmp_path / "s.db", clock=clock, idle_days=30, pseudonyms=TEST_PSEUDONYMS
        )
        try:
            await store.apply(Change(DR, P, "<m1@x>", "out"), "dr")
            clock.advance(days=29)
            assert (await store.lookup(P, ["<m1@x>"])).status is Status.OPEN
            clock.advance(days=2)
            assert (await store.lookup(P, ["<m1@x>"])).status is Status.CLOSED
            assert await store.close_idle() == 1
            clock.advance(days=91)
            assert await store.purge(92) == (0, 0)
            clock.advance(days=2)
            assert await store.purge(92) == (1, 1)
            assert await store.listing() == []
        finally:
            await store.close()

    run(scenario())


def test_migrations_are_versioned_and_idempotent(tmp_path: Path) -> None:
    async def twice() -> None:
        for _ in range(2):
            store = await ConversationStore.open(tmp_path / "s.db", pseudonyms=TEST_PSEUDONYMS)
            await store.close()

    run(twice())
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_concurrent_changes_keep_one_open_conversation(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await ConversationStore.open(tmp_path / "s.db", pseudonyms=TEST_PSEUDONYMS)
        try:
            await asyncio.gather(
                *(store.apply(Change(DR, P, f"<m{i}@x>", "out"), "dr") for i in range(20))
            )
            rows = await store.listing("open")
            assert len(rows) == 1 and rows[0].messages == 20
        finally:
            await store.close()

    run(scenario())


@pytest.mark.parametrize("how", ["admin"])
def test_administrative_close(tmp_path: Path, how: str) -> None:
    async def scenario() -> None:
        store = await ConversationStore.open(tmp_path / "s.db", pseudonyms=TEST_PSEUDONYMS)
        try:
            await store.apply(Change(DR, P, "<m1@x>", "out"), "dr")
            assert await store.close_conversation(DR, P, how, "admin:root") is not None
            assert await store.close_conversation(DR, P, how, "admin:root") is None
            assert (await store.lookup(P, ["<m1@x>"])).closed_how == how
        finally:
            await store.close()

    run(scenario())
