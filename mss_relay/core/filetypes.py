"""Dangerous attachments: what a file is, by its name, its declared type and
its first bytes, and what a zip archive holds (and the archives in it).

The seeds ask for caution with suspect attachments (000 §11, 002 §3): a
health structure's mail is a favoured way in for ransomware. Executables,
scripts, shortcuts, disk images and macro-enabled Office files are refused in
both directions; what health mail really carries (PDF, CDA/HL7 XML, DICOM,
images, IHE_XDM.zip packages) passes. Pure: bytes in, verdicts out.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass, replace

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
MAX_MEMBERS = 1000  # all levels together
# An archive in an archive in an archive: as deep as real mail goes (an
# IHE_XDM.zip or an Office file in a zip is two); deeper is refused unchecked.
MAX_ARCHIVE_DEPTH = 3
# Inner archives are decompressed whole to be listed: at most this much, all
# together (an attachment is at most 20 MB; what is in a zip compresses little).
MAX_INNER_BYTES = 32 * 2**20


@dataclass(frozen=True, slots=True)
class AttachmentRules:
    extensions: frozenset[str] = DEFAULT_EXTENSIONS  # lower case, no dot
    content_types: frozenset[str] = DEFAULT_CONTENT_TYPES  # lower case
    inspect_archives: bool = True


@dataclass(frozen=True, slots=True)
class ArchiveMember:
    name: str  # in an inner archive: its path, « outer.zip/inner.zip/name »
    head: bytes  # the first HEAD_SIZE bytes, decompressed; b"" when encrypted or unreadable
    encrypted: bool = False
    # Why what it holds cannot be checked (an inner archive too deep, too big,
    # encrypted or unreadable; a TNEF that cannot be parsed), if it cannot.
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Found:
    """What an archive holds that is refused: the member ("": the archive
    itself) and why; checked=False: it could not be looked into."""

    member: str
    why: str
    checked: bool = True


# C0 and C1 controls: a NUL ends the name for software written in C (« a.exe\0.pdf »
# is a.exe there), other clients drop them or cut the name at them.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def extension(name: str) -> str:
    """The extension Windows would act on: the last one, after trailing dots
    and spaces (which Windows drops), on the base name."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].rstrip(". \t")
    stem, dot, ext = base.rpartition(".")
    return ext.lower() if dot and stem else ""


def readings(name: str) -> tuple[str, ...]:
    """The names a client may make of this one: itself and, where it holds
    control characters, each piece they cut it into and the name without them."""
    if name.isprintable():
        return (name,)
    return (name, *_CONTROLS.split(name), _CONTROLS.sub("", name))


def printable(name: str) -> str:
    """The name for a reply text: a control character as « ? » (a reply is one line)."""
    return name if name.isprintable() else _CONTROLS.sub("?", name)


def refusal(
    name: str | None, content_type: str, head: bytes, rules: AttachmentRules, *, attached: bool
) -> str | None:
    """Why this file is refused (for the log), or None. `attached`: a file
    rather than the message's own text, where a « #! » first line means a script."""
    for reading in readings(name) if name else ():
        ext = extension(reading)
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


def _open(data: bytes) -> zipfile.ZipFile | None:
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, IndexError):
        return None


def _member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: str) -> ArchiveMember:
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
    return ArchiveMember(path + info.filename, head, encrypted)


def _inner(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, left: int
) -> tuple[zipfile.ZipFile | None, int, str]:
    """An archive in an archive, opened: read whole (within what is left of
    the bound, whatever its header claims), then listed like the outer one.
    Or why it cannot be; and how many bytes that read."""
    if info.flag_bits & 0x1:
        return None, 0, "encrypted inner archive"
    if info.compress_type not in _BOUNDED:
        return None, 0, "inner archive compressed by a method we do not run"
    if info.file_size > left:
        return None, 0, "inner archives too large to check"
    try:
        with archive.open(info) as member:
            data = member.read(left + 1)  # deflate stops at that many bytes out
    except Exception:  # zipfile raises many kinds on a corrupt member
        return None, 0, "unreadable inner archive"
    if len(data) > left:
        return None, len(data), "inner archives too large to check"
    inner = _open(data)
    return inner, len(data), "" if inner is not None else "unreadable inner archive"


def archive_members(
    data: bytes,
    *,
    max_members: int = MAX_MEMBERS,
    max_depth: int = MAX_ARCHIVE_DEPTH,
    max_inner_bytes: int = MAX_INNER_BYTES,
) -> tuple[ArchiveMember, ...] | None:
    """The members of a zip archive, or None when the data cannot be read as
    one; those of the archives it holds too (a zip, an Office package), down
    to max_depth archives deep, named by their path. At most max_members + 1
    are listed, all levels together: one more than that says « too many to
    check ». Only HEAD_SIZE bytes of a member are decompressed, but an inner
    archive whole: at most max_inner_bytes of them, all together (a zip bomb
    of zips stops there). An inner archive that cannot be listed is a member
    with a problem."""
    outer = _open(data)
    if outer is None:
        return None
    members: list[ArchiveMember] = []
    left = max_inner_bytes
    pending = [(outer, "", 1)]  # (archive, its path, how deep), listed in turn
    while pending and len(members) <= max_members:
        archive, path, depth = pending.pop(0)
        for info in archive.infolist()[: max_members + 1 - len(members)]:
            member = _member(archive, info, path)
            if is_archive(member.head) or extension(info.filename) == "zip":
                if depth >= max_depth:
                    member = replace(member, problem=f"archive nested deeper than {max_depth}")
                else:
                    inner, read, problem = _inner(archive, info, left)
                    left -= read
                    if inner is None:
                        member = replace(member, problem=problem)
                    else:
                        pending.append((inner, member.name + "/", depth + 1))
            members.append(member)
    return tuple(members)


def contents(name: str, data: bytes) -> tuple[ArchiveMember, ...]:
    """A file found inside another (uuencoded in a text, in a TNEF) as
    members: itself, then what it holds if it is a zip, under its name."""
    member = ArchiveMember(name, data[:HEAD_SIZE])
    if not is_archive(member.head):
        return (member,)
    inner = archive_members(data)
    if inner is None:
        return (replace(member, problem="unreadable archive"),)
    return (member, *(replace(m, name=f"{name}/{m.name}") for m in inner))


def archive_refusal(
    members: tuple[ArchiveMember, ...] | None,
    rules: AttachmentRules,
    *,
    max_members: int = MAX_MEMBERS,
) -> Found | None:
    """The first refused member of an archive, or None. An Office package
    holding a VBA project is macro-enabled, whatever its name. An archive
    that cannot be read, or holds too many files, cannot be checked:
    refused (fail closed)."""
    if members is None:
        return Found("", "unreadable archive", checked=False)
    if len(members) > max_members:
        return Found("", f"archive of more than {max_members} files", checked=False)
    for member in members:
        if member.name.replace("\\", "/").rsplit("/", 1)[-1].lower() == _MACROS:
            return Found(member.name, "macro-enabled Office document (vbaProject.bin)")
        why = refusal(member.name, "", member.head, rules, attached=True)
        if why is not None:
            return Found(member.name, why)
        if member.problem is not None:
            return Found(member.name, member.problem, checked=False)
    return None
