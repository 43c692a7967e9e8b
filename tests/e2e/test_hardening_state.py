"""The state database under trouble (issue 13, defects 3 and 9a), end to end:
the real relay, the real SQLite file, locked by a connection of this test
process or deleted under the running relay."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Pki, two_sided
from tests.e2e.test_conversations import DR, P1, P2, Conversations
from tests.support.mail import connect, make_message, send

COLLEAGUE = "dr.martin@chu-b.mssante.fr"


@pytest.fixture
def conv(tmp_path: Path, pki: Pki, password_hashes: dict[str, str]) -> Iterator[Conversations]:
    with two_sided(tmp_path, pki, password_hashes, state={"database": "var/state.sqlite3"}) as (
        relay,
        operator,
        mailbox,
    ):
        yield Conversations(relay, operator, mailbox, pki)


def _lock(conv: Conversations) -> sqlite3.Connection:
    """Another process's writer holding the database: BEGIN EXCLUSIVE."""
    db = sqlite3.connect(
        conv.relay.workdir / "var" / "state.sqlite3", isolation_level=None, check_same_thread=False
    )
    db.execute("BEGIN EXCLUSIVE")
    return db


def _recorded(conv: Conversations, message_id: str) -> bool:
    with conv.db() as db:
        rows = db.execute("SELECT 1 FROM messages WHERE message_id = ?", [message_id]).fetchall()
    return bool(rows)


def test_the_250_does_not_wait_for_a_locked_database(conv: Conversations) -> None:
    lock = _lock(conv)
    try:
        # The reply comes while the lock is still held: the write goes on in
        # the background (on the old code the client waited for busy_timeout,
        # and the conversation was never recorded).
        code, mid = conv.professional_sends(P1)
        assert code == 250
        deferred = conv.relay.wait_event("state_write_deferred")
        assert deferred and deferred[-1]["message_id"] == mid
        assert "patient" not in deferred[-1]  # no INS beyond what the log had
        assert not _recorded(conv, mid)
        # A patient replying before the write is done is asked to retry.
        code, text = conv.patient_sends(P1, in_reply_to=mid)
        assert (code, text[:5]) == (451, b"4.3.0"), text
    finally:
        lock.rollback()
        lock.close()
    retried = conv.relay.wait_event("state_write_retried", timeout=30)
    assert retried and retried[-1]["message_id"] == mid
    assert _recorded(conv, mid)
    assert conv.relay.events("state_error") == []
    code, text = conv.patient_sends(P1, in_reply_to=mid)
    assert code == 250, text


def test_an_open_and_its_fin_are_recorded_in_order(conv: Conversations) -> None:
    lock = _lock(conv)
    try:
        code, first = conv.professional_sends(P2)
        assert code == 250
        code, fin = conv.professional_sends(P2, subject="[FIN]")
        assert code == 250
    finally:
        lock.rollback()
        lock.close()
    conv.relay.wait_event("state_write_retried", count=2, timeout=30)
    with conv.db() as db:
        sql = "SELECT closed_at IS NOT NULL, close_reason FROM conversations"
        rows = db.execute(sql).fetchall()
    assert rows == [(1, "fin")]
    assert _recorded(conv, first) and _recorded(conv, fin)


def test_a_graceful_stop_flushes_the_pending_writes(conv: Conversations) -> None:
    lock = _lock(conv)
    code, mid = conv.professional_sends(P1)
    assert code == 250
    conv.relay.wait_event("state_write_deferred")
    # The lock goes away while the relay stops: the stop writes what is pending.
    releaser = threading.Timer(0.5, lambda: (lock.rollback(), lock.close()))
    releaser.start()
    try:
        assert conv.relay.stop() == 0
    finally:
        releaser.join()
    assert _recorded(conv, mid)


def test_a_deleted_database_is_detected_and_patient_mail_refused(conv: Conversations) -> None:
    code, mid = conv.professional_sends(P1)
    assert code == 250
    for suffix in ("", "-wal", "-shm"):
        (conv.relay.workdir / "var" / f"state.sqlite3{suffix}").unlink(missing_ok=True)
    lost = conv.relay.wait_event("state_lost", timeout=20)
    assert lost and lost[-1]["level"] == "error"
    code, text = conv.patient_sends(P1, in_reply_to=mid)
    assert (code, text[:5]) == (451, b"4.3.0"), text
    with connect(conv.submission, "jdupont") as client:
        rcpt, _ = send(client, DR, [P2], make_message(sender=DR, to=P2))
    assert [(code, text[:5]) for code, text in rcpt] == [(451, b"4.3.0")]
    # Mail between professionals needs no conversation state: it goes on.
    code, _ = conv.professional_sends(COLLEAGUE)
    assert code == 250


def test_a_relay_does_not_start_afresh_on_a_deleted_database(conv: Conversations) -> None:
    code, _ = conv.professional_sends(P1)
    assert code == 250
    assert conv.relay.stop() == 0
    for suffix in ("", "-wal", "-shm"):
        (conv.relay.workdir / "var" / f"state.sqlite3{suffix}").unlink(missing_ok=True)
    with pytest.raises(RuntimeError, match="exited"):
        conv.relay.start()
    assert "state.database" in conv.relay.process.stderr()
    assert not (conv.relay.workdir / "var" / "state.sqlite3").exists()
    assert conv.relay.events("state_lost")
