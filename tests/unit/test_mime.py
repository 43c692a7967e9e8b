"""The bytes-level MIME scan (core.mime) against the standard library's parser:
wherever the scan answers, the inspection must be the one the standard
library's tree gives, on plain and on hostile structures alike."""

from __future__ import annotations

import base64
import io
import zipfile
from email.parser import BytesHeaderParser
from email.policy import compat32

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mss_relay.core.message import inspect_message
from mss_relay.core.mime import Payload, _plain_headers, scan
from tests.support.mail import nested_mime

# The last ones: a folded value (compat32 keeps its CRLF), a character
# RFC 2046 does not allow.
BOUNDARIES = ["b1", "b1x", "b", "=_b1", "b1--", "b 1", "b1 ", "b\r\n 1", "b;1"]
ZIP = io.BytesIO()
with zipfile.ZipFile(ZIP, "w") as archive:
    archive.writestr("ordonnance.exe", b"MZ" + b"\0" * 64)
BODY_PIECES = [
    b"texte du compte rendu",
    b"TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAA",  # MZ: an executable's head
    base64.b64encode(ZIP.getvalue()),
    base64.b64encode(b"%PDF-1.7\n" + bytes(range(256))),
    b"=41=42=\r\n",
    b"=",
    b"  \t ",
    b"\r\n",
    b"\r\n\r\n",
    b".",
    b"--b1",
    b"--b1--",
    b"--b1  ",
    b"--b1x",
    b"--b",
    b"--b--",
    b"\xe9\xff",
    b"Content-Type: text/plain",
]
HEADER_JUNK = [
    b"X-Note: a\r\n continued\r\n",
    b"not a header line\r\n",
    b" leading continuation\r\n",
    b"From nobody Mon Jan  1 00:00:00 2026\r\n",
    b"Subject: =?utf-8?q?r=C3=A9sultat?=\r\n",
    b"Content-Disposition: attachment; filename*=utf-8''r%C3%A9sultat.pdf\r\n",
    b"Content-Type: text/plain\r\n",  # a second Content-Type
]


@st.composite
def bodies(draw: st.DrawFn, plain: bool) -> bytes:
    alphabet = [p for p in BODY_PIECES if not p.startswith(b"--")] if plain else BODY_PIECES
    return b"\r\n".join(draw(st.lists(st.sampled_from(alphabet), max_size=8)))


@st.composite
def parts(draw: st.DrawFn, depth: int = 0) -> bytes:
    headers: list[bytes] = []
    # Mostly what mail clients write; now and then what they should not.
    plain = draw(st.integers(0, 9)) > 0
    multipart = depth < 4 and draw(st.integers(0, 2)) <= (depth == 0)
    if multipart:
        boundary = draw(st.sampled_from(BOUNDARIES[:5] if plain else BOUNDARIES))
        subtype = draw(
            st.sampled_from(["mixed", "alternative", "related"] + ["digest"] * (not plain))
        )
        quoted = draw(st.booleans()) or " " in boundary
        value = f'"{boundary}"' if quoted else boundary
        headers.append(f"Content-Type: multipart/{subtype}; boundary={value}\r\n".encode())
    else:
        kinds = [
            None,
            "text/plain; charset=utf-8",
            'application/pdf; name="cr.pdf"',
            "application/zip",
        ]
        odd = ["message/rfc822", "multipart/mixed"]  # the latter without a boundary
        kind = draw(st.sampled_from(kinds if plain else odd))
        if kind:
            headers.append(f"Content-Type: {kind}\r\n".encode())
    encodings = [None, "7bit"] if multipart and plain else [None, "base64", "quoted-printable"]
    cte = draw(st.sampled_from(encodings if plain else ["7bit", "x-junk", "BASE64 ", "base64"]))
    if cte:
        headers.append(f"Content-Transfer-Encoding: {cte}\r\n".encode())
    disposition = draw(
        st.sampled_from([None, 'attachment; filename="resultat.exe"', "inline", "attachment"])
    )
    if disposition:
        headers.append(f"Content-Disposition: {disposition}\r\n".encode())
    for junk in draw(st.lists(st.sampled_from(HEADER_JUNK), max_size=0 if plain else 2)):
        headers.insert(draw(st.integers(0, len(headers))), junk)
    separator = b"\r\n" if plain else draw(st.sampled_from([b"\r\n", b""]))
    if not multipart:
        return b"".join(headers) + separator + draw(bodies(plain))
    children = draw(st.lists(parts(depth + 1), min_size=int(plain), max_size=3))
    padding = draw(st.sampled_from([b"", b"", b"  ", b"\t"]))
    body = draw(st.sampled_from([b"", b"preamble\r\n", b"\r\n"]))
    for child in children:
        body += b"--" + boundary.encode() + padding + b"\r\n" + child + b"\r\n"
        if not plain and draw(st.booleans()):
            body += b"--" + boundary.encode() + b"\r\n"  # two delimiter lines in a row
    if plain or draw(st.booleans()):
        body += b"--" + boundary.encode() + b"--" + padding + b"\r\n"
    body += draw(st.sampled_from([b"", b"epilogue\r\n", b"--" + boundary.encode() + b"\r\n"]))
    return b"".join(headers) + separator + body


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    top = b"From: a@ch.mssante.fr\r\nMIME-Version: 1.0\r\n" + draw(parts())
    if draw(st.integers(0, 19)) == 0:  # a bare LF or CR somewhere
        at = draw(st.integers(0, len(top)))
        top = top[:at] + draw(st.sampled_from([b"\n", b"\r"])) + top[at:]
    return top


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_scan_agrees_with_the_standard_library(raw: bytes) -> None:
    assert inspect_message(raw) == inspect_message(raw, fast=False)


