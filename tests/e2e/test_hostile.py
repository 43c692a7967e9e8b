"""Hostile input, end to end: whatever bytes arrive, a clean SMTP reply (or a
closed connection), never a crash or an internal error, and nothing lost,
duplicated or partial upstream. Every case runs on the one relay of this
module; the last test checks its log and its upstream against all of them."""

from __future__ import annotations

import contextlib
import os
import random
import re
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import PASSWORDS, Pki, Stack, _stack
from tests.support.mail import make_message, nested_mime, wire_data

SENDER = "jean.dupont@ch-exemple.mssante.fr"
DEST = "dr.martin@chu-b.mssante.fr"
REPLY = re.compile(rb"^([2-5]\d\d)([ -])(.*)$")
ENHANCED = re.compile(rb"^[245]\.\d{1,3}\.\d{1,3} ")
HEAD = f"From: {SENDER}\r\nTo: {DEST}\r\nSubject: essai\r\n".encode()


class Session:
    """A raw SMTP client over TLS: bytes in, replies out, nothing interpreted."""

    def __init__(self, stack: Stack) -> None:
        raw = socket.create_connection(("127.0.0.1", stack.relay.port), timeout=30)
        self.sock: socket.socket = raw
        self.buffer = b""
        assert self.reply()[0] == 220
        self.command(b"EHLO hostile.test")
        self.command(b"STARTTLS")
        self.sock = stack.pki.client_context().wrap_socket(raw, server_hostname="localhost")
        self.buffer = b""
        self.command(b"EHLO hostile.test")
        token = f"\0jdupont\0{PASSWORDS['jdupont']}".encode()
        import base64

        code, _ = self.command(b"AUTH PLAIN " + base64.b64encode(token))
        assert code == 235

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the relay")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def reply(self) -> tuple[int, bytes]:
        lines = []
        while True:
            match = REPLY.match(self.line())
            assert match, lines
            lines.append(match.group(3))
            if match.group(2) == b" ":
                return int(match.group(1)), b"\n".join(lines)

    def command(self, line: bytes) -> tuple[int, bytes]:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def transaction(self, data: bytes) -> tuple[int, bytes]:
        """MAIL, RCPT, DATA, then these bytes as they are (end of data included)."""
        assert self.command(f"MAIL FROM:<{SENDER}>".encode())[0] == 250
        assert self.command(f"RCPT TO:<{DEST}>".encode())[0] == 250
        return self.transaction_data(data)

    def transaction_data(self, data: bytes) -> tuple[int, bytes]:
        """DATA in the open transaction, then these bytes as they are."""
        assert self.command(b"DATA")[0] == 354
        self.sock.sendall(data)
        return self.reply()

    def close(self) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            self.sock.close()


@pytest.fixture(scope="module")
def hostile(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, password_hashes: dict[str, str]
) -> Iterator[tuple[Stack, dict[str, int]]]:
    tally = {"inputs": 0, "accepted": 0}
    tmp: Path = tmp_path_factory.mktemp("hostile")
    for stack in _stack(
        tmp, pki, password_hashes, throttle={"messages_per_minute": 0, "recipients_per_hour": 0}
    ):
        yield stack, tally


def _assert_clean(code: int, text: bytes) -> None:
    assert code != 451 or not text.startswith(b"4.3.0"), text  # never an internal error
    if code >= 400:
        assert ENHANCED.match(text), text


def _run(hostile: tuple[Stack, dict[str, int]], data: bytes) -> tuple[int, bytes]:
    stack, tally = hostile
    session = Session(stack)
    try:
        code, text = session.transaction(data)
        _assert_clean(code, text)
        assert session.command(b"NOOP")[0] == 250  # exactly one reply, session alive
    finally:
        session.close()
    tally["inputs"] += 1
    tally["accepted"] += code == 250
    return code, text


