"""DKIM end to end: outgoing mail signed by the real relay and verified by
dkimpy against the published record; incoming mail verified by the relay with
DNS answers supplied by the test (inbound.dkim_dns_file), never the network."""

from __future__ import annotations

import contextlib
import re
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path

import dkim
import pytest
import yaml

from tests.conftest import Pki, Stack, _stack, base_config, two_sided
from tests.support.dkim import SigningKey, keygen_cli, lookup, new_key, weak_rsa_pem
from tests.support.mail import connect, make_message, send, wire_data
from tests.support.processes import ROOT, Relay, Upstream

SENDER = "jean.dupont@ch-exemple.mssante.fr"
DEST = "dr.martin@chu-b.mssante.fr"
DOMAIN = "ch-exemple.mssante.fr"
PATIENT = "295109912611193@patient.mssante.fr"


def _signatures(message: bytes) -> list[dict[bytes, bytes]]:
    checker = dkim.DKIM(message)
    return [
        dkim.util.parse_tag_value(value)
        for name, value in checker.headers
        if name.lower() == b"dkim-signature"
    ]


def _verify_all(message: bytes, records: dict[str, str]) -> list[bool]:
    results = []
    for i in range(len(_signatures(message))):
        try:  # dkimpy raises on a body hash mismatch, returns False on a bad signature
            results.append(bool(dkim.DKIM(message).verify(i, dnsfunc=lookup(records))))
        except dkim.ValidationError:
            results.append(False)
    return results


def _tamper_body(message: bytes) -> bytes:
    head, body = message.split(b"\r\n\r\n", 1)
    i = body.index(b"compte rendu")
    return head + b"\r\n\r\n" + body[:i] + b"C" + body[i + 1 :]


