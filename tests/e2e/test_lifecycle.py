"""The BAL lifecycle end to end (issue 15, part 6): the real relay records
AUTH and messages, is restarted with its clock moved on by libfaketime (never
a sleep), flags the inactive BALs, sends each its French notice through the
real recording upstream once, and « mss-relay bals » reports it all. Mail
received is shown but is no connection: a BAL that only receives is flagged.

libfaketime is preloaded straight into the relay's own process (LD_PRELOAD,
FAKETIME): the faketime command forks and does not pass SIGTERM on, which a
graceful stop needs. FAKETIME_DONT_FAKE_MONOTONIC: the event loop's timers
run on the real monotonic clock; only the wall clock (datetime.now,
time.time) is moved.
"""

from __future__ import annotations

import email
import json
import os
import shutil
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from email.policy import default
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSWORDS, Pki, Stack, base_config, with_inbound
from tests.support.mail import make_message, send
from tests.support.processes import ROOT, Relay, Upstream

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
pytestmark = pytest.mark.skipif(
    not LIBFAKETIME.exists() or shutil.which("faketime") is None,
    reason="libfaketime (Debian's faketime) is not installed",
)

JEAN = "jean.dupont@ch-exemple.mssante.fr"
ACCUEIL = "accueil@ch-exemple.mssante.fr"
SECRETARIAT = "secretariat@ch-exemple.mssante.fr"
NO_REPLY = "no_reply@ch-exemple.mssante.fr"
UNPUBLISHED = "inactive 60 days: dépubliée de l'Annuaire"
WARNING = "suppression dans moins de 2 mois"
TO_DELETE = "à supprimer (1 an)"
W = "deletion_warning"


def faked(days: int) -> list[str]:
    """A command prefix running the program `days` days from now."""
    if not days:
        return []
    return [
        "env",
        f"LD_PRELOAD={LIBFAKETIME}",
        f"FAKETIME=+{days}d",
        "FAKETIME_DONT_FAKE_MONOTONIC=1",
    ]


class Lifecycle:
    """One relay configuration, started and stopped at will, days apart."""

    def __init__(self, tmp: Path, pki: Pki, hashes: dict[str, str], **lifecycle: object) -> None:
        self.pki = pki
        self.operator, self.mailbox = Upstream(tmp / "op"), Upstream(tmp / "mb")
        config = with_inbound(base_config(pki, hashes, self.operator.port), self.mailbox.port)
        config["bals"].append({"address": NO_REPLY, "type": "applicative"})
        config["lifecycle"] = {"notify": True, "notify_from": NO_REPLY, **lifecycle}
        self.relay = Relay(tmp, config)
        self.command = list(self.relay.process.args)

    def start(self, days: int = 0) -> int:
        """The relay, `days` days from now; the number of checks logged before."""
        before = len(self.relay.events("lifecycle_checked"))
        self.relay.process.args = faked(days) + self.command
        self.relay.start()
        return before

    def checked(self, before: int) -> dict[str, Any]:
        """The line of the check the relay runs at start."""
        lines = self.relay.wait_event("lifecycle_checked", before + 1, timeout=30)
        assert len(lines) > before, self.relay.process.stderr()
        return lines[before]

    def bals(self, days: int, *options: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*faked(days), sys.executable, "-m", "mss_relay", "bals", *options],
            env={**os.environ, "MSS_RELAY_CONFIG": str(self.relay.config_path)},
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )

    def report(self, days: int) -> dict[str, dict[str, Any]]:
        result = self.bals(days, "--json")
        assert result.returncode == 0, result.stderr
        return {b["address"]: b for b in json.loads(result.stdout)["bals"]}

    def notices(self) -> list[tuple[dict[str, Any], email.message.EmailMessage]]:
        found = []
        for envelope, raw in self.operator.messages():
            message = email.message_from_bytes(raw, policy=default)
            if message["From"] == NO_REPLY:
                found.append((envelope, message))  # type: ignore[arg-type]
        return found

    def deliver(self, bal: str) -> None:
        """A message from outside to `bal`, through the inbound listener."""
        inbound = smtplib.SMTP("127.0.0.1", self.relay.port_of("inbound"), timeout=30)
        try:
            inbound.ehlo("operator.test")
            message = make_message(sender="dr.martin@chu-b.mssante.fr", to=bal)
            _, (code, text) = send(inbound, "dr.martin@chu-b.mssante.fr", [bal], message)
            assert code == 250, text
        finally:
            inbound.quit()

    def log_in_and_send(self, user: str, sender: str | None) -> None:
        stack = Stack(self.relay, self.operator, self.pki)
        client = smtplib.SMTP("127.0.0.1", stack.relay.port, timeout=30)
        try:
            client.ehlo("client.test")
            client.starttls(context=self.pki.client_context())
            client.ehlo("client.test")
            client.login(user, PASSWORDS[user])
            if sender is not None:
                _, (code, text) = send(
                    client, sender, ["dr.martin@chu-b.mssante.fr"], make_message(sender)
                )
                assert code == 250, text
        finally:
            client.quit()


