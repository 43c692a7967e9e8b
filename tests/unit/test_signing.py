from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import dkim
import pytest
from dkim.canonicalization import CanonicalizationPolicy
from hypothesis import given, settings
from hypothesis import strategies as st

from mss_relay.core.authentication import DkimCheck
from mss_relay.core.message import crlf_lines
from mss_relay.signing import (
    DkimKey,
    Signer,
    UnusableKey,
    dns_record,
    generate_key,
    load_key,
    relaxed_body,
    relaxed_body_hash,
    sign,
    txt_value,
)
from mss_relay.verification import Verifier, file_lookup
from tests.support.dkim import lookup


def _key(domain: str, selector: str = "s") -> DkimKey:
    return DkimKey(domain, selector, "rsa-sha256", b"", 2048)


def test_signing_domain_is_the_bal_domain_or_its_nearest_parent_with_a_key() -> None:
    signer = Signer([_key("ch-exemple.mssante.fr"), _key("cardio.ch-exemple.mssante.fr", "c")])
    assert [k.selector for k in signer.keys_for("cardio.ch-exemple.mssante.fr")] == ["c"]
    assert [k.domain for k in signer.keys_for("Urgences.CH-exemple.mssante.fr.")] == [
        "ch-exemple.mssante.fr"
    ]
    assert signer.keys_for("chu-b.mssante.fr") == ()
    assert signer.keys_for("exemple.mssante.fr") == ()  # a suffix of a label is not a parent
    assert not Signer([])


def test_dns_record_splits_long_values_in_255_octet_strings() -> None:
    _, public = generate_key("rsa-sha256", 4096)
    record = dns_record("CH.mssante.fr.", "s1", "rsa-sha256", public)
    assert record.startswith("s1._domainkey.ch.mssante.fr. IN TXT ( ")
    strings = record.split("(", 1)[1].rsplit(")", 1)[0].split('"')[1::2]
    assert len(strings) > 2 and all(len(s) <= 255 for s in strings)
    assert "".join(strings) == "v=DKIM1; k=rsa; p=" + public.decode()


def test_algorithm_and_key_type_must_agree(tmp_path: Path) -> None:
    pem, _ = generate_key("ed25519-sha256")
    path = tmp_path / "ed.pem"
    path.write_bytes(pem)
    assert load_key(path, "a.mssante.fr", "s", "ed25519-sha256").bits == 256
    with pytest.raises(UnusableKey, match="not an RSA key"):
        load_key(path, "a.mssante.fr", "s", "rsa-sha256")


def test_alignment_is_relaxed_but_not_lookalike() -> None:
    assert DkimCheck("pass", "patient.mssante.fr").aligned_with("patient.mssante.fr")
    assert DkimCheck("pass", "mssante.fr").aligned_with("patient.mssante.fr")
    assert not DkimCheck("pass", "chu.mssante.fr").aligned_with("patient.mssante.fr")
    assert not DkimCheck("pass", "ient.mssante.fr").aligned_with("patient.mssante.fr")
    assert not DkimCheck("none").aligned_with("patient.mssante.fr")


def test_only_our_own_forged_results_are_removed() -> None:
    verifier = Verifier("relay.ch.mssante.fr", file_lookup({}))
    message = (
        b"Authentication-Results: relay.ch.mssante.fr; dkim=pass\r\n"
        b"authentication-results:\r\n RELAY.CH.MSSANTE.FR;\r\n\tdkim=pass header.d=x\r\n"
        b"Authentication-Results: mx.operateur.fr; dkim=pass\r\n"
        b"Authentication-Results: relay.ch.mssante.fr.example; dkim=pass\r\n"
        b"Authentication-Results: relay.ch.mssante.fr 1; dkim=pass\r\n"
        b"Authentication-Results: (c) relay.ch.mssante.fr; dkim=pass\r\n"
        b"Authentication-Results: RELAY.CH.MSSANTE.FR.; dkim=pass\r\n"
        b"Authentication-Results:\r\n"
        b"Subject: x\r\n\r\n"
        b"Authentication-Results: relay.ch.mssante.fr; dkim=pass\r\n"
    )
    assert verifier.without_forged_results(message) == (
        b"Authentication-Results: mx.operateur.fr; dkim=pass\r\n"
        b"Authentication-Results: relay.ch.mssante.fr.example; dkim=pass\r\n"
        b"Subject: x\r\n\r\n"
        b"Authentication-Results: relay.ch.mssante.fr; dkim=pass\r\n"
    )