@pytest.fixture(scope="module")
def signing(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, password_hashes: dict[str, str]
) -> Iterator[tuple[Stack, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("dkim")
    rsa_key, rsa_txt = keygen_cli(tmp, DOMAIN, "mss2026")
    ed_key, ed_txt = keygen_cli(tmp, DOMAIN, "ed2026", "--algorithm", "ed25519-sha256")
    records = {f"mss2026._domainkey.{DOMAIN}": rsa_txt, f"ed2026._domainkey.{DOMAIN}": ed_txt}
    dkim_config = [
        {"domain": DOMAIN, "selector": "mss2026", "private_key": str(rsa_key)},
        {
            "domain": DOMAIN,
            "selector": "ed2026",
            "private_key": str(ed_key),
            "algorithm": "ed25519-sha256",
        },
    ]
    for stack in _stack(tmp, pki, password_hashes, dkim=dkim_config):
        yield stack, records


def test_outgoing_message_is_signed_and_one_body_byte_breaks_it(
    signing: tuple[Stack, dict[str, str]],
) -> None:
    stack, records = signing
    before = len(stack.relay.events("transaction"))
    with connect(stack) as client:
        _, (code, text) = send(client, SENDER, [DEST], make_message())
        assert code == 250, text
    _, received = stack.upstream.messages()[-1]
    assert received.startswith(b"DKIM-Signature: ")  # signed last, on top of our Received:
    tags = _signatures(received)
    assert [(t[b"d"], t[b"s"], t[b"a"], t[b"c"]) for t in tags] == [
        (DOMAIN.encode(), b"mss2026", b"rsa-sha256", b"relaxed/relaxed"),
        (DOMAIN.encode(), b"ed2026", b"ed25519-sha256", b"relaxed/relaxed"),
    ]
    signed = [h.strip() for h in re.split(rb"\s*:\s*", tags[0][b"h"])]
    assert signed.count(b"from") == 2  # over-signed
    assert {b"subject", b"date", b"message-id", b"to"} <= set(signed)
    assert _verify_all(received, records) == [True, True]
    assert _verify_all(_tamper_body(received), records) == [False, False]
    forged = received.replace(b"Subject: Compte rendu", b"Subject: Compte rendu!", 1)
    assert _verify_all(forged, records) == [False, False]
    event = stack.relay.wait_event("transaction", before + 1)[-1]
    assert event["dkim"] == [
        f"d={DOMAIN} s=mss2026 a=rsa-sha256",
        f"d={DOMAIN} s=ed2026 a=ed25519-sha256",
    ]


def test_headers_the_relay_adds_are_signed_and_bare_lf_is_covered(
    signing: tuple[Stack, dict[str, str]],
) -> None:
    stack, records = signing
    bare = (
        f"From: {SENDER}\nTo: {DEST}\nSubject: sans date ni identifiant\n\n"
        "ligne 1\nligne 2\rligne 3\n"
    ).encode()
    with connect(stack) as client:
        client.mail(SENDER)
        client.rcpt(DEST)
        code, _ = client.docmd("DATA")
        assert code == 354
        client.send(bare + b"\r\n.\r\n")
        code, text = client.getreply()
        assert code == 250, text
    received = stack.upstream.messages()[-1][1]
    signed = _signatures(received)[0][b"h"]
    assert b"message-id" in signed and b"date" in signed  # added by the relay, then signed
    assert _verify_all(received, records) == [True, True]


def test_check_config_refuses_unusable_keys(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    weak = tmp_path / "weak.pem"
    weak.write_bytes(weak_rsa_pem())
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQww"
        b"\n-----END ENCRYPTED PRIVATE KEY-----\n"
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    cases = {
        str(tmp_path / "missing.pem"): "file not found",
        str(tmp_path): "cannot read",
        str(weak): "512-bit RSA key, at least 1024 bits needed",
        str(encrypted): "not a PEM private key",
        str(garbage): "not a PEM private key",
    }
    for path, message in cases.items():
        config = base_config(pki, password_hashes, 2525)
        config["dkim"] = [{"domain": DOMAIN, "selector": "s1", "private_key": path}]
        config_path = tmp_path / "relay.yaml"
        config_path.write_text(yaml.safe_dump(config))
        for command in ("check-config", "serve"):
            done = subprocess.run(
                [sys.executable, "-m", "mss_relay", command, "--config", str(config_path)],
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=60,
            )
            assert done.returncode == 78, (path, done.stderr)
            assert "dkim[0].private_key: " in done.stderr and message in done.stderr, done.stderr
            assert "Traceback" not in done.stderr


def test_keygen_never_overwrites(tmp_path: Path) -> None:
    path, txt = keygen_cli(tmp_path, DOMAIN, "s1")
    assert txt.startswith("v=DKIM1; k=rsa; p=")
    assert path.stat().st_mode & 0o777 == 0o600
    before = path.read_bytes()
    again = subprocess.run(
        [sys.executable, "-m", "mss_relay", "dkim-keygen", DOMAIN, "s1", "--output", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert again.returncode == 1 and "not overwritten" in again.stderr
    assert path.read_bytes() == before


# The incoming side --------------------------------------------------------------


class Inbound:
    def __init__(self, relay: Relay, operator: Upstream, mailbox: Upstream, pki: Pki) -> None:
        self.relay, self.operator, self.mailbox, self.pki = relay, operator, mailbox, pki

    def deliver(self, sender: str, content: bytes, to: str = SENDER) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", self.relay.port_of("inbound"), timeout=30) as client:
            client.ehlo("mta.operateur.test")
            code, text = client.mail(sender)
            assert code == 250, text
            code, text = client.rcpt(to)
            assert code == 250, text
            client.docmd("DATA")
            client.send(wire_data(content))
            return client.getreply()


@contextlib.contextmanager
def _inbound(
    tmp: Path, pki: Pki, hashes: dict[str, str], keys: list[SigningKey], require: bool
) -> Iterator[Inbound]:
    answers = tmp / "dkim-dns.yaml"
    answers.write_text(yaml.safe_dump({k.name: k.txt for k in keys}))
    inbound = {"require_dkim_for_patients": require, "dkim_dns_file": str(answers)}
    with two_sided(tmp, pki, hashes, inbound=inbound) as (relay, operator, mailbox):
        yield Inbound(relay, operator, mailbox, pki)


CHU_KEY = new_key("chu-b.mssante.fr", "op1")
PATIENT_KEY = new_key("patient.mssante.fr", "mes1")


def _results(message: bytes) -> list[bytes]:
    return re.findall(
        rb"^Authentication-Results: ([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", message, re.MULTILINE
    )


def test_inbound_pass_and_fail_reach_the_header_and_the_log(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    with _inbound(tmp_path, pki, password_hashes, [CHU_KEY], require=False) as inbound:
        good = CHU_KEY.sign(make_message(sender=DEST, to=SENDER))
        # Someone claims our own verdict: RFC 8601 §5, removed before ours is added.
        forged = b"Authentication-Results: relay.ch-exemple.mssante.fr; dkim=pass\r\n" + good
        code, text = inbound.deliver(DEST, forged)
        assert code == 250, text
        tampered = _tamper_body(CHU_KEY.sign(make_message(sender=DEST, to=SENDER)))
        code, text = inbound.deliver(DEST, tampered)
        assert code == 250, text  # a professional's mail: the result is reported, not enforced
        code, text = inbound.deliver(DEST, make_message(sender=DEST, to=SENDER))
        assert code == 250, text
        delivered = [m for _, m in inbound.mailbox.messages()]
        results = [_results(m) for m in delivered]
        assert len(results[0]) == 1 and results[0][0].startswith(
            b"relay.ch-exemple.mssante.fr; dkim=pass header.d=chu-b.mssante.fr"
        ), results[0]
        assert results[1][0].startswith(b"relay.ch-exemple.mssante.fr; dkim=fail"), results[1]
        assert results[2] == [b"relay.ch-exemple.mssante.fr; dkim=none"]
        logged = [e["dkim"] for e in inbound.relay.wait_event("transaction", 3)]
        assert logged == [
            ["pass d=chu-b.mssante.fr s=op1 a=rsa-sha256"],
            ["fail d=chu-b.mssante.fr s=op1 a=rsa-sha256"],
            ["none"],
        ]


def test_patient_messages_must_be_signed_when_required(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    with _inbound(tmp_path, pki, password_hashes, [PATIENT_KEY, CHU_KEY], require=True) as inbound:
        opening = make_message(to=PATIENT, subject="Résultats")
        with connect(Stack(inbound.relay, inbound.operator, inbound.pki)) as client:
            _, (code, text) = send(client, SENDER, [PATIENT], opening)
            assert code == 250, text
        mid = opening.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()

        def reply(mid: str = mid) -> bytes:
            msg = EmailMessage()
            msg["From"], msg["To"], msg["Subject"] = PATIENT, SENDER, "Re: Résultats"
            msg["Date"], msg["Message-ID"] = "Mon, 23 Nov 2026 10:00:00 +0100", f"<r{id(msg)}@x>"
            msg["In-Reply-To"] = mid
            msg.set_content("Merci pour le compte rendu, docteur.\n")
            return msg.as_bytes(policy=SMTP_POLICY)

        code, text = inbound.deliver(PATIENT, reply())
        assert (code, text[:6]) == (550, b"5.7.20"), text  # unsigned
        code, text = inbound.deliver(PATIENT, _tamper_body(PATIENT_KEY.sign(reply())))
        assert (code, text[:6]) == (550, b"5.7.20"), text
        signed_by_other = CHU_KEY.sign(reply())  # valid, but not the patient's domain
        code, text = inbound.deliver(PATIENT, signed_by_other)
        assert (code, text[:6]) == (550, b"5.7.20"), text
        code, text = inbound.deliver(PATIENT, PATIENT_KEY.sign(reply()))
        assert code == 250, text
        delivered = inbound.mailbox.messages()
        assert len(delivered) == 1
        assert b"dkim=pass header.d=patient.mssante.fr" in delivered[0][1]
        rules = [
            e["rule"]
            for e in inbound.relay.wait_event("decision", 8)
            if e["stage"] == "data" and e["listener"] == "inbound"
        ]
        assert rules == ["patient_dkim", "patient_dkim", "patient_dkim", "data"]


def test_a_large_message_arrives_whole_and_signed(
    signing: tuple[Stack, dict[str, str]],
) -> None:
    """Several megabytes: written to the upstream by slices, dot-stuffed,
    its body hashed without a copy; trailing empty lines as sent."""
    stack, records = signing
    lines = b"".join(b".ligne %07d qui commence par un point\r\n" % i for i in range(80_000))
    content = (
        (
            f"From: {SENDER}\r\nTo: {DEST}\r\nSubject: gros\r\nMessage-ID: <big@x>\r\n"
            "Date: Mon, 23 Nov 2026 10:00:00 +0100\r\n\r\n"
        ).encode()
        + lines
        + b"\r\n\r\n\r\n"
    )
    assert len(content) > 3 * 1024 * 1024
    with connect(stack) as client:
        _, (code, text) = send(client, SENDER, [DEST], content)
    assert code == 250, text
    received = stack.upstream.messages()[-1][1]
    assert received.endswith(b"\r\n\r\n" + lines + b"\r\n\r\n\r\n")
    assert _verify_all(received, records) == [True, True]
