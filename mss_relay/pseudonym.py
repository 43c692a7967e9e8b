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
import json
import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from mss_relay.config import Config, ConfigError
from mss_relay.core.addresses import (
    PATIENT_DOMAIN,
    is_valid_ins_matricule,
    split_address,
    unquoted_local_part,
)
from mss_relay.state.database import stored_fingerprint

KEY_BYTES = 32
PREFIX = "ins:"
HEX_CHARS = 16
KEY_KEY = "log.pseudonym_key_file"
_KNOWN = 4096  # pseudonyms kept computed, at most

# What a log line must hold for an address to be masked: one case-folded
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
# A quoted local part as the JSON line writes it (« \"1850578 00608400\" »),
# ending where the domain starts: JSON-escaped quoted-pairs (« \\\" »,
# « \\\\ »), other JSON escapes, any character but a quote or a backslash.
_QUOTED = re.compile(r'\\"(?:\\\\(?:\\["\\]|[^"\\])|\\[/bfnrtu]|[^"\\])*\\"\Z')
_PSEUDONYM = re.compile(rf"\Ains:[0-9a-f]{{{HEX_CHARS}}}\Z")
# A matricule anywhere else (a lookalike domain, a source route, a
# Message-ID): its last 8 characters are digits, Corsica's too. The bytes
# with every digit made NUL (JSON escapes a NUL: a line holds none), searched
# for 8 NULs, cost a microsecond a line; a pattern tried at every position,
# ten.
_DIGITS_TO_NUL = bytes(0 if 0x30 <= i <= 0x39 else i or 1 for i in range(256))
_EIGHT_DIGITS = b"\0" * 8
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_MATRICULE = re.compile(r"(?<![0-9A-Za-z])[0-9]{5}(?:[0-9]{2}|2[AaBb])[0-9]{8}(?![0-9A-Za-z])")
# A JSON string's quotes (the escaped ones skipped): on which side of them a
# matricule stands, on the rare lines holding one.
_JSON_QUOTE = re.compile(r'\\.|"')
# Outside a string, digits beside these are a part of a float's digits.
_NUMBER_BEFORE = frozenset(".-+")
_NUMBER_AFTER = frozenset(".eE")


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
        address was lower-cased for comparison); a quoted local part as the
        relay receives it (« "185057800608491" » is « 185057800608491 »). A
        pseudonym is returned as is."""
        known = self._known.get(ins)
        if known is not None:
            return known
        given, ins = ins, unquoted_local_part(ins.strip())
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
        line (any field, reply texts included) by its pseudonym, and every
        matricule INS standing on its own (not inside a longer run of letters
        and digits, such as a hash) by its own, whatever surrounds it."""
        return self._mask_matricules(self._mask_addresses(line))

    def mask_text(self, text: str) -> str:
        """A value (a Message-ID) as the log shows it once masked: the state
        keeps it so, and finds it again by it."""
        if _QUICK not in text.lower() and not _has_eight_digits(text):
            return text
        masked = self.mask(_JSON.encode(text))
        return text if masked is text else str(json.loads(masked))

    def _mask_addresses(self, line: str) -> str:
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
                quoted = _QUOTED.search(line, done, end) if line[end - 2 : end] == '\\"' else None
                if quoted is None:
                    continue  # no local part: nothing to hide
                start = quoted.start()
                local = str(json.loads(f'"{quoted[0]}"'))
            else:
                local = line[start:end]
                if line[start - 4 : start].lower() == "ins:" and _PSEUDONYM.match("ins:" + local):
                    continue  # a pseudonym already
            pieces += [line[done:start], self.of_ins(local)]
            done = end
        if not pieces:
            return line
        pieces.append(line[done:])
        return "".join(pieces)

    def _mask_matricules(self, line: str) -> str:
        flat = _flat(line)
        if _EIGHT_DIGITS not in flat:
            return line
        pieces: list[str] = []
        done = 0
        for start, end in _matricules(line, flat):
            if _in_json_string(line, start):
                pseudonym = self.of_ins(line[start:end])
            elif line[start - 1 : start] in _NUMBER_BEFORE or line[end : end + 1] in _NUMBER_AFTER:
                continue  # a part of a JSON number (a float), no matricule
            else:  # a JSON number: a string in its place, the line stays JSON
                pseudonym = f'"{self.of_ins(line[start:end])}"'
            pieces += [line[done:start], pseudonym]
            done = end
        if not pieces:
            return line
        pieces.append(line[done:])
        return "".join(pieces)


_JSON = json.JSONEncoder(ensure_ascii=False)


