"""End to end: authenticity and abuse resistance (header alignment, throttling,
dangerous attachments), on the real relay process with smtplib."""

from __future__ import annotations

from tests.conftest import Stack
from tests.support.mail import connect, make_message, send

SENDER = "jean.dupont@ch-exemple.mssante.fr"
DEST = "dr.martin@chu-b.mssante.fr"


def test_from_header_spoofing_is_553_and_nothing_goes_upstream(shared_stack: Stack) -> None:
    before = len(shared_stack.upstream.messages())
    # The envelope sender is jdupont's own BAL; the From: header is msecret's.
    spoofed = make_message(sender="secretariat@ch-exemple.mssante.fr")
    with connect(shared_stack, "jdupont") as client:
        _, (code, text) = send(client, SENDER, [DEST], spoofed)
        assert (code, text[:5]) == (553, b"5.7.1"), text
        assert b"secretariat@ch-exemple.mssante.fr" in text
        # Two From: fields: one for the eye, one for the filters.
        doubled = b"From: " + SENDER.encode() + b"\r\n" + make_message()
        _, (code, text) = send(client, SENDER, [DEST], doubled)
        assert (code, text[:5]) == (550, b"5.6.0"), text
        # The same user, an organisationnelle BAL in From: and himself in Sender: passes.
        shared = make_message(sender="accueil@ch-exemple.mssante.fr").replace(
            b"\r\nTo:", f"\r\nSender: {SENDER}\r\nTo:".encode(), 1
        )
        _, (code, text) = send(client, SENDER, [DEST], shared)
        assert code == 250, text
    assert len(shared_stack.upstream.messages()) == before + 1
    decisions = [e for e in shared_stack.relay.events("decision") if e["stage"] == "data"]
    assert [d["rule"] for d in decisions[-3:]] == ["from_aligned", "single_from", "data"]
