"""End to end, issue 13 (defects 1, 5, 6): a client sending messages nested
1,000 deep gets 550 5.6.0 each time while another client's session goes on,
on the SMTP listener and on the milter; an executable behind blank lines is
refused; an unnamed part over the per-attachment limit is refused, named by
its type. No timing is asserted: the bound on the work is held by the unit
tests (tests/unit/test_content_hardening.py), the figures by
bench/nesting_probe.py."""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from tests.conftest import Stack
from tests.e2e.test_milter import Milter, milter  # noqa: F401  (the fixture)
from tests.support import files
from tests.support.mail import connect, make_message, nested_mime, send

SENDER = "jean.dupont@ch-exemple.mssante.fr"
DEST = "dr.martin@chu-b.mssante.fr"
ATTACKS = 6
PROBES = 6


def deep_message(levels: int = 1000) -> bytes:
    head = make_message(sender=SENDER, to=DEST).split(b"\r\n\r\n", 1)[0]
    fields = [f for f in head.split(b"\r\n") if not f.lower().startswith((b"content-", b"mime-"))]
    return b"\r\n".join(fields) + b"\r\nMIME-Version: 1.0\r\n" + nested_mime(levels)


def probe_message() -> bytes:
    return make_message(sender=SENDER, to=DEST, body="Bonjour,\n" + "x" * 60 + "\n" * 30)


def _part(headers: str, body: bytes) -> bytes:
    """A message whose second part has these header lines and this body."""
    head = make_message(sender=SENDER, to=DEST).split(b"\r\n\r\n", 1)[0]
    fields = [f for f in head.split(b"\r\n") if not f.lower().startswith((b"content-", b"mime-"))]
    return (
        b"\r\n".join(fields)
        + b"\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
        b"--B\r\nContent-Type: text/plain\r\n\r\nBonjour\r\n--B\r\n"
        + headers.encode()
        + b"\r\n"
        + body
        + b"\r\n--B--\r\n"
    )


def _b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


@contextmanager
def in_background(work: Callable[[], list[str]]) -> Iterator[list[str]]:
    """work() in a thread while the block runs; the list of its replies is
    complete when the block is left."""
    replies: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            replies.extend(work())
        except BaseException as error:  # reported to the test below
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    yield replies
    thread.join(timeout=120)
    assert not thread.is_alive() and not errors, errors


def test_deep_nesting_is_refused_while_another_session_goes_on(shared_stack: Stack) -> None:
    before = len(shared_stack.upstream.messages())

    def attack() -> list[str]:
        with connect(shared_stack) as client:
            return [
                f"{code} {text.decode()}"
                for _, (code, text) in (
                    send(client, SENDER, [DEST], deep_message()) for _ in range(ATTACKS)
                )
            ]

    with in_background(attack) as replies, connect(shared_stack) as probe:
        for _ in range(PROBES):
            _, (code, text) = send(probe, SENDER, [DEST], probe_message())
            assert code == 250, text
    assert len(replies) == ATTACKS
    assert all(r.startswith("550 5.6.0 ") for r in replies), replies
    # Only the probe's messages went on.
    assert len(shared_stack.upstream.messages()) == before + PROBES
    refused = [
        e
        for e in shared_stack.relay.events("decision")
        if e["stage"] == "data" and e["rule"] == "mime_structure"
    ]
    assert refused[-1]["reason"] == "MIME nesting deeper than 100"


def test_deep_nesting_is_refused_by_the_milter_while_another_session_goes_on(
    milter: Milter,  # noqa: F811
) -> None:
    def transaction(content: bytes) -> str:
        with milter.session() as client:
            assert client.mail(SENDER, **{"{auth_authen}": "jdupont"}).code == "c"
            assert client.rcpt(DEST).code == "c"
            last = client.message(content)[-1]
            return "accept" if last.code != "y" else last.text

    def attack() -> list[str]:
        return [transaction(deep_message()) for _ in range(ATTACKS)]

    with in_background(attack) as replies:
        for _ in range(PROBES):
            assert transaction(probe_message()) == "accept"
    assert len(replies) == ATTACKS
    assert all(r.startswith("550 5.6.0 ") for r in replies), replies


@pytest.mark.parametrize(
    "before",
    [b"\r\n" * 150, b" " * 300 + b"\r\n"],
    ids=["150-blank-lines", "300-space-line"],
)
def test_an_executable_behind_blank_lines_is_refused(shared_stack: Stack, before: bytes) -> None:
    content = _part(
        'Content-Type: application/pdf; name="scan.pdf"\r\n'
        "Content-Disposition: attachment\r\nContent-Transfer-Encoding: base64\r\n",
        before + _b64(files.exe()),
    )
    with connect(shared_stack) as client:
        _, (code, text) = send(client, SENDER, [DEST], content)
    assert (code, text[:5]) == (550, b"5.7.1"), text
    assert b"scan.pdf" in text


def test_an_unnamed_part_over_the_limit_is_refused_named_by_its_type(
    shared_stack: Stack,
) -> None:
    before = len(shared_stack.upstream.messages())
    big = _b64(b"\x00" * 128 + b"DICM" + os.urandom(21 * 1024 * 1024))
    with connect(shared_stack) as client:
        for headers in (
            "Content-Type: application/dicom\r\n",
            "Content-Type: application/dicom\r\nContent-Disposition: inline\r\n",
        ):
            content = _part(headers + "Content-Transfer-Encoding: base64\r\n", big)
            _, (code, text) = send(client, SENDER, [DEST], content)
            assert (code, text[:5]) == (552, b"5.3.4"), text
            assert b"application/dicom" in text, text
    assert len(shared_stack.upstream.messages()) == before
