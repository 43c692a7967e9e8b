"""The BAL lifecycle's pure core (mss_relay/lifecycle.py): thresholds, the
notice due, and the notice itself; then the activity store and its
background writer on a real SQLite file."""

from __future__ import annotations

import asyncio
import email
import sqlite3
from datetime import UTC, datetime, timedelta
from email.policy import default
from pathlib import Path

import pytest

from mss_relay.core.mailbox import Bal, BalType
from mss_relay.lifecycle import (
    FLAG_TEXT,
    Activity,
    Flag,
    flags_for,
    notice,
    notice_due,
    status,
)
from mss_relay.state.activity import ActivityRecorder, ActivityStore
from tests.unit.test_hook_errors import DEST, MESSAGE, SENDER, _dialog
from tests.unit.test_recorder import Log

U, W, D = Flag.UNPUBLISHED, Flag.DELETION_WARNING, Flag.TO_DELETE
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
BAL = Bal("accueil@ch-exemple.mssante.fr", BalType.ORGANISATIONNELLE, frozenset({"a", "b"}))


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


@pytest.mark.parametrize(
    ("days", "flags"),
    [
        (0, ()),
        (59, ()),
        (60, (U,)),
        (303, (U,)),
        (304, (U, W)),  # 61 days (two months) before the year is out
        (364, (U, W)),
        (365, (U, W, D)),
        (4000, (U, W, D)),
    ],
)
def test_thresholds(days: int, flags: tuple[Flag, ...]) -> None:
    assert flags_for(days) == flags


def test_the_flag_texts_are_the_issues() -> None:
    assert FLAG_TEXT == {
        U: "inactive 60 days: dépubliée de l'Annuaire",
        W: "suppression dans moins de 2 mois",
        D: "à supprimer (1 an)",
    }


def test_the_last_activity_is_the_latest_date_and_first_seen_stands_in() -> None:
    activity = Activity(first_seen=ago(400), last_auth=ago(90), last_sent=ago(70))
    assert activity.last_activity == ago(70)
    current = status(BAL, activity, NOW)
    assert (current.days_inactive, current.flags) == (70, (U,))
    assert current.deletion_date == ago(70) + timedelta(days=365)
    never = status(BAL, Activity(first_seen=ago(305)), NOW)
    assert never.activity.last_activity is None
    assert (never.days_inactive, never.flag) == (305, W)
    unseen = status(BAL, Activity(), NOW)
    assert (unseen.days_inactive, unseen.flags, unseen.flag) == (None, (), None)
    # A clock set back is no inactivity.
    assert status(BAL, Activity(last_auth=NOW + timedelta(days=3)), NOW).days_inactive == 0


def test_mail_received_is_no_connection() -> None:
    # « sans connexion »: a dormant BAL keeps receiving mail (the relay's own
    # notices among it); what it receives is shown, not counted.
    used = Activity(first_seen=ago(400), last_auth=ago(90), last_received=ago(1))
    assert (used.last_activity, used.reference) == (ago(90), ago(90))
    assert status(BAL, used, NOW).flags == (U,)
    only_receives = status(BAL, Activity(first_seen=ago(61), last_received=ago(0)), NOW)
    assert only_receives.activity.last_activity is None
    assert (only_receives.days_inactive, only_receives.flags) == (61, (U,))
    assert only_receives.deletion_date == ago(61) + timedelta(days=365)


@pytest.mark.parametrize(
    ("days", "sent", "due"),
    [
        (10, (), None),
        (61, (), U),
        (61, (U,), None),
        (305, (U,), W),
        (305, (), W),  # down at 60 days: the warning only (it says unpublished too)
        (305, (W,), None),
        (305, (U, W), None),
        (366, (), None),  # past the deadline: nothing to warn of
    ],
)
def test_the_notice_due(days: int, sent: tuple[Flag, ...], due: Flag | None) -> None:
    assert notice_due(status(BAL, Activity(last_auth=ago(days)), NOW), sent) == due


