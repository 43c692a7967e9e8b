"""The INSTREAM client (mss_relay/inspect/antivirus.py) against the real,
private clamd of tests/support/clamd.py: over its Unix socket and TCP, the
test pattern as it travels in mail (a PDF's compressed page, a zip, base64 in
a nested multipart: clamd decodes them itself, the relay streams the message
once), a clean message, a clamd stopped, frozen beyond the timeout, and its
own StreamMaxLength. No mock: each answer is clamd's."""

from __future__ import annotations

import asyncio
import base64
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path

import pytest

from mss_relay.config import AntivirusConfig, ClamdAddress
from mss_relay.core.facts import ScanResult
from mss_relay.inspect.antivirus import CHUNK, Antivirus
from tests.support import files
from tests.support.clamd import FOUND, TEST_PATTERN, Clamd, pdf_with


def client(
    address: ClamdAddress, timeout: float = 10.0, max_size: int = 300 * 1024**2
) -> Antivirus:
    return Antivirus(AntivirusConfig(clamd=address, timeout=timeout, max_size=max_size))


def unix(clamd: Clamd, **settings: float) -> Antivirus:
    return client(ClamdAddress(path=clamd.socket), **settings)  # type: ignore[arg-type]


def scan(antivirus: Antivirus, data: bytes) -> ScanResult:
    return asyncio.run(antivirus.scan(data))


def mail(*parts: tuple[str, bytes]) -> bytes:
    message = EmailMessage()
    message["From"] = "jean.dupont@ch-exemple.mssante.fr"
    message["To"] = "dr.martin@chu-b.mssante.fr"
    message["Subject"] = "Compte rendu"
    message.set_content("Bonjour,\nci-joint le compte rendu.\n")
    for name, data in parts:
        message.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return message.as_bytes(policy=SMTP_POLICY)


def nested_base64(data: bytes) -> bytes:
    """multipart/mixed > multipart/alternative > multipart/related > a
    base64 part holding data (never in clear in the message's bytes)."""
    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    return (
        b"From: jean.dupont@ch-exemple.mssante.fr\r\nTo: dr.martin@chu-b.mssante.fr\r\n"
        b"Subject: Resultats\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=outer\r\n\r\n"
        b"--outer\r\nContent-Type: multipart/alternative; boundary=middle\r\n\r\n"
        b"--middle\r\nContent-Type: text/plain\r\n\r\nBonjour\r\n"
        b"--middle\r\nContent-Type: multipart/related; boundary=inner\r\n\r\n"
        b"--inner\r\nContent-Type: text/html\r\n\r\n<p>Bonjour</p>\r\n"
        b"--inner\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded + b"--inner--\r\n"
        b"--middle--\r\n--outer--\r\n"
    )


CARRIERS = {
    "pdf": lambda: mail(("compte-rendu.pdf", pdf_with(TEST_PATTERN))),
    "zip": lambda: mail(("dossier.zip", files.zip_of({"cr.txt": TEST_PATTERN + b"x" * 500}))),
    "nested-base64": lambda: nested_base64(b"resultats " + TEST_PATTERN + b" fin"),
    # clamd reads the whole stream: a pattern past the first chunk too.
    "far": lambda: mail(("imagerie.bin", b"\0" * (3 * CHUNK) + TEST_PATTERN)),
}


@pytest.mark.parametrize("carrier", list(CARRIERS))
def test_the_pattern_is_found_wherever_mail_carries_it(clamd: Clamd, carrier: str) -> None:
    message = CARRIERS[carrier]()
    assert TEST_PATTERN not in message or carrier == "far"  # clamd decoded it
    assert scan(unix(clamd), message) == ScanResult(found=FOUND)


def test_a_clean_message_is_clean_over_unix_and_tcp(clamd: Clamd) -> None:
    message = mail(("compte-rendu.pdf", pdf_with(b"Compte rendu")), ("cr.zip", files.docx()))
    assert scan(unix(clamd), message) == ScanResult()
    tcp = client(ClamdAddress(host="127.0.0.1", port=clamd.port))
    assert scan(tcp, message) == ScanResult()
    assert scan(tcp, CARRIERS["zip"]()) == ScanResult(found=FOUND)
    assert scan(unix(clamd), b"") == ScanResult()


def test_a_stopped_clamd_is_an_error(clamd: Clamd, tmp_path: Path) -> None:
    clamd.stop()
    result = scan(unix(clamd), mail())
    assert result.found is None and result.error is not None
    assert result.error.startswith(f"clamd at unix:{clamd.socket}: ")
    tcp = scan(client(ClamdAddress(host="127.0.0.1", port=clamd.port)), mail())
    assert tcp.found is None and tcp.error is not None
    assert tcp.error.startswith(f"clamd at tcp:127.0.0.1:{clamd.port}: ")
    # A path where nothing ever listened.
    missing = scan(client(ClamdAddress(path=tmp_path / "none.ctl")), mail())
    assert missing.error == f"clamd at unix:{tmp_path / 'none.ctl'}: No such file or directory"


def test_a_frozen_clamd_is_an_error_after_the_timeout(clamd: Clamd) -> None:
    """SIGSTOP: the kernel still accepts the connection and takes the bytes
    into the socket's buffer; nothing answers. The deadline covers it all."""
    with clamd.frozen_while():
        result = scan(unix(clamd, timeout=1.0), CARRIERS["zip"]())
    assert result == ScanResult(error="no verdict within 1s")
    # Thawed, it answers again (the abandoned connection costs it nothing).
    assert scan(unix(clamd), CARRIERS["zip"]()) == ScanResult(found=FOUND)


def test_clamds_stream_limit_is_an_error(clamd: Clamd, tmp_path: Path) -> None:
    """A message over clamd's StreamMaxLength: clamd stops reading and says
    so (« INSTREAM size limit exceeded. ERROR »): an error, never clean."""
    small = Clamd(tmp_path / "small")
    small.conf.write_text(
        small.conf.read_text().replace("StreamMaxLength 200M", "StreamMaxLength 1M")
    )
    with small:
        result = scan(unix(small), mail(("imagerie.bin", b"\0" * (3 * 1024**2))))
    assert result == ScanResult(error="clamd: INSTREAM size limit exceeded. ERROR")


def test_over_max_size_is_not_sent(clamd: Clamd) -> None:
    message = mail(("imagerie.bin", b"\0" * 5000))
    result = scan(unix(clamd, max_size=1000), message)
    assert result == ScanResult(error=f"{len(message)} bytes, over antivirus.max_size")


@pytest.mark.parametrize(
    ("alert", "result"),
    [
        # Debian's clamd.conf: MaxFileSize 25M, no AlertExceedsMax. What is
        # past the limit is not read, and the answer is OK: the pitfall the
        # README's antivirus section warns of.
        ("AlertExceedsMax no", ScanResult()),
        ("AlertExceedsMax yes", ScanResult(found="Heuristics.Limits.Exceeded.MaxFileSize")),
    ],
)
def test_clamds_file_size_limit_answers_ok_unless_alerted(
    clamd: Clamd, tmp_path: Path, alert: str, result: ScanResult
) -> None:
    limited = Clamd(tmp_path / "limited")
    text = limited.conf.read_text().replace("MaxFileSize 200M", "MaxFileSize 1M")
    limited.conf.write_text(text.replace("AlertExceedsMax yes", alert))
    with limited:
        found = scan(unix(limited), mail(("imagerie.bin", b"\0" * (3 * 1024**2) + TEST_PATTERN)))
    assert found == result
