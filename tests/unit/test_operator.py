"""Operator certificates (issue 16, part 2): the peer certificate's DN as the
liste blanche writes it, the comparison, and the decision at MAIL."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from mss_relay.config import ConfigError, TlsConfig, VerifyClient
from mss_relay.core.facts import MailFacts, SessionFacts
from mss_relay.core.operator import normalize_dn, subject_dn
from mss_relay.core.rules.operator import operator_certificate
from mss_relay.tls import inbound_context
from mss_relay.trust.whitelist import parse_whitelist
from tests.conftest import issue_client_certificate
from tests.support.whitelist import whitelist_xml

MEDIMAIL = "CN=medimail-asip.mipih.fr,OU=318310021300028,O=GIP MIPIH,ST=Bouches-du-Rhône (13),C=FR"
LISTED = parse_whitelist(
    whitelist_xml(
        [
            (
                "chu-b.mssante.fr",
                "cn=medimail-asip.mipih.fr, OU = 318310021300028,O=GIP MIPIH,"
                "  ST=Bouches-du-Rhône (13) , C=FR",
            ),
            ("mssante.apicrypt.org", "CN=mss.apicrypt.org,O=APICRYPT,C=FR"),
        ]
    )
)


@pytest.mark.parametrize(
    ("written", "normal"),
    [
        (MEDIMAIL, MEDIMAIL),
        ("CN=a, OU=1,  O=B C ,C=FR", "CN=a,OU=1,O=B C,C=FR"),
        ("cn = a,o=b", "CN=a,O=b"),
        ("CN=a\\, b,O=c", "CN=a\\, b,O=c"),  # an escaped comma is in the value
        ("CN=a,\n    O=b", "CN=a,O=b"),  # a value over two lines in the file
        ("CN=op2,O=Opérateur\n Deux,C=FR", "CN=op2,O=Opérateur Deux,C=FR"),  # a line break inside
        ("CN=a,O=b \t  c", "CN=a,O=b c"),
    ],
)
def test_normalize_dn_drops_spacing_and_name_case_only(written: str, normal: str) -> None:
    assert normalize_dn(written) == normal


def test_normalize_dn_keeps_value_case_and_order() -> None:
    assert normalize_dn("CN=A,O=b") != normalize_dn("CN=a,O=b")
    assert normalize_dn("O=b,CN=a") != normalize_dn("CN=a,O=b")


def _decoded(tmp_path: Path, subject: str) -> tuple[tuple[tuple[str, str], ...], ...]:
    """The subject as ssl.getpeercert() gives it, for a certificate of that subject."""
    path = issue_client_certificate(trustme.CA(), tmp_path / "c.pem", subject)
    decoded = ssl._ssl._test_decode_cert(str(path))  # type: ignore[attr-defined]
    return decoded["subject"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "subject",
    [
        MEDIMAIL,
        "CN=mss.apicrypt.org,OU=44000000000001,O=APICRYPT,L=Nantes,C=FR",
        "CN=x,O=A\\, B et C,C=FR",  # a comma in a value, escaped
        "CN=x,DC=sante,DC=fr",
    ],
)
def test_subject_dn_is_the_rfc4514_string_of_the_certificate(tmp_path: Path, subject: str) -> None:
    assert subject_dn(_decoded(tmp_path, subject)) == subject


def test_a_multi_valued_rdn_reads_as_the_certificate_encodes_it(tmp_path: Path) -> None:
    """DER sorts the attributes of one RDN: the certificate's order, as cryptography reads it."""
    path = issue_client_certificate(trustme.CA(), tmp_path / "c.pem", "CN=s+OU=m,O=x,C=FR")
    read = x509.load_pem_x509_certificate(path.read_bytes()).subject.rfc4514_string()
    assert subject_dn(_decoded(tmp_path, "CN=s+OU=m,O=x,C=FR")) == read


def _mail(sender: str, dn: str | None) -> MailFacts:
    session = SessionFacts("192.0.2.1", "mx.op.test", True, None, "inbound", peer_dn=dn)
    return MailFacts(session, sender, None)


@pytest.mark.parametrize(
    ("sender", "dn", "rule", "text"),
    [
        ("a@chu-b.mssante.fr", MEDIMAIL, None, None),
        ("a@CHU-B.mssante.fr.", MEDIMAIL, None, None),
        ("a@mssante.apicrypt.org", "CN=mss.apicrypt.org, O=APICRYPT, C=FR", None, None),
        (
            "a@mssante.apicrypt.org",
            MEDIMAIL,
            "DN not listed for the sender domain",
            " du domaine mssante.apicrypt.org (certificat non inscrit pour ce domaine dans la"
            " liste blanche MSSante)",
        ),
        (
            "a@chu-b.mssante.fr",
            None,
            "no client certificate",
            " du domaine chu-b.mssante.fr (aucun certificat client présenté)",
        ),
        ("", MEDIMAIL, None, None),  # a bounce from a listed operator
        (
            "",
            "CN=rogue,C=FR",
            "null sender: DN of no listed operator",
            " (certificat absent de la liste blanche MSSante)",
        ),
        ("", None, "no client certificate", " (aucun certificat client présenté)"),
    ],
)
def test_operator_certificate_decision(
    sender: str, dn: str | None, rule: str | None, text: str | None
) -> None:
    verdict = operator_certificate(_mail(sender, dn), LISTED)
    if rule is None:
        assert verdict is None
        return
    assert verdict is not None and verdict.reply is not None
    assert (verdict.reply.code, verdict.reply.enhanced) == (550, "5.7.1")
    assert verdict.reply.text == "Le serveur émetteur n'est pas un opérateur MSSanté" + (text or "")
    assert (verdict.rule, verdict.reason) == ("operator_certificate", rule)


@given(st.lists(st.sampled_from([" ", "  ", ""]), min_size=10, max_size=10))
def test_any_spacing_around_separators_compares_equal(spaces: list[str]) -> None:
    parts = [("CN", "a.b.fr"), ("OU", "318310021300028"), ("O", "GIP MIPIH"), ("C", "FR")]
    it = iter(spaces)
    written = ",".join(f"{next(it)}{k}{next(it)}={v}" for k, v in parts[:2])
    written += "," + ",".join(f"{k}={v}{next(it)}" for k, v in parts[2:])
    assert normalize_dn(written) == "CN=a.b.fr,OU=318310021300028,O=GIP MIPIH,C=FR"


def _tls(tmp_path: Path, client_ca: Path | None, verify: VerifyClient) -> TlsConfig:
    issued = trustme.CA().issue_cert("relay.test")
    cert, key = tmp_path / "relay.pem", tmp_path / "relay.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return TlsConfig(certificate=cert, private_key=key, client_ca=client_ca, verify_client=verify)


def test_inbound_context_trusts_the_client_ca_only(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    context = inbound_context(_tls(tmp_path, tmp_path / "ca.pem", VerifyClient.OPTIONAL), "r")
    assert context is not None and context.verify_mode == ssl.CERT_OPTIONAL
    assert len(context.get_ca_certs()) == 1  # not the system's CAs too
    required = inbound_context(_tls(tmp_path, tmp_path / "ca.pem", VerifyClient.REQUIRED), "r")
    assert required is not None and required.verify_mode == ssl.CERT_REQUIRED
    assert inbound_context(_tls(tmp_path, None, VerifyClient.NONE), "r") is None


def test_a_client_ca_that_is_not_pem_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "igc-sante.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as caught:
        inbound_context(_tls(tmp_path, bad, VerifyClient.REQUIRED), "r")
    assert str(caught.value).startswith(f"tls.client_ca: {bad}: cannot load CA certificates")
