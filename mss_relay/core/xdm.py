"""IHE-XDM packages (issue 19 §2): an `IHE_XDM.zip` attachment, or any zip
holding `IHE_XDM/`, carries CDA documents and an ebRIM METADATA.XML per
subset that names the patient. A package for the wrong patient, with a test
identity, or with metadata a reader cannot trust is found here; the mode
(core.findings) decides what becomes of it.

What is checked, in the IHE ITI TF-1 §16 / ITI TF-3 §4.2 layout:
- the archive opens, within bounds (entries, declared sizes, METADATA.XML
  decompressed to at most MAX_METADATA_BYTES, all of them together to at
  most MAX_TOTAL_METADATA_BYTES: a zip bomb is stopped, never inflated);
- it holds IHE_XDM/SUBSET*/METADATA.XML, which parses with defusedxml with
  every DTD refused: an XML bomb or an external entity is a finding, never
  expanded or fetched;
- the patientId external identifiers of XDSDocumentEntry and
  XDSSubmissionSet are HL7 CX « ID^^^&OID&ISO », under the OID of the NIR or
  the NIA (the INS), the ID a valid matricule INS; the test OIDs only with
  allow_test_identities;
- one patient per message, every identifier of every package; to a patient
  address (seeds 000 §13, 001, 004: <matricule INS>@patient.mssante.fr), that
  patient's INS.
Pure and synchronous: decoded attachments in, findings out. Reading a
package inflates its METADATA.XML (a few MiB at most): the caller runs it off
the event loop when wanted() says there is a package to read.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from mss_relay.core.addresses import (
    is_patient_address,
    is_valid_ins_matricule,
    split_address,
    unquoted_local_part,
)
from mss_relay.core.filetypes import MAX_ARCHIVE_DEPTH, MAX_INNER_BYTES, MAX_MEMBERS
from mss_relay.core.findings import Finding, Mode, decide
from mss_relay.core.message import MessageInfo, archive_parts
from mss_relay.core.mss_headers import MssHeaders, header_findings, read_mss_headers
from mss_relay.core.reply import Reply
from mss_relay.core.verdict import Verdict

# The assigning authorities of the INS (ANS, Référentiel INS): NIR, NIA, and
# the two OIDs of test identities.
NIR_OID = "1.2.250.1.213.1.4.8"
NIA_OID = "1.2.250.1.213.1.4.9"
TEST_OIDS = frozenset({"1.2.250.1.213.1.4.10", "1.2.250.1.213.1.4.11"})
INS_OIDS = frozenset({NIR_OID, NIA_OID})
# ITI TF-3 §4.2.3.2.16 and §4.2.3.3.12: the identificationScheme of the
# patientId of an XDSDocumentEntry and of an XDSSubmissionSet.
DOCUMENT_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
SUBMISSION_SET_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
_SCHEMES = frozenset({DOCUMENT_PATIENT_ID, SUBMISSION_SET_PATIENT_ID})

PACKAGE_NAME = "ihe_xdm.zip"
MAX_ENTRIES = MAX_MEMBERS  # the dangerous-attachment rule lists as many
MAX_METADATA_BYTES = 4 * 2**20  # one METADATA.XML, decompressed
MAX_TOTAL_METADATA_BYTES = 16 * 2**20  # every METADATA.XML of the message
# What the recipient's unzip would write, by the archive's own account: an
# attachment is at most some 20 MB, documents compress little (PDF, JPEG).
MAX_DECLARED_BYTES = 512 * 2**20
_METADATA = re.compile(r"IHE_XDM/SUBSET[^/]*/METADATA\.XML", re.IGNORECASE)
# HL7 CX « ID^^^&OID&ISO » (ITI TF-3 §4.2.3.1.7), with at most an identifier
# type code after it (CX.5, « ^NH »): French software writes the INS so,
# as in its HL7 v2 PID segments, and the patient is named by (ID, OID) alone.
_CX = re.compile(r"([^\^&\s]+)\^\^\^&([0-9]+(?:\.[0-9]+)+)&ISO(?:\^[A-Za-z0-9]{1,10})?")
# zipfile hands bzip2 and LZMA decompressors whole chunks without an output
# bound; stored and deflated members are read to a bound (core.filetypes).
_BOUNDED = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)

# RFC 3463 §3.8 X.7.1: delivery not authorized, message refused.
UNREADABLE = Reply(
    550, "5.7.1", "Paquet IHE_XDM refusé : archive illisible, chiffrée ou trop volumineuse"
)
MISSING_METADATA = Reply(
    550, "5.7.1", "Paquet IHE_XDM refusé : fichier IHE_XDM/SUBSET*/METADATA.XML absent"
)
# Both say « METADATA.XML invalide »: to the sender, a bomb and a typing
# error are the same fault (fix the producing software); the codes differ
# for the log, where a bomb is worth an alert.
INVALID_METADATA = Reply(
    550, "5.7.1", "Paquet IHE_XDM refusé : METADATA.XML invalide (document XML mal formé)"
)
UNSAFE_METADATA = Reply(
    550, "5.7.1", "Paquet IHE_XDM refusé : METADATA.XML invalide (DTD ou entités XML interdites)"
)
MISSING_PATIENT_ID = Reply(
    550, "5.7.1", "Paquet IHE_XDM refusé : identifiant du patient absent de METADATA.XML"
)
INVALID_PATIENT_ID = Reply(
    550,
    "5.7.1",
    "Paquet IHE_XDM refusé : identifiant du patient mal formé (ID^^^&OID&ISO, matricule INS)",
)
UNKNOWN_OID = Reply(
    550, "5.7.1", "Paquet IHE_XDM refusé : l'identifiant du patient n'est pas un INS (NIR ou NIA)"
)
TEST_IDENTITY = Reply(
    550, "5.7.1", "Paquet IHE_XDM refusé : identité de test interdite sur ce relais"
)
SEVERAL_PATIENTS = Reply(
    550, "5.7.1", "Paquet IHE_XDM refusé : un message ne doit concerner qu'un seul patient"
)
OTHER_PATIENT = Reply(
    550, "5.7.1", "Paquet IHE_XDM refusé : l'INS du paquet n'est pas celui du patient destinataire"
)


@dataclass(frozen=True, slots=True)
class Attachment:
    """A decoded attachment: every name it gives itself, and its bytes."""

    names: tuple[str, ...]
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class XdmSettings:
    """The `xdm:` section: {mode: warn, allow_test_identities: false}."""

    mode: Mode = Mode.WARN
    allow_test_identities: bool = False


@dataclass(frozen=True, slots=True)
class PatientId:
    """An INS as a package names it. Health data: never logged (no repr)."""

    matricule: str = field(repr=False)  # upper case (« 2A », « 2B »)
    oid: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class XdmReport:
    packages: int  # IHE-XDM packages found among the attachments
    findings: tuple[Finding, ...]
    # Every valid INS named, of every package (health data: no repr).
    patients: frozenset[PatientId] = field(default=frozenset(), repr=False)

    @property
    def codes(self) -> tuple[str, ...]:
        """For the log: the findings' codes, in order."""
        return tuple(f.code for f in self.findings)


