"""Dangerous attachments: what a file is, by its name, its declared type and
its first bytes, and what a zip archive holds (one level deep).

The seeds ask for caution with suspect attachments (000 §11, 002 §3): a
health structure's mail is a favoured way in for ransomware. Executables,
scripts, shortcuts, disk images and macro-enabled Office files are refused in
both directions; what health mail really carries (PDF, CDA/HL7 XML, DICOM,
images, IHE_XDM.zip packages) passes. Pure: bytes in, verdicts out.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

HEAD_SIZE = 16  # enough for every signature below

DEFAULT_EXTENSIONS = frozenset(
    {
        # Windows executables and installers
        "exe", "com", "scr", "pif", "dll", "cpl", "msi", "msp", "mst", "msc", "sys", "drv",
        # scripts
        "bat", "cmd", "vbs", "vbe", "js", "jse", "wsf", "wsh", "wsc", "ps1", "psm1", "psd1",
        "hta", "sh", "bash", "ksh", "csh", "py", "pl", "rb", "jar", "reg", "inf", "scf",
        # shortcuts and links that run things
        "lnk", "url", "application", "appref-ms", "gadget", "chm", "settingcontent-ms",
        # other platforms
        "app", "apk", "dmg", "pkg", "deb", "rpm",
        # disk images (they carry executables past attachment filters)
        "iso", "img", "vhd", "vhdx",
        # macro-enabled Office files
        "docm", "dotm", "xlsm", "xltm", "xlam", "xlsb", "pptm", "potm", "ppam", "ppsm", "sldm",
    }
)  # fmt: skip

DEFAULT_CONTENT_TYPES = frozenset(
    {
        "application/x-msdownload",
        "application/x-msdos-program",
        "application/x-dosexec",
        "application/x-executable",
        "application/x-ms-installer",
        "application/x-msi",
        "application/vnd.microsoft.portable-executable",
        "application/x-sh",
        "application/x-csh",
        "application/x-bat",
        "text/x-sh",
        "application/x-ms-shortcut",
        "application/hta",
        "application/java-archive",
        "application/x-java-archive",
        "application/x-iso9660-image",
        "application/vnd.ms-word.document.macroenabled.12",
        "application/vnd.ms-word.template.macroenabled.12",
        "application/vnd.ms-excel.sheet.macroenabled.12",
        "application/vnd.ms-excel.sheet.binary.macroenabled.12",
        "application/vnd.ms-excel.template.macroenabled.12",
        "application/vnd.ms-excel.addin.macroenabled.12",
        "application/vnd.ms-powerpoint.presentation.macroenabled.12",
        "application/vnd.ms-powerpoint.slideshow.macroenabled.12",
        "application/vnd.ms-powerpoint.template.macroenabled.12",
        "application/vnd.ms-powerpoint.addin.macroenabled.12",
    }
)

# First bytes that say « this runs », whatever the name claims. OLE2 (legacy
# .doc/.xls, also .msi) is not here: an ordinary .doc must pass.
_SIGNATURES = (
    (b"MZ", "Windows executable (MZ)"),
    (b"\x7fELF", "ELF executable"),
    (b"\xfe\xed\xfa\xce", "Mach-O executable"),
    (b"\xfe\xed\xfa\xcf", "Mach-O executable"),
    (b"\xce\xfa\xed\xfe", "Mach-O executable"),
    (b"\xcf\xfa\xed\xfe", "Mach-O executable"),
    (b"L\x00\x00\x00\x01\x14\x02\x00", "Windows shortcut (LNK)"),
)
_SCRIPT = (b"#!", "script (#!)")
_ZIP = (b"PK\x03\x04", b"PK\x05\x06")
_MACROS = "vbaproject.bin"
# zipfile feeds bzip2 and LZMA decompressors whole chunks without an output
# bound: a small member could expand to gigabytes. Stored and deflated members
# are read to their first bytes; the others are judged by name only.
_BOUNDED = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
MAX_MEMBERS = 1000


@dataclass(frozen=True, slots=True)
class AttachmentRules:
    extensions: frozenset[str] = DEFAULT_EXTENSIONS  # lower case, no dot
    content_types: frozenset[str] = DEFAULT_CONTENT_TYPES  # lower case
    inspect_archives: bool = True


@dataclass(frozen=True, slots=True)
class ArchiveMember:
    name: str
    head: bytes  # the first HEAD_SIZE bytes, decompressed; b"" when encrypted or unreadable
    encrypted: bool = False


def extension(name: str) -> str:
    """The extension Windows would act on: the last one, after trailing dots
    and spaces (which Windows drops), on the base name."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].rstrip(". \t")
    stem, dot, ext = base.rpartition(".")
    return ext.lower() if dot and stem else ""


def refusal(
    name: str | None, content_type: str, head: bytes, rules: AttachmentRules, *, attached: bool
) -> str | None:
    """Why this file is refused (for the log), or None. `attached`: a file
    rather than the message's own text, where a « #! » first line means a script."""
    if name:
        ext = extension(name)
        if ext in rules.extensions:
            return f"extension .{ext}"
    if content_type.lower() in rules.content_types:
        return f"content type {content_type.lower()}"
    for signature, what in _SIGNATURES:
        if head.startswith(signature):
            return what
    if attached and head.startswith(_SCRIPT[0]):
        return _SCRIPT[1]
    return None


def is_archive(head: bytes) -> bool:
    return head.startswith(_ZIP)


def archive_members(
    data: bytes, *, max_members: int = MAX_MEMBERS
) -> tuple[ArchiveMember, ...] | None:
    """The members of a zip archive, or None when the data cannot be read as
    one. At most max_members + 1 are listed: one more than that says « too
    many to check ». Only HEAD_SIZE bytes of a member are decompressed."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()[: max_members + 1]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, IndexError):
        return None
    members = []
    for info in infos:
        encrypted = bool(info.flag_bits & 0x1)
        head = b""
        readable = info.compress_type in _BOUNDED and not info.filename.endswith("/")
        if not encrypted and readable:
            try:
                with archive.open(info) as member:
                    head = member.read(HEAD_SIZE)
            except RuntimeError:  # « File is encrypted » without the flag
                encrypted = True
            except Exception:
                head = b""  # judged by its name
        members.append(ArchiveMember(info.filename, head, encrypted))
    return tuple(members)


def archive_refusal(
    members: tuple[ArchiveMember, ...] | None,
    rules: AttachmentRules,
    *,
    max_members: int = MAX_MEMBERS,
) -> tuple[str, str] | None:
    """The first refused member of an archive: (its name, why), or None.
    An Office package holding a VBA project is macro-enabled, whatever its name.
    An archive that cannot be read, or holds too many files, cannot be checked:
    refused too (a crafted zip may open in the recipient's tools, not in ours)."""
    if members is None:
        return "", "unreadable archive"
    if len(members) > max_members:
        return "", f"archive of more than {max_members} files"
    for member in members:
        if member.name.replace("\\", "/").rsplit("/", 1)[-1].lower() == _MACROS:
            return member.name, "macro-enabled Office document (vbaProject.bin)"
        why = refusal(member.name, "", member.head, rules, attached=True)
        if why is not None:
            return member.name, why
    return None
