"""The Recorder (issue 13, defects 3 and 9a) on a real SQLite file, locked by
a sqlite3 connection of the test, deleted by the test."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from mss_relay.config import ConfigError, parse_config
from mss_relay.core.conversation import Change, ConversationFacts, Status
from mss_relay.core.rules.inbound import patient_conversation
from mss_relay.state.conversations import ConversationStore
from mss_relay.state.database import StateLost, marker_path
from mss_relay.state.recorder import Recorder
from tests.support.keys import TEST_PSEUDONYMS
from tests.unit.test_conversation import BALS, _facts

P = "295109912611193@patient.mssante.fr"
DR = "dr@ch.mssante.fr"


class Log:
    """The lines a Recorder logs: (level, event, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def _add(self, level: str, event: str, fields: dict[str, Any]) -> None:
        self.lines.append((level, event, fields))

    def info(self, event: str, **fields: Any) -> None:
        self._add("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._add("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._add("error", event, fields)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [f for _, e, f in self.lines if e == name]

    async def wait(self, name: str, count: int = 1) -> list[dict[str, Any]]:
        async with asyncio.timeout(30):
            while len(self.events(name)) < count:  # noqa: ASYNC110 (a test's condition)
                await asyncio.sleep(0.01)
        return self.events(name)


async def _recorder(path: Path, log: Log, **settings: Any) -> Recorder:
    store = await ConversationStore.open(path, busy_timeout=0.05, pseudonyms=TEST_PSEUDONYMS)
    recorder = Recorder(store, log, **settings)  # type: ignore[arg-type]
    recorder.start()
    return recorder


async def _stop(recorder: Recorder, grace: float = 5.0) -> None:
    await recorder.close(grace)
    await recorder.store.close()


def _lock(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    return db


def _delete(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _replace(path: Path) -> None:
    """A restore by copy under the running relay: another file, same path."""
    copy = path.with_name("copy.db")
    copy.write_bytes(path.read_bytes())
    copy.replace(path)


def test_a_locked_database_defers_the_writes_in_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = Log()
        recorder = await _recorder(tmp_path / "s.db", log, timeout=0.05)
        lock = _lock(tmp_path / "s.db")
        try:
            await recorder.record([Change(DR, P, "<m1@x>", "out")], "dr", "T1", log)  # type: ignore[arg-type]
            await recorder.record([Change(DR, P, "<m2@x>", "out", close="fin")], "dr", "T2", log)  # type: ignore[arg-type]
            # Both replies came back while the lock is held.
            deferred = log.events("state_write_deferred")
            assert [d["message_id"] for d in deferred] == ["<m1@x>", "<m2@x>"]
            assert all("patient" not in d for d in deferred)
            assert recorder.unavailable(P) == "write pending"
            assert recorder.unavailable("185057800608491@patient.mssante.fr") is None
            facts = await recorder.lookup(P, ["<m1@x>"])
            assert facts.status is Status.UNAVAILABLE and facts.unavailable == "write pending"
        finally:
            lock.rollback()
            lock.close()
        retried = await log.wait("state_write_retried", 2)
        assert [r["message_id"] for r in retried] == ["<m1@x>", "<m2@x>"]
        assert retried[0]["conversation"] == retried[1]["conversation"] is not None
        # The [FIN] came after the open: the conversation is closed, not open.
        assert (await recorder.lookup(P, ["<m1@x>"])).status is Status.CLOSED
        await _stop(recorder)

    asyncio.run(scenario())


def test_a_write_in_time_is_not_deferred(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = Log()
        recorder = await _recorder(tmp_path / "s.db", log, timeout=30)
        await recorder.record([Change(DR, P, "<m1@x>", "out")], "dr", "T1", log)  # type: ignore[arg-type]
        assert [e for _, e, _ in log.lines] == ["conversation_opened"]
        assert (await recorder.lookup(P, ["<m1@x>"])).status is Status.OPEN
        await _stop(recorder)

    asyncio.run(scenario())


def test_a_full_queue_refuses_and_a_stop_gives_up_the_rest(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = Log()
        recorder = await _recorder(tmp_path / "s.db", log, timeout=0.01, limit=2)
        lock = _lock(tmp_path / "s.db")
        try:
            for i in range(3):
                change = Change(DR, P, f"<m{i}@x>", "out")
                await recorder.record([change], "dr", f"T{i}", log)  # type: ignore[arg-type]
            assert recorder.unavailable() == "write queue full"
            failed = log.events("state_write_failed")
            assert [(f["message_id"], f["reason"]) for f in failed] == [
                ("<m2@x>", "write queue full")
            ]
            await _stop(recorder, grace=0.1)
        finally:
            lock.rollback()
            lock.close()
        failed = log.events("state_write_failed")
        assert [(f["message_id"], f["reason"]) for f in failed[1:]] == [
            ("<m0@x>", "stopping"),
            ("<m1@x>", "stopping"),
        ]

    asyncio.run(scenario())


def test_a_deleted_database_is_lost_until_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = Log()
        path = tmp_path / "s.db"
        recorder = await _recorder(path, log, check_interval=0.01)
        assert marker_path(path).exists()
        await asyncio.to_thread(_delete, path)
        lost = await log.wait("state_lost")
        assert lost[0]["how"] == "deleted"
        assert recorder.unavailable() == "database deleted"
        assert (await recorder.lookup(P, [])).status is Status.UNAVAILABLE
        await recorder.record([Change(DR, P, "<m1@x>", "out")], "dr", "T1", log)  # type: ignore[arg-type]
        assert log.events("state_write_failed")[0]["reason"] == "database deleted"
        await _stop(recorder)
        # No new empty database in its place.
        with pytest.raises(StateLost, match="marker"):
            await ConversationStore.open(path, pseudonyms=TEST_PSEUDONYMS)
        assert not path.exists()

    asyncio.run(scenario())


def test_a_replaced_database_is_lost(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = Log()
        path = tmp_path / "s.db"
        recorder = await _recorder(path, log, check_interval=0.01)
        await asyncio.to_thread(_replace, path)
        assert (await log.wait("state_lost"))[0]["how"] == "replaced"
        await _stop(recorder)

    asyncio.run(scenario())


def test_unavailable_state_tempfails_a_patient_even_to_an_officine() -> None:
    facts = ConversationFacts(Status.UNAVAILABLE, unavailable="write pending")
    for recipients in ((DR,), ("officine@ph.mssante.fr",)):
        verdict = patient_conversation(_facts(recipients), facts, BALS)
        assert verdict is not None and verdict.reply is not None
        assert (verdict.reply.code, verdict.reply.enhanced) == (451, "4.3.0")
        assert verdict.reason == "conversation state unavailable (write pending)"


def _parse(state: dict[str, object]) -> float:
    # A milter needs no upstream, no TLS: the smallest valid configuration.
    milter = {"name": "m", "role": "milter", "host": "127.0.0.1", "port": 1, "tls": "none"}
    config = parse_config({"listeners": [milter], "state": state}, Path("/tmp/relay.yaml"))
    return config.record_timeout


@pytest.mark.parametrize(("value", "expected"), [(None, 2.0), (0.5, 0.5), ("5s", 5.0), (1, 1.0)])
def test_record_timeout_setting(value: object, expected: float) -> None:
    state: dict[str, object] = {"database": "var/s.db"}
    if value is not None:
        state["record_timeout"] = value
    assert _parse(state) == expected


@pytest.mark.parametrize("value", [0, "2 minutes", "soon"])
def test_record_timeout_errors_name_the_key(value: object) -> None:
    state = {"database": "var/s.db", "record_timeout": value}
    with pytest.raises(ConfigError, match=r"^state\.record_timeout: "):
        _parse(state)