# Reported (logged) in every mode, never a refusal (issue 19 §3).
def _ins_without_package() -> Finding:
    return Finding("mss_ins_without_package", None, "X-MSS-INS: O")


def wanted(info: MessageInfo) -> bool:
    """Whether a message may hold a package: a zip part, or a part named
    IHE_XDM.zip. Cheap (the inspection's facts), for the event loop; only
    then are the parts decoded (core.message.archive_parts) and examined."""
    return any(p.archive or any(_named(n) for n in p.names) for p in info.parts)


def _named(name: str) -> bool:
    return name.replace("\\", "/").rsplit("/", 1)[-1].strip().lower() == PACKAGE_NAME


def examine(
    attachments: Iterable[Attachment],
    headers: MssHeaders,
    recipients: Sequence[str],
    settings: XdmSettings,
) -> XdmReport:
    """The packages among the attachments and the X-MSS fields, checked.
    recipients: the envelope's (RCPT TO). Nothing is looked at in off mode."""
    if settings.mode is Mode.OFF:
        return XdmReport(0, ())
    findings: list[Finding] = list(header_findings(headers))
    reader = _Reader(settings.allow_test_identities)
    packages = sum(reader.read(a) for a in attachments)
    findings.extend(reader.findings)
    patients = frozenset(reader.patients)
    if packages:
        if len(patients) > 1:
            findings.append(Finding("xdm_several_patients", SEVERAL_PATIENTS, f"{len(patients)}"))
        addressed = _patient_matricules(recipients)
        if addressed and any(p.matricule != m for p in patients for m in addressed):
            findings.append(Finding("xdm_other_patient", OTHER_PATIENT))
    if headers.ins_yes and not patients:
        findings.append(_ins_without_package())
    return XdmReport(packages, _once(findings), patients)


