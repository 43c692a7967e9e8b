"""DKIM verification of incoming mail, reported in Authentication-Results (RFC 8601).

Public keys come from DNS (dnspython), or from a file of answers
(inbound.dkim_dns_file) on a closed network and in tests. Verification does
DNS look-ups and hashing: call verify() from a worker thread.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

import authres
import dkim
import dns.exception
import dns.resolver
import yaml

from mss_relay.core.authentication import FAIL, NONE, PASS, PERMERROR, TEMPERROR, DkimCheck

# dkimpy 1.1's attributes of a DKIM object read here, which it does not
# document: tests/unit/test_private_members.py checks that each is there.
DKIMPY_INTERNALS = ("DKIM.headers", "DKIM.signature_fields")

Lookup = Callable[..., bytes | None]
# More signatures than this are not looked at (each costs a DNS query).
MAX_SIGNATURES = 5


def dns_lookup(timeout: float) -> Lookup:
    def lookup(name: bytes, timeout: float = timeout) -> bytes | None:
        try:
            answer = dns.resolver.resolve(
                name.decode("ascii", "replace"), "TXT", lifetime=timeout, raise_on_no_answer=False
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except (
            dns.exception.Timeout,
            dns.resolver.NoNameservers,
            # No resolver to ask (no /etc/resolv.conf): the key could not be
            # looked up, which is not « no key »: fail closed, as on a time-out.
            dns.resolver.NoResolverConfiguration,
        ) as error:
            raise dkim.DnsTimeoutError(type(error).__name__) from None
        except dns.exception.DNSException:
            return None
        for record in answer.rrset or ():
            return b"".join(record.strings)
        return None

    return lookup


def load_answers(path: Path) -> Mapping[str, bytes]:
    """A YAML mapping of DNS names to TXT values, e.g.
    « sel._domainkey.patient.mssante.fr: "v=DKIM1; k=rsa; p=..." »."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ValueError("must map DNS names to TXT strings")
    return {k.strip().lower().rstrip("."): v.encode("ascii") for k, v in data.items()}


def file_lookup(answers: Mapping[str, bytes]) -> Lookup:
    def lookup(name: bytes, timeout: float = 0) -> bytes | None:
        return answers.get(name.decode("ascii", "replace").lower().rstrip("."))

    return lookup


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("ascii", "replace")


class Verifier:
    def __init__(self, authserv_id: str, lookup: Lookup, timeout: float = 5.0) -> None:
        self.authserv_id = authserv_id
        self.lookup = lookup
        self.timeout = timeout
        self._ours = authserv_id.lower().rstrip(".")

    def verify(self, message: bytes) -> tuple[DkimCheck, ...]:
        try:
            checker = dkim.DKIM(message, minkey=1024, timeout=self.timeout)
            count = sum(1 for name, _ in checker.headers if name.lower() == b"dkim-signature")
        except Exception:
            return (DkimCheck(PERMERROR),)
        if not count:
            return (DkimCheck(NONE),)
        return tuple(self._one(checker, i) for i in range(min(count, MAX_SIGNATURES)))

    def _one(self, checker: dkim.DKIM, index: int) -> DkimCheck:
        # dkimpy answers False alike for a bad signature, an unpublished key and
        # a DNS time-out; the look-up itself tells them apart.
        dns_outcome: list[str] = []

        def traced(name: bytes, timeout: float = self.timeout) -> bytes | None:
            try:
                value = self.lookup(name, timeout=timeout)
            except dkim.DnsTimeoutError:
                dns_outcome.append(TEMPERROR)
                raise
            if value is None:
                dns_outcome.append(PERMERROR)
            return value

        try:
            valid = checker.verify(index, dnsfunc=traced)
            result = PASS if valid else (dns_outcome or [FAIL])[0]
        except dkim.DnsTimeoutError:
            result = TEMPERROR
        except dkim.ValidationError as error:
            # dkimpy raises, rather than returning False, when the body does not
            # match its hash: a verification failure, not a malformed signature.
            result = FAIL if "body hash mismatch" in str(error) else PERMERROR
        except Exception:
            result = PERMERROR
        fields = getattr(checker, "signature_fields", None) or {}
        return DkimCheck(
            result,
            domain=_text(fields.get(b"d")),
            selector=_text(fields.get(b"s")),
            algorithm=_text(fields.get(b"a")),
        )

    def header(self, checks: tuple[DkimCheck, ...]) -> bytes:
        results = [
            authres.DKIMAuthenticationResult(
                result=c.result, header_d=c.domain, header_s=c.selector, header_a=c.algorithm
            )
            for c in checks
        ]
        field = authres.AuthenticationResultsHeader(authserv_id=self.authserv_id, results=results)
        return str(field).encode("ascii", "replace") + b"\r\n"

    def without_forged_results(self, message: bytes) -> bytes:
        """RFC 8601 §5: results that claim to be ours, from before us, are
        removed, however written (case, trailing dot, comments, a version)."""
        end = message.find(b"\r\n\r\n")
        end = len(message) if end < 0 else end + 2
        head = message[:end]
        if b"authentication-results" not in head.lower():
            return message
        kept = [f for f in _fields(head) if not self.claims_ours(f)]
        return b"".join(kept) + message[end:]

    def claims_ours(self, field: bytes) -> bool:
        name, colon, value = field.partition(b":")
        if not colon or name.strip().lower() != b"authentication-results":
            return False
        text = _COMMENT.sub(b" ", value).strip()
        token = text.split(b";", 1)[0].split()
        if not token:
            return True  # unreadable: it cannot be trusted, drop it
        return token[0].decode("ascii", "replace").lower().rstrip(".") == self._ours


_COMMENT = re.compile(rb"\((?:[^()\\]|\\.)*\)")


def _fields(head: bytes) -> list[bytes]:
    """Header fields with their continuation lines, each ending in CRLF."""
    fields: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1] += line
        else:
            fields.append(line)
    return fields
