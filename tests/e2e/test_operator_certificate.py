"""Operator certificates on the incoming side (issue 16, part 2), with the
real relay process: inbound listeners ask for a client certificate signed by
tls.client_ca (tls.verify_client), and with inbound.require_operator_certificate
the certificate's subject DN must be one the liste blanche lists for the
envelope sender's domain (spacing and attribute-name case aside), else
550 5.7.1 at MAIL. A listed sender domain outside mssante.fr comes in."""

from __future__ import annotations

import contextlib
import signal
import smtplib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Pki, two_sided
from tests.support.mail import make_message
from tests.support.processes import Relay, Upstream, free_port
from tests.support.whitelist import whitelist_xml

BAL = "jean.dupont@ch-exemple.mssante.fr"
# As a certificate reads in RFC 4514 (encoded C first), non-ASCII included.
MEDIMAIL = "CN=medimail-asip.mipih.fr,OU=318310021300028,O=GIP MIPIH,ST=Bouches-du-Rhône (13),C=FR"
APICRYPT = "CN=mss.apicrypt.org,OU=44000000000001,O=APICRYPT,C=FR"
ROGUE = "CN=medimail-asip.mipih.fr,OU=999999999999999,O=GIP MIPIH,C=FR"
# The liste blanche: chu-a lists MEDIMAIL as the certificate reads; chu-b
# writes it with other spacing and a lower-case attribute name.
LISTED = [
    ("ch-exemple.mssante.fr", APICRYPT),
    ("chu-a.mssante.fr", MEDIMAIL),
    (
        "CHU-B.mssante.fr",
        "CN=medimail-asip.mipih.fr, OU=318310021300028 ,O=GIP MIPIH,"
        "  st = Bouches-du-Rhône (13), C=FR",
    ),
    ("chu-b.mssante.fr", APICRYPT),
    ("mssante.apicrypt.org", APICRYPT),
]
NOT_OPERATOR = b"5.7.1 Le serveur emetteur n'est pas un operateur MSSante"


@dataclass
class Incoming:
    relay: Relay
    mailbox: Upstream
    pki: Pki
    certs: dict[str, Path]

    def open(self, cert: str | None, listener: str = "inbound") -> smtplib.SMTP:
        context = self.pki.operator_context(self.certs[cert] if cert else None)
        port = self.relay.port_of(listener)
        if listener.endswith("implicit"):
            client: smtplib.SMTP = smtplib.SMTP_SSL("127.0.0.1", port, timeout=30, context=context)
            client.ehlo("mx.operateur.test")
            return client
        client = smtplib.SMTP("127.0.0.1", port, timeout=30)
        client.ehlo("mx.operateur.test")
        client.starttls(context=context)
        client.ehlo("mx.operateur.test")
        return client

    def mail(self, cert: str | None, sender: str, listener: str = "inbound") -> tuple[int, bytes]:
        with self.open(cert, listener) as client:
            return client.mail(sender)

    def deliver(self, cert: str | None, sender: str, listener: str = "inbound") -> int:
        """The whole transaction: the final reply's code (MAIL's when refused)."""
        with self.open(cert, listener) as client:
            code, _ = client.mail(sender)
            if code != 250:
                return code
            assert client.rcpt(BAL)[0] == 250
            code, _ = client.data(make_message(sender=sender, to=BAL))
            return code


