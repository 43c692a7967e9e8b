"""Health data stays in (issue 17): a full patient flow through the real
relay, then every line of the log and the raw bytes of the SQLite file (and
its -wal) scanned for what must never be there: an INS in clear, an
attachment's name, a subject, a body. A patient's pseudonym, from
« mss-relay audit pseudonym », finds that patient's lines and no other's."""

from __future__ import annotations

import os
import re
import smtplib
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from mss_relay.pseudonym import load_key
from mss_relay.state.database import MIGRATIONS
from tests.conftest import Pki, Stack, two_sided
from tests.support.mail import connect, make_message, send, wire_data
from tests.support.processes import ROOT, Relay, Upstream

DR = "jean.dupont@ch-exemple.mssante.fr"
INS1, INS2 = "295109912611193", "185057800608491"
P1, P2 = f"{INS1}@patient.mssante.fr", f"{INS2}@patient.mssante.fr"
BIG_NAME = "CR_DUPONT_Jean_2026.pdf"
EXE_NAME = "DUPONT_Jean_ordonnance.exe"
SUBJECT = "Bilan-SUBJ-QZ7"
BODY = "BODY-MARK-QZ7"
SECRETS = (INS1, INS2, "CR_DUPONT", "DUPONT_Jean", "SUBJ-QZ7", "MARK-QZ7")
TXID = re.compile(rb"\(id ([0-9A-F]+)\)")


@dataclass
class Flow:
    relay: Relay
    operator: Upstream
    mailbox: Upstream
    pki: Pki

    @property
    def submission(self) -> Stack:
        return Stack(self.relay, self.operator, self.pki)

    def professional_sends(
        self,
        to: str,
        subject: str = SUBJECT,
        attachments: dict[str, bytes] | None = None,
        rcpt_options: str = "",
        message_id: str | None = None,
    ) -> tuple[int, bytes, str]:
        content = make_message(
            sender=DR, to=to, subject=subject, body=f"{BODY}\n", attachments=attachments
        )
        if message_id:
            made = content.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0]
            content = content.replace(made, message_id.encode())
        with connect(self.submission) as client:
            if rcpt_options:
                assert client.docmd("MAIL", f"FROM:<{DR}> RET=HDRS")[0] == 250
                assert client.docmd("RCPT", f"TO:<{to}> {rcpt_options}")[0] == 250
                client.docmd("DATA")
                client.send(wire_data(content))
                code, text = client.getreply()
            else:
                _, (code, text) = send(client, DR, [to], content)
        message_id = content.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()
        return code, text, message_id

    def patient_sends(self, patient: str, in_reply_to: str | None = None) -> tuple[int, bytes]:
        content = make_message(sender=patient, to=DR, subject=f"Re: {SUBJECT}", body=BODY)
        head, body = content.split(b"\r\n\r\n", 1)
        if in_reply_to:
            head += f"\r\nIn-Reply-To: {in_reply_to}".encode()
        with smtplib.SMTP("127.0.0.1", self.relay.port_of("inbound"), timeout=30) as client:
            client.ehlo("mta.operateur.test")
            assert client.mail(patient)[0] == 250
            code, text = client.rcpt(DR)
            if code != 250:
                return code, text
            client.docmd("DATA")
            client.send(wire_data(head + b"\r\n\r\n" + body))
            return client.getreply()

    def cli(self, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mss_relay", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            check=False,
            env={**os.environ, "MSS_RELAY_CONFIG": str(config or self.relay.config_path)},
        )

    def pseudonym(self, patient: str) -> str:
        done = self.cli("audit", "pseudonym", patient)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    @property
    def database(self) -> Path:
        return self.relay.workdir / "var" / "state.sqlite3"


@pytest.fixture
def flow(tmp_path: Path, pki: Pki, password_hashes: dict[str, str]) -> Iterator[Flow]:
    def small(limits: dict[str, object]) -> dict[str, object]:
        # A small limit: the refused attachment need not be 20 MB.
        return {**limits, "max_attachment_size": "100KiB"}

    with two_sided(tmp_path, pki, password_hashes, limits=small) as (relay, operator, mailbox):
        yield Flow(relay, operator, mailbox, pki)


def _ids(text: bytes) -> list[str]:
    return [m.decode() for m in TXID.findall(text)]


