"""DKIM signing of outgoing mail (RFC 6376; RFC 8463 for ed25519), with dkimpy
and OpenSSL.

The signing domain is the sending BAL's domain, or the nearest parent domain
that has a key. Keys are read and tried once at start-up, so that a missing,
unreadable, encrypted or too short key stops the relay with an error naming the
key instead of failing on the first message.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import (
    CanonicalizationPolicy,
    correct_empty_body,
    strip_trailing_lines,
)

from mss_relay.core.addresses import normalize_domain

# dkimpy 1.1's names used here that it does not export (not in __all__):
# tests/unit/test_private_members.py checks that each is there, and that the
# code uses no other. "DKIM.headers" is an attribute of a parsed message.
DKIMPY_INTERNALS = (
    "fold",
    "hash_headers",
    "canonicalization.correct_empty_body",
    "canonicalization.strip_trailing_lines",
    "DKIM.headers",
)

MIN_RSA_BITS = 1024  # RFC 8301 §3.2: verifiers must not accept shorter keys
DEFAULT_RSA_BITS = 2048

# What a recipient reads and what routes replies. Fields that relays on the way
# are known to add or rewrite (Received, Return-Path, ...) are left out. From is
# listed once more than it occurs (over-signing, RFC 6376 §8.15): a From: added
# after signing breaks the signature instead of being shown to the reader.
SIGNED_HEADERS = (
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "x-mss-mes",
)


class UnusableKey(Exception):
    """A key that cannot be used; the message names what is wrong with it."""


@dataclass(frozen=True, slots=True)
class DkimKey:
    domain: str
    selector: str
    algorithm: str
    secret: bytes  # in the form dkimpy takes: PKCS#1 PEM (rsa) or base64 seed (ed25519)
    bits: int
    # The same key for OpenSSL, which signs (RSA: some 1 ms against dkimpy's 9).
    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | None = None

    @property
    def label(self) -> str:
        return f"d={self.domain} s={self.selector} a={self.algorithm}"


def load_key(path: Path, domain: str, selector: str, algorithm: str) -> DkimKey:
    """Read a PEM private key and check that it can sign. Raises UnusableKey."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UnusableKey(f"file not found: {path}") from None
    except OSError as error:
        raise UnusableKey(f"cannot read {path}: {error.strerror or error}") from None
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise UnusableKey(f"{path}: encrypted keys are not supported") from None
    except (ValueError, UnsupportedAlgorithm) as error:
        raise UnusableKey(f"{path}: not a PEM private key ({error})") from None
    if algorithm == "rsa-sha256":
        if not isinstance(private, rsa.RSAPrivateKey):
            raise UnusableKey(f"{path}: not an RSA key (algorithm is rsa-sha256)")
        if private.key_size < MIN_RSA_BITS:
            raise UnusableKey(
                f"{path}: {private.key_size}-bit RSA key, at least {MIN_RSA_BITS} bits needed"
                f" ({DEFAULT_RSA_BITS} recommended)"
            )
        secret = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        bits = private.key_size
    else:
        if not isinstance(private, ed25519.Ed25519PrivateKey):
            raise UnusableKey(f"{path}: not an Ed25519 key (algorithm is ed25519-sha256)")
        raw = private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        secret = base64.b64encode(raw)
        bits = 256
    key = DkimKey(normalize_domain(domain), selector, algorithm, secret, bits, private)
    try:
        sign(b"From: a@" + key.domain.encode() + b"\r\n\r\nx\r\n", key)
    except dkim.DKIMException as error:
        raise UnusableKey(f"{path}: dkimpy cannot sign with it ({error})") from None
    return key


_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_NAME = b"DKIM-Signature"