@pytest.mark.parametrize(
    ("days", "flag", "subject", "words"),
    [
        (
            61,
            U,
            "BAL MSSanté accueil@ch-exemple.mssante.fr : inactive depuis 60 jours,"
            " dépubliée de l'Annuaire",
            ("depuis 61 jours", "dépubliée de l'Annuaire Santé", "date du 01/04/2026"),
        ),
        (
            305,
            W,
            "BAL MSSanté accueil@ch-exemple.mssante.fr : suppression dans moins de 2 mois",
            ("supprimée définitivement dans moins de 2 mois, le 31/07/2026", "déjà dépubliée"),
        ),
    ],
)
def test_the_notice(days: int, flag: Flag, subject: str, words: tuple[str, ...]) -> None:
    current = status(BAL, Activity(last_sent=ago(days)), NOW)
    raw = notice(
        current, flag, sender="no_reply@ch-exemple.mssante.fr", now=NOW, message_id="<T1.x@relay>"
    )
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    assert max(raw) < 128  # 7-bit on the wire: RFC 2047 subject, quoted-printable body
    message = email.message_from_bytes(raw, policy=default)
    assert message["Subject"] == subject
    assert message["From"] == "no_reply@ch-exemple.mssante.fr"
    assert message["To"] == BAL.address
    assert message["Message-ID"] == "<T1.x@relay>"
    assert message["Date"] == "Mon, 01 Jun 2026 12:00:00 +0000"
    assert message["Auto-Submitted"] == "auto-generated"
    body = message.get_content()
    for word in (*words, "connectez-vous-y avant le", "1 an sans connexion"):
        assert word in body, word


def test_a_never_used_bal_is_told_so() -> None:
    current = status(BAL, Activity(first_seen=ago(61)), NOW)
    raw = notice(current, U, sender="a@b.mssante.fr", now=NOW, message_id="<x@y>")
    body = email.message_from_bytes(raw, policy=default).get_content()
    assert "Aucune connexion n'a été constatée sur cette BAL depuis sa mise en service" in body


# The store and the background writer ----------------------------------------------


def test_notes_are_written_in_the_background_latest_date_kept(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await ActivityStore.open(tmp_path / "s.db")
        moments = iter([ago(3), ago(1), ago(2)])
        recorder = ActivityRecorder(store, Log(), clock=lambda: next(moments), gather=0.01)  # type: ignore[arg-type]
        recorder.start()
        await store.seen([BAL.address], ago(400))
        recorder.auth("a")
        recorder.sent("Accueil@CH-exemple.mssante.fr")  # normalized
        await recorder.close(5)
        # Written before: a later write with an older date keeps the later one.
        await store.record(
            {"a": "2020-01-01T00:00:00.000Z"}, {}, {BAL.address: "2026-05-30T12:00:00.000Z"}
        )
        await store.seen([BAL.address], NOW)  # first seen stays the first
        activity = (await store.activities([BAL]))[BAL.address]
        await store.close()
        assert activity == Activity(
            first_seen=ago(400), last_auth=ago(3), last_sent=ago(1), last_received=ago(2)
        )

    asyncio.run(scenario())


def test_a_failed_write_is_kept_and_written_later(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = tmp_path / "s.db"
        store = await ActivityStore.open(path, busy_timeout=0.05)
        log = Log()
        recorder = ActivityRecorder(store, log, gather=0.01, retry_delay=0.05)  # type: ignore[arg-type]
        recorder.start()
        lock = sqlite3.connect(path, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            recorder.sent(BAL.address)
            await log.wait("activity_write_failed")
        finally:
            lock.rollback()
            lock.close()
        await log.wait("activity_write_retried")
        activity = (await store.activities([BAL]))[BAL.address]
        await recorder.close(5)
        await store.close()
        assert activity.last_sent is not None

    asyncio.run(scenario())


class BrokenRecorder:
    """An ActivityRecorder whose notes fail (a bug, memory)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def _fail(self, what: str) -> None:
        self.calls.append(what)
        raise RuntimeError("a bug in a note")

    def auth(self, user: str) -> None:
        self._fail(f"auth {user}")

    def sent(self, bal: str) -> None:
        self._fail(f"sent {bal}")

    def received(self, bal: str) -> None:
        self._fail(f"received {bal}")


def test_a_note_that_fails_leaves_the_250_alone() -> None:
    # The note comes after the upstream's 250: a 451 to the client then would
    # have it send the message again, a duplicate.
    recorder = BrokenRecorder()
    lines = [b"EHLO client.test", f"MAIL FROM:<{SENDER}>".encode(), f"RCPT TO:<{DEST}>".encode()]
    replies, upstream, logger = asyncio.run(
        asyncio.wait_for(_dialog([*lines, b"DATA", MESSAGE], activity=recorder), 30)
    )
    assert [r[:9] for r in replies[1:]] == ["250 2.1.0", "250 2.1.5", "354 End d", "250 2.0.0"]
    assert upstream.steps == [f"MAIL {SENDER}", f"RCPT {DEST}", "DATA"]
    assert recorder.calls == [f"sent {SENDER}"]
    failed = [c.kwargs for c in logger.calls if c.kwargs.get("event") == "activity_note_failed"]
    assert len(failed) == 1 and failed[0]["error"] == "RuntimeError"  # the type only
    assert "a bug in a note" not in str(failed)
    assert not any(c.kwargs.get("event") == "internal_error" for c in logger.calls)