def check_message(
    wire: bytes, info: MessageInfo, recipients: Sequence[str], settings: XdmSettings
) -> XdmReport:
    """The whole check of one message, as the end of DATA runs it: its X-MSS
    fields, and its packages when wanted(info) (then each zip part is decoded
    whole and its METADATA.XML inflated: the caller runs this in a worker
    thread when wanted(info), else as front.ending.message_work does, in a
    thread above INLINE_LIMIT since the X-MSS fields are searched through
    the whole header section). wire: the CRLF message."""
    if settings.mode is Mode.OFF:
        return XdmReport(0, ())
    parts = archive_parts(wire, crlf=True) if wanted(info) else ()
    attachments = [Attachment(names, data) for names, data in parts]
    return examine(attachments, read_mss_headers(wire), recipients, settings)


def decision(report: XdmReport, settings: XdmSettings) -> Verdict | None:
    """The refusal the report gives in the configured mode (None: accept)."""
    return decide(report.findings, settings.mode, rule="xdm")


def _patient_matricules(recipients: Sequence[str]) -> frozenset[str]:
    return frozenset(
        unquoted_local_part(split_address(r)[0]).upper()
        for r in recipients
        if is_patient_address(r)
    )


def _once(findings: list[Finding]) -> tuple[Finding, ...]:
    """Each (code, reply) once, first occurrence first: a message of ten
    identifiers under a test OID is one finding."""
    seen: set[tuple[str, Reply | None]] = set()
    kept = []
    for f in findings:
        if (f.code, f.reply) not in seen:
            seen.add((f.code, f.reply))
            kept.append(f)
    return tuple(kept)


