"""DKIM keys and signatures made by the tests, and DNS answers they supply."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mss_relay.signing import generate_key, txt_value
from tests.support.processes import ROOT


@dataclass(frozen=True)
class SigningKey:
    domain: str
    selector: str
    pem: bytes
    txt: str  # the value of the TXT record

    @property
    def name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def sign(self, message: bytes) -> bytes:
        """The message signed as a remote operator would (relaxed/relaxed)."""
        header: bytes = dkim.sign(
            message,
            self.selector.encode(),
            self.domain.encode(),
            self.pem,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
        )
        return header + message


def new_key(domain: str, selector: str) -> SigningKey:
    pem, public = generate_key("rsa-sha256")
    return SigningKey(domain, selector, pem, txt_value("rsa-sha256", public))


def keygen_cli(tmp: Path, domain: str, selector: str, *extra: str) -> tuple[Path, str]:
    """« mss-relay dkim-keygen »: the key file, and the TXT value from the record it printed."""
    out = tmp / f"{domain}.{selector}.key"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mss_relay",
            "dkim-keygen",
            domain,
            selector,
            "--output",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    record = done.stdout.strip()
    assert record.startswith(f"{selector}._domainkey.{domain}. IN TXT ("), record
    strings = record.split("(", 1)[1].rsplit(")", 1)[0].split('"')[1::2]
    return out, "".join(strings)


def lookup(records: dict[str, str]):  # type: ignore[no-untyped-def]
    """A dnsfunc for dkimpy that answers from the test's records, not the network."""

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        value = records.get(name.decode().rstrip("."))
        return value.encode() if value is not None else None

    return dnsfunc


def weak_rsa_pem(bits: int = 512) -> bytes:
    """An RSA key too short for DKIM; cryptography will not generate one, so
    build it from two primes."""
    import random

    def prime(size: int) -> int:
        while True:
            n = random.getrandbits(size) | (3 << (size - 2)) | 1  # n = p*q has all its bits
            if all(pow(a, n - 1, n) == 1 for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29)):
                return n

    e = 65537
    while True:
        p, q = prime(bits // 2), prime(bits // 2)
        phi = (p - 1) * (q - 1)
        if p != q and phi % e:
            break
    d = pow(e, -1, phi)
    numbers = rsa.RSAPrivateNumbers(
        p=p,
        q=q,
        d=d,
        dmp1=d % (p - 1),
        dmq1=d % (q - 1),
        iqmp=pow(q, -1, p),
        public_numbers=rsa.RSAPublicNumbers(e, p * q),
    )
    key = numbers.private_key(unsafe_skip_rsa_key_validation=True)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