@pytest.fixture
def lifecycle(tmp_path: Path, pki: Pki, password_hashes: dict[str, str]) -> Iterator[Lifecycle]:
    stack = Lifecycle(tmp_path, pki, password_hashes)
    stack.operator.start()
    stack.mailbox.start()
    try:
        yield stack
    finally:
        stack.relay.stop()
        stack.operator.stop()
        stack.mailbox.stop()


def pairs(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((e["bal"], e["flag"]) for e in events)


def flags(report: dict[str, Any]) -> list[str]:
    return [f["code"] for f in report["flags"]]


def test_inactive_bals_are_flagged_and_noticed_once(lifecycle: Lifecycle) -> None:
    relay = lifecycle.relay
    # Day 0: jdupont logs in and sends from his BAL; the operator delivers a
    # message to accueil. secretariat and no_reply are never used.
    lifecycle.checked(lifecycle.start())
    lifecycle.log_in_and_send("jdupont", JEAN)
    lifecycle.deliver(ACCUEIL)
    assert relay.stop() == 0  # the graceful stop flushes the activity noted
    now = lifecycle.report(0)
    assert now[JEAN]["last_auth"] and now[JEAN]["last_sent"]
    assert now[JEAN]["last_activity"] == max(now[JEAN]["last_auth"], now[JEAN]["last_sent"])
    assert now[ACCUEIL]["last_received"] and now[ACCUEIL]["last_auth"]  # jdupont is a user
    assert now[SECRETARIAT]["last_activity"] is None and now[SECRETARIAT]["first_seen"]
    assert now[NO_REPLY]["users"] == [] and now[NO_REPLY]["type"] == "applicative"
    assert all(b["days_inactive"] == 0 and not b["flags"] for b in now.values())
    assert lifecycle.bals(0, "--inactive", "60").stdout.strip() == (
        "no BAL inactive for 60 days or more"
    )

    # Day 30: secretariat, never connected, receives a message; receiving is
    # no connection (seeds: « sans connexion »), it is shown only.
    lifecycle.checked(lifecycle.start(30))
    lifecycle.deliver(SECRETARIAT)
    assert relay.stop() == 0
    received = lifecycle.report(30)[SECRETARIAT]
    assert received["last_received"] and received["last_activity"] is None
    assert received["days_inactive"] == 30

    # Day 61: every BAL is unpublished and gets its notice, once; secretariat
    # too, though it received mail 31 days ago.
    check = lifecycle.checked(lifecycle.start(61))
    assert check == {**check, "bals": 4, "flagged": 4, "notices": 4}
    crossed = relay.events("bal_lifecycle")
    assert sorted((e["bal"], e["flag"]) for e in crossed) == sorted(
        (b, "unpublished") for b in (JEAN, ACCUEIL, SECRETARIAT, NO_REPLY)
    )
    jean = next(e for e in crossed if e["bal"] == JEAN)
    assert jean["bal_type"] == "nominative" and jean["days_inactive"] == 61
    assert jean["last_activity"] == now[JEAN]["last_activity"][:10]  # an ISO date
    never = next(e for e in crossed if e["bal"] == SECRETARIAT)
    assert never["last_activity"] is None and never["days_inactive"] == 61  # from first seen
    secretariat = lifecycle.report(61)[SECRETARIAT]
    assert secretariat["last_received"] == received["last_received"]
    assert flags(secretariat) == ["unpublished"] and secretariat["days_inactive"] == 61
    sent = relay.events("lifecycle_notice_sent")
    assert sorted(e["bal"] for e in sent) == sorted((JEAN, ACCUEIL, SECRETARIAT, NO_REPLY))
    assert all(e["flag"] == "unpublished" and e["txid"] for e in sent)
    notices = lifecycle.notices()
    assert len(notices) == 4
    envelope, message = next((e, m) for e, m in notices if m["To"] == JEAN)
    assert envelope["mail_from"] == NO_REPLY and envelope["rcpt_tos"] == [JEAN]
    assert message["Subject"] == (
        f"BAL MSSanté {JEAN} : inactive depuis 60 jours, dépubliée de l'Annuaire"
    )
    assert message["Date"] and message["Message-ID"]
    body = message.get_content()  # type: ignore[attr-defined]
    assert "dépubliée de l'Annuaire Santé" in body and "connectez-vous-y avant le" in body
    text = lifecycle.bals(61).stdout
    assert text.count(UNPUBLISHED) == 4 and WARNING not in text, text
    assert "never (first seen" in text
    row = next(line for line in text.splitlines() if line.startswith(SECRETARIAT))
    assert received["last_received"] in row  # shown, for information
    # msecret logs in: secretariat and accueil are in use again (a new period).
    lifecycle.log_in_and_send("msecret", None)
    assert relay.stop() == 0

    # Day 61 again (a restart): nothing is logged or sent a second time.
    check = lifecycle.checked(lifecycle.start(61))
    assert check["notices"] == 0 and check["flagged"] == 2
    assert len(relay.events("bal_lifecycle")) == 4
    assert len(relay.events("lifecycle_notice_sent")) == 4 and len(lifecycle.notices()) == 4
    assert relay.stop() == 0

    # Day 305: the deletion warning for the BALs idle since day 0; accueil and
    # secretariat (244 days since msecret's AUTH) are unpublished anew.
    check = lifecycle.checked(lifecycle.start(305))
    assert check["notices"] == 4
    later = relay.events("bal_lifecycle")[4:]
    assert pairs(later) == sorted(
        [(JEAN, W), (NO_REPLY, W), (ACCUEIL, "unpublished"), (SECRETARIAT, "unpublished")]
    )
    sent = relay.events("lifecycle_notice_sent")[4:]
    assert pairs(sent) == pairs(later)
    warning = next(m for _, m in lifecycle.notices() if m["Subject"].endswith(WARNING))
    assert warning["To"] in (JEAN, NO_REPLY)
    report = lifecycle.report(305)
    assert flags(report[JEAN]) == ["unpublished", "deletion_warning"]
    assert flags(report[SECRETARIAT]) == ["unpublished"]
    assert report[SECRETARIAT]["days_inactive"] == 244
    assert {f["text"] for f in report[JEAN]["flags"]} == {UNPUBLISHED, WARNING}
    assert [n["flag"] for n in report[JEAN]["notices_sent"]] == ["unpublished", "deletion_warning"]
    assert WARNING in lifecycle.bals(305).stdout
    assert relay.stop() == 0

    # Day 366: the BALs idle since day 0 are to be deleted (no notice: too late).
    check = lifecycle.checked(lifecycle.start(366))
    assert check["notices"] == 2  # accueil and secretariat: deletion warnings
    assert len(lifecycle.notices()) == 10
    last = relay.events("bal_lifecycle")[8:]
    assert pairs(last) == sorted(
        [(JEAN, "to_delete"), (NO_REPLY, "to_delete"), (ACCUEIL, W), (SECRETARIAT, W)]
    )
    assert relay.stop() == 0
    listing = lifecycle.bals(366, "--inactive", "366")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split() == [
        *("BAL", "TYPE", "USERS", "LAST", "ACTIVITY", "LAST", "RECEIVED", "DAYS", "FLAGS")
    ]
    assert sorted(line.split()[0] for line in lines[1:]) == sorted((JEAN, NO_REPLY))
    assert all(f"{UNPUBLISHED}; {WARNING}; {TO_DELETE}" in line for line in lines[1:])
    report = lifecycle.report(366)
    assert flags(report[NO_REPLY]) == ["unpublished", "deletion_warning", "to_delete"]
    assert report[NO_REPLY]["last_activity"] is None
    assert report[JEAN]["users"] == ["jdupont"] and report[ACCUEIL]["users"] == [
        "jdupont",
        "msecret",
    ]


def test_a_notice_the_upstream_refuses_is_sent_at_a_later_check(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    stack = Lifecycle(tmp_path, pki, password_hashes, check_interval="1s")
    stack.operator.start()
    stack.mailbox.start()
    relay = stack.relay
    try:
        stack.checked(stack.start())
        assert relay.stop() == 0
        stack.operator.control(data="451 4.3.0 essayez plus tard")
        stack.checked(stack.start(61))
        failed = relay.events("lifecycle_notice_failed")
        assert len(failed) == 4 and all("451" in f["upstream"] for f in failed)
        assert relay.events("lifecycle_notice_sent") == [] and stack.notices() == []
        assert all(not b["notices_sent"] for b in stack.report(61).values())
        stack.operator.control()  # the upstream takes mail again
        sent = relay.wait_event("lifecycle_notice_sent", 4, timeout=30)
        assert sorted(e["bal"] for e in sent) == sorted((JEAN, ACCUEIL, SECRETARIAT, NO_REPLY))
        assert len(stack.notices()) == 4
        # Sent once: the checks that follow send nothing more. (The line of
        # the check that sent comes after its notices': wait for it too.)
        deadline = time.monotonic() + 30
        while sum(c["notices"] for c in relay.events("lifecycle_checked")) < 4:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        checks = len(relay.events("lifecycle_checked"))
        later = relay.wait_event("lifecycle_checked", checks + 2, timeout=30)
        assert all(c["notices"] == 0 for c in later[checks:])
        assert len(stack.notices()) == 4
    finally:
        relay.stop()
        stack.operator.stop()
        stack.mailbox.stop()