class _Reader:
    """Reads the packages of one message: findings and patients gathered,
    one decompression budget for all of them. Lives for one examine() call."""

    def __init__(self, allow_test: bool) -> None:
        self.allow_test = allow_test
        self.findings: list[Finding] = []
        self.patients: set[PatientId] = set()
        self.budget = MAX_TOTAL_METADATA_BYTES
        self.inner_budget = MAX_INNER_BYTES  # IHE_XDM.zip files inside other zips

    def read(self, attachment: Attachment, depth: int = 1) -> int:
        """How many packages the attachment is or holds (their findings
        recorded): itself, or, in a zip that is not one, the IHE_XDM.zip
        files it holds (a package sent in an envoi.zip is still checked),
        down to MAX_ARCHIVE_DEPTH archives deep."""
        named = any(_named(n) for n in attachment.names)
        archive = _open(attachment.data)
        if archive is None:
            if named:
                self._unreadable("not a zip archive")
            return int(named)
        with archive:
            infos = archive.infolist()
            paths = [i.filename.replace("\\", "/") for i in infos]
            if named or any(p.upper().startswith("IHE_XDM/") for p in paths):
                self._package(archive, infos, paths)
                return 1
            return self._inner(archive, infos, paths, depth)

    def _inner(
        self, archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], paths: list[str], depth: int
    ) -> int:
        """The packages in the zips a zip holds (by name: « .zip »), each
        read whole within one budget for the message (core.filetypes'
        bound on inner archives), as deep as core.filetypes looks: an
        archive deeper than that is refused by the dangerous-attachment rule."""
        inner = [(i, p) for i, p in zip(infos, paths, strict=True) if p.lower().endswith(".zip")]
        named = sum(_named(p) for _, p in inner)
        if depth >= MAX_ARCHIVE_DEPTH or len(infos) > MAX_ENTRIES:
            if named:
                self._unreadable("IHE_XDM.zip nested too deep, or among too many entries")
            return named
        found = 0
        for info, path in inner:
            data = self._inflate(archive, info, self.inner_budget, "inner archive")
            if data is None:
                found += _named(path)
                continue
            self.inner_budget -= len(data)
            found += self.read(Attachment((path,), data), depth + 1)
        return found

    def _package(
        self, archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], paths: list[str]
    ) -> None:
        if len(infos) > MAX_ENTRIES:
            self._unreadable(f"more than {MAX_ENTRIES} entries")
            return
        if sum(i.file_size for i in infos) > MAX_DECLARED_BYTES:
            self._unreadable("declared sizes above the bound")
            return
        metadata = [i for i, p in zip(infos, paths, strict=True) if _METADATA.fullmatch(p)]
        if not metadata:
            self.findings.append(Finding("xdm_missing_metadata", MISSING_METADATA))
            return
        for info in metadata:
            data = self._inflate(
                archive, info, min(MAX_METADATA_BYTES, self.budget), "METADATA.XML"
            )
            if data is not None:
                self.budget -= len(data)
                self._metadata(data)

    def _unreadable(self, why: str) -> None:
        self.findings.append(Finding("xdm_unreadable", UNREADABLE, why))

    def _inflate(
        self, archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, what: str
    ) -> bytes | None:
        """A member decompressed, never past `limit`, whatever the archive's
        header claims (a bomb lies about its sizes: zipfile then stops at
        the size it claims, and its CRC fails)."""
        if info.flag_bits & 0x1:
            self._unreadable(f"encrypted {what}")
            return None
        if info.compress_type not in _BOUNDED:
            self._unreadable(f"{what} compressed by a method we do not run")
            return None
        if info.file_size > limit:
            self._unreadable(f"{what} too large")
            return None
        try:
            with archive.open(info) as member:
                data = member.read(limit + 1)  # deflate stops at that many bytes out
        except Exception:  # zipfile raises many kinds on a corrupt member
            self._unreadable(f"unreadable {what}")
            return None
        if len(data) > limit:
            self._unreadable(f"{what} inflates past the bound")
            return None
        return data

    def _metadata(self, data: bytes) -> None:
        try:
            root = SafeET.fromstring(
                data, forbid_dtd=True, forbid_entities=True, forbid_external=True
            )
        except DefusedXmlException as error:
            self.findings.append(
                Finding("xdm_unsafe_metadata", UNSAFE_METADATA, type(error).__name__)
            )
            return
        except (ET.ParseError, ValueError, LookupError) as error:
            self.findings.append(
                Finding("xdm_invalid_metadata", INVALID_METADATA, type(error).__name__)
            )
            return
        values = [
            element.get("value", "")
            for element in root.iter()
            if isinstance(element.tag, str)
            and element.tag.rsplit("}", 1)[-1] == "ExternalIdentifier"
            and element.get("identificationScheme") in _SCHEMES
        ]
        if not values:
            self.findings.append(Finding("xdm_missing_patient_id", MISSING_PATIENT_ID))
        for value in values:
            self._identifier(value)

    def _identifier(self, value: str) -> None:
        cx = _CX.fullmatch(value.strip())
        if cx is None:
            self.findings.append(Finding("xdm_invalid_patient_id", INVALID_PATIENT_ID, "CX form"))
            return
        matricule, oid = cx.group(1).upper(), cx.group(2)
        if oid in TEST_OIDS:
            if not self.allow_test:
                self.findings.append(Finding("xdm_test_identity", TEST_IDENTITY, oid))
        elif oid not in INS_OIDS:
            # An OID is no patient data: logged to show what the sender used.
            self.findings.append(Finding("xdm_unknown_oid", UNKNOWN_OID, oid[:64]))
            return
        if not is_valid_ins_matricule(matricule):
            self.findings.append(
                Finding("xdm_invalid_patient_id", INVALID_PATIENT_ID, "matricule INS")
            )
            return
        self.patients.add(PatientId(matricule, oid))


def _open(data: bytes) -> zipfile.ZipFile | None:
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, IndexError):
        return None