def test_no_health_data_in_the_log_or_the_state(flow: Flow) -> None:
    p1_txids: list[str] = []
    code, text, mid = flow.professional_sends(P1)
    assert code == 250, text
    p1_txids += _ids(text)
    code, text = flow.patient_sends(P1, in_reply_to=mid)
    assert code == 250, text
    p1_txids += _ids(text)
    # Refused: an attachment too big, named with the patient's name; an .exe.
    code, text, _ = flow.professional_sends(P1, attachments={BIG_NAME: b"\x01" * 200_000})
    assert (code, text[:5]) == (552, b"5.3.4")
    assert BIG_NAME.encode() in text  # the client still gets the real name
    p1_txids += _ids(text)
    code, text, _ = flow.professional_sends(P1, attachments={EXE_NAME: b"MZ\x90\x00" * 50})
    assert (code, text[:5]) == (550, b"5.7.1") and EXE_NAME.encode() in text
    p1_txids += _ids(text)
    # DSN parameters the upstream cannot take (dropped, logged), one naming the patient.
    code, text, _ = flow.professional_sends(P1, rcpt_options=f"NOTIFY=FAILURE ORCPT=rfc822;{P1}")
    assert code == 250, text
    p1_txids += _ids(text)
    code, text, _ = flow.professional_sends(P1, subject=f"[FIN] {SUBJECT}")
    assert code == 250, text
    p1_txids += _ids(text)
    # Another patient, refused (no conversation of theirs).
    code, text = flow.patient_sends(P2)
    assert code == 550
    p2_txids = _ids(text)
    assert len(p1_txids) == 6 and len(p2_txids) == 1
    flow.relay.wait_event("transaction", count=7)
    flow.relay.wait_event("conversation_closed")

    lines = flow.relay.log_text().splitlines()
    for line in lines:
        for secret in SECRETS:
            assert secret.lower() not in line.lower(), (secret, line)
    masked = [e for e in flow.relay.events("decision") if "[nom masque]" in (e["reply"] or "")]
    assert [e["reply"][:9] for e in masked] == ["552 5.3.4", "550 5.7.1"]
    assert all(len(e["attachment_sha256"]) == 16 for e in masked)
    refused = [e for e in flow.relay.events("transaction") if e["outcome"] == "rejected"]
    assert all("attachment_sha256" in e for e in refused if e["txid"] in p1_txids)

    # The state: no INS, name, subject or body in the file's bytes (nor its -wal).
    with sqlite3.connect(flow.database) as db:
        patients = {r[0] for r in db.execute("SELECT patient FROM conversations")}
    s1, s2 = flow.pseudonym(P1), flow.pseudonym(P2)
    assert patients == {s1}
    for path in (flow.database, flow.database.with_name("state.sqlite3-wal")):
        raw = path.read_bytes().lower() if path.exists() else b""
        for secret in SECRETS:
            assert secret.lower().encode() not in raw, (secret, path)

    # The pseudonym finds exactly this patient's transactions, not the other's.
    assert flow.pseudonym(INS1) + "@patient.mssante.fr" == s1  # the bare INS too
    found = {e["txid"] for e in flow.relay.events("transaction") if s1 in str(e)}
    assert found == set(p1_txids)
    assert not [line for line in lines if s1 in line and s2 in line]
    assert {e["txid"] for e in flow.relay.events("transaction") if s2 in str(e)} == set(p2_txids)

    # show and close take the address and hash it.
    shown = flow.cli("conversations", "show", P1)
    assert shown.returncode == 0 and s1 in shown.stdout and INS1 not in shown.stdout