# SMTP smuggling (SEC Consult's smtpsmug list and neighbours): each end-of-data
# look-alike hides a second transaction; exactly one message must come out.
SMUGGLING = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\r",
    b"\r.\r\n",
    b"\r\n.\n",
    b"\r\n.\r",
    b"\n.\r",
    b"\r\n\x00.\r\n",
    b"\r\n.\x00\r\n",
    b"\n\n.\n\n",
    b"\r\r.\r\r",
]


@pytest.mark.parametrize("fake_end", SMUGGLING, ids=[repr(s) for s in SMUGGLING])
def test_smuggling_variants_give_exactly_one_message(
    hostile: tuple[Stack, dict[str, int]], fake_end: bytes
) -> None:
    stack, _ = hostile
    before = len(stack.upstream.messages())
    smuggled = (
        f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{DEST}>\r\nDATA\r\n"
        f"From: {SENDER}\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n"
    ).encode()
    code, _ = _run(hostile, HEAD + b"\r\nfirst" + fake_end + smuggled + b"\r\n.\r\n")
    assert code == 250
    after = stack.upstream.messages()
    assert len(after) == before + 1
    received = after[-1][1]
    assert b"smuggled body" in received  # the whole of it, as one message's body
    # And no bare CR or LF goes on: an upstream less strict than ours about the
    # end of data (« \n.\n ») sees nothing it could take for one.
    assert received.count(b"\n") == received.count(b"\r\n") == received.count(b"\r")


def _nested(depth: int) -> bytes:
    return HEAD + b"MIME-Version: 1.0\r\n" + nested_mime(depth)


def _attachment(cte: str, payload: bytes, name: str = "x.pdf") -> bytes:
    return (
        HEAD + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
        b"--B\r\nContent-Type: text/plain\r\n\r\ntexte\r\n--B\r\n"
        + f'Content-Type: application/pdf; name="{name}"\r\n'.encode()
        + f"Content-Transfer-Encoding: {cte}\r\n".encode()
        + f'Content-Disposition: attachment; filename="{name}"\r\n\r\n'.encode()
        + payload
        + b"\r\n--B--\r\n"
    )


def _random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


