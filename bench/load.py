"""The load side of bench/compare.py: the message, smtp-source and the timed
probe client, in either connection pattern:

    persistent   one connection per session, message after message (smtp-source -d):
                 a DPI connector
    new          a new connection for each message (HELO, MAIL, RCPT, DATA, QUIT):
                 Thunderbird, Outlook

Everything here only drives C programs (smtp-source, smtp-sink) or plain
sockets: the Python process that measures must not be what limits the rates.
"""

from __future__ import annotations

import base64
import math
import os
import re
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Literal

from .harness import DPI_BAL, Counter, stop_process

SENDER = DPI_BAL
RECIPIENT = "dr.martin@chu-b.mssante.fr"
BOUNDARY = "=_mss-bench-7f3a9c"
Pattern = Literal["persistent", "new"]
PATTERNS: tuple[Pattern, ...] = ("persistent", "new")
# A PDF starts with %PDF-: the relay's attachment rule looks at the first
# bytes, and a random head could look like an executable (MZ...).
PDF_HEAD = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"
TEXT = (
    "Cher confrère,\n\nVeuillez trouver ci-joint le compte rendu de consultation de"
    " votre patient, vu ce jour en cardiologie.\nÉchographie : FEVG conservée,"
    " pas de valvulopathie significative.\nTraitement inchangé, contrôle dans six"
    " mois.\n\nBien confraternellement,\nSecrétariat de cardiologie\n"
)


# -- the message -----------------------------------------------------------------


@dataclass(frozen=True)
class Size:
    """A message size: its label, and either its size on the wire or its
    attachment's decoded size (the "20 MB attachment" case)."""

    label: str
    wire: int = 0
    attachment: int = 0


SIZE_UNITS = {"KB": 1000, "MB": 1000**2, "KIB": 1024, "MIB": 1024**2}