def test_the_key_is_kept_private_and_the_same_after_a_restart(flow: Flow, tmp_path: Path) -> None:
    key = flow.relay.workdir / "var" / "pseudonym.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    before = flow.pseudonym(P1)
    flow.relay.stop()
    flow.relay.start()
    assert flow.pseudonym(P1) == before
    code, text, _ = flow.professional_sends(P1)
    assert code == 250, text
    assert flow.relay.wait_event("transaction")[-1]["recipients"] == [before]
    # Another key (for another database: with this one's, refused): another
    # pseudonym, unrelated.
    other = tmp_path / "other.key"
    load_key(other)
    config = yaml.safe_load(flow.relay.config_path.read_text())
    config["log"]["pseudonym_key_file"] = str(other)
    config["state"]["database"] = str(tmp_path / "other.sqlite3")
    copy = tmp_path / "other.yaml"
    copy.write_text(yaml.safe_dump(config))
    done = flow.cli("audit", "pseudonym", P1, config=copy)
    assert done.returncode == 0 and done.stdout.strip() not in (before, "")
    # A key readable by others: the relay refuses to start, naming the key.
    key.chmod(0o644)
    flow.relay.stop()
    failed = subprocess.run(
        [sys.executable, "-m", "mss_relay", "serve", "--config", str(flow.relay.config_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert failed.returncode != 0 and "log.pseudonym_key_file" in failed.stderr
    key.chmod(0o600)


def _schema_3_with_clear_patients(path: Path, message_id: str) -> None:
    """A state database as the previous version left it: INS in clear."""
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    with sqlite3.connect(path) as db:
        for statements in MIGRATIONS[:3]:
            for statement in statements:
                db.execute(statement)
        db.execute("PRAGMA user_version = 3")
        now = "2026-11-23T00:00:00.000Z"
        for i, patient in enumerate([P1, P2], start=1):
            db.execute(
                "INSERT INTO conversations (id, bal, patient, opened_at, opened_by,"
                " last_activity_at) VALUES (?, ?, ?, ?, 'professional', ?)",
                [i, DR, patient, now, now],
            )
        db.execute(
            "INSERT INTO messages (message_id, conversation_id, direction, at)"
            " VALUES (?, 1, 'out', ?)",
            [message_id, now],
        )


def test_an_older_database_is_pseudonymized_at_start(flow: Flow) -> None:
    flow.relay.stop()
    # The key exists already (first start); the database is replaced by an
    # older one, with its conversations in clear.
    _schema_3_with_clear_patients(flow.database, "<old@ch-exemple.mssante.fr>")
    flow.relay.start()
    done = flow.relay.wait_event("patients_pseudonymized")
    assert done and done[-1]["count"] == 2
    raw = flow.database.read_bytes() + (
        flow.database.with_name("state.sqlite3-wal").read_bytes()
        if flow.database.with_name("state.sqlite3-wal").exists()
        else b""
    )
    assert INS1.encode() not in raw and INS2.encode() not in raw
    shown = flow.cli("conversations", "show", P1)
    assert shown.returncode == 0, shown.stderr
    assert "<old@ch-exemple.mssante.fr>" in shown.stdout
    # And the relay finds it too: the patient's reply to the old message.
    code, text = flow.patient_sends(P1, in_reply_to="<old@ch-exemple.mssante.fr>")
    assert code == 250, text
    flow.relay.stop()
    flow.relay.start()
    assert len(flow.relay.events("patients_pseudonymized")) == 1  # once


def test_an_ins_written_otherwise_is_masked_in_the_log_too(flow: Flow) -> None:
    """Quoted, spaced, beside a lookalike domain, in a source route, in a
    Message-ID: no matricule reaches the log in clear."""
    spaced = '"1850578 00608400"@patient.mssante.fr'
    elsewhere = [
        f"{INS2}@patient-mssante.fr",
        f"{INS2}@[patient.mssante.fr]",
        f"{INS2}%patient.mssante.fr@ch-exemple.mssante.fr",
    ]
    with connect(flow.submission) as client:
        assert client.docmd("MAIL", f"FROM:<{DR}>")[0] == 250
        for address in [spaced, f'"{INS2}"@patient.mssante.fr', *elsewhere]:
            client.docmd("RCPT", f"TO:<{address}>")
    code, text, _ = flow.professional_sends(P2, message_id=f"<{INS1}.x@ch-exemple.mssante.fr>")
    assert code == 250, text
    flow.relay.wait_event("transaction")
    decisions = flow.relay.events("decision")
    assert any(
        "ins:" in str(e.get("recipient")) and "patient.mssante.fr" in str(e) for e in decisions
    )
    for line in flow.relay.log_text().splitlines():
        for secret in (INS1, INS2, "1850578", "00608400"):
            assert secret not in line, (secret, line)
    # The quoted INS that needs no quotes: one patient, one pseudonym, as
    # « audit pseudonym » gives it however the address is written.
    s2 = flow.pseudonym(P2)
    assert flow.pseudonym(f'"{INS2}"@patient.mssante.fr') == s2
    assert [e["recipient"] for e in decisions if e.get("recipient") == s2]


def test_a_message_id_holding_an_ins_is_masked_in_the_state_too(flow: Flow) -> None:
    message_id = f"<{INS1}@patient.mssante.fr>"
    code, text, _ = flow.professional_sends(P1, message_id=message_id)
    assert code == 250, text
    code, text = flow.patient_sends(P1, in_reply_to=message_id)
    assert code == 250, text  # the reply still finds its conversation
    flow.relay.wait_event("conversation_continued")
    logged = {e["message_id"] for e in flow.relay.events("conversation_opened")}
    assert logged and INS1 not in str(logged)
    shown = flow.cli("conversations", "show", P1)
    assert shown.returncode == 0, shown.stderr
    assert INS1 not in shown.stdout and logged <= set(shown.stdout.split())
    for path in (flow.database, flow.database.with_name("state.sqlite3-wal")):
        raw = path.read_bytes() if path.exists() else b""
        assert INS1.encode() not in raw, path


def _with_key(flow: Flow, tmp_path: Path, key: object, name: str = "c.yaml") -> Path:
    config = yaml.safe_load(flow.relay.config_path.read_text())
    config["log"]["pseudonym_key_file"] = key
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def _opened(flow: Flow) -> None:
    code, text, _ = flow.professional_sends(P1)
    assert code == 250, text
    flow.relay.wait_event("conversation_opened")


def test_audit_pseudonym_checks_the_key_and_its_argument(flow: Flow, tmp_path: Path) -> None:
    _opened(flow)
    # Another key than the database's; then nothing to hash.
    other = tmp_path / "other.key"
    load_key(other)
    wrong = flow.cli("audit", "pseudonym", P1, config=_with_key(flow, tmp_path, str(other)))
    assert wrong.returncode != 0 and wrong.stdout == "", wrong
    assert len(wrong.stderr.splitlines()) == 1
    assert "holds pseudonyms made with another key" in wrong.stderr
    empty = flow.cli("audit", "pseudonym", "")
    assert empty.returncode == 2 and len(empty.stderr.splitlines()) == 1, empty
    assert empty.stdout == ""


def test_close_names_the_patient_by_pseudonym(flow: Flow) -> None:
    _opened(flow)
    closed = flow.cli("conversations", "close", DR, P1)
    assert closed.returncode == 0, closed.stderr
    assert INS1 not in closed.stdout and flow.pseudonym(P1) in closed.stdout


def test_check_config_refuses_the_key_files_serve_refuses(flow: Flow, tmp_path: Path) -> None:
    _opened(flow)
    loose = tmp_path / "loose.key"
    loose.write_bytes(b"k" * 32)
    loose.chmod(0o644)
    hollow = tmp_path / "hollow.key"
    hollow.write_bytes(b"")
    hollow.chmod(0o600)
    (tmp_path / "afile").write_text("")
    cases = {
        str(loose): "has mode 644",
        str(hollow): "holds 0 bytes",
        str(tmp_path): "is a directory",
        "": "is a directory",
        str(tmp_path / "afile" / "k.key"): "is a file, not a directory",
    }
    for key, message in cases.items():
        done = flow.cli("check-config", "--config", str(_with_key(flow, tmp_path, key)))
        assert done.returncode != 0, (key, done)
        assert message in done.stderr and len(done.stderr.splitlines()) == 1, (key, done)
    missing = tmp_path / "missing.key"
    done = flow.cli("check-config", "--config", str(_with_key(flow, tmp_path, str(missing))))
    assert done.returncode != 0 and "restore log.pseudonym_key_file" in done.stderr, done
    assert not missing.exists()


def test_serve_makes_no_new_key_for_a_database_of_another(flow: Flow, tmp_path: Path) -> None:
    _opened(flow)  # the database holds pseudonyms, and the check of their key
    flow.relay.stop()
    key = flow.relay.workdir / "var" / "pseudonym.key"
    key.rename(tmp_path / "kept.key")
    failed = flow.cli("serve", "--config", str(flow.relay.config_path))
    assert failed.returncode != 0 and "restore log.pseudonym_key_file" in failed.stderr, failed
    assert not key.exists()
    (tmp_path / "kept.key").rename(key)
