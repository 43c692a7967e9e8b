"""IHE-XDM packages as bytes (IHE ITI TF-1 §16, ebRIM 3.0 METADATA.XML), valid
or with one defect each, for the unit tests of core.xdm and the e2e tests."""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Mapping, Sequence
from xml.sax.saxutils import escape

from tests.support.files import cda, pdf

NIR_OID = "1.2.250.1.213.1.4.8"
NIA_OID = "1.2.250.1.213.1.4.9"
TEST_NIR_OID = "1.2.250.1.213.1.4.10"
TEST_NIA_OID = "1.2.250.1.213.1.4.11"
OTHER_OID = "1.2.250.1.71.4.2.7"  # a hospital's local patient number (IPP)
DOCUMENT_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
SUBMISSION_SET_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
# Valid matricules INS (their keys check), as tests/unit/test_addresses.py has them.
PATIENT = "185057800608491"
OTHER_PATIENT = "253072A07300443"

_RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
_LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"


def cx(matricule: str = PATIENT, oid: str = NIR_OID) -> str:
    """An HL7 CX patient identifier as XDS metadata carries it."""
    return f"{matricule}^^^&{oid}&ISO"


def metadata(document_id: str | None = None, set_id: str | None = None) -> bytes:
    """A METADATA.XML with one XDSDocumentEntry and one XDSSubmissionSet,
    each with its patientId (None: the PATIENT's NIR; "": left out), its
    « & » written « &amp; » as XML wants it."""
    document_id = cx() if document_id is None else document_id
    set_id = cx() if set_id is None else set_id
    doc = (
        f'<rim:ExternalIdentifier id="ei1" registryObject="doc1"'
        f' identificationScheme="{DOCUMENT_PATIENT_ID}" value="{escape(document_id)}">'
        f'<rim:Name><rim:LocalizedString value="XDSDocumentEntry.patientId"/></rim:Name>'
        f"</rim:ExternalIdentifier>"
        if document_id
        else ""
    )
    sset = (
        f'<rim:ExternalIdentifier id="ei2" registryObject="set1"'
        f' identificationScheme="{SUBMISSION_SET_PATIENT_ID}" value="{escape(set_id)}">'
        f'<rim:Name><rim:LocalizedString value="XDSSubmissionSet.patientId"/></rim:Name>'
        f"</rim:ExternalIdentifier>"
        if set_id
        else ""
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<lcm:SubmitObjectsRequest xmlns:lcm="{_LCM}" xmlns:rim="{_RIM}">'
        f"<rim:RegistryObjectList>"
        f'<rim:ExtrinsicObject id="doc1" mimeType="text/xml"'
        f' objectType="urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1">{doc}</rim:ExtrinsicObject>'
        f'<rim:RegistryPackage id="set1">{sset}</rim:RegistryPackage>'
        f"</rim:RegistryObjectList></lcm:SubmitObjectsRequest>\n"
    ).encode()


# An XML bomb: ten levels of ten references, 10^9 « lol » once expanded.
BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n<!ENTITY lol "lol">\n'
    + b"".join(
        b'<!ENTITY lol%d "%s">\n' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
        for i in range(1, 10)
    )
    + b"]>\n<SubmitObjectsRequest>&lol9;</SubmitObjectsRequest>\n"
)
EXTERNAL_ENTITY = (
    b'<?xml version="1.0"?>\n<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
    b"<SubmitObjectsRequest>&xxe;</SubmitObjectsRequest>\n"
)
NOT_XML = b"<SubmitObjectsRequest><unclosed></SubmitObjectsRequest>"


def package(
    files: Mapping[str, bytes] | None = None,
    *,
    metadata_xml: bytes | None = None,
    subsets: Sequence[bytes] = (),
    compression: int = zipfile.ZIP_DEFLATED,
) -> bytes:
    """IHE_XDM.zip bytes. files: the whole archive (path -> bytes), as given;
    otherwise the usual layout with metadata_xml (default: metadata()) in
    SUBSET01, and each of subsets in SUBSET02, SUBSET03, ..."""
    if files is None:
        files = {
            "INDEX.HTM": b"<html><body>IHE XDM</body></html>",
            "README.TXT": b"IHE XDM package\r\n",
            "IHE_XDM/SUBSET01/METADATA.XML": metadata() if metadata_xml is None else metadata_xml,
            "IHE_XDM/SUBSET01/DOC0001.XML": cda(),
            "IHE_XDM/SUBSET01/DOC0002.PDF": pdf(),
        }
        for n, more in enumerate(subsets, start=2):
            files = {**files, f"IHE_XDM/SUBSET{n:02}/METADATA.XML": more}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def for_patient(matricule: str = PATIENT, oid: str = NIR_OID) -> bytes:
    """A valid package for that patient (both identifiers name them)."""
    return package(metadata_xml=metadata(cx(matricule, oid), cx(matricule, oid)))


def without_metadata() -> bytes:
    return package({"IHE_XDM/SUBSET01/DOC0001.XML": cda(), "README.TXT": b"IHE XDM package\r\n"})


def bomb(size: int = 64 * 2**20) -> bytes:
    """A METADATA.XML of `size` bytes (spaces after a root element) deflated
    to some 1/1000 of it: a decompression bomb, its sizes honestly declared."""
    data = b"<SubmitObjectsRequest/>" + b" " * (size - 23)
    return package(metadata_xml=data)


def lying_bomb(size: int = 64 * 2**20) -> bytes:
    """bomb(), its declared uncompressed size of METADATA.XML rewritten to
    1 KiB in both the local and the central headers (a bomb that lies)."""
    data = bytearray(bomb(size))
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(signature)
        while at >= 0:
            name_length = struct.unpack_from("<H", data, at + (26 if offset == 22 else 28))[0]
            start = at + (30 if offset == 22 else 46)
            if data[start : start + name_length].endswith(b"METADATA.XML"):
                struct.pack_into("<I", data, at + offset, 1024)
            at = data.find(signature, at + 4)
    return bytes(data)