def parse_size(spec: str) -> Size:
    """2KB, 100KB, 5MB: the whole message on the wire; 20MB-att: a message
    carrying an attachment of 20 MB once decoded (just under the relay's
    max_attachment_size of 20 MiB)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(KB|MB|KiB|MiB)(-att)?", spec.strip(), re.IGNORECASE)
    if match is None:
        raise ValueError(f"{spec!r}: expected e.g. 2KB, 100KB, 5MB or 20MB-att")
    amount = int(float(match[1]) * SIZE_UNITS[match[2].upper()])
    if match[3]:
        return Size(spec, attachment=amount)
    return Size(spec, wire=amount)


def _headers(message_id: str) -> str:
    return (
        f"From: Secretariat cardiologie <{SENDER}>\n"
        f"To: Dr Martin <{RECIPIENT}>\n"
        "Subject: Compte rendu de consultation\n"
        f"Date: {formatdate(localtime=True)}\n"
        f"Message-ID: <{message_id}@ch-bench.mssante.fr>\n"
        "MIME-Version: 1.0\n"
        f'Content-Type: multipart/mixed; boundary="{BOUNDARY}"\n'
        "\n"
        "This is a multi-part message in MIME format.\n"
        f"--{BOUNDARY}\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: 8bit\n"
        "\n"
        f"{TEXT}\n"
        f"--{BOUNDARY}\n"
        'Content-Type: application/pdf; name="compte-rendu.pdf"\n'
        "Content-Transfer-Encoding: base64\n"
        'Content-Disposition: attachment; filename="compte-rendu.pdf"\n'
        "\n"
    )


def _attachment(decoded: int) -> str:
    raw = PDF_HEAD + os.urandom(max(0, decoded - len(PDF_HEAD)))
    # 76-character lines, as mail clients write them (57 bytes each).
    return base64.encodebytes(raw[:decoded]).decode("ascii")


def build_message(size: Size, message_id: str) -> str:
    """The message, LF line endings: smtp-source -F appends CRLF to each line
    (and dot-stuffs), so the bytes on the wire are CRLF as they should be."""
    head = _headers(message_id)
    tail = f"--{BOUNDARY}--\n"
    if size.attachment:
        decoded = size.attachment
    else:
        # Each LF becomes CRLF on the wire: a 77-character line is 78 bytes.
        room = size.wire - len((head + tail).encode()) - head.count("\n") - 1
        decoded = max(16, room * 57 // 78)
    return head + _attachment(decoded) + tail


def wire_bytes(text: str) -> bytes:
    """What goes on the wire for this message: CRLF, dot-stuffed, final dot."""
    lines = text.encode().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    stuffed = (b"." + line if line.startswith(b".") else line for line in lines)
    return b"\r\n".join(stuffed) + b"\r\n.\r\n"


# -- smtp-source ---------------------------------------------------------------


@dataclass
class SourceRun:
    sent: int  # all of them accepted when returncode is 0 (no -A: a refusal aborts)
    ended_at: float  # time.monotonic() at exit: after the last final reply and QUIT
    returncode: int | None
    error: str
    timed_out: bool


def run_source(
    port: int, message_file: Path, sessions: int, count: int, deadline: float, pattern: Pattern
) -> SourceRun:
    """smtp-source, persistent sessions (-d: a DPI connector keeps its
    connection) or a new connection per message (no -d: each session sends
    one message, QUIT, connects again), aborting at the first refusal (no
    -A): a refused message is an error of the run, not a figure."""
    args = ["smtp-source", "-c", *(["-d"] if pattern == "persistent" else [])]
    args += ["-s", str(sessions), "-m", str(count)]
    args += ["-f", SENDER, "-t", RECIPIENT, "-M", "dpi.ch-bench.mssante.fr"]
    args += ["-F", str(message_file), f"inet:127.0.0.1:{port}"]
    # -c counts a message when its final dot is *sent*, before the reply:
    # a count of messages sent, not accepted; nor a time per message.
    counter = Counter(rb"(\d+)")
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    reader = counter.follow(proc.stdout)
    timed_out = False
    try:
        proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:  # on Ctrl-C too: it is in a session of its own, Ctrl-C does not reach it
        stop_process(proc, grace=2.0)
    ended_at = time.monotonic()
    reader.join(timeout=5)
    error = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
    return SourceRun(counter.value, ended_at, proc.returncode, error, timed_out)


# -- the probe: one timed session ---------------------------------------------------


@dataclass
class Probe:
    """One SMTP client, like an smtp-source session, that times each message.
    persistent: HELO, then MAIL, RCPT, DATA in turn over one connection, each
    message timed from MAIL to the final reply; new: a connection per message,
    timed from connect to the final reply (what a mail client waits: greeting,
    HELO and the transaction), then QUIT. Plain sockets: its own cost is a
    few system calls."""

    port: int
    wire: bytes
    pattern: Pattern = "persistent"
    limit: int | None = None  # messages to send; None: until stop is set
    deadline: float = math.inf  # time.monotonic() after which no message is begun
    timeout: float = 600.0  # of each socket operation
    latencies: list[float] = field(default_factory=list)
    accepted: int = 0
    last_done: float = 0.0  # time.monotonic() of the last final reply
    error: str = ""
    stop: threading.Event = field(default_factory=threading.Event)
    _buffer: bytes = b""

    def run(self) -> None:
        try:
            if self.pattern == "persistent":
                with self._connect() as sock:
                    while self._more():
                        self._message(sock, time.monotonic())
                    self._command(sock, b"QUIT", b"221")
            else:
                while self._more():
                    started = time.monotonic()
                    with self._connect() as sock:
                        self._message(sock, started)
                        self._command(sock, b"QUIT", b"221")
        except (OSError, RuntimeError) as error:
            self.error = f"probe: {error}"

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""
        self._expect(sock, b"220")
        self._command(sock, b"HELO probe.ch-bench.mssante.fr", b"250")
        return sock

    def _message(self, sock: socket.socket, started: float) -> None:
        self._command(sock, f"MAIL FROM:<{SENDER}>".encode(), b"250")
        self._command(sock, f"RCPT TO:<{RECIPIENT}>".encode(), b"250")
        self._command(sock, b"DATA", b"354")
        sock.sendall(self.wire)
        self._expect(sock, b"250")
        self.last_done = time.monotonic()
        self.latencies.append(self.last_done - started)
        self.accepted += 1

    def _more(self) -> bool:
        if self.stop.is_set() or time.monotonic() > self.deadline:
            return False
        return self.limit is None or self.accepted < self.limit

    def _command(self, sock: socket.socket, line: bytes, code: bytes) -> None:
        sock.sendall(line + b"\r\n")
        self._expect(sock, code)

    def _expect(self, sock: socket.socket, code: bytes) -> None:
        reply = self._reply(sock)
        if not reply.startswith(code):
            raise RuntimeError(f"expected {code.decode()}, got {reply[:200]!r}")

    def _reply(self, sock: socket.socket) -> bytes:
        """One reply, possibly multi-line ("250-...", then "250 ...")."""
        lines = []
        while True:
            while b"\r\n" not in self._buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError("connection closed by the server")
                self._buffer += chunk
            line, self._buffer = self._buffer.split(b"\r\n", 1)
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return b"\n".join(lines)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        return thread
