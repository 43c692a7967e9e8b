"""The operating report: figures for a director or a DPO, read from the log.

Reading (the log file and its rotated copies) is kept apart from counting:
aggregate() is a pure function of the lines, the period and the structure's
addresses, so it is table-tested without files; the HTML and the text
renderings (report_html.py) take its Report and nothing else.

Health data never reaches a Report: senders are kept only when they are one
of the structure's BALs (never a patient address, whatever the configuration
says), rules and outcomes only as fixed identifiers, and no reason, reply,
subject, attachment name or recipient is read at all.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

from mss_relay.core.addresses import (
    is_patient_address,
    is_valid_ins_matricule,
    normalize_address,
)

# Messages per day: what became of each one, in the order the charts stack them.
OUTCOMES: dict[str, str] = {
    "delivered": "Transmis",
    "refused": "Refusés",
    "tempfailed": "Différés (erreur temporaire)",
    "upstream_refused": "Refusés par l'opérateur",
    "abandoned": "Abandonnés par le client",
}
# The transaction line's outcome -> the category above.
_OUTCOME_OF = {
    "delivered": "delivered",
    "accepted": "delivered",  # the milter: accepted, Postfix delivers it
    "rejected": "refused",
    "tempfailed": "tempfailed",
    "permfailed": "upstream_refused",
    "abandoned": "abandoned",
}
LIFECYCLE_FLAGS: dict[str, str] = {
    "unpublished": "Inactive depuis 60 jours : dépubliée de l'Annuaire",
    "deletion_warning": "Suppression dans moins de 2 mois",
    "to_delete": "À supprimer (1 an sans activité)",
}
CONVERSATION_CLOSINGS: dict[str, str] = {
    "fin": "[FIN] du professionnel",
    "auto_close": "BAL à fermeture automatique",
    "idle": "Sans activité (délai dépassé)",
    "admin": "Par un administrateur",
}
# What each rule refuses, in words (the log names rules by identifier).
RULES: dict[str, str] = {
    "address_syntax": "Adresse mal formée",
    "antivirus_unavailable": "Antivirus indisponible",
    "attachment_size": "Pièce jointe trop volumineuse",
    "auth_in_flight": "Authentification en cours",
    "auth_lockout": "Compte verrouillé (échecs d'authentification)",
    "conversation_state": "État des conversations indisponible",
    "dangerous_attachment": "Type de pièce jointe interdit",
    "declared_size": "Taille annoncée trop grande",
    "dkim_signable": "Message impossible à signer (DKIM)",
    "from_aligned": "Expéditeur (From) différent de l'enveloppe",
    "log_required": "Journal indisponible",
    "malware": "Contenu malveillant (antivirus)",
    "max_connections": "Trop de connexions",
    "max_connections_per_client": "Trop de connexions d'un même client",
    "max_recipients": "Trop de destinataires",
    "message_size": "Message trop volumineux",
    "messages_per_minute": "Trop de messages par minute",
    "mime_structure": "Structure MIME invalide",
    "null_sender": "Expéditeur vide non autorisé",
    "patient_conversation": "Patient hors d'une conversation ouverte",
    "patient_dkim": "Message de patient sans signature DKIM valide",
    "patient_matricule": "Adresse patient invalide (matricule INS)",
    "per_domain_size": "Taille maximale du domaine destinataire",
    "recipient_is_bal": "Destinataire inconnu de la structure",
    "recipients_per_hour": "Trop de destinataires par heure",
    "sender_owned": "Expéditeur non autorisé pour ce compte",
    "sender_trust_space": "Expéditeur hors de l'espace de confiance",
    "single_from": "Plusieurs expéditeurs (From)",
    "trust_space": "Destinataire hors de l'espace de confiance",
    "wire_size": "Message trop volumineux (transmission)",
    "xdm": "Paquet IHE-XDM ou en-tête X-MSS non conforme",
}
# A rule, outcome or flag as the relay writes it: anything else in the field
# (a line written by something else, or tampered with) is not shown.
_IDENTIFIER = re.compile(r"\A[a-z][a-z0-9_]{0,63}\Z")
_SINCE = re.compile(r"\A(\d{1,5})\s*([hdw])\Z")
_UNITS = {"h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime, tz: tzinfo | None = None) -> datetime:
    """« 30d », « 12h », « 2w » before now, or an ISO date or date-time (a
    date is midnight; without an offset, in tz, local time when None)."""
    value = text.strip().lower()
    relative = _SINCE.match(value)
    if relative:
        amount, unit = int(relative.group(1)), relative.group(2)
        return now - timedelta(**{_UNITS[unit]: amount})
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since: {text!r} is neither a duration (30d, 12h, 2w) nor an ISO date"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz) if tz is not None else moment.astimezone()
    if moment > now:
        raise ValueError(f"--since: {text!r} is in the future")
    return moment


@dataclass
class LogLines:
    """The lines of the log files, and what could not be read of them."""

    files: list[Path]
    problems: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[str]:
        for path in self.files:
            try:
                opener = gzip.open if path.name.endswith(".gz") else open
                with opener(path, "rt", encoding="utf-8", errors="replace") as stream:
                    yield from stream
            except (OSError, EOFError, zlib.error) as error:
                # A truncated or corrupt archive: what came before is counted.
                self.problems.append(f"{path.name}: {type(error).__name__}: {error}")


@dataclass(frozen=True)
class LifecycleRow:
    bal: str
    bal_type: str
    flag: str
    last_activity: date | None  # None: never active
    days_inactive: int | None
    reported: date  # the day of the latest line for this BAL
    notices: int  # lifecycle notices sent to it in the period


@dataclass(frozen=True)
class Report:
    start: datetime
    end: datetime
    days: tuple[date, ...]
    messages: dict[date, Counter[str]]  # day -> OUTCOMES key -> count
    refusals: Counter[str]  # rule -> refusals (decisions: MAIL, RCPT, end of DATA)
    refused_senders: Counter[str]  # a structure's BAL -> refused messages
    hidden_senders: int  # refused messages from any other sender (not shown)
    conversations: dict[date, Counter[str]]  # day -> "opened" / "closed" -> count
    closings: Counter[str]  # how conversations were closed
    lifecycle: tuple[LifecycleRow, ...]
    auth_failures: int
    auth_locked: int
    lines: int  # lines read in the period
    skipped: int  # lines that are no log line (not JSON, no ts, no event)
    files: tuple[str, ...] = ()  # the files read (set by the caller, who read them)
    problems: tuple[str, ...] = ()  # what could not be read of them

    def total(self, outcome: str | None = None) -> int:
        return sum(c[outcome] if outcome else sum(c.values()) for c in self.messages.values())

    def conversations_total(self, kind: str) -> int:
        return sum(c[kind] for c in self.conversations.values())


def _timestamp(line: dict[str, Any]) -> datetime | None:
    ts = line.get("ts")
    if not isinstance(ts, str):
        return None
    try:
        moment = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _identifier(value: Any) -> str | None:
    return value if isinstance(value, str) and _IDENTIFIER.match(value) else None


def shown_address(value: Any, structure: frozenset[str]) -> str | None:
    """An address as the report may show it: one of the structure's BALs,
    and never a patient's (whose local part is an INS)."""
    address = _address(value)
    return address if address and address in structure else None


