"""Building real messages and talking to the relay with smtplib."""

from __future__ import annotations

import os
import re
import smtplib
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate
from typing import AnyStr

from tests.conftest import PASSWORDS, Stack

_QUOTED_ID = re.compile(r" \(id [0-9A-F]+\)$")


def without_id(text: AnyStr) -> AnyStr:
    """A reply's text without the `(id ...)` every refusal ends with (issue
    15), for the tests that compare a whole text."""
    if isinstance(text, bytes):
        return _QUOTED_ID.sub("", text.decode()).encode()
    return _QUOTED_ID.sub("", text)


def make_message(
    sender: str = "jean.dupont@ch-exemple.mssante.fr",
    to: str = "dr.martin@chu-b.mssante.fr",
    subject: str = "Compte rendu",
    body: str = "Bonjour,\nci-joint le compte rendu.\n",
    attachments: dict[str, bytes] | None = None,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate()
    msg["Message-ID"] = f"<{os.urandom(6).hex()}@ch-exemple.mssante.fr>"
    msg.set_content(body)
    for name, data in (attachments or {}).items():
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes(policy=SMTP_POLICY)


def wire_data(content: bytes) -> bytes:
    """RFC 5321 §4.5.2: dot-stuffed, ended by CRLF.CRLF."""
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + (b".\r\n" if stuffed.endswith(b"\r\n") else b"\r\n.\r\n")


def connect(stack: Stack, user: str | None = "jdupont") -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", stack.relay.port, timeout=30)
    try:
        client.ehlo("client.test")
        client.starttls(context=stack.pki.client_context())
        client.ehlo("client.test")
        if user is not None:
            client.login(user, PASSWORDS[user])
    except BaseException:
        client.close()  # a refused AUTH (a 451 with the state down) leaks no socket
        raise
    return client


def send(
    client: smtplib.SMTP, sender: str, recipients: list[str], content: bytes
) -> tuple[list[tuple[int, bytes]], tuple[int, bytes]]:
    """MAIL, each RCPT, DATA: every reply, without smtplib's interpretation."""
    code, text = client.mail(sender)
    assert code == 250, (code, text)
    rcpt_replies = [client.rcpt(r) for r in recipients]
    if not any(code == 250 for code, _ in rcpt_replies):
        client.rset()
        return rcpt_replies, (0, b"")
    code, text = client.docmd("DATA")
    assert code == 354, (code, text)
    client.send(wire_data(content))
    return rcpt_replies, client.getreply()


def nested_mime(depth: int) -> bytes:
    """A body (with its Content-Type) of multiparts nested this deep around one leaf."""
    body = b"Content-Type: text/plain\r\n\r\nleaf\r\n"
    for i in range(depth):
        b = f"b{i}".encode()
        body = (
            b"Content-Type: multipart/mixed; boundary="
            + b
            + b"\r\n\r\n--"
            + b
            + b"\r\n"
            + body
            + b"\r\n--"
            + b
            + b"--\r\n"
        )
    return body
