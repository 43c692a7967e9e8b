"""A real, private clamd (ClamAV's daemon, Debian's clamav-daemon) for the
antivirus tests, and the test pattern its only signature matches.

No system service, no freshclam, no network, no main.cvd: clamd runs in the
foreground (``Foreground yes``) with a clamd.conf of our own in a temporary
folder, which also holds its Unix socket (LocalSocket), its database
(DatabaseDirectory: one .ndb file written here, a body signature of
TEST_PATTERN) and its temporary files (TemporaryDirectory). It listens on
loopback TCP too (TCPAddr, TCPSocket), for the client's tcp: form. The system
clamd (if any) is neither read nor started nor stopped.

The folder is under /tmp (``mss-clamd-*``), not under pytest's: a Unix
socket's path must stay under the 107 bytes its address allows. ``close()``
copies clamd's log into the folder the test gave and removes it.

Ready means answering: PING gets PONG on the socket (clamd loads its
database before it listens). ``freeze()`` (SIGSTOP) makes it slower than any
timeout without a sleep: connections are still accepted by the kernel, and
nothing answers until ``thaw()`` (SIGCONT).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from tests.support.processes import free_port

CLAMD = shutil.which("clamd") or "/usr/sbin/clamd"
START_TIMEOUT = 60.0  # clamd loads its (one-line) database in well under a second
STOP_TIMEOUT = 15.0
# What the test signature matches: no real malware, no EICAR (which a real
# antivirus on the test machine could quarantine), a string of our own.
TEST_PATTERN = b"MSS-RELAY-AV-TEST-PATTERN-3f8e1c7a9b20"
SIGNATURE = "MssRelay.Test.Pattern"
# clamd names a signature of a database that is not ClamAV's own so.
FOUND = f"{SIGNATURE}.UNOFFICIAL"
# Above the largest message the tests' limits admit (antivirus.max_size).
STREAM_MAX = "200M"


def clamd_available() -> str | None:
    """None when a private clamd can be run here, else the reason why not."""
    if not Path(CLAMD).is_file():
        return (
            "clamd not found: install Debian's clamav-daemon package"
            " (scripts/test.sh does, as root)"
        )
    return None


def ping(path: Path, timeout: float = 2.0) -> bool:
    """Whether clamd answers PONG to PING on its Unix socket."""
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(b"zPING\0")
            return sock.recv(16) == b"PONG\0"
    except OSError:
        return False


class Clamd:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.runtime = Path(tempfile.mkdtemp(prefix="mss-clamd-"))
        self.socket = self.runtime / "clamd.ctl"
        self.port = free_port()
        self.conf = self.runtime / "clamd.conf"
        self.log = self.runtime / "clamd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen = False
        database = self.runtime / "db"
        database.mkdir()
        (self.runtime / "tmp").mkdir()
        # .ndb: Name:TargetType:Offset:HexSignature; type 0 is any file, at
        # any offset (*), decoded parts and archive members included.
        (database / "mss-relay-test.ndb").write_text(f"{SIGNATURE}:0:*:{TEST_PATTERN.hex()}\n")
        self.conf.write_text(
            "\n".join(
                (
                    "Foreground yes",
                    f"LocalSocket {self.socket}",
                    "TCPAddr 127.0.0.1",
                    f"TCPSocket {self.port}",
                    f"DatabaseDirectory {database}",
                    f"TemporaryDirectory {self.runtime / 'tmp'}",
                    # As the README asks of a structure's clamd: no smaller
                    # than antivirus.max_size.
                    f"StreamMaxLength {STREAM_MAX}",
                    # Past MaxFileSize or MaxScanSize clamd stops reading and
                    # answers OK (Debian: 25M, 100M); AlertExceedsMax makes
                    # that a finding (Heuristics.Limits.Exceeded.*). README.
                    f"MaxFileSize {STREAM_MAX}",
                    "MaxScanSize 400M",
                    "AlertExceedsMax yes",
                    # The defaults, said: the mail is decoded and archives opened.
                    "ScanMail yes",
                    "ScanArchive yes",
                    "ScanPDF yes",
                    "LogTime yes",
                    "",
                )
            )
        )

    @property
    def address(self) -> str:
        """antivirus.clamd for the relay."""
        return f"unix:{self.socket}"

    @property
    def tcp_address(self) -> str:
        return f"tcp:127.0.0.1:{self.port}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Started (or thawed) and answering; a no-op when it is."""
        self.thaw()
        if self.running():
            return
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([CLAMD, "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT
        while not ping(self.socket):
            if self.proc.poll() is not None:
                raise RuntimeError(f"clamd exited with {self.proc.returncode}: {self.log_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"clamd not answering after {START_TIMEOUT}s: {self.log_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stopped (SIGTERM; killed if it does not go)."""
        self.thaw()
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def freeze(self) -> None:
        assert self.proc is not None and self.running()
        self.proc.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if self.frozen and self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
        self.frozen = False

    @contextlib.contextmanager
    def frozen_while(self) -> Iterator[None]:
        self.freeze()
        try:
            yield
        finally:
            self.thaw()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def close(self) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            self.folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.log, self.folder / "clamd.log")
        shutil.rmtree(self.runtime, ignore_errors=True)

    def __enter__(self) -> Clamd:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def pdf_with(text: bytes) -> bytes:
    """A one-page PDF whose page content (text drawn on it) is a
    FlateDecode stream: the text is not in the file's bytes as such, only
    in what a PDF reader (clamd's ScanPDF) inflates."""
    stream = zlib.compress(b"BT /F1 12 Tf 72 720 Td (" + text + b") Tj ET")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return out
