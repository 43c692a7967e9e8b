"""Operator certificates: the subject DN of a delivering server's
certificate, written and compared as the ANS liste blanche writes them.

The liste blanche gives, for each domain, the DN of the certificate of each
operator server allowed to deliver for it (« CN=medimail-asip.mipih.fr,
OU=318310021300028,O=GIP MIPIH,ST=Haute-Garonne (31),C=FR »): the RFC 4514
string of the certificate's subject, its spacing after commas varying from
one entry to the next. The front ends turn the peer certificate into that
string (subject_dn); both sides are compared in normalize_dn's form.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

# OpenSSL's long names (what ssl.getpeercert() gives) -> the short names
# RFC 4514 §3 and the liste blanche use. Others are written as OpenSSL names
# them (normalize_dn upper-cases names on both sides).
_SHORT_NAMES = {
    "commonName": "CN",
    "organizationalUnitName": "OU",
    "organizationName": "O",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "countryName": "C",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}
# RFC 4514 §2.4: characters escaped with a backslash in a value.
_SPECIAL = re.compile(r'([,+"\\<>;])')
# RFC 4514: a comma separates two RDNs unless escaped by a backslash.
_RDN_SEPARATOR = re.compile(r"(?<!\\),")

# One RDN of ssl.getpeercert()["subject"]: its (attribute, value) pairs.
Rdn = Sequence[tuple[str, str]]


def normalize_dn(dn: str) -> str:
    """An operator certificate's subject DN in the form DNs are compared in:
    the spacing around commas and « = » dropped, attribute names in upper
    case, each run of white space inside a value (a line break: the
    liste blanche has values written over two lines) one space; values
    otherwise kept as written (case matters) and the attributes in the
    order written (the liste blanche writes them as the certificate does)."""
    parts = []
    for rdn in _RDN_SEPARATOR.split(dn.strip()):
        name, equals, value = rdn.partition("=")
        if not equals:
            parts.append(rdn.strip())
            continue
        parts.append(f"{name.strip().upper()}={' '.join(value.split())}")
    return ",".join(parts)


def _escaped(value: str) -> str:
    value = _SPECIAL.sub(r"\\\1", value)
    if value.startswith(("#", " ")):
        value = "\\" + value
    return value[:-1] + "\\ " if value.endswith(" ") else value


def subject_dn(subject: Sequence[Rdn]) -> str:
    """The RFC 4514 string of a certificate subject as ssl.getpeercert()
    gives it (RDNs in the certificate's encoding order): the last RDN first,
    as RFC 4514 §2.1 writes it and the liste blanche shows it (a certificate
    encoding C, ST, O, OU, CN reads « CN=...,OU=...,O=...,ST=...,C=FR »)."""
    return ",".join(
        "+".join(f"{_SHORT_NAMES.get(name, name)}={_escaped(value)}" for name, value in rdn)
        for rdn in reversed(subject)
    )


class OperatorList(Protocol):
    """What the incoming side's check reads of the liste blanche in force
    (trust.whitelist.Whitelist, and the running relay's WhitelistView)."""

    def __contains__(self, domain: object) -> bool: ...

    def operator_dns(self, domain: str) -> frozenset[str]:
        """The normalized DNs of the operators of a domain."""
        ...

    def is_operator(self, dn: str) -> bool:
        """A normalized DN is that of an operator of any listed domain."""
        ...
