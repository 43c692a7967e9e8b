"""The X-MSS header fields of the MSSanté client referential (issue 19 §3).

They are passed through untouched; a malformed value is a finding (logged in
warn mode, `550 5.6.0` in refuse mode). The seeds (../shared/seeds/) define
none of these formats: they only name the patient address
<matricule INS>@patient.mssante.fr. So each check below is the most
conservative one that still catches a value no client would mean:
- X-MSS-MES: FIN, the one value the relay acts on (core.conversation closes a
  conversation on it, case-insensitively: a value acted on is never called
  malformed);
- X-MSS-INS: O or N (the issue's « O/N »), upper case, nothing else;
- X-MSS-CODECDA: one or more document type codes separated by commas, each
  letters, digits, « . », « - » or « _ » (LOINC « 34112-3 », « PRESC-BIO »);
- X-MSS-NIL: one token of visible ASCII, at most 64 characters (a product
  reference whose format is not published in the seeds).
For all four: at most one field per message, a value that is ASCII and not
empty. Pure: header fields in, findings out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from types import MappingProxyType

from mss_relay.core.findings import Finding
from mss_relay.core.reply import Reply

MES, INS, CODECDA, NIL = "X-MSS-MES", "X-MSS-INS", "X-MSS-CODECDA", "X-MSS-NIL"
NAMES = (MES, INS, CODECDA, NIL)

# RFC 3463 §3.7 X.6.0: other or undefined media error (the message's content).
MES_MALFORMED = Reply(550, "5.6.0", "En-tête X-MSS-MES mal formé : valeur FIN attendue")
INS_MALFORMED = Reply(550, "5.6.0", "En-tête X-MSS-INS mal formé : valeur O ou N attendue")
CODECDA_MALFORMED = Reply(
    550,
    "5.6.0",
    "En-tête X-MSS-CODECDA mal formé : codes de type de document séparés par des virgules attendus",
)
NIL_MALFORMED = Reply(
    550, "5.6.0", "En-tête X-MSS-NIL mal formé : une référence produit sans espace attendue"
)
REPEATED = {
    name: Reply(550, "5.6.0", f"En-tête {name} répété : un seul par message autorisé")
    for name in NAMES
}
_MALFORMED = {
    MES: MES_MALFORMED,
    INS: INS_MALFORMED,
    CODECDA: CODECDA_MALFORMED,
    NIL: NIL_MALFORMED,
}

_CODE = r"[A-Za-z0-9._-]+"
_FORMATS = MappingProxyType(
    {
        MES: re.compile(r"FIN", re.IGNORECASE),
        INS: re.compile(r"[ON]"),
        CODECDA: re.compile(rf"{_CODE}(?:[ \t]*,[ \t]*{_CODE})*"),
        NIL: re.compile(r"[\x21-\x7e]{1,64}"),
    }
)
_PREFIX = b"x-mss-"
# No header field of a message carries more (RFC 5322 §2.1.1: 998 per line).
_MAX_VALUE = 998


@dataclass(frozen=True, slots=True)
class MssHeaders:
    """Every value of each X-MSS field, unfolded and stripped, in order."""

    mes: tuple[str, ...] = ()
    ins: tuple[str, ...] = ()
    codecda: tuple[str, ...] = ()
    nil: tuple[str, ...] = ()

    @classmethod
    def of(cls, fields: Iterable[tuple[str, str]]) -> MssHeaders:
        """From (name, value) pairs, as a message's header fields give them."""
        found: dict[str, list[str]] = {name: [] for name in NAMES}
        for name, value in fields:
            key = name.strip().upper()
            if key in found:
                found[key].append(_unfolded(value))
        return cls(*(tuple(found[name]) for name in NAMES))

    @property
    def ins_yes(self) -> bool:
        """X-MSS-INS: O — the sender says the message carries a qualified INS."""
        return self.ins == ("O",)

    def values(self, name: str) -> tuple[str, ...]:
        return {MES: self.mes, INS: self.ins, CODECDA: self.codecda, NIL: self.nil}[name]


def _unfolded(value: str) -> str:
    return re.sub(r"\r?\n[ \t]", " ", str(value)).strip()


def read_mss_headers(wire: bytes) -> MssHeaders:
    """The X-MSS fields of a message's top-level header section (the parser
    reads it only, never the body: a bounded cost, fine on the event loop)."""
    end = wire.find(b"\r\n\r\n")
    block = wire if end < 0 else wire[: end + 4]
    # Most messages carry no X-MSS field: a field's name starts its line,
    # so a block with no line starting « X-MSS- » (any case) has none, and
    # the parser (some 100 µs for a usual header block: most of this
    # check's cost per message, bench/xdm_cost.py) is not run.
    lowered = block.lower()
    if not lowered.startswith(_PREFIX) and b"\n" + _PREFIX not in lowered:
        return MssHeaders()
    parsed = BytesHeaderParser(policy=compat32).parsebytes(block)
    return MssHeaders.of((str(k), str(v)) for k, v in parsed.items())


def header_findings(headers: MssHeaders) -> tuple[Finding, ...]:
    """One mss_header_malformed finding per X-MSS field whose value (or
    count) is not what the referential allows. The detail names the field,
    never its value."""
    findings: list[Finding] = []
    for name in NAMES:
        values = headers.values(name)
        if len(values) > 1:
            findings.append(
                Finding("mss_header_malformed", REPEATED[name], f"{name} x{len(values)}")
            )
            continue
        for value in values:
            if not _well_formed(name, value):
                findings.append(Finding("mss_header_malformed", _MALFORMED[name], name))
    return tuple(findings)


def _well_formed(name: str, value: str) -> bool:
    if not value or len(value) > _MAX_VALUE or not value.isascii():
        return False
    return _FORMATS[name].fullmatch(value) is not None