CONTENT: dict[str, Callable[[], bytes]] = {
    "long_body_line": lambda: HEAD + b"\r\n" + b"x" * 5000 + b"\r\n",
    "long_header": lambda: HEAD + b"X-Long: " + b"y" * 200_000 + b"\r\n\r\nbody\r\n",
    "many_headers": lambda: HEAD + b"".join(b"X-H%d: v\r\n" % i for i in range(20_000)) + b"\r\n.",
    "folded_forever": lambda: HEAD + b"X-Fold: a\r\n" + b" b\r\n" * 50_000 + b"\r\nx\r\n",
    "mime_500_deep": lambda: _nested(500),
    "mime_5000_deep": lambda: _nested(5000),
    "unterminated_multipart": lambda: (
        HEAD
        + b"Content-Type: multipart/mixed; boundary=Z\r\n\r\n"
        + b"--Z\r\nContent-Type: text/plain\r\n\r\nx"
    ),
    "multipart_without_boundary": lambda: (
        HEAD + b"Content-Type: multipart/mixed\r\n\r\n--\r\nx\r\n"
    ),
    "bad_base64": lambda: _attachment("base64", b"!!!!not*base64%%%=\r\n====\r\nA"),
    "bad_base64_huge_line": lambda: _attachment("base64", b"QUJD" * 250 + b"\r\n" + b"@" * 900),
    "bad_quoted_printable": lambda: _attachment("quoted-printable", b"=ZZ=\r\n=\r\n=4=5=\r\n"),
    "unknown_transfer_encoding": lambda: _attachment("x-uuencode-42", b"begin 644 x\r\n`\r\nend"),
    "invalid_utf8_headers": lambda: (
        HEAD.replace(b"essai", b"\xff\xfe\xc3\x28 \xed\xa0\x80")
        + b"X-Bin: \x80\x81\x00\r\n\r\nbody\r\n"
    ),
    "garbage_encoded_words": lambda: (
        HEAD.replace(b"essai", b"=?utf-8?b?////?= =?x-unknown?q?abc?= =?utf-8?q?=ZZ?= =?=?=")
        + b"\r\nbody\r\n"
    ),
    "rfc2231_garbage": lambda: _attachment("base64", b"QUJD", "x.pdf").replace(
        b'filename="x.pdf"', b"filename*=utf-8''%ff%fe%zz; filename*0*=x'y'%; filename*1=\"\""
    ),
    "nul_bytes": lambda: HEAD + b"\r\nbody\x00with\x00nul\r\n\x00\r\n",
    "no_blank_line": lambda: HEAD + b"X-Last: header without body",
    "only_blank_line": lambda: b"\r\n",
    "random_binary": lambda: _random_bytes(100_000, 1).replace(b"\r\n.", b"\r\n.."),
    "random_binary_lines": lambda: b"\r\n".join(
        _random_bytes(70, i).replace(b"\r", b"").replace(b"\n", b"") for i in range(2000)
    ).replace(b"\r\n.", b"\r\n.."),
    "header_colonless": lambda: b"this is not a header\r\n" + HEAD + b"\r\nbody\r\n",
    "from_display_tricks": lambda: (
        HEAD.replace(
            f"From: {SENDER}".encode(),
            f'From: "=?utf-8?b?w6k=?=" <{SENDER}> (comment (nested)) '.encode(),
        )
        + b"\r\nbody\r\n"
    ),
    "attachment_name_traversal": lambda: _attachment("base64", b"QUJD", "../../../etc/passwd"),
    "zip_bomb_like_name": lambda: _attachment("base64", b"UEsDBA==", "IHE_XDM.zip"),
}


@pytest.mark.parametrize("name", list(CONTENT))
def test_hostile_content_gets_a_clean_reply(
    hostile: tuple[Stack, dict[str, int]], name: str
) -> None:
    stack, _ = hostile
    before = len(stack.upstream.messages())
    content = CONTENT[name]()
    code, _ = _run(hostile, wire_data(content))
    after = stack.upstream.messages()
    assert len(after) == before + (code == 250)
    if code == 250:
        # Forwarded whole: our own headers on top, the client's bytes after
        # (line ends normalized to CRLF on the way out).
        expected = re.sub(rb"\r\n|\r|\n", b"\r\n", content)
        expected += b"" if expected.endswith(b"\r\n") else b"\r\n"  # as DATA ends lines
        assert after[-1][1].endswith(expected[-2000:])