def sign(message: bytes, key: DkimKey, now: float | None = None, *, crlf: bool = False) -> bytes:
    """The DKIM-Signature header field (ending in CRLF) for a CRLF message.
    CPU work (the body hash of up to 60 MiB): callers go through
    front.ending.message_work(), which moves it to a worker thread above 256 KiB.
    crlf: the caller knows there is no bare CR or LF (crlf_lines()).

    dkimpy parses, canonicalizes and selects the header fields; the signature
    itself is OpenSSL's (cryptography), as dkimpy's RSA is pure Python."""
    if key.private is None:
        raise ValueError(f"DKIM key {key.label} was not loaded with load_key()")
    present = {
        line.split(b":", 1)[0].strip().lower().decode("ascii", "replace")
        for line in _header_lines(message)
    }
    include = [h.encode("ascii") for h in SIGNED_HEADERS if h in present] + [b"from"]
    parsed, body_hash = _parse_and_hash(message, crlf)
    domain = key.domain.encode("ascii")
    fields = [
        (b"v", b"1"),
        (b"a", key.algorithm.encode("ascii")),
        (b"c", b"relaxed/relaxed"),
        (b"d", domain),
        (b"i", b"@" + domain),
        (b"q", b"dns/txt"),
        (b"s", key.selector.encode("ascii")),
        (b"t", str(int(time.time() if now is None else now)).encode("ascii")),
        (b"h", b" : ".join(include)),
        (b"bh", body_hash),
        # As dkimpy does: a placeholder long enough to put b= on a line of its
        # own, so that folding again with the signature moves nothing else.
        (b"b", b"0" * 60),
    ]
    value = dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(_NAME))
    hasher = hashlib.sha256()
    headers = _RELAXED.canonicalize_headers(parsed.headers)
    dkim.hash_headers(hasher, _RELAXED, headers, include, (_NAME, b" " + value), dict(fields))
    digest = hasher.digest()
    if isinstance(key.private, rsa.RSAPrivateKey):
        signature = key.private.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    else:  # RFC 8463: Ed25519 signs the SHA-256 of the canonicalized data
        signature = key.private.sign(digest)
    fields[-1] = (b"b", base64.b64encode(signature))
    value = dkim.fold(b"; ".join(b"=".join(f) for f in fields) + b"\r\n", namelen=len(_NAME))
    return _NAME + b": " + bytes(value)


def _parse_and_hash(message: bytes, crlf: bool) -> tuple[dkim.DKIM, bytes]:
    """dkimpy's parse of the header fields, and the body hash (bh=). dkimpy
    would split the whole message into lines with a regex (120 ms for 5 MB):
    only the header block is given to it when the body is plain CRLF text,
    which is then the body dkimpy would have rebuilt."""
    end = message.find(b"\r\n\r\n")
    if end >= 0:
        start = end + 4
        if crlf:
            return dkim.DKIM(message[:start]), relaxed_body_hash(message, start)
        body = message[start:]
        if body.count(b"\n") == body.count(b"\r\n"):
            return dkim.DKIM(message[:start]), _digest(relaxed_body(body))
    parsed = dkim.DKIM(message)
    return parsed, _digest(relaxed_body(parsed.body))


def _digest(canonical: bytes | memoryview) -> bytes:
    return base64.b64encode(hashlib.sha256(canonical).digest())


