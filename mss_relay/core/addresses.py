"""Addresses: the MSSanté trust space, patient addresses and the INS matricule.

Seeds 000 §2 and 003: only addresses ending in « mssante.fr » belong to the
trust space. Seeds 000 §13, 001 and 004: a patient's address is
<matricule INS>@patient.mssante.fr.
"""

from __future__ import annotations

import re
from collections.abc import Container
from email._header_value_parser import get_addr_spec
from email.errors import HeaderParseError

from stdnum.fr import nir

TRUST_SPACE_DOMAIN = "mssante.fr"
PATIENT_DOMAIN = "patient.mssante.fr"

# Sex/type digit, year, month, department (2 digits or Corsica 2A/2B), commune,
# order number, key: exactly 15 characters, no separators. stdnum's own compact()
# would strip spaces and dots, which an e-mail local part must not contain.
_MATRICULE = re.compile(r"\A[0-9]{5}(?:[0-9]{2}|2[AaBb])[0-9]{8}\Z")

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
# A dot-atom local part @ a domain of letters, digits and hyphens (RFC 5321
# §4.1.2): what nearly every MAIL and RCPT carries, and what needs no RFC 5322
# parsing (the SMTP front end and the upstream take it without the email package).
PLAIN_MAILBOX = rf"{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"

# C0 controls and DEL. RFC 5321 §4.1.2: no path holds one, not even quoted
# (qtextSMTP and quoted-pairSMTP are printable ASCII), and no ESMTP parameter
# (esmtp-value is printable ASCII too).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def has_control_character(text: str) -> bool:
    """A control character in an address or a parameter: a syntax error. Let
    through, it could end a command line upstream early (CR, LF: a command
    smuggled in) or cut a C string short (NUL: « x@gmail.com\\0.mssante.fr »
    would pass for the trust space here and be sent to gmail.com elsewhere)."""
    return _CONTROL.search(text) is not None


def split_address(address: str) -> tuple[str, str]:
    """Split at the last « @ ». A missing domain gives an empty string."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address, ""
    return local, domain


def unquoted_local_part(local: str) -> str:
    """A quoted local part as the email package's addr_spec writes it, which is
    how aiosmtpd hands the relay its addresses: « "185057800608491" » needs no
    quotes and is « 185057800608491 », « "1850578 00608400" » keeps them.
    Anything else is returned as is."""
    if len(local) < 2 or local[0] != '"' or local[-1] != '"':
        return local
    try:
        parsed, rest = get_addr_spec(local + "@x")
    except HeaderParseError:
        return local
    return local if rest else parsed.addr_spec.rpartition("@")[0]


def normalize_domain(domain: str) -> str:
    """Domains compare case-insensitively; a trailing dot (FQDN form) is the same domain."""
    return domain.strip().lower().removesuffix(".")


def normalize_address(address: str) -> str:
    """The form in which addresses are compared. Like Postfix's table look-ups,
    the local part compares case-insensitively too: no operator gives
    « Jean.Dupont » and « jean.dupont » to two different people."""
    address = address.strip()
    if "@" not in address:
        return address.lower()
    local, domain = split_address(address)
    return f"{local.lower()}@{normalize_domain(domain)}"


def domain_of(address: str) -> str:
    return normalize_domain(split_address(address)[1])


def in_trust_space(domain: str) -> bool:
    """True for mssante.fr and its sub-domains; lookalikes such as
    evilmssante.fr or mssante.fr.example.com are outside."""
    d = normalize_domain(domain)
    return d == TRUST_SPACE_DOMAIN or d.endswith("." + TRUST_SPACE_DOMAIN)


def trusted_domain(domain: str, whitelist: Container[str] | None) -> bool:
    """Issue 16: with the ANS liste blanche (its domains), the trust space is
    the domains it lists, exactly (mssante.apicrypt.org is in, an unregistered
    foo.mssante.fr is out); without it, the « ends in mssante.fr » rule."""
    if whitelist is None:
        return in_trust_space(domain)
    return normalize_domain(domain) in whitelist


def is_patient_domain(domain: str) -> bool:
    return normalize_domain(domain) == PATIENT_DOMAIN


def is_patient_address(address: str) -> bool:
    return is_patient_domain(split_address(address)[1])


def is_valid_ins_matricule(local_part: str) -> bool:
    """A matricule INS (NIR or NIA): 13 characters plus the key 97 − (n mod 97),
    2A counted as 19 and 2B as 18 for the computation (python-stdnum does it)."""
    if not _MATRICULE.match(local_part):
        return False
    return bool(nir.is_valid(local_part.upper()))