def _listeners(listeners: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The inbound listener in STARTTLS, and one in implicit TLS."""
    for listener in listeners:
        if listener["role"] == "inbound":
            listener["tls"] = "starttls"
    implicit = {
        "name": "inbound-implicit",
        "role": "inbound",
        "host": "127.0.0.1",
        "port": free_port(),
        "tls": "implicit",
    }
    return [*listeners, implicit]


@contextlib.contextmanager
def incoming(
    tmp: Path, pki: Pki, hashes: dict[str, str], verify: str, require: bool = True
) -> Iterator[Incoming]:
    listed = tmp / "listeblanchemssante.xml"
    listed.write_bytes(whitelist_xml(LISTED))
    certs = {
        "medimail": pki.client_certificate(tmp, MEDIMAIL, "medimail"),
        "apicrypt": pki.client_certificate(tmp, APICRYPT, "apicrypt"),
        "rogue": pki.client_certificate(tmp, ROGUE, "rogue"),
    }

    def tls(section: dict[str, Any]) -> dict[str, Any]:
        return {**section, "client_ca": str(pki.ca_file(tmp)), "verify_client": verify}

    with two_sided(
        tmp,
        pki,
        hashes,
        listeners=_listeners,
        tls=tls,
        trust_space={"whitelist": str(listed)},
        inbound={"require_operator_certificate": require},
    ) as (relay, _operator, mailbox):
        yield Incoming(relay, mailbox, pki, certs)


def _mail_decisions(relay: Relay, count: int) -> list[dict[str, Any]]:
    return relay.wait_event(
        "decision", count, where=lambda e: e["stage"] == "mail" and e["listener"] != "submission"
    )


def test_optional_mode_matching_spacing_wrong_and_missing_certificates(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    with incoming(tmp_path, pki, password_hashes, "optional") as inbound:
        # The DN as listed, and as listed with other spacing and name case.
        assert inbound.deliver("medimail", "dr.x@chu-a.mssante.fr") == 250
        assert inbound.deliver("medimail", "dr.y@chu-b.mssante.fr") == 250
        # An apicrypt-style domain (outside mssante.fr) listed: in the trust space.
        assert inbound.deliver("apicrypt", "dr.z@mssante.apicrypt.org") == 250
        assert len(inbound.mailbox.messages()) == 3
        # The certificate of an operator of another domain, and one of the
        # same CA whose DN no entry lists.
        code, text = inbound.mail("medimail", "dr.w@mssante.apicrypt.org")
        assert (code, text[:56]) == (550, NOT_OPERATOR), text
        assert b"du domaine mssante.apicrypt.org" in text
        assert b"certificat non inscrit pour ce domaine" in text
        code, text = inbound.mail("rogue", "dr.x@chu-a.mssante.fr")
        assert (code, text[:56]) == (550, NOT_OPERATOR), text
        # No certificate at all (optional: the handshake succeeds).
        code, text = inbound.mail(None, "dr.x@chu-a.mssante.fr")
        assert (code, text[:56]) == (550, NOT_OPERATOR), text
        assert b"aucun certificat client presente" in text
        # An unlisted domain, even under mssante.fr: the sender rule first.
        code, text = inbound.mail("medimail", "dr.v@nobody-registered.mssante.fr")
        assert code == 550 and b"domaine absent de la liste blanche MSSante" in text, text
        assert len(inbound.mailbox.messages()) == 3  # nothing more delivered
        decisions = _mail_decisions(inbound.relay, 7)
        assert [(e["rule"], e.get("peer_dn")) for e in decisions] == [
            ("mail", MEDIMAIL),
            ("mail", MEDIMAIL),
            ("mail", APICRYPT),
            ("operator_certificate", MEDIMAIL),
            ("operator_certificate", ROGUE),
            ("operator_certificate", None),
            ("sender_trust_space", MEDIMAIL),
        ]
        assert "operator_certificate" in decisions[0]["reason"]
        assert decisions[3]["reason"] == "DN not listed for the sender domain"
        assert decisions[5]["reason"] == "no client certificate"


def test_null_sender_needs_a_listed_operator_certificate(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    with incoming(tmp_path, pki, password_hashes, "optional") as inbound:
        assert inbound.mail("apicrypt", "")[0] == 250
        code, text = inbound.mail("rogue", "")
        assert (code, text[:56]) == (550, NOT_OPERATOR), text
        assert b"certificat absent de la liste blanche MSSante" in text


def test_required_mode_refuses_the_handshake_without_a_certificate(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    with incoming(tmp_path, pki, password_hashes, "required") as inbound:
        for listener in ("inbound", "inbound-implicit"):
            assert inbound.deliver("medimail", "dr.x@chu-a.mssante.fr", listener) == 250
            with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, OSError)):
                inbound.mail(None, "dr.x@chu-a.mssante.fr", listener)
            code, _ = inbound.mail("rogue", "dr.x@chu-a.mssante.fr", listener)
            assert code == 550
        assert len(inbound.mailbox.messages()) == 2
        # The relay is still there, and no traceback for the refused handshakes.
        assert inbound.deliver("apicrypt", "dr.z@mssante.apicrypt.org") == 250
        assert not inbound.relay.events("internal_error")


def test_a_reload_keeps_asking_for_the_certificate(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    """SIGHUP rebuilds the TLS contexts; both kinds of inbound listener keep
    verifying client certificates against tls.client_ca."""
    with incoming(tmp_path, pki, password_hashes, "optional") as inbound:
        proc = inbound.relay.process.proc
        assert proc is not None
        proc.send_signal(signal.SIGHUP)
        assert inbound.relay.wait_event("reloaded"), inbound.relay.events("reload_failed")
        for listener in ("inbound", "inbound-implicit"):
            assert inbound.deliver("medimail", "dr.y@chu-b.mssante.fr", listener) == 250
            assert inbound.mail("rogue", "dr.y@chu-b.mssante.fr", listener)[0] == 550
            assert inbound.mail(None, "dr.y@chu-b.mssante.fr", listener)[0] == 550


def test_without_the_requirement_a_listed_sender_comes_in_without_certificate(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    """Part 3 alone: with the liste blanche, the inbound sender rule is its
    domains (an apicrypt domain in, an unregistered *.mssante.fr out)."""
    with incoming(tmp_path, pki, password_hashes, "none", require=False) as inbound:
        assert inbound.deliver(None, "dr.z@interop.mssante.apicrypt.org") == 550
        assert inbound.deliver(None, "dr.z@mssante.apicrypt.org") == 250
        assert inbound.deliver(None, "dr.v@nobody-registered.mssante.fr") == 550
        decisions = _mail_decisions(inbound.relay, 3)
        assert all("peer_dn" not in e for e in decisions)
