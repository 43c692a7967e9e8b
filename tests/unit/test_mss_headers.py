"""core.mss_headers: the X-MSS fields read from a message and checked
(issue 19 §3), in refuse and warn modes."""

from __future__ import annotations

import pytest

from mss_relay.core.findings import Mode, decide
from mss_relay.core.mss_headers import (
    CODECDA_MALFORMED,
    INS_MALFORMED,
    MES_MALFORMED,
    NIL_MALFORMED,
    REPEATED,
    MssHeaders,
    header_findings,
    read_mss_headers,
)
from tests.support.mail import make_message


def _with(fields: list[tuple[str, str]]) -> bytes:
    raw = make_message()
    head, _, body = raw.partition(b"\r\n\r\n")
    extra = b"".join(f"{n}: {v}\r\n".encode() for n, v in fields)
    return head + b"\r\n" + extra + b"\r\n" + body


def test_read_from_a_message() -> None:
    raw = _with(
        [
            ("X-MSS-MES", "FIN"),
            ("x-mss-ins", "O"),
            ("X-MSS-CODECDA", "34112-3,\r\n PRESC-BIO"),
            ("X-MSS-NIL", "LPS-2024-0042"),
        ]
    )
    headers = read_mss_headers(raw)
    assert headers == MssHeaders(("FIN",), ("O",), ("34112-3, PRESC-BIO",), ("LPS-2024-0042",))
    assert headers.ins_yes
    assert header_findings(headers) == ()


def test_the_body_is_not_read() -> None:
    raw = make_message(body="X-MSS-INS: peut-être\n")
    assert read_mss_headers(raw) == MssHeaders()


@pytest.mark.parametrize(
    ("field", "value", "reply"),
    [
        ("mes", "fin", None),  # core.conversation closes on it: not malformed
        ("mes", "FIN ", None),
        ("mes", "FINI", MES_MALFORMED),
        ("mes", "", MES_MALFORMED),
        ("ins", "O", None),
        ("ins", "N", None),
        ("ins", "o", INS_MALFORMED),
        ("ins", "Oui", INS_MALFORMED),
        ("ins", "1", INS_MALFORMED),
        ("ins", "", INS_MALFORMED),
        ("codecda", "34112-3", None),
        ("codecda", "34112-3,PRESC-BIO,15508-5", None),
        ("codecda", "34112-3, 11490-0", None),
        ("codecda", "34112-3,", CODECDA_MALFORMED),
        ("codecda", "compte rendu", CODECDA_MALFORMED),
        ("codecda", "34112-3;11490-0", CODECDA_MALFORMED),
        ("codecda", "é", CODECDA_MALFORMED),
        ("codecda", "1" * 999, CODECDA_MALFORMED),
        ("nil", "ABC-123_4", None),
        ("nil", "A" * 64, None),
        ("nil", "A" * 65, NIL_MALFORMED),
        ("nil", "mon logiciel", NIL_MALFORMED),
        ("nil", "", NIL_MALFORMED),
    ],
)
def test_formats(field: str, value: str, reply: object) -> None:
    headers = MssHeaders(**{field: (value.strip(),)})
    findings = header_findings(headers)
    if reply is None:
        assert findings == ()
        return
    assert [(f.code, f.reply) for f in findings] == [("mss_header_malformed", reply)]
    # The detail names the field, never its value.
    assert findings[0].detail == f"X-MSS-{field.upper()}"
    verdict = decide(findings, Mode.REFUSE)
    assert verdict is not None and verdict.reply is not None
    assert (verdict.reply.code, verdict.reply.enhanced) == (550, "5.6.0")
    assert decide(findings, Mode.WARN) is None


def test_repeated_fields() -> None:
    headers = read_mss_headers(_with([("X-MSS-INS", "O"), ("X-MSS-INS", "N")]))
    findings = header_findings(headers)
    assert [(f.code, f.reply) for f in findings] == [
        ("mss_header_malformed", REPEATED["X-MSS-INS"])
    ]


def test_ins_yes_only_for_one_o() -> None:
    assert not MssHeaders(ins=("N",)).ins_yes
    assert not MssHeaders(ins=("O", "O")).ins_yes
    assert not MssHeaders().ins_yes


def test_only_fields_at_a_line_start_of_the_header_section() -> None:
    raw = (
        b"X-MSS-NIL: A1\r\n"  # the very first line
        b"Subject: x\r\n X-MSS-INS: N\r\n"  # a continuation of Subject, not a field
        b"XX-MSS-MES: FIN\r\n"  # another field's name
        b"X-Mss-Codecda: 34112-3\r\n\t11490-0\r\n"
        b"\r\n"
        b"X-MSS-MES: FIN\r\n"  # the body
    )
    assert read_mss_headers(raw) == MssHeaders((), (), ("34112-3 11490-0",), ("A1",))


def test_no_header_section_end() -> None:
    assert read_mss_headers(b"X-MSS-INS: O\r\nSubject: x\r\n") == MssHeaders(ins=("O",))
    assert read_mss_headers(b"") == MssHeaders()


def _parsed(raw: bytes) -> MssHeaders:
    """The reference: the header parser always run (no fast path)."""
    from email.parser import BytesHeaderParser
    from email.policy import compat32

    end = raw.find(b"\r\n\r\n")
    block = raw if end < 0 else raw[: end + 4]
    fields = BytesHeaderParser(policy=compat32).parsebytes(block).items()
    return MssHeaders.of((str(k), str(v)) for k, v in fields)


@pytest.mark.parametrize(
    "raw",
    [
        b"X-MSS-INS: O\r\nFrom: a@b.fr\r\n\r\nbody\r\n",  # the first line
        b"From: a@b.fr\r\nx-mss-ins: N\r\n\r\nbody\r\n",  # any case
        b"From: a@b.fr\r\nSubject: x\r\n X-MSS-INS: O\r\n\r\nbody\r\n",  # folded: not a field
        b"From: a@b.fr\r\nX-MSS-INSX: O\r\n\r\nX-MSS-INS: O\r\n",  # another name; the body
        b"From: a@b.fr\r\nX-MSS-MES: FIN",  # no body, no blank line
        b"From: a@b.fr\r\nX-Other: X-MSS-INS: O\r\n\r\n",  # in a value
        b"",
    ],
)
def test_the_fast_path_reads_as_the_parser(raw: bytes) -> None:
    """read_mss_headers finds the fields without the parser: what the
    parser finds, either way."""
    assert read_mss_headers(raw) == _parsed(raw)