def relaxed_body_hash(message: bytes, start: int) -> bytes:
    """The relaxed body hash of message[start:], CRLF only, without a copy
    of the body where canonicalization changes nothing but the trailing
    empty lines (base64 attachments: nearly always; a message is held
    twice at most, not three times)."""
    if any(message.find(ws, start) >= 0 for ws in (b"\t", b"  ", b" \r\n")):
        return _digest(relaxed_body(message[start:]))
    # Trailing CRLFs dropped, one put back; an empty body hashes as empty.
    stop = len(message)
    while stop > start:
        window = message[max(start, stop - 65536) : stop]
        kept = len(window.rstrip(b"\r\n"))  # CR and LF come in pairs here
        stop -= len(window) - kept
        if kept:
            break
    hasher = hashlib.sha256()
    if stop > start:
        hasher.update(memoryview(message)[start:stop])
        hasher.update(b"\r\n")
    return base64.b64encode(hasher.digest())


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 §3.4.4, as dkimpy's relaxed canonicalization computes it, with
    bytes.replace instead of regexes that visit every byte in Python's regex
    engine (130 ms for 5 MB of base64 against a few)."""
    if b"\t" in body:
        body = body.replace(b"\t", b" ")
    while b"  " in body:  # each pass halves every run of spaces
        body = body.replace(b"  ", b" ")
    if b" \r\n" in body:
        body = body.replace(b" \r\n", b"\r\n")
    return bytes(correct_empty_body(strip_trailing_lines(body)))


def _header_lines(message: bytes) -> list[bytes]:
    end = message.find(b"\r\n\r\n")
    block = message if end < 0 else message[:end]
    return [line for line in block.split(b"\r\n") if line and line[:1] not in b" \t"]


@dataclass(frozen=True, slots=True)
class Signed:
    """Signer.attempt()'s outcome: the signatures (and the message signed, when
    asked for), or the name of dkimpy's error on a message it cannot sign
    (the policy refuses it: core.rules.signing.dkim_signable)."""

    signatures: bytes = b""
    message: bytes = b""  # signatures + message, for whole=True
    failure: str | None = None


class Signer:
    """The keys of the configuration, looked up by the sender's domain."""

    def __init__(self, keys: Iterable[DkimKey]) -> None:
        by_domain: dict[str, list[DkimKey]] = {}
        for key in keys:
            by_domain.setdefault(key.domain, []).append(key)
        self._keys: Mapping[str, tuple[DkimKey, ...]] = {d: tuple(k) for d, k in by_domain.items()}

    def __bool__(self) -> bool:
        return bool(self._keys)

    def keys_for(self, domain: str) -> tuple[DkimKey, ...]:
        """The keys of the domain, or of its nearest parent that has some."""
        labels = normalize_domain(domain).split(".")
        for i in range(len(labels) - 1):
            keys = self._keys.get(".".join(labels[i:]))
            if keys:
                return keys
        return ()

    def sign(self, message: bytes, keys: tuple[DkimKey, ...], *, crlf: bool = False) -> bytes:
        """Every signature for the message, ready to put on top of it."""
        return b"".join(sign(message, key, crlf=crlf) for key in keys)

    def attempt(
        self, message: bytes, keys: tuple[DkimKey, ...], *, crlf: bool = False, whole: bool = False
    ) -> Signed:
        """sign(), with what dkimpy raises on a message it cannot sign (a
        header block it cannot parse: dkim.DKIMException) as an outcome; any
        other error is the relay's own (an internal error, 451 4.3.0).
        whole: the message signed too, built here (in the worker thread that
        signs a large one, not on the event loop)."""
        try:
            signatures = self.sign(message, keys, crlf=crlf)
        except dkim.DKIMException as error:
            return Signed(failure=type(error).__name__)
        return Signed(signatures, signatures + message if whole else b"")


def generate_key(algorithm: str, bits: int = DEFAULT_RSA_BITS) -> tuple[bytes, bytes]:
    """A new private key (PKCS#8 PEM) and the p= value of its DNS record."""
    if algorithm == "rsa-sha256":
        private_rsa = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        pem = private_rsa.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        public = private_rsa.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem, base64.b64encode(public)
    private_ed = ed25519.Ed25519PrivateKey.generate()
    pem = private_ed.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    raw = private_ed.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return pem, base64.b64encode(raw)


def txt_value(algorithm: str, public: bytes) -> str:
    kind = "rsa" if algorithm == "rsa-sha256" else "ed25519"
    return f"v=DKIM1; k={kind}; p={public.decode('ascii')}"


def dns_record(domain: str, selector: str, algorithm: str, public: bytes) -> str:
    """The zone-file line to publish; long values split in 255-octet strings
    (RFC 1035 §3.3.14), which resolvers join back."""
    value = txt_value(algorithm, public)
    chunks = [value[i : i + 255] for i in range(0, len(value), 255)]
    quoted = " ".join(f'"{c}"' for c in chunks)
    return f"{selector}._domainkey.{normalize_domain(domain)}. IN TXT ( {quoted} )"


def write_key(path: Path, pem: bytes) -> None:
    """Create the key file readable by its owner only; never overwrite one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