def test_a_plain_message_is_scanned_not_parsed() -> None:
    raw = (
        b"From: a@ch.mssante.fr\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="=_b1"\r\n\r\n'
        b"preamble\r\n--=_b1\r\nContent-Type: text/plain\r\n\r\nbonjour\r\n"
        b'--=_b1  \r\nContent-Type: application/pdf; name="cr.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(b"%PDF-" + b"x" * 300).replace(b"\n", b"\r\n")
        + b"\r\n--=_b1--\r\nepilogue\r\n"
    )
    tree = scan(raw)
    assert tree is not None
    assert [leaf.get_content_type() for leaf, _ in tree.leaves] == ["text/plain", "application/pdf"]
    assert tree.leaves[0][1].whole() == b"bonjour"
    info = inspect_message(raw)
    assert info == inspect_message(raw, fast=False)
    assert [p.decoded_size for p in info.parts] == [7, 305]


def test_what_the_scan_leaves_to_the_standard_library() -> None:
    head = b"From: a@ch.mssante.fr\r\n"
    multipart = head + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
    for raw in (
        head + b"Subject: x\nbare LF\r\n\r\nbody\r\n",
        head + b"not a header\r\n\r\nbody",
        multipart + b"--b\r\n\r\nno close delimiter\r\n",
        multipart + b"--b\r\n--b\r\n\r\ntwo delimiter lines\r\n--b--\r\n",
        multipart + b"--b\r\nContent-Type: message/rfc822\r\n\r\nFrom: x\r\n\r\ny\r\n--b--\r\n",
        # A folded boundary: found across two lines by bytes.find, never by the stdlib.
        head + b'Content-Type: multipart/mixed; boundary="a\r\n b"\r\n\r\n'
        b"--a\r\n b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--a\r\n b--\r\n",
        head + b"Content-Type: multipart/mixed\r\n\r\nno boundary\r\n",
        head + b"MIME-Version: 1.0\r\n" + nested_mime(30),
    ):
        assert scan(raw) is None, raw
        assert inspect_message(raw) == inspect_message(raw, fast=False)


def test_a_multipart_whose_boundary_never_appears_cannot_be_checked() -> None:
    """Else it passes for one opaque part, whatever a mail client reading the
    boundary another way (unfolded, say) finds in it: an .exe, for one."""
    exe = base64.encodebytes(b"MZ" + b"\0" * 100).replace(b"\n", b"\r\n")
    for boundary, delimiter in ((b'"a\r\n b"', b"a b"), (b"b", b"c")):
        raw = (
            b"From: a@ch.mssante.fr\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=" + boundary + b"\r\n\r\n"
            b"--" + delimiter + b'\r\nContent-Type: application/octet-stream; name="x.exe"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n" + exe + b"--" + delimiter + b"--\r\n"
        )
        assert scan(raw) is None
        info = inspect_message(raw)
        assert info.structure_error is not None and "boundary never appears" in info.structure_error
        assert info == inspect_message(raw, fast=False)


def test_payload_is_a_range_of_the_message() -> None:
    payload = Payload(b"xxABC DEFyy", 2, 9)
    assert len(payload) == 7 and payload.whole() == b"ABC DEF"
    assert payload.head(2) == b"AB" and payload.tail(2) == b"EF"
    assert payload.count(b"x") == 0 and b" " in payload and b"y" not in payload


_HEADER_PIECES = st.sampled_from(
    [
        "Subject",
        "From",
        "X-A",
        "Content-Type",
        ":",
        ": ",
        ":\t",
        " ",
        "\t",
        "\r\n",
        "\r\n ",
        "\r\n\t",
        "From ",
        "v",
        'a; name="x.pdf"',
        "é",
        "=?utf-8?q?x?=",
        "\x7f",
        "@",
        "\r\nX-B:",
        "\r\nTo: ",
    ]
)


@settings(max_examples=1000)
@given(st.booleans(), st.lists(_HEADER_PIECES, max_size=14))
def test_header_lines_read_as_the_standard_library_reads_them(
    named: bool, pieces: list[str]
) -> None:
    # Mostly blocks that start as a header does, where the fast path answers.
    block = (("X-A:" if named else "") + "".join(pieces)).encode("utf-8")
    if b"\r\n\r\n" in block or block.startswith(b"\r\n"):
        return  # not a header block: the scan splits there
    block += b"\r\n"
    fast = _plain_headers(block)
    if fast is None:
        return  # the parser decides
    reference = BytesHeaderParser(policy=compat32).parsebytes(block)
    assert not reference.defects
    assert reference.get_payload() == fast.get_payload() == ""
    assert fast.items() == reference.items()


def test_the_usual_header_lines_are_read_without_the_parser() -> None:
    block = (
        b'Content-Type: application/pdf;\r\n\tname="r\xc3\xa9sultat.pdf"\r\n'
        b"Content-Disposition: attachment\r\nX-Empty:\r\nX-Blank: \t\r\n \r\n"
    )
    fast = _plain_headers(block)
    assert fast is not None
    assert fast.items() == BytesHeaderParser(policy=compat32).parsebytes(block).items()
    for odd in (b" folded first\r\n", b"From someone\r\n", b"No colon\r\n", b": no name\r\n"):
        assert _plain_headers(odd) is None
