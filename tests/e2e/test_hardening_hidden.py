"""End to end: content the checks did not see (issue 13, defect 10), each
delivered before, through the real relay: what the client is told, what the
upstream gets (nothing, when refused) and the rule and reason in the log."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.conftest import Stack
from tests.support import files, hidden
from tests.support.mail import connect, send

SENDER = "jean.dupont@ch-exemple.mssante.fr"
DEST = "dr.martin@chu-b.mssante.fr"
HEAD = f"From: {SENDER}\r\nTo: {DEST}\r\nSubject: essai\r\nMIME-Version: 1.0\r\n".encode()


def _message(*parts: bytes) -> bytes:
    return hidden.multipart(HEAD, *parts)


_b64, _attachment = hidden.b64, hidden.attachment


TEXT = b"Content-Type: text/plain; charset=utf-8\r\n\r\nBonjour,\r\n"

CASES: dict[str, tuple[bytes, int, str, bytes, str]] = {
    # case: (message, code, enhanced, what the reply names, the logged reason)
    "zip_in_zip": (
        _message(
            TEXT,
            _attachment(
                "dossier.zip", files.zip_of({"in.zip": files.zip_of({"a.exe": files.exe()})})
            ),
        ),
        550,
        "5.7.1",
        "« dossier.zip »".encode(),
        "archive member: extension .exe",
    ),
    "uuencoded": (
        _message(TEXT + b"\r\n" + hidden.uuencode("notes.txt", files.exe())),
        550,
        "5.7.1",
        "« notes.txt »".encode(),
        "embedded file: Windows executable (MZ)",
    ),
    "tnef": (
        _message(
            TEXT,
            _attachment(
                "winmail.dat",
                hidden.tnef({"CR.PDF": files.pdf()}, long_names={"CR.PDF": "cr.pdf.scr"}),
                "application/ms-tnef",
            ),
        ),
        550,
        "5.7.1",
        "« winmail.dat »".encode(),
        "embedded file: extension .scr",
    ),
    "two_content_types": (
        _message(
            b"Content-Type: application/pdf; name=cr.pdf\r\n"
            b"Content-Type: application/x-msdownload; name=a.exe\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + _b64(files.pdf())
        ),
        550,
        "5.6.0",
        b"",
        "two Content-Type header fields in one part",
    ),
    "nul_in_name": (
        _message(
            b"Content-Type: application/pdf\r\n"
            b"Content-Disposition: attachment; filename*=utf-8''a.exe%00.pdf\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + _b64(files.pdf())
        ),
        550,
        "5.7.1",
        b"a.exe",
        "extension .exe",
    ),
    "after_padding": (
        _message(
            b'Content-Type: application/pdf; name="cr.pdf"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            + base64.b64encode(b"%PDF-1.7\n%")
            + b"\r\n"
            + _b64(files.exe())
        ),
        550,
        "5.6.0",
        b"",
        "base64 data after its padding",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hidden_content_is_refused(shared_stack: Stack, case: str) -> None:
    message, code, enhanced, named, reason = CASES[case]
    before = len(shared_stack.upstream.messages())
    relay = shared_stack.relay

    def at_data(event: dict[str, Any]) -> bool:
        return event.get("stage") == "data"

    decided = len([e for e in relay.events("decision") if at_data(e)])
    with connect(shared_stack) as client:
        _, (got, text) = send(client, SENDER, [DEST], message)
    assert (got, text[: len(enhanced)].decode()) == (code, enhanced), (case, text)
    assert named.decode().replace("« ", '"').replace(" »", '"').encode() in text, text
    assert len(shared_stack.upstream.messages()) == before
    # The log is written by a thread: the line may come just after the reply.
    decision = relay.wait_event("decision", decided + 1, where=at_data)[-1]
    assert decision["reason"].startswith(reason), decision


def test_health_mail_in_these_shapes_still_passes(shared_stack: Stack) -> None:
    before = len(shared_stack.upstream.messages())
    harmless = _message(
        TEXT + b"begin 644\r\nbegin the treatment at 9\r\n",
        _attachment("envoi.zip", files.zip_of({"IHE_XDM.zip": files.ihe_xdm()})),
        _attachment("IHE_XDM.zip", files.ihe_xdm(), "application/zip"),
        _attachment(
            "winmail.dat",
            hidden.tnef({"CR.PDF": files.pdf()}, long_names={"CR.PDF": "compte rendu.pdf"}),
            "application/ms-tnef",
        ),
    )
    with connect(shared_stack) as client:
        _, (code, text) = send(client, SENDER, [DEST], harmless)
    assert code == 250, text
    assert len(shared_stack.upstream.messages()) == before + 1
