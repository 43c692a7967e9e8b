"""The BAL lifecycle, purely: which thresholds an inactive BAL has reached,
and the French notice that tells it so.

Seeds 000 §14, 001 and 002 §4: a BAL without a connection for 60 days is
unpublished from the Annuaire Santé; after one year it is deleted, and its
user is warned two months before. « Sans connexion »: inactivity counts from
a BAL's last connection, the latest of its users' successful AUTH and the
last message sent from it (sent by an authenticated user; behind the milter,
where Postfix does the AUTH, the message stands in for it). Mail received
is no connection: a dormant BAL keeps receiving (the relay's own notices
among it), so its last message received is kept for information only. A
BAL never connected counts from the day the relay first saw it in its
configuration. No I/O here: the dates come in, flags and bytes go out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from enum import StrEnum

from mss_relay.core.mailbox import Bal

UNPUBLISH_DAYS = 60  # « dépubliée de l'Annuaire » (seed 000 §14)
DELETE_DAYS = 365  # « supprimée définitivement ... un an »
# « Une alerte est envoyée deux mois avant »: two months (61 days) before the
# year is out, i.e. past ten months, as a fixed number of days so that the
# flag does not move with the calendar.
WARNING_DAYS = DELETE_DAYS - 61


class Flag(StrEnum):
    UNPUBLISHED = "unpublished"
    DELETION_WARNING = "deletion_warning"
    TO_DELETE = "to_delete"


THRESHOLDS: tuple[tuple[Flag, int], ...] = (
    (Flag.UNPUBLISHED, UNPUBLISH_DAYS),
    (Flag.DELETION_WARNING, WARNING_DAYS),
    (Flag.TO_DELETE, DELETE_DAYS),
)

FLAG_TEXT: dict[Flag, str] = {
    Flag.UNPUBLISHED: "inactive 60 days: dépubliée de l'Annuaire",
    Flag.DELETION_WARNING: "suppression dans moins de 2 mois",
    Flag.TO_DELETE: "à supprimer (1 an)",
}

# The thresholds that get a notice: those before the deadline (a notice of a
# deletion already due would warn of nothing).
NOTICE_FLAGS = (Flag.UNPUBLISHED, Flag.DELETION_WARNING)


@dataclass(frozen=True, slots=True)
class Activity:
    """What the state database knows of one BAL (None: never)."""

    first_seen: datetime | None = None
    last_auth: datetime | None = None  # the latest AUTH of any of its users
    last_sent: datetime | None = None
    last_received: datetime | None = None  # information only: not a connection

    @property
    def last_activity(self) -> datetime | None:
        """The last connection: the latest AUTH or message sent (the name
        is the one `mss-relay bals --json` and `bal_lifecycle` have always
        used for the date the flags count from)."""
        dates = [d for d in (self.last_auth, self.last_sent) if d is not None]
        return max(dates) if dates else None

    @property
    def reference(self) -> datetime | None:
        """Where inactivity counts from: the last connection, or else the
        day the BAL was first seen (None: the relay has not seen it yet)."""
        return self.last_activity or self.first_seen


@dataclass(frozen=True, slots=True)
class BalStatus:
    bal: Bal
    activity: Activity
    days_inactive: int | None  # None: not seen by the relay yet
    flags: tuple[Flag, ...]  # every threshold reached, in order

    @property
    def flag(self) -> Flag | None:
        """The highest threshold reached."""
        return self.flags[-1] if self.flags else None

    @property
    def deletion_date(self) -> datetime | None:
        reference = self.activity.reference
        return reference + timedelta(days=DELETE_DAYS) if reference else None


def flags_for(days_inactive: int) -> tuple[Flag, ...]:
    return tuple(flag for flag, days in THRESHOLDS if days_inactive >= days)


def status(bal: Bal, activity: Activity, now: datetime) -> BalStatus:
    reference = activity.reference
    if reference is None:
        return BalStatus(bal, activity, None, ())
    # A reference in the future (a clock set back) is no inactivity.
    days = max(0, (now - reference).days)
    return BalStatus(bal, activity, days, flags_for(days))


def notice_due(current: BalStatus, sent: Iterable[Flag]) -> Flag | None:
    """The notice to send now, if any: the highest threshold reached before
    the deadline whose notice (or a later one's) was not sent for this
    period of inactivity. A relay down at 60 days and back at 305 sends the
    deletion warning only, which says that the BAL is unpublished too."""
    if Flag.TO_DELETE in current.flags:
        return None
    done = set(sent)
    reached = [f for f in NOTICE_FLAGS if f in current.flags]
    if not reached:
        return None
    highest = reached[-1]
    if any(NOTICE_FLAGS.index(f) >= NOTICE_FLAGS.index(highest) for f in done if f in NOTICE_FLAGS):
        return None
    return highest


def _day(moment: datetime) -> str:
    return moment.strftime("%d/%m/%Y")


def notice_text(current: BalStatus, flag: Flag) -> tuple[str, str]:
    """(subject, body) of the notice, in French (the people who read it)."""
    address = current.bal.address
    kind = current.bal.type.value  # the seeds' own French words
    reference = current.activity.reference
    deletion = current.deletion_date
    assert reference is not None and deletion is not None and current.days_inactive is not None
    if current.activity.last_activity is None:
        since = (
            "Aucune connexion n'a été constatée sur cette BAL depuis sa mise en service"
            f" (le {_day(reference)})."
        )
    else:
        since = f"La dernière connexion constatée sur cette BAL date du {_day(reference)}."
    if flag is Flag.UNPUBLISHED:
        subject = f"BAL MSSanté {address} : inactive depuis 60 jours, dépubliée de l'Annuaire"
        news = (
            f"Votre boîte aux lettres MSSanté {kind} {address} n'a connu aucune connexion"
            f" depuis {current.days_inactive} jours. Une BAL sans connexion pendant 60 jours"
            " est dépubliée de l'Annuaire Santé : vos correspondants ne la trouvent plus"
            " dans l'annuaire national."
        )
    else:
        subject = f"BAL MSSanté {address} : suppression dans moins de 2 mois"
        news = (
            f"Votre boîte aux lettres MSSanté {kind} {address} n'a connu aucune connexion"
            f" depuis {current.days_inactive} jours. Elle est déjà dépubliée de l'Annuaire"
            " Santé (60 jours sans connexion) et elle sera supprimée définitivement dans"
            f" moins de 2 mois, le {_day(deletion)}, avec les messages qu'elle contient."
        )
    body = "\n\n".join(
        (
            "Bonjour,",
            news,
            since,
            "Règles de la Messagerie Sécurisée de Santé :\n"
            "- 60 jours sans connexion : la BAL est dépubliée de l'Annuaire Santé ;\n"
            "- 1 an sans connexion : la BAL est supprimée définitivement ;\n"
            "- une alerte est envoyée deux mois avant la suppression.",
            "Que faire ? Pour conserver cette BAL, connectez-vous-y avant le"
            f" {_day(deletion)} : ouvrez votre logiciel de messagerie (ou votre logiciel"
            " métier) avec votre identifiant et consultez ou envoyez un message. La"
            " connexion suffit à la garder active. Si cette BAL n'est plus utile, vous"
            " n'avez rien à faire ; si elle l'est pour un collègue, informez le responsable"
            " de votre structure.",
            "Ce message est envoyé automatiquement ; merci de ne pas y répondre.",
        )
    )
    return subject, body + "\n"


def notice(current: BalStatus, flag: Flag, *, sender: str, now: datetime, message_id: str) -> bytes:
    """The notice as an RFC 5322 message, CRLF line ends, ready for DATA."""
    subject, body = notice_text(current, flag)
    message = EmailMessage(policy=SMTP)
    message["Date"] = format_datetime(now)
    message["Message-ID"] = message_id
    message["From"] = sender
    message["To"] = current.bal.address
    message["Subject"] = subject
    # RFC 3834: automatic, so that no auto-reply answers it.
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(body, cte="quoted-printable")
    return message.as_bytes()
