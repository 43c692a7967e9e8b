"""The report's pure parts: the period, the files, the counting, the renderings."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mss_relay.logfiles import log_files
from mss_relay.report import LogLines, aggregate, parse_since
from mss_relay.report_html import _axis_top, render_html
from mss_relay.report_text import render_text

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
START = NOW - timedelta(days=30)
BAL = "jean.dupont@ch-exemple.mssante.fr"
OTHER_BAL = "accueil@ch-exemple.mssante.fr"
PATIENT = "295109912611193@patient.mssante.fr"
INS = "295109912611193"
STRUCTURE = [BAL, OTHER_BAL, "secretariat@ch-exemple.mssante.fr"]


def line(ts: str, event: str, **fields: Any) -> str:
    return json.dumps({"ts": ts, "level": "info", "event": event, **fields})


def decision(ts: str, txid: str | None, stage: str, verdict: str, rule: str, **f: Any) -> str:
    return line(ts, "decision", txid=txid, stage=stage, verdict=verdict, rule=rule, **f)


def transaction(ts: str, txid: str, outcome: str, sender: str, **f: Any) -> str:
    return line(ts, "transaction", txid=txid, outcome=outcome, sender=sender, **f)


LOG = [
    # 20 November: one delivered, one refused at the end of DATA, one refused at RCPT
    # (the client then gives up: « abandoned »), one refused at MAIL (no transaction).
    decision("2026-11-20T08:00:00.000Z", "T1", "data", "accept", "data"),
    transaction("2026-11-20T08:00:00.100Z", "T1", "delivered", BAL, recipients=[PATIENT]),
    decision("2026-11-20T09:00:00.000Z", "T2", "data", "reject", "dangerous_attachment"),
    transaction("2026-11-20T09:00:00.100Z", "T2", "rejected", BAL, reply="« a.exe »"),
    decision("2026-11-20T10:00:00.000Z", "T3", "rcpt", "reject", "trust_space"),
    transaction("2026-11-20T10:00:00.100Z", "T3", "abandoned", OTHER_BAL),
    decision("2026-11-20T11:00:00.000Z", "T4", "mail", "reject", "sender_owned", sender=BAL),
    # 21 November: a patient refused (not named), an external sender refused
    # (not named), a temporary failure, the upstream refusing, the milter accepting.
    decision("2026-11-21T08:00:00.000Z", "T5", "data", "reject", "patient_conversation"),
    line("2026-11-21T08:00:00.050Z", "patient_message", patient=PATIENT, result="refused"),
    transaction("2026-11-21T08:00:00.100Z", "T5", "rejected", PATIENT),
    decision(
        "2026-11-21T09:00:00.000Z",
        "T6",
        "mail",
        "reject",
        "sender_trust_space",
        sender="x@gmail.com",
    ),
    transaction("2026-11-21T10:00:00.000Z", "T7", "tempfailed", BAL),
    transaction("2026-11-21T11:00:00.000Z", "T8", "permfailed", BAL),
    transaction("2026-11-21T12:00:00.000Z", "T9", "accepted", "dr@chu-b.mssante.fr"),
    # A partial refusal: one recipient refused, the message delivered to the others.
    decision("2026-11-21T13:00:00.000Z", "TA", "rcpt", "reject", "patient_matricule"),
    transaction("2026-11-21T13:00:00.100Z", "TA", "delivered", BAL),
    # Refused while DATA came in (size): no decision line, the transaction's own.
    transaction("2026-11-21T13:30:00.000Z", "TC", "rejected", BAL, rule=None),
    # A tempfail at RCPT counts as a refusal too; a hostile rule is not shown.
    decision("2026-11-21T14:00:00.000Z", "TB", "rcpt", "tempfail", "<img src=x>"),
    transaction("2026-11-21T14:00:00.100Z", "TB", "abandoned", BAL),
    # Conversations.
    line("2026-11-20T08:00:00.090Z", "conversation_opened", bal=BAL, patient=PATIENT),
    line("2026-11-21T08:00:00.000Z", "conversation_closed", bal=BAL, patient=PATIENT, how="fin"),
    line("2026-11-22T03:00:00.000Z", "conversations_auto_closed", count=3, how="idle"),
    # Authentication.
    line("2026-11-22T04:00:00.000Z", "auth", user="jdupont", result="failure"),
    # smtplib's AUTH LOGIN after a refused PLAIN, same password: one failure.
    line("2026-11-22T04:00:00.050Z", "auth", user="jdupont", result="failure", repeated=True),
    line("2026-11-22T04:00:01.000Z", "auth", user="jdupont", result="locked"),
    line("2026-11-22T04:00:02.000Z", "auth", user="jdupont", result="success"),
    # Lifecycle: the latest line per BAL wins; a patient address is never a BAL.
    line(
        "2026-11-23T00:00:00.000Z",
        "bal_lifecycle",
        bal=OTHER_BAL,
        bal_type="organisationnelle",
        flag="unpublished",
        last_activity="2026-09-20",
        days_inactive=64,
    ),
    line(
        "2026-11-25T00:00:00.000Z",
        "bal_lifecycle",
        bal=OTHER_BAL,
        bal_type="organisationnelle",
        flag="deletion_warning",
        last_activity="2026-01-20T10:00:00Z",
        days_inactive=309,
    ),
    line(
        "2026-11-25T00:00:00.000Z",
        "bal_lifecycle",
        bal="secretariat@ch-exemple.mssante.fr",
        bal_type="organisationnelle",
        flag="to_delete",
        last_activity=None,
        days_inactive=400,
    ),
    line("2026-11-25T00:00:00.000Z", "bal_lifecycle", bal=PATIENT, bal_type="x", flag="to_delete"),
    line(
        "2026-11-25T00:00:01.000Z", "lifecycle_notice_sent", bal=OTHER_BAL, flag="deletion_warning"
    ),
    # Outside the period, and lines that are no log line.
    transaction("2026-10-01T08:00:00.000Z", "T0", "delivered", BAL),
    "not json at all",
    "[1, 2]",
    json.dumps({"level": "info", "event": "transaction"}),
    json.dumps({"ts": "yesterday", "event": "transaction"}),
    json.dumps({"ts": "2026-11-20T08:00:00Z", "event": 7}),
    "",
]


@pytest.fixture
def report() -> Any:
    return aggregate(LOG, START, NOW, STRUCTURE, UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", NOW - timedelta(days=30)),
        ("12h", NOW - timedelta(hours=12)),
        ("2w", NOW - timedelta(weeks=2)),
        (" 7D ", NOW - timedelta(days=7)),
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01T08:30", datetime(2026, 11, 1, 8, 30, tzinfo=UTC)),
        ("2026-11-01T08:30:00Z", datetime(2026, 11, 1, 8, 30, tzinfo=UTC)),
        ("2026-11-01T08:30:00+01:00", datetime(2026, 11, 1, 7, 30, tzinfo=UTC)),
    ],
)
def test_since(text: str, expected: datetime) -> None:
    assert parse_since(text, NOW, UTC) == expected


@pytest.mark.parametrize("text", ["30", "d", "30y", "-3d", "2026-13-01", "", "2027-01-01"])
def test_since_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--since"):
        parse_since(text, NOW, UTC)


def test_rotated_files_oldest_first(tmp_path: Path) -> None:
    log = tmp_path / "mss-relay.jsonl"
    names = [
        "mss-relay.jsonl",
        "mss-relay.jsonl.1",
        "mss-relay.jsonl.2.gz",
        "mss-relay.jsonl.10.gz",
        "mss-relay.jsonl-20261101.gz",
        "mss-relay.jsonl.bak",
        "mss-relay.jsonl.1.gz.tmp",
        "other.jsonl.1",
    ]
    for name in names:
        (tmp_path / name).write_text("")
    assert [p.name for p in log_files(log)] == [
        "mss-relay.jsonl-20261101.gz",
        "mss-relay.jsonl.10.gz",
        "mss-relay.jsonl.2.gz",
        "mss-relay.jsonl.1",
        "mss-relay.jsonl",
    ]
    assert log_files(tmp_path / "absent.jsonl") == []


def test_lines_of_plain_gzip_and_truncated_files(tmp_path: Path) -> None:
    (tmp_path / "log").write_text("c\n")
    (tmp_path / "log.1").write_text("b\n")
    (tmp_path / "log.2.gz").write_bytes(gzip.compress(b"a\n"))
    (tmp_path / "log.3.gz").write_bytes(gzip.compress(b"lost\n" * 1000)[:30])
    lines = LogLines(log_files(tmp_path / "log"))
    assert [text.strip() for text in lines] == ["a", "b", "c"]
    assert len(lines.problems) == 1 and lines.problems[0].startswith("log.3.gz: ")


def test_messages_per_day_by_outcome(report: Any) -> None:
    assert report.days[0] == date(2026, 11, 1) and report.days[-1] == date(2026, 12, 1)
    assert len(report.days) == 31
    assert dict(report.messages[date(2026, 11, 20)]) == {"delivered": 1, "refused": 3}
    assert dict(report.messages[date(2026, 11, 21)]) == {
        "refused": 4,
        "tempfailed": 1,
        "upstream_refused": 1,
        "delivered": 2,
    }
    assert report.total() == 12 and report.total("refused") == 7
    assert not report.messages[date(2026, 11, 19)]  # the line of 1 October: before the period


def test_refusals_per_rule(report: Any) -> None:
    assert dict(report.refusals) == {
        "dangerous_attachment": 1,
        "trust_space": 1,
        "sender_owned": 1,
        "patient_conversation": 1,
        "sender_trust_space": 1,
        "patient_matricule": 1,
        "autre": 2,  # the hostile rule, the size refusal without one
    }


def test_refused_senders_are_the_structures_only(report: Any) -> None:
    assert dict(report.refused_senders) == {BAL: 4, OTHER_BAL: 1}
    assert report.hidden_senders == 2  # the patient, gmail.com


def test_conversations_auth_lifecycle_and_skipped(report: Any) -> None:
    assert report.conversations[date(2026, 11, 20)]["opened"] == 1
    assert report.conversations[date(2026, 11, 21)]["closed"] == 1
    assert report.conversations[date(2026, 11, 22)]["closed"] == 3
    assert dict(report.closings) == {"fin": 1, "idle": 3}
    assert (report.auth_failures, report.auth_locked) == (1, 1)
    rows = [(r.bal, r.flag, r.last_activity, r.days_inactive, r.notices) for r in report.lifecycle]
    assert rows == [
        ("secretariat@ch-exemple.mssante.fr", "to_delete", None, 400, 0),
        (OTHER_BAL, "deletion_warning", date(2026, 1, 20), 309, 1),
    ]
    assert report.skipped == 5


def test_days_follow_the_time_zone() -> None:
    late = [transaction("2026-11-20T23:30:00.000Z", "T1", "delivered", BAL)]
    paris = timezone(timedelta(hours=1))  # CET: already the 21st
    assert aggregate(late, START, NOW, STRUCTURE, paris).messages[date(2026, 11, 21)]["delivered"]
    assert aggregate(late, START, NOW, STRUCTURE, UTC).messages[date(2026, 11, 20)]["delivered"]


@pytest.mark.parametrize(
    ("peak", "top"), [(0, 4), (1, 4), (4, 4), (5, 8), (9, 20), (21, 40), (199, 200), (201, 400)]
)
def test_axis_top_gives_whole_ticks(peak: int, top: int) -> None:
    assert _axis_top(peak) == top and top % 4 == 0


def test_renderings_show_no_health_data(report: Any) -> None:
    page = render_html(report, NOW, UTC)
    text = render_text(report, NOW, UTC)
    for output in (page, text):
        assert PATIENT not in output and INS not in output
        assert "a.exe" not in output and "gmail" not in output
        assert BAL in output and "secretariat@ch-exemple.mssante.fr" in output
        assert "Seules les BAL de la structure sont nommées" in output
        assert "5 ligne(s) illisible(s) ignorée(s)" in output
    assert "<img" not in page and "src=" not in page and "href=" not in page
    assert "http://" not in page and "https://" not in page
    assert "default-src 'none'" in page


def test_html_has_every_chart_and_the_figures(report: Any) -> None:
    page = render_html(report, NOW, UTC)
    for chart in ("messages", "refusals", "senders", "conversations", "lifecycle"):
        assert f'data-chart="{chart}"' in page
    assert page.count('data-mark="1"') >= 15
    assert "Période du 01/11/2026 12:00 au 01/12/2026 12:00 (heure UTC+00:00)" in page
    assert "<b>12</b>" in page  # messages in all
    assert "Type de pièce jointe interdit" in page
    assert "Suppression dans moins de 2 mois" in page


def test_text_has_the_same_figures(report: Any) -> None:
    text = render_text(report, NOW, UTC)
    assert "Messages : 12 · Transmis : 3 · Refusés : 7" in text
    assert "Conversations : 1 ouverte(s), 4 close(s)" in text
    assert "20/11/2026" in text and "Refusés par l'opérateur" in text
    assert "À supprimer (1 an sans activité) : 1" in text


def test_an_empty_period_says_so() -> None:
    empty = aggregate([], START, NOW, STRUCTURE, UTC)
    page = render_html(empty, NOW, UTC)
    assert page.count('data-empty="1"') == 5
    assert "Aucun" in render_text(empty, NOW, UTC)


_EVENTS = st.sampled_from(
    [
        "decision",
        "transaction",
        "conversation_opened",
        "conversation_closed",
        "conversations_auto_closed",
        "auth",
        "bal_lifecycle",
        "lifecycle_notice_sent",
        "other",
    ]
)
_VALUES = st.one_of(
    st.none(),
    st.integers(-5, 10**12),
    st.booleans(),
    st.sampled_from(
        [
            PATIENT,
            INS,
            BAL,
            f"{INS}@ch-exemple.mssante.fr",
            "reject",
            "mail",
            "unpublished",
            "to_delete",
            "abandoned",
            "2026-11-20",
            "x" * 300,
        ]
    ),
    st.text(max_size=20),
    st.lists(st.text(max_size=5), max_size=3),
)
_FIELDS = st.sampled_from(
    [
        "txid",
        "stage",
        "verdict",
        "rule",
        "sender",
        "outcome",
        "count",
        "how",
        "result",
        "bal",
        "bal_type",
        "flag",
        "last_activity",
        "days_inactive",
        "patient",
    ]
)


@st.composite
def _log_line(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return draw(st.text(max_size=40))
    fields = draw(st.dictionaries(_FIELDS, _VALUES, max_size=8))
    ts = draw(st.sampled_from(["2026-11-20T08:00:00.000Z", "2026-11-21T23:59:59Z", "bad", None]))
    return json.dumps({"ts": ts, "event": draw(_EVENTS), **fields})


@given(st.lists(_log_line(), max_size=30))
def test_any_log_is_reported_without_health_data(lines: list[str]) -> None:
    """Whatever the lines hold, the report is made, and names no patient:
    neither a patient address nor an INS, even in a structure's domain."""
    report = aggregate(lines, START, NOW, [*STRUCTURE, f"{INS}@ch-exemple.mssante.fr"], UTC)
    for output in (render_html(report, NOW, UTC), render_text(report, NOW, UTC)):
        assert INS not in output and "@patient.mssante.fr" not in output


def test_an_ins_or_a_former_bal_is_never_shown() -> None:
    odd = f"{INS}@ch-exemple.mssante.fr"
    lines = [
        decision("2026-11-20T08:00:00Z", None, "mail", "reject", "sender_owned", sender=odd),
        line("2026-11-20T08:00:00Z", "bal_lifecycle", bal=odd, bal_type="x", flag="to_delete"),
        # A BAL no longer in the configuration: gone, not shown.
        line(
            "2026-11-20T08:00:00Z",
            "bal_lifecycle",
            bal="ancienne@ch-exemple.mssante.fr",
            bal_type="nominative",
            flag="to_delete",
        ),
    ]
    report = aggregate(lines, START, NOW, [*STRUCTURE, odd], UTC)
    assert report.hidden_senders == 1 and report.lifecycle == ()
    assert INS not in render_html(report, NOW, UTC) + render_text(report, NOW, UTC)
