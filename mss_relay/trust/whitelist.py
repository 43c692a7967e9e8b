"""The ANS liste blanche: parsing its XML into an immutable Whitelist.

The file (https://espacedeconfiance.mssante.fr/listeblanchemssante.xml) is
UTF-8 XML in the namespace https://listeblanche.mssante.fr/schema: a root
ListeBlancheMSSante holding DateDeGeneration and ListeDomaines, a sequence of
Domaine (Nom, Description, DNCertificatOperateur, ResponsableContact,
SupportContact, DateMAJ), one per (domain, operator certificate).

It comes from the network: parsed with defusedxml (no DTD, no entity, no
external reference: no billion laughs, no file read through XXE). Published
copies have lacked their closing </ListeBlancheMSSante> while complete: a
file whose only defect is end tags missing after the last complete Domaine is
accepted (truncated_end says so); one cut anywhere else is refused.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from mss_relay.core.addresses import normalize_domain
from mss_relay.core.operator import normalize_dn as normalize_dn  # compared as the core does

NAMESPACE = "https://listeblanche.mssante.fr/schema"
_NS = "{" + NAMESPACE + "}"
ROOT = _NS + "ListeBlancheMSSante"
_DOMAINS = _NS + "ListeDomaines"
_ENTRY = _NS + "Domaine"
_GENERATED = _NS + "DateDeGeneration"
_NAME = _NS + "Nom"
_DN = _NS + "DNCertificatOperateur"
# A host name (RFC 1123 labels, two at least, 253 characters at most): a Nom
# that is not one can name no recipient's domain.
_DOMAIN_NAME = re.compile(
    r"(?=.{1,253}\Z)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z"
)
# expat's « no element found »: the input ended with elements still open.
_NO_ELEMENTS = 3


class InvalidWhitelist(ValueError):
    """The file is not a usable liste blanche; str(): the one-line reason."""


@dataclass(frozen=True, slots=True)
class Whitelist:
    generated: str  # DateDeGeneration, as written
    generated_at: datetime  # the same, aware (UTC when the file gives no offset)
    entries: int
    # Normalized domain -> the operator DNs listed for it (as written, in file order).
    operators: Mapping[str, tuple[str, ...]]
    # The file lacked end tags after its last complete Domaine (accepted).
    truncated_end: bool = False
    # Entries left out: their Nom is not a domain name (not counted in entries).
    bad_names: int = 0
    # Every operator's normalized DN, whatever its domain (computed once: a
    # null sender's MAIL asks whether its certificate is any operator's).
    _all_dns: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        dns = frozenset(normalize_dn(dn) for dns in self.operators.values() for dn in dns)
        object.__setattr__(self, "_all_dns", dns)

    @property
    def domains(self) -> frozenset[str]:
        return frozenset(self.operators)

    @property
    def certificates(self) -> int:
        """Distinct operator certificates (by normalized DN)."""
        return len(self._all_dns)

    def __contains__(self, domain: object) -> bool:
        """Exact domain, case-insensitive, trailing dot ignored."""
        return isinstance(domain, str) and normalize_domain(domain) in self.operators

    def operators_of(self, domain: str) -> tuple[str, ...]:
        return self.operators.get(normalize_domain(domain), ())

    def operator_dns(self, domain: str) -> frozenset[str]:
        """The normalized DNs of the operators of a domain (for the incoming
        side's certificate check)."""
        return frozenset(normalize_dn(dn) for dn in self.operators_of(domain))

    def is_operator(self, dn: str) -> bool:
        """A normalized DN is that of an operator of some listed domain."""
        return dn in self._all_dns

    def age_days(self, now: datetime) -> float:
        return (now - self.generated_at).total_seconds() / 86400

    def summary(self) -> str:
        return (
            f"{self.entries} entrées, {len(self.operators)} domaines,"
            f" {self.certificates} certificats d'opérateur, générée le {self.generated}"
        )


def _generated_at(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidWhitelist(f"DateDeGeneration {text!r} is not an ISO 8601 date") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


class _Reader:
    """Builds the list from start and end events, and knows where it stopped."""

    def __init__(self) -> None:
        self.open: list[str] = []  # the elements open, outermost first
        self.generated: str | None = None
        self.entries = 0
        self.bad_names = 0
        self.operators: dict[str, list[str]] = {}
        self.entry: dict[str, str] = {}

    def start(self, element: ET.Element) -> None:
        depth = len(self.open)
        if depth == 0 and element.tag != ROOT:
            raise InvalidWhitelist(
                f"the root element is {element.tag}, not ListeBlancheMSSante in {NAMESPACE}"
            )
        self.open.append(element.tag)
        if element.tag == _ENTRY and self.open[:-1] == [ROOT, _DOMAINS]:
            self.entry = {}

    def end(self, element: ET.Element) -> None:
        self.open.pop()
        parent = self.open
        text = (element.text or "").strip()
        if parent == [ROOT] and element.tag == _GENERATED:
            self.generated = text
        elif parent == [ROOT, _DOMAINS, _ENTRY]:
            self.entry[element.tag] = text
            element.clear()
        elif parent == [ROOT, _DOMAINS] and element.tag == _ENTRY:
            self._entry_done()
            element.clear()

    def _entry_done(self) -> None:
        name, dn = self.entry.get(_NAME, ""), self.entry.get(_DN, "")
        if not name or not dn:
            missing = "Nom" if not name else "DNCertificatOperateur"
            number = self.entries + self.bad_names + 1
            raise InvalidWhitelist(f"Domaine entry {number} has no {missing}")
        domain = normalize_domain(name)
        if not _DOMAIN_NAME.match(domain):
            # One bad entry does not cost the whole list; the count is shown,
            # and the shrink guard still weighs the domains left out.
            self.bad_names += 1
            return
        self.entries += 1
        self.operators.setdefault(domain, []).append(dn)

    def between_entries(self) -> bool:
        """Stopped with only the root and ListeDomaines open: after a whole
        Domaine, before the next one."""
        return self.open in ([ROOT], [ROOT, _DOMAINS])

    def whitelist(self, truncated_end: bool) -> Whitelist:
        if self.generated is None:
            raise InvalidWhitelist("no DateDeGeneration")
        if not self.entries:
            valid = " with a domain name as Nom" if self.bad_names else ""
            raise InvalidWhitelist(f"no Domaine entry{valid}")
        return Whitelist(
            generated=self.generated,
            generated_at=_generated_at(self.generated),
            entries=self.entries,
            operators=MappingProxyType({k: tuple(v) for k, v in self.operators.items()}),
            truncated_end=truncated_end,
            bad_names=self.bad_names,
        )


def parse_whitelist(data: bytes) -> Whitelist:
    """The liste blanche of a file's bytes; InvalidWhitelist when it does not
    parse, is not in the ANS namespace, or lacks what an entry must have."""
    reader = _Reader()
    events = SafeET.iterparse(
        io.BytesIO(data),
        events=("start", "end"),
        forbid_dtd=True,
        forbid_entities=True,
        forbid_external=True,
    )
    try:
        for event, element in events:
            if event == "start":
                reader.start(element)
            else:
                reader.end(element)
    except ET.ParseError as error:
        code = getattr(error, "code", None)
        # Elements left open at the end of the input, after a whole entry:
        # only end tags are missing (the published defect). Cut in a tag or
        # inside an entry, expat stops elsewhere or with another error.
        if code == _NO_ELEMENTS and reader.entries + reader.bad_names and reader.between_entries():
            return reader.whitelist(truncated_end=True)
        raise InvalidWhitelist(f"not well-formed XML: {error}") from None
    except DefusedXmlException as error:
        raise InvalidWhitelist(f"refused XML construct: {type(error).__name__}") from None
    return reader.whitelist(truncated_end=False)