@dataclass
class _Tally:
    """The counts while the lines go by; frozen into a Report at the end."""

    structure: frozenset[str]
    messages: dict[date, Counter[str]] = field(default_factory=dict)
    refusals: Counter[str] = field(default_factory=Counter)
    senders: Counter[str] = field(default_factory=Counter)
    hidden: int = 0
    conversations: dict[date, Counter[str]] = field(default_factory=dict)
    closings: Counter[str] = field(default_factory=Counter)
    lifecycle: dict[str, tuple[datetime, dict[str, Any]]] = field(default_factory=dict)
    notices: Counter[str] = field(default_factory=Counter)
    auth: Counter[str] = field(default_factory=Counter)
    # Transactions refused at RCPT or at the end of DATA: their transaction
    # line (which names the sender) is still to come.
    pending: set[str] = field(default_factory=set)

    def message(self, day: date, outcome: str, sender: Any) -> None:
        self.messages.setdefault(day, Counter())[outcome] += 1
        if outcome != "refused":
            return
        shown = shown_address(sender, self.structure)
        if shown is None:
            self.hidden += 1
        else:
            self.senders[shown] += 1

    def add(self, moment: datetime, day: date, line: dict[str, Any]) -> None:
        event = line.get("event")
        txid = line.get("txid") if isinstance(line.get("txid"), str) else None
        if event == "decision" and line.get("verdict") in ("reject", "tempfail"):
            self.refusals[_identifier(line.get("rule")) or "autre"] += 1
            if line.get("stage") == "mail" or txid is None:
                # Refused at MAIL: no transaction was begun, no line follows.
                self.message(day, "refused", line.get("sender"))
            else:
                self.pending.add(txid)
        elif event == "transaction":
            outcome = _OUTCOME_OF.get(str(line.get("outcome")), "abandoned")
            refused = txid is not None and txid in self.pending
            self.pending.discard(txid or "")
            if outcome == "abandoned" and refused:
                outcome = "refused"  # every recipient refused: the client gave up
            elif outcome == "refused" and not refused:
                # Refused with no decision line (the SMTP front's size and line
                # length limits while DATA comes in): counted under its rule.
                self.refusals[_identifier(line.get("rule")) or "autre"] += 1
            self.message(day, outcome, line.get("sender"))
        elif event == "conversation_opened":
            self.conversations.setdefault(day, Counter())["opened"] += 1
        elif event in ("conversation_closed", "conversations_auto_closed"):
            count = line.get("count", 1) if event == "conversations_auto_closed" else 1
            count = count if isinstance(count, int) and count > 0 else 1
            self.conversations.setdefault(day, Counter())["closed"] += count
            self.closings[_identifier(line.get("how")) or "autre"] += count
        elif event == "auth" and line.get("result") in ("failure", "locked"):
            # The same wrong password again (smtplib's PLAIN then LOGIN): once.
            if line.get("repeated") is not True:
                self.auth[str(line["result"])] += 1
        elif event == "bal_lifecycle":
            # A BAL removed from the configuration since is gone: not shown.
            bal = shown_address(line.get("bal"), self.structure)
            if bal and _identifier(line.get("flag")) in LIFECYCLE_FLAGS:
                known = self.lifecycle.get(bal)
                if known is None or known[0] <= moment:
                    self.lifecycle[bal] = (moment, line)
        elif event == "lifecycle_notice_sent":
            bal = shown_address(line.get("bal"), self.structure)
            if bal:
                self.notices[bal] += 1


