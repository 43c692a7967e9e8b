"""Property-based tests (hypothesis) of the parsers hostile input reaches first:
the address parser, the INS check and the MIME inspector."""

from __future__ import annotations

from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY

from hypothesis import given, settings
from hypothesis import strategies as st

from mss_relay.core.addresses import (
    domain_of,
    in_trust_space,
    is_valid_ins_matricule,
    normalize_address,
    normalize_domain,
    split_address,
)
from mss_relay.core.message import MAX_MIME_DEPTH, crlf_lines, inspect_message
from tests.support.mail import nested_mime

# --- addresses ----------------------------------------------------------------

LABEL = st.from_regex(r"\A[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?\Z")


@settings(max_examples=500)
@given(st.text(max_size=80))
def test_address_normalization_is_total_and_idempotent(address: str) -> None:
    once = normalize_address(address)
    assert normalize_address(once) == once
    local, domain = split_address(address)
    assert "@" not in domain
    if "@" in address:
        assert address.endswith(domain) and address.startswith(local)


@settings(max_examples=500)
@given(st.lists(LABEL, min_size=0, max_size=4), st.sampled_from(["", "."]), st.booleans())
def test_trust_space_is_exactly_mssante_fr_and_its_subdomains(
    labels: list[str], trailing: str, upper: bool
) -> None:
    domain = ".".join([*labels, "mssante", "fr"]) + trailing
    domain = domain.upper() if upper else domain
    assert in_trust_space(domain)
    assert in_trust_space(domain_of(f"x@{domain}"))
    # Glued to a label, or followed by anything, it is outside.
    if labels:
        glued = ".".join(labels) + "mssante.fr"
        assert not in_trust_space(glued)
    assert not in_trust_space(normalize_domain(domain) + "." + (labels[0] if labels else "com"))


# --- INS matricule ------------------------------------------------------------


def _with_key(first13: str) -> str:
    number = int(first13.upper().replace("2A", "19").replace("2B", "18"))
    return f"{first13}{97 - number % 97:02d}"


MATRICULE_BODY = st.builds(
    lambda sex, year, month, dept, rest: f"{sex}{year:02d}{month:02d}{dept}{rest:06d}",
    st.sampled_from("12378"),
    st.integers(0, 99),
    st.integers(1, 12),
    st.one_of(st.integers(1, 95).map(lambda d: f"{d:02d}"), st.sampled_from(["2A", "2B"])),
    st.integers(1, 999_999),
)


@settings(max_examples=500)
@given(MATRICULE_BODY)
def test_every_well_formed_matricule_with_its_key_is_valid(body: str) -> None:
    assert is_valid_ins_matricule(_with_key(body))


@settings(max_examples=500)
@given(MATRICULE_BODY, st.integers(0, 14), st.sampled_from("0123456789"))
def test_any_single_digit_changed_is_caught(body: str, position: int, digit: str) -> None:
    valid = _with_key(body)
    if not valid[position].isdigit() or valid[position] == digit:
        return
    altered = valid[:position] + digit + valid[position + 1 :]
    if altered[5:7] in ("2A", "2B") and position in (5, 6):
        return
    assert not is_valid_ins_matricule(altered)


@settings(max_examples=500)
@given(st.text(max_size=30))
def test_matricule_check_never_raises(text: str) -> None:
    if is_valid_ins_matricule(text):
        assert len(text) == 15


# --- MIME inspector -------------------------------------------------------------

FRAGMENTS = st.sampled_from(
    [
        b"From: a@b.mssante.fr\r\n",
        b"Content-Type: multipart/mixed; boundary=X\r\n",
        b'Content-Type: multipart/mixed; boundary=""\r\n',
        b"Content-Type: message/rfc822\r\n",
        b"Content-Transfer-Encoding: base64\r\n",
        b"Content-Transfer-Encoding: quoted-printable\r\n",
        b"Content-Disposition: attachment; filename*=utf-8''%ff%fe\r\n",
        b"Content-Disposition: attachment; filename*0*=x'y'%; filename*1=\"\"\r\n",
        b"Content-Type: application/pdf; name==?utf-8?b?////?=\r\n",
        b"Subject: =?x-unknown?q?abc?= =?utf-8?q?=ZZ?=\r\n",
        b"\r\n",
        b"--X\r\n",
        b"--X--\r\n",
        b"=ZZ=\r\n",
        b"!!!not base64%%%\r\n",
        b"\xff\xfe\x00\x80\r\n",
        b"\n",
        b"\r",
        b" folded continuation\r\n",
    ]
)


@settings(max_examples=1000)
@given(st.lists(FRAGMENTS, max_size=60))
def test_inspector_never_raises_on_hostile_fragments(fragments: list[bytes]) -> None:
    info = inspect_message(b"".join(fragments))
    assert info.total_decoded_size >= 0
    assert all(p.decoded_size >= 0 for p in info.parts)


@settings(max_examples=300)
@given(st.binary(max_size=5000))
def test_inspector_and_line_ends_never_raise_on_bytes(raw: bytes) -> None:
    inspect_message(raw)
    normalized = crlf_lines(raw)
    assert normalized.count(b"\n") == normalized.count(b"\r\n") == normalized.count(b"\r")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.from_regex(r"\A[a-z]{1,8}\.(pdf|xml|hl7|png)\Z"), st.binary(max_size=4000)),
        max_size=5,
    )
)
def test_inspector_measures_every_attachment_exactly(files: list[tuple[str, bytes]]) -> None:
    msg = EmailMessage()
    msg["From"] = "a@b.mssante.fr"
    msg.set_content("texte")
    for name, data in files:
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    info = inspect_message(msg.as_bytes(policy=SMTP_POLICY))
    assert [(a.filename, a.decoded_size) for a in info.attachments] == [
        (name, len(data)) for name, data in files
    ]
    assert info.from_addresses == ("a@b.mssante.fr",)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 3 * MAX_MIME_DEPTH))
def test_nesting_is_followed_to_the_limit_and_refused_beyond(depth: int) -> None:
    body = nested_mime(depth)
    info = inspect_message(b"From: a@b.mssante.fr\r\n" + body)
    if depth <= MAX_MIME_DEPTH:
        assert info.structure_error is None and len(info.parts) == 1
    else:
        assert info.structure_error is not None
