"""Password hashes for users[].password_hash: scrypt (RFC 7914), salted.

Format: scrypt$<log2 N>$<r>$<p>$<salt, base64>$<hash, base64>. Verification is
CPU- and memory-bound on purpose; callers run it off the event loop.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

_SCHEME = "scrypt"
_LOG2_N = 15
_R = 8
_P = 1
_DKLEN = 32


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: bytes, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    n = 1 << log2_n
    return hashlib.scrypt(
        password, salt=salt, n=n, r=r, p=p, dklen=_DKLEN, maxmem=2 * 128 * r * n * p + 2**20
    )


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = _scrypt(password.encode("utf-8"), salt, _LOG2_N, _R, _P)
    return f"{_SCHEME}${_LOG2_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def _parse(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    scheme, log2_n, r, p, salt, digest = encoded.split("$")
    if scheme != _SCHEME:
        raise ValueError("unknown scheme")
    params = int(log2_n), int(r), int(p)
    if not (10 <= params[0] <= 20 and 1 <= params[1] <= 32 and 1 <= params[2] <= 16):
        raise ValueError("scrypt parameters out of range")
    decoded_salt = base64.b64decode(salt, validate=True)
    decoded_digest = base64.b64decode(digest, validate=True)
    if len(decoded_salt) < 8 or len(decoded_digest) != _DKLEN:
        raise ValueError("salt or hash of the wrong length")
    return (*params, decoded_salt, decoded_digest)


def is_password_hash(encoded: str) -> bool:
    try:
        _parse(encoded)
    except ValueError:
        return False
    return True


def verify_password(password: bytes, encoded: str) -> bool:
    try:
        log2_n, r, p, salt, digest = _parse(encoded)
    except ValueError:
        return False
    return hmac.compare_digest(_scrypt(password, salt, log2_n, r, p), digest)
