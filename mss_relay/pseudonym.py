"""Patients' pseudonyms: a keyed hash of the INS, in the log and at rest.

A patient's address is <matricule INS>@patient.mssante.fr (seeds 000 §13,
001, 004), and the matricule is in most cases the social security number: the
relay writes it nowhere in clear. The log (a finish step of make_logger) and
the state database show `ins:` + the first 16 hex characters of
HMAC-SHA256(key, INS), keeping the domain (`ins:0123456789abcdef@patient.mssante.fr`)
so that a line still says it is about a patient. The same key gives the same
pseudonym across restarts and workers, so an administrator can grep one
patient's history (« mss-relay audit pseudonym ADDRESS »); without the key a
pseudonym leads back to nobody (an INS has too few possible values for an
unkeyed hash: all of them can be hashed in hours).

The key (log.pseudonym_key_file, 32 random bytes, mode 600) is made at the
first start, atomically: written to a file of its own, then linked to its
name, which fails if another process linked first (both then read the winner's).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from mss_relay.config import Config, ConfigError
from mss_relay.core.addresses import PATIENT_DOMAIN, split_address

KEY_BYTES = 32
PREFIX = "ins:"
HEX_CHARS = 16
KEY_KEY = "log.pseudonym_key_file"
_KNOWN = 4096  # pseudonyms kept computed, at most

# What a log line must hold for anything to be masked: one case-folded
# search of a literal, before any regular expression (most lines are about
# professionals' mail only and pay for this search alone).
_QUICK = "@" + PATIENT_DOMAIN
# The patient domain, without regard to case; the local part before it is
# then read backwards by hand (dot-atom characters; « : » is not one, so a
# pseudonym's own « ins: » ends it): a pattern starting with the local part
# would be tried at every position of every line (45 µs a line, against 3).
# What follows the domain does not matter: masking a lookalike
# (patient.mssante.fr. or patient.mssante.fr.example) too costs nothing,
# missing one would leak.
_DOMAIN = re.compile(r"@patient\.mssante\.fr", re.IGNORECASE)
_LOCAL = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+/=?^_`{|}~.-"
)
_PSEUDONYM = re.compile(rf"\Ains:[0-9a-f]{{{HEX_CHARS}}}\Z")


class Pseudonyms:
    """The pseudonyms under one key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < KEY_BYTES:
            raise ValueError(f"a pseudonym key has at least {KEY_BYTES} bytes")
        self._key = key
        # The pseudonyms computed lately (an HMAC is half the cost of a
        # patient's line, and a message names its patient in several lines):
        # emptied when full, a bound on memory.
        self._known: dict[str, str] = {}

    def __repr__(self) -> str:  # never the key, whatever prints this object
        return "Pseudonyms(<key>)"

    def check(self) -> str:
        """What identifies the key without revealing it (kept in the state
        database: a key changed since gives another check)."""
        digest = hmac.new(self._key, b"mss-relay pseudonym key check", hashlib.sha256)
        return digest.hexdigest()[:HEX_CHARS]

    def of_ins(self, ins: str) -> str:
        """`ins:` + 16 hex of HMAC-SHA256(key, INS): the matricule stripped and
        in capitals (2A and 2B, Corsica's departments, as « 2a » after an
        address was lower-cased for comparison). A pseudonym is returned as is."""
        known = self._known.get(ins)
        if known is not None:
            return known
        given, ins = ins, ins.strip()
        if _PSEUDONYM.match(ins):
            return ins
        digest = hmac.new(self._key, ins.upper().encode("utf-8"), hashlib.sha256).hexdigest()
        if len(self._known) >= _KNOWN:
            self._known.clear()
        pseudonym = self._known[given] = PREFIX + digest[:HEX_CHARS]
        return pseudonym

    def of(self, address_or_ins: str) -> str:
        """A patient's address as `ins:...@patient.mssante.fr`; a bare INS as
        `ins:...`; any other address unchanged (a professional's is no secret)."""
        text = address_or_ins.strip()
        if "@" not in text:
            return self.of_ins(text)
        local, domain = split_address(text)
        if domain.lower().rstrip(".") != PATIENT_DOMAIN:
            return text
        return f"{self.of_ins(local)}@{PATIENT_DOMAIN}"

    def mask(self, line: str) -> str:
        """The finish step of the log: every patient address in the rendered
        line (any field, reply texts included) by its pseudonym."""
        exact = line.count(_QUICK)
        folded = line.lower().count(_QUICK)
        if not folded:
            return line
        # The domain as the relay writes it (lower case) is found by plain
        # searches; the pattern, four times slower, only for other cases.
        found = _exact(line) if exact == folded else (m.start() for m in _DOMAIN.finditer(line))
        pieces: list[str] = []
        done = 0  # line[:done] is in pieces
        for end in found:
            start = end
            while start > done and line[start - 1] in _LOCAL:
                start -= 1
            if start == end:
                continue  # no local part: nothing to hide
            local = line[start:end]
            if line[start - 4 : start].lower() == "ins:" and _PSEUDONYM.match("ins:" + local):
                continue  # a pseudonym already
            pieces += [line[done:start], self.of_ins(local)]
            done = end
        if not pieces:
            return line
        pieces.append(line[done:])
        return "".join(pieces)


def _exact(line: str) -> Iterator[int]:
    at = line.find(_QUICK)
    while at >= 0:
        yield at
        at = line.find(_QUICK, at + len(_QUICK))


def _create(path: Path) -> None:
    """A new key at `path`, unless one is there already (then kept): the
    bytes written whole to a temporary file, then linked to the name, so no
    process ever reads a key half written, and two starting at once keep one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, secrets.token_bytes(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):  # another process made it first
            os.link(temporary, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def load_key(path: Path, *, create: bool = True) -> Pseudonyms:
    """The pseudonyms under the key at `path`, made first if missing (create).
    A key readable by others than its owner, unreadable or too short is a
    configuration error naming the file (never its content)."""
    if create and not path.exists():
        try:
            _create(path)
        except OSError as error:
            raise ConfigError(KEY_KEY, f"cannot create {path}: {error.strerror or error}") from None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise ConfigError(KEY_KEY, f"{path}: no such key file") from None
    except OSError as error:
        raise ConfigError(KEY_KEY, f"cannot read {path}: {error.strerror or error}") from None
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            raise ConfigError(
                KEY_KEY, f"{path} has mode {mode:o}: it must be readable by its owner only (600)"
            )
        key = os.read(fd, 4096)
    except OSError as error:
        raise ConfigError(KEY_KEY, f"cannot read {path}: {error.strerror or error}") from None
    finally:
        os.close(fd)
    if len(key) < KEY_BYTES:
        raise ConfigError(KEY_KEY, f"{path} holds {len(key)} bytes, not a key of {KEY_BYTES}")
    return Pseudonyms(key)


def for_config(config: Config, *, create: bool = True) -> Pseudonyms:
    """The key of log.pseudonym_key_file (by default beside the state database)."""
    path = config.log.pseudonym_key_file or config.database.parent / "pseudonym.key"
    return load_key(path, create=create)