COMMANDS: dict[str, list[bytes]] = {
    "smtputf8_sender": ["MAIL FROM:<jéan@ch-exemple.mssante.fr> SMTPUTF8".encode()],
    "smtputf8_recipient": [
        f"MAIL FROM:<{SENDER}>".encode(),
        "RCPT TO:<médecin@chu-b.mssante.fr>".encode(),
    ],
    "eight_bit_command": [b"MAIL FROM:<\xff\xfe@x>"],
    "nul_in_command": [b"MAIL FROM:<a\x00b@ch-exemple.mssante.fr>"],
    "long_command": [b"MAIL FROM:<" + b"a" * 5000 + b"@ch-exemple.mssante.fr>"],
    "rcpt_before_mail": [f"RCPT TO:<{DEST}>".encode()],
    "data_before_rcpt": [f"MAIL FROM:<{SENDER}>".encode(), b"DATA"],
    "bad_params": [f"MAIL FROM:<{SENDER}> SIZE=-1 BODY=9BIT FOO=BAR".encode()],
    "huge_size_param": [f"MAIL FROM:<{SENDER}> SIZE=99999999999999999999999".encode()],
    "empty_address": [b"MAIL FROM:<>"],
    "source_route": [f"MAIL FROM:<@evil.example:{SENDER}>".encode()],
    "quoted_local_part": [f'MAIL FROM:<"jean dupont"@{SENDER.split("@")[1]}>'.encode()],
    "unknown_commands": [b"XYZZY", b"\x16\x03\x01\x02\x00", b"GET / HTTP/1.1"],
    # The email package's tokenizer raised IndexError on these (451 4.3.0).
    "truncated_path": [b"MAIL FROM:<", b'MAIL FROM:"', b"MAIL FROM: <", b'MAIL FROM:<"'],
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_hostile_commands_get_clean_replies(
    hostile: tuple[Stack, dict[str, int]], name: str
) -> None:
    stack, tally = hostile
    session = Session(stack)
    try:
        for line in COMMANDS[name]:
            code, text = session.command(line)
            _assert_clean(code, text)
            assert code >= 500 or line.startswith(b"MAIL"), (line, code, text)
            tally["inputs"] += 1
        assert session.command(b"RSET")[0] == 250
    finally:
        session.close()


# Issue 13, item 7: a control character (C0 but LF, which ends the line; DEL) in
# a path or a parameter, wherever it is. {} marks where it goes.
CONTROL_LAYOUTS = {
    "local_part": ("<jean{}dupont@ch-exemple.mssante.fr>", b"5.1.3"),
    "local_part_start": ("<{}jean.dupont@ch-exemple.mssante.fr>", b"5.1.3"),
    "domain": ("<jean.dupont@ch-exemple{}.mssante.fr>", b"5.1.3"),
    "domain_end": ("<jean.dupont@ch-exemple.mssante.fr{}>", b"5.1.3"),
    "quoted_local_part": ('<"jean{}dupont"@ch-exemple.mssante.fr>', b"5.1.3"),
    "parameter": ("<jean.dupont@ch-exemple.mssante.fr> SIZE=20{}48", b"5.5.4"),
    # Not at the end of the line: aiosmtpd strips white space (CR, tab, VT, FF)
    # there, so that it never reaches the relay.
    "parameter_end": ("<jean.dupont@ch-exemple.mssante.fr> SIZE=2048{} BODY=7BIT", b"5.5.4"),
}
CONTROLS = [bytes([c]) for c in range(32) if c != 10] + [b"\x7f"]


@pytest.mark.parametrize("control", CONTROLS, ids=[repr(c) for c in CONTROLS])
def test_control_characters_in_paths_are_syntax_errors(
    hostile: tuple[Stack, dict[str, int]], control: bytes
) -> None:
    """Each layout in MAIL, then (the transaction open) in RCPT: a 501, and
    the session goes on to deliver the message."""
    stack, tally = hostile
    before = len(stack.upstream.messages())
    session = Session(stack)
    try:
        for command, good in ((b"MAIL FROM:", SENDER), (b"RCPT TO:", DEST)):
            for layout, enhanced in CONTROL_LAYOUTS.values():
                if control == b"\t" and enhanced == b"5.5.4":
                    continue  # between parameters, white space (as aiosmtpd takes it)
                line = command + layout.encode().replace(b"{}", control)
                code, text = session.command(line)
                _assert_clean(code, text)
                assert (code, text[:5]) == (501, enhanced), (line, text)
                tally["inputs"] += 1
            assert session.command(command + f"<{good}>".encode())[0] == 250
        code, text = session.transaction_data(wire_data(HEAD + b"\r\nbody\r\n"))
        assert code == 250, text
    finally:
        session.close()
    tally["accepted"] += 1
    messages = stack.upstream.messages()
    assert len(messages) == before + 1 and messages[-1][0]["rcpt_tos"] == [DEST]


def test_garbage_right_after_the_end_of_data(hostile: tuple[Stack, dict[str, int]]) -> None:
    stack, tally = hostile
    before = len(stack.upstream.messages())
    session = Session(stack)
    try:
        garbage = (
            b"\x00\xff\xfeGARBAGE \x80\r\n" + _random_bytes(200, 7).replace(b"\n", b"") + b"\r\n"
        )
        code, text = session.transaction(wire_data(HEAD + b"\r\nbody\r\n") + garbage)
        assert code == 250, text
        for _ in range(2):  # one reply per garbage line, each a clean 5xx
            code, text = session.reply()
            assert code >= 500 and ENHANCED.match(text), text
        assert session.command(b"NOOP")[0] == 250
    finally:
        session.close()
    tally["inputs"] += 1
    tally["accepted"] += 1
    assert len(stack.upstream.messages()) == before + 1


def test_overlong_auth_answers_are_refused(hostile: tuple[Stack, dict[str, int]]) -> None:
    stack, tally = hostile
    for mechanism, size in (
        (b"AUTH PLAIN", 200_000),
        (b"AUTH LOGIN", 70_000),
        (b"AUTH PLAIN", 3000),
    ):
        raw = socket.create_connection(("127.0.0.1", stack.relay.port), timeout=30)
        session = Session.__new__(Session)
        session.sock, session.buffer = raw, b""
        try:
            assert session.reply()[0] == 220
            session.command(b"EHLO hostile.test")
            session.command(b"STARTTLS")
            session.sock = stack.pki.client_context().wrap_socket(raw, server_hostname="localhost")
            session.command(b"EHLO hostile.test")
            assert session.command(mechanism)[0] == 334
            code, text = session.command(b"A" * size)
            _assert_clean(code, text)
            assert (code, text[:5]) == (501, b"5.5.2"), text
            assert session.command(b"NOOP")[0] == 250  # the line's rest was not a command
        finally:
            session.close()
        tally["inputs"] += 1


def test_bogus_command_flood_is_cut_off(hostile: tuple[Stack, dict[str, int]]) -> None:
    stack, tally = hostile
    session = Session(stack)
    try:
        with pytest.raises(ConnectionError):
            for _ in range(50):
                code, text = session.command(os.urandom(8).hex().encode())
                _assert_clean(code, text)
                tally["inputs"] += 1
    finally:
        session.close()


def test_client_vanishing_mid_data_leaves_nothing_upstream(
    hostile: tuple[Stack, dict[str, int]],
) -> None:
    stack, tally = hostile
    before = len(stack.upstream.messages())
    for cut in (0, 10, 5000):
        session = Session(stack)
        assert session.command(f"MAIL FROM:<{SENDER}>".encode())[0] == 250
        assert session.command(f"RCPT TO:<{DEST}>".encode())[0] == 250
        assert session.command(b"DATA")[0] == 354
        session.sock.sendall(wire_data(make_message(body="x" * 10_000))[:cut])
        session.close()
        tally["inputs"] += 1
    abandoned = stack.relay.wait_event("transaction", timeout=10)
    assert len(stack.upstream.messages()) == before
    assert sum(e["outcome"] == "abandoned" for e in abandoned) >= 3


def test_zz_no_crash_no_loss_no_duplicate(hostile: tuple[Stack, dict[str, int]]) -> None:
    """After every case above: the relay is up, said nothing of an internal
    error, and the upstream holds exactly the messages answered 250."""
    stack, tally = hostile
    session = Session(stack)
    session.close()
    assert stack.relay.process.proc is not None and stack.relay.process.proc.poll() is None
    log = stack.relay.log_text()
    assert "internal_error" not in log and "Traceback" not in log
    assert "Traceback" not in stack.relay.process.stderr()
    delivered = [e for e in stack.relay.events("transaction") if e["outcome"] == "delivered"]
    assert len(stack.upstream.messages()) == len(delivered) == tally["accepted"]
    print(f"hostile inputs tried end to end: {tally['inputs']}, accepted: {tally['accepted']}")
