"""Property-based tests (hypothesis) of the parsers hostile input reaches first:
the address parser, the INS check and the MIME inspector."""

from __future__ import annotations

import base64
import binascii
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
from mss_relay.core.facts import MailFacts, MessageFacts, SessionFacts
from mss_relay.core.filetypes import HEAD_SIZE
from mss_relay.core.mailbox import Bal, BalDirectory, BalType
from mss_relay.core.message import MAX_MIME_DEPTH, crlf_lines, inspect_message
from mss_relay.core.policy import Limits, Policy
from tests.support import files
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


# --- issue 13: layouts of the encodings, parts without a name ---------------------

# What may come before or between base64 lines, and the decoder skips.
FILLER = st.lists(st.sampled_from([b"", b" " * 300, b"\t", b"  \t ", b" " * 77]), max_size=200).map(
    b"\r\n".join
)


def _one_part(headers: bytes, body: bytes) -> bytes:
    return (
        b"From: a@b.mssante.fr\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
        b"--B\r\nContent-Type: text/plain\r\n\r\ntexte\r\n--B\r\n"
        + headers
        + b"\r\n"
        + body
        + b"\r\n--B--\r\n"
    )


_PDF_NAMED = b"Content-Type: application/pdf; name=scan.pdf\r\n"


@st.composite
def base64_layouts(draw: st.DrawFn, data: bytes) -> bytes:
    """data in base64 behind filler lines, cut into lines of the drawn
    lengths (taken in turn), with filler lines now and then among them."""
    encoded = base64.b64encode(data)
    widths = draw(st.lists(st.integers(1, 120), min_size=1, max_size=8))
    fillers = draw(st.lists(FILLER, max_size=4))
    lines, at, turn = [draw(FILLER)], 0, 0
    while at < len(encoded):
        width = widths[turn % len(widths)]
        lines.append(encoded[at : at + width])
        at, turn = at + width, turn + 1
        if fillers and turn % 7 == 0:
            lines.append(fillers[turn % len(fillers)])
    return b"\r\n".join(lines)


@settings(max_examples=200, deadline=None)
@given(st.data(), st.binary(max_size=600))
def test_the_first_decoded_bytes_are_seen_whatever_the_base64_layout(
    data: st.DataObject, tail: bytes
) -> None:
    content = files.exe() + tail
    headers = _PDF_NAMED + b"Content-Transfer-Encoding: base64\r\n"
    info = inspect_message(_one_part(headers, data.draw(base64_layouts(content))))
    assert info.parts[1].head == content[:HEAD_SIZE]
    assert info.parts[1].decoded_size == len(content)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 200), st.integers(2, 76), st.binary(max_size=600))
def test_the_first_decoded_bytes_are_seen_whatever_the_qp_layout(
    soft_breaks: int, width: int, tail: bytes
) -> None:
    content = files.exe() + tail
    encoded = binascii.b2a_qp(content, istext=False).replace(b"=\n", b"")
    # Soft line breaks before and every `width` characters (never inside an =XY).
    lines, at = [], 0
    while at < len(encoded):
        cut = at + width
        while b"=" in encoded[cut - 2 : cut]:
            cut += 1
        lines.append(encoded[at:cut])
        at = cut
    body = b"=\r\n" * soft_breaks + b"=\r\n".join(lines)
    headers = _PDF_NAMED + b"Content-Transfer-Encoding: quoted-printable\r\n"
    info = inspect_message(_one_part(headers, body))
    assert info.parts[1].head == content[:HEAD_SIZE]
    assert info.parts[1].decoded_size == len(content)


_LIMIT = 1000


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["application/dicom", "application/octet-stream", "image/png", "text/plain"]),
    st.sampled_from([None, "irm.dcm", "=?utf-8?q?compte_rendu?="]),
    st.sampled_from([None, "inline", "attachment"]),
    st.integers(_LIMIT + 1, 3 * _LIMIT),
    st.data(),
)
def test_every_part_over_the_limit_is_refused_named_or_not(
    content_type: str, name: str | None, disposition: str | None, size: int, data: st.DataObject
) -> None:
    headers = f"Content-Type: {content_type}" + (f'; name="{name}"' if name else "") + "\r\n"
    if disposition is not None:
        headers += f"Content-Disposition: {disposition}\r\n"
    headers += "Content-Transfer-Encoding: base64\r\n"
    body = data.draw(base64_layouts(b"\x01" * size))
    raw = _one_part(headers.encode(), body)
    info = inspect_message(raw)
    part = info.parts[1]
    assert part.is_attachment is (
        content_type != "text/plain" or name is not None or disposition == "attachment"
    )
    policy = Policy(
        Limits(max_attachment_size=_LIMIT, max_message_size=60 * 2**20, max_recipients=5),
        BalDirectory([Bal("a@b.mssante.fr", BalType.NOMINATIVE, frozenset({"jd"}))]),
    )
    session = SessionFacts("127.0.0.1", "h", True, "jd", "submission")
    mail = MailFacts(session, "a@b.mssante.fr", None)
    verdict = policy.evaluate_message(MessageFacts(mail, ("x@chu.mssante.fr",), len(raw), info))
    assert verdict.rule == "attachment_size" and verdict.reply is not None
    assert (verdict.reply.code, verdict.reply.enhanced) == (552, "5.3.4")
    shown = "compte rendu" if name and name.startswith("=?") else name or content_type
    assert f"« {shown} »" in verdict.reply.text