def _address(value: Any) -> str:
    """A BAL's address, or "" when it could be a patient's (an INS)."""
    if not isinstance(value, str) or "@" not in value:
        return ""
    address = normalize_address(value)
    local = address.rpartition("@")[0]
    if is_patient_address(address) or is_valid_ins_matricule(local):
        return ""
    return address


def _lifecycle_row(bal: str, moment: datetime, line: dict[str, Any], notices: int) -> LifecycleRow:
    days = line.get("days_inactive")
    last = line.get("last_activity")
    return LifecycleRow(
        bal=bal,
        bal_type=_identifier(line.get("bal_type")) or "?",
        flag=str(line["flag"]),
        last_activity=_day(last),
        days_inactive=days if isinstance(days, int) and not isinstance(days, bool) else None,
        reported=moment.date(),
        notices=notices,
    )


def _day(value: Any) -> date | None:
    try:
        return date.fromisoformat(value[:10]) if isinstance(value, str) else None
    except ValueError:
        return None


def aggregate(
    lines: Iterable[str],
    start: datetime,
    end: datetime,
    structure: Iterable[str],
    tz: tzinfo | None = None,
) -> Report:
    """Count the log lines from start to end. Days are those of tz (the
    machine's local time when None). structure: the BAL addresses that may
    be shown as refused senders."""
    tally = _Tally(frozenset(normalize_address(a) for a in structure))
    read = skipped = 0
    for text in lines:
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except ValueError:
            skipped += 1
            continue
        moment = _timestamp(line) if isinstance(line, dict) else None
        if moment is None or not isinstance(line.get("event"), str):
            skipped += 1
            continue
        if not start <= moment <= end:
            continue
        read += 1
        tally.add(moment, moment.astimezone(tz).date(), line)
    first, last = start.astimezone(tz).date(), end.astimezone(tz).date()
    days = tuple(first + timedelta(n) for n in range((last - first).days + 1))
    rows = sorted(
        (
            _lifecycle_row(bal, moment, line, tally.notices[bal])
            for bal, (moment, line) in tally.lifecycle.items()
        ),
        key=lambda r: (list(LIFECYCLE_FLAGS).index(r.flag) * -1, r.bal),
    )
    return Report(
        start=start,
        end=end,
        days=days,
        messages={d: tally.messages.get(d, Counter()) for d in days},
        refusals=tally.refusals,
        refused_senders=tally.senders,
        hidden_senders=tally.hidden,
        conversations={d: tally.conversations.get(d, Counter()) for d in days},
        closings=tally.closings,
        lifecycle=tuple(rows),
        auth_failures=tally.auth["failure"],
        auth_locked=tally.auth["locked"],
        lines=read,
        skipped=skipped,
    )