def test_verification_outcomes_without_network() -> None:
    verifier = Verifier("relay.ch.mssante.fr", file_lookup({}))
    assert verifier.verify(b"From: a@b.mssante.fr\r\n\r\nx\r\n") == (DkimCheck("none"),)
    signed = b"DKIM-Signature: v=1; a=rsa-sha256; d=b.mssante.fr; s=s; h=from; bh=AA==; b=AA==\r\n"
    (check,) = verifier.verify(signed + b"From: a@b.mssante.fr\r\n\r\nx\r\n")
    assert (check.result, check.domain) == ("permerror", "b.mssante.fr")  # no key published

    def timeout(name: bytes, timeout: float = 5) -> bytes | None:
        raise dkim.DnsTimeoutError("test")

    (check,) = Verifier("relay.ch.mssante.fr", timeout).verify(signed + b"From: a@b\r\n\r\nx\r\n")
    assert check.result == "temperror"
    assert verifier.verify(b"\x00\xff garbage") in ((DkimCheck("none"),), (DkimCheck("permerror"),))


def test_dkimpy_failures_on_garbage_are_permerrors() -> None:
    verifier = Verifier("relay.ch.mssante.fr", file_lookup({}))
    signed = b"DKIM-Signature: v=1; a=rsa-sha256; d=b.mssante.fr; s=s; h=from; bh=AA==; b=AA==\r\n"
    for raw in (b" folded first\r\n" + signed + b"From: a\r\n\r\nx", b"\r\n" + signed):
        assert all(c.result in ("permerror", "fail", "none") for c in verifier.verify(raw))


_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")


@settings(max_examples=800)
@given(st.lists(st.sampled_from([b" ", b"\t", b"\r\n", b"\r", b"\n", b"a", b"=", b"  \t "])))
def test_relaxed_body_is_dkimpys(pieces: list[bytes]) -> None:
    body = b"".join(pieces)
    assert relaxed_body(body) == _RELAXED.canonicalize_body(body)


# A run of 40,000 empty lines stands for itself by a short token: hypothesis
# warns (an error here) when it has to show an example of over 80 KB.
_BLANK_RUN = b"\r\n" * 40000


@settings(max_examples=800)
@given(st.lists(st.sampled_from([b" ", b"\t", b"\r\n", b"a", b"=", b"<blank run>"])))
def test_body_hash_without_copy_is_dkimpys(pieces: list[bytes]) -> None:
    head = b"From: a@ch.mssante.fr\r\n\r\n"
    body = b"".join(_BLANK_RUN if p == b"<blank run>" else p for p in pieces)
    expected = base64.b64encode(hashlib.sha256(_RELAXED.canonicalize_body(body)).digest())
    assert relaxed_body_hash(head + body, len(head)) == expected


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\r\n",
        b"x",
        b"line \t \r\n\tindented  twice\r\n\r\n\r\n",
        b"lone LF\nhere\r\nand a lone CR\r there \r\n",
        b"QUFBQUFB\r\n" * 5000,
    ],
)
def test_signatures_verify_with_dkimpy(tmp_path: Path, body: bytes) -> None:
    pem, public = generate_key("rsa-sha256")
    path = tmp_path / "k.pem"
    path.write_bytes(pem)
    key = load_key(path, "ch.mssante.fr", "s1", "rsa-sha256")
    message = b"From: a@ch.mssante.fr\r\nSubject:  x \t y\r\n folded\r\nTo: b@c.mssante.fr\r\n\r\n"
    records = {"s1._domainkey.ch.mssante.fr": txt_value("rsa-sha256", public)}
    for crlf in (False, True):
        wire = crlf_lines(message + body) if crlf else message + body
        signed = sign(wire, key, crlf=crlf) + wire
        assert dkim.verify(signed, dnsfunc=lookup(records))
        assert not dkim.verify(signed + b"tampered\r\n", dnsfunc=lookup(records))