def _flat(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass").translate(_DIGITS_TO_NUL)


def _has_eight_digits(text: str) -> bool:
    return _EIGHT_DIGITS in _flat(text)


def _matricules(line: str, flat: bytes) -> Iterator[tuple[int, int]]:
    """Where valid matricules stand on their own in the line. An ASCII line
    (nearly all: its bytes are its characters) is read from each run of 8
    digits outwards, to the ends of its run of letters and digits; another,
    by the pattern."""
    if not line.isascii():
        for match in _MATRICULE.finditer(line):
            if is_valid_ins_matricule(match[0]):
                yield match.span()
        return
    at = flat.find(_EIGHT_DIGITS)
    while at >= 0:
        start, end = at, at + len(_EIGHT_DIGITS)
        while start > 0 and line[start - 1] in _ALNUM:
            start -= 1
        while end < len(line) and line[end] in _ALNUM:
            end += 1
        if end - start == 15 and is_valid_ins_matricule(line[start:end]):
            yield start, end
        at = flat.find(_EIGHT_DIGITS, end)


def _in_json_string(line: str, at: int) -> bool:
    quotes = sum(1 for m in _JSON_QUOTE.finditer(line, 0, at) if m[0] == '"')
    return quotes % 2 == 1


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


def _refuse_odd(path: Path) -> None:
    """A key file that can be no key file, named so (rather than as the
    error of a read or a mkdir)."""
    if path.is_dir():
        raise ConfigError(KEY_KEY, f"{path} is a directory, not a key file")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(KEY_KEY, f"{path}: {parent} is a file, not a directory")
            return


def mismatch(database: Path, stored: str, check: str) -> str:
    """Why a key is refused for a database (the store, serve, the commands)."""
    return (
        f"{database} holds pseudonyms made with another key (its check is"
        f" {stored}, this key's {check}): give the key it was made with"
    )


def load_key(path: Path, *, create: bool = True) -> Pseudonyms:
    """The pseudonyms under the key at `path`, made first if missing (create).
    A key readable by others than its owner, unreadable or too short is a
    configuration error naming the file (never its content)."""
    _refuse_odd(path)
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


def key_file(config: Config) -> Path:
    """log.pseudonym_key_file, by default beside the state database."""
    return config.log.pseudonym_key_file or config.database.parent / "pseudonym.key"


def _refuse_lost(path: Path, database: Path, stored: str | None) -> None:
    """No key, but a database whose pseudonyms a key made: a new key would
    find none of its patients again (and be refused by the store after being
    made): refused before anything is created."""
    if stored is not None and not path.exists():
        raise ConfigError(
            KEY_KEY,
            f"{path}: no such key file, and the state database {database} holds pseudonyms"
            f" made with a key: restore log.pseudonym_key_file from a backup",
        )


def for_config(config: Config, *, create: bool = True) -> Pseudonyms:
    """The key of log.pseudonym_key_file, checked against the state database's
    record of the key that made its pseudonyms, when there is one."""
    path = key_file(config)
    stored = stored_fingerprint(config.database)
    _refuse_lost(path, config.database, stored)
    pseudonyms = load_key(path, create=create)
    if stored is not None and stored != pseudonyms.check():
        raise ConfigError(KEY_KEY, mismatch(config.database, stored, pseudonyms.check()))
    return pseudonyms


def for_server(
    config: Config, where: str, stored: str | None, *, create: bool = True
) -> Pseudonyms:
    """for_config with the state on a server (PostgreSQL) shared by several
    relays: `stored`, the check it records (read by the caller), must be this
    relay's key's, or their pseudonyms would never meet. Checked before a
    key is made: a relay without its key file is told to copy the others'."""
    path = key_file(config)
    if stored is not None and not path.exists():
        raise ConfigError(
            KEY_KEY,
            f"{path}: no such key file, and {where} holds pseudonyms made with a key: copy"
            " the key file of the other relays on this database here (mode 600)",
        )
    pseudonyms = load_key(path, create=create)
    if stored is not None and stored != pseudonyms.check():
        raise ConfigError(
            KEY_KEY,
            f"{path} is not the key of the other relays on {where} (its check is"
            f" {pseudonyms.check()}, the database's {stored}): copy their key file here",
        )
    return pseudonyms


def check_config(config: Config) -> None:
    """check-config: the key file refused as serve would refuse it, but
    never made (a missing one is made at the first start)."""
    path = key_file(config)
    if path.exists():
        for_config(config, create=False)
        return
    _refuse_odd(path)
    _refuse_lost(path, config.database, stored_fingerprint(config.database))
