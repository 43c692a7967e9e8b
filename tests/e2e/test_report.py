"""The report from the log of a real relay run: accepted and refused mail, a
patient conversation opened, answered and closed; plus the lines the BAL
lifecycle writes (appended here) and a rotated file. The page is opened in
headless Chromium: its charts laid out, no script error, a screenshot drawn
in the charts' colours; no patient address or INS anywhere."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from mss_relay.log import iso_ms
from mss_relay.report_html import COLOURS
from tests.conftest import Pki, two_sided
from tests.e2e.test_conversations import DR, P1, P2, Conversations
from tests.support import browser, png
from tests.support.mail import connect, make_message, send
from tests.support.processes import ROOT
from tests.support.tools import required

INSES = (P1.split("@")[0], P2.split("@")[0])
ACCUEIL = "accueil@ch-exemple.mssante.fr"
SECRETARIAT = "secretariat@ch-exemple.mssante.fr"


@dataclass(frozen=True)
class Run:
    config: Path
    log: Path


def _line(moment: datetime, event: str, **fields: Any) -> str:
    return json.dumps({"ts": iso_ms(moment), "level": "info", "event": event, **fields}) + "\n"


@pytest.fixture(scope="module")
def run(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, password_hashes: dict[str, str]
) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("report")
    with two_sided(tmp, pki, password_hashes) as (relay, operator, mailbox):
        conv = Conversations(relay, operator, mailbox, pki)
        code, mid = conv.professional_sends(P1)
        assert code == 250
        assert conv.patient_sends(P1, in_reply_to=mid)[0] == 250
        assert conv.professional_sends(P1, subject="[FIN]")[0] == 250
        assert conv.patient_sends(P2)[0] == 550  # no conversation: refused, not named
        with connect(conv.submission) as client:
            assert send(client, DR, ["dr.martin@chu-b.mssante.fr"], make_message())[1][0] == 250
            assert send(client, DR, ["x@gmail.com"], make_message())[0][0][0] == 550
            exe = make_message(attachments={f"ordonnance-{INSES[0]}.exe": b"MZ" * 64})
            assert send(client, DR, ["dr.martin@chu-b.mssante.fr"], exe)[1][0] == 550
        relay.wait_event("transaction", count=7)
        relay.wait_event("conversation_closed")
    log = relay.log_path
    written = log.read_text(encoding="utf-8")
    # What the report must leave out is there to leave out: patients, as
    # pseudonyms (issue 17: the log names neither their INS nor a file).
    assert relay.pseudonym(P1) in written and relay.pseudonym(P2) in written
    assert P1 not in written and "[nom masque]" in written
    now = datetime.now(UTC)
    # The BAL lifecycle's lines (another part of the relay writes them), a
    # patient address where a BAL should be (never shown), and a broken line.
    with log.open("a", encoding="utf-8") as appended:
        for bal, flag, days in (
            (ACCUEIL, "deletion_warning", 310),
            (SECRETARIAT, "to_delete", 366),
        ):
            last = (now - timedelta(days=days)).date().isoformat()
            appended.write(
                _line(
                    now,
                    "bal_lifecycle",
                    bal=bal,
                    bal_type="organisationnelle",
                    flag=flag,
                    last_activity=last,
                    days_inactive=days,
                )
            )
        appended.write(_line(now, "lifecycle_notice_sent", bal=ACCUEIL, flag="deletion_warning"))
        appended.write(_line(now, "bal_lifecycle", bal=P2, bal_type="nominative", flag="to_delete"))
        appended.write('{"ts": "2026-\n')
    # Yesterday's file, rotated and compressed by logrotate.
    yesterday = _line(now - timedelta(days=1), "transaction", txid="OLD", outcome="delivered")
    (log.parent / f"{log.name}.1.gz").write_bytes(gzip.compress((yesterday + "garbage\n").encode()))
    yield Run(relay.config_path, log)


def _report(
    run: Run, *options: str, faketime: str | None = None
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mss_relay", "report", "--config", str(run.config), *options]
    if faketime is not None:
        command = [required("faketime", package="faketime"), "-f", faketime, *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)


def _no_health_data(text: str) -> None:
    for secret in (P1, P2, *INSES, ".exe", "gmail", "Résultats"):
        assert secret not in text, secret


def test_text_report(run: Run) -> None:
    done = _report(run, "--since", "2d")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "Messages : 8 · Transmis : 5 · Refusés : 3" in text
    assert "Conversations : 1 ouverte(s), 1 close(s)" in text
    assert re.search(r"Destinataire hors de l'espace de confiance\s+trust_space\s+1", text)
    assert re.search(r"Type de pièce jointe interdit\s+dangerous_attachment\s+1", text)
    assert re.search(r"Patient hors d'une conversation ouverte\s+patient_conversation\s+1", text)
    assert re.search(r"jean\.dupont@ch-exemple\.mssante\.fr\s+2\n", text)
    assert "1 message(s) refusé(s) d'autres expéditeurs" in text
    assert re.search(r"accueil@ch-exemple\.mssante\.fr\s+organisationnelle\s+Suppression", text)
    assert "À supprimer (1 an sans activité) : 1" in text
    assert "mss-relay.jsonl.1.gz, mss-relay.jsonl" in text
    assert "2 unreadable line(s) skipped" in done.stderr
    _no_health_data(text)


def test_report_follows_the_system_clock(run: Run) -> None:
    """Under faketime, 40 days on: the last 30 days hold nothing, 60 days all."""
    later = _report(run, "--since", "30d", faketime="+40d")
    assert later.returncode == 0, later.stderr
    assert "Messages : 0 ·" in later.stdout
    wider = _report(run, "--since", "60d", faketime="+40d")
    assert "Messages : 8 ·" in wider.stdout


def test_html_report_in_chromium(run: Run, tmp_path: Path) -> None:
    page = tmp_path / "rapport.html"
    done = _report(run, "--since", "2d", "--html", str(page))
    assert done.returncode == 0, done.stderr
    html = page.read_text(encoding="utf-8")
    _no_health_data(html)
    assert not re.search(r"(?:src|href)\s*=|url\(|@import|https?://", html)

    profile = tmp_path / "chromium"
    profile.mkdir()
    loaded = browser.load(page, profile)
    assert loaded.console == []  # no script error, nothing refused by the CSP
    body = re.search(r"<body[^>]*>", loaded.dom)
    assert body is not None
    assert 'data-charts-ready="5"' in body.group(0) and "data-script-error" not in body.group(0)
    marks = dict(re.findall(r'<svg data-chart="(\w+)"[^>]*?data-marks="(\d+)"', loaded.dom))
    # Stacked bars: the delivered and the refused of today, yesterday's delivered;
    # three rules; one sender; opened and closed; two flags.
    assert marks == {
        "messages": "3",
        "refusals": "3",
        "senders": "1",
        "conversations": "2",
        "lifecycle": "2",
    }
    for section in ("messages", "refus", "expediteurs", "conversations", "cycle-de-vie"):
        assert f'<section id="{section}">' in loaded.dom
    assert 'id="filtre"' in loaded.dom

    shot = tmp_path / "rapport.png"
    console = browser.screenshot(page, profile, shot, 1000, 2400)
    assert console == []
    image = png.decode(shot.read_bytes())
    assert (image.width, image.height) == (1000, 2400)
    assert shot.stat().st_size > 20_000
    colours = image.colours(step=2)
    assert len(colours) > 50  # text, bars, cards: not one blank colour
    for key in ("delivered", "refused", "opened", "closed", "sender"):
        rgb = bytes.fromhex(COLOURS[key][1:])
        assert any(c[:3] == rgb for c in colours), f"no {key} bar drawn ({COLOURS[key]})"


def test_report_errors_are_one_line(run: Run, tmp_path: Path) -> None:
    bad = _report(run, "--since", "yesterday")
    assert bad.returncode == 2 and "--since: 'yesterday' is neither" in bad.stderr
    missing = _report(run, "--log", str(tmp_path / "absent.jsonl"))
    assert missing.returncode == 1 and "no log file at" in missing.stderr
    journald = tmp_path / "journald.yaml"
    config = yaml.safe_load(run.config.read_text())
    config["log"]["file"] = "-"
    journald.write_text(yaml.safe_dump(config))
    done = _report(Run(journald, run.log))
    assert done.returncode == 2 and "--log FILE" in done.stderr
    unwritable = _report(run, "--html", str(tmp_path / "no" / "such" / "dir.html"))
    assert unwritable.returncode == 1 and "cannot write" in unwritable.stderr
    for failed in (bad, missing, done, unwritable):
        assert "Traceback" not in failed.stderr and failed.stdout == ""