# Words and numbers as both renderings write them -------------------------
LEGEND = (
    "Messages : chaque transaction SMTP une fois, selon ce qu'elle est devenue ;"
    " un message dont tous les destinataires ont été refusés compte parmi les refusés.",
    "Refus : chaque décision de refus (à MAIL, à RCPT ou en fin de DATA) avec sa règle ;"
    " un message peut en compter plusieurs (un par destinataire refusé).",
    "Expéditeurs refusés : seules les BAL de la structure sont nommées ; les autres"
    " expéditeurs (patients, autres structures) sont comptés sans être nommés."
    " Aucune adresse de patient, aucun INS, objet ou nom de pièce jointe"
    " n'apparaît dans ce rapport.",
    "Cycle de vie des BAL : le dernier signalement de chaque BAL sur la période"
    " (60 jours sans connexion : dépubliée ; 10 mois : avertissement ; 1 an : à supprimer).",
)


def fr_number(value: int) -> str:
    # French groups thousands with a (narrow) no-break space.
    return f"{value:,}".replace(",", "\u202f")


def fr_date(day: date) -> str:
    return day.strftime("%d/%m/%Y")


def period_text(report: Report, tz: tzinfo | None = None) -> str:
    start, end = report.start.astimezone(tz), report.end.astimezone(tz)
    offset = end.strftime("%z")
    zone = f"UTC{offset[:3]}:{offset[3:]}" if offset else "UTC"
    return (
        f"du {fr_date(start.date())} {start:%H:%M} au {fr_date(end.date())} {end:%H:%M}"
        f" (heure {zone})"
    )


def rule_label(rule: str) -> str:
    return RULES.get(rule, "Autre règle")


def closing_label(how: str) -> str:
    return CONVERSATION_CLOSINGS.get(how, "Autre")


Cells = list[str | int]
LIFECYCLE_HEAD = (
    "BAL",
    "Type",
    "Signalement",
    "Dernière activité",
    "#Jours",
    "Signalé le",
    "#Avis",
)
MESSAGES_HEAD = ("Jour", *(f"#{label}" for label in OUTCOMES.values()), "#Total")


def message_rows(report: Report) -> list[Cells]:
    """The days with messages: the count of each outcome, then the total."""
    return [
        [fr_date(d), *(report.messages[d][k] for k in OUTCOMES), sum(report.messages[d].values())]
        for d in report.days
        if report.messages[d]
    ]


def lifecycle_rows(report: Report) -> list[Cells]:
    return [
        [
            r.bal,
            r.bal_type,
            LIFECYCLE_FLAGS[r.flag],
            fr_date(r.last_activity) if r.last_activity else "jamais",
            r.days_inactive if r.days_inactive is not None else "?",
            fr_date(r.reported),
            r.notices,
        ]
        for r in report.lifecycle
    ]
