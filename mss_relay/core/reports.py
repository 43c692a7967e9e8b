"""Automatic messages: the ones the null reverse-path is for.

RFC 5321 §4.5.5: delivery status notifications travel with « MAIL FROM:<> »,
and so do read receipts (RFC 8098 §2.1) and automatic replies (RFC 3834 §3.3),
so that they never cause a notification in turn. Seed 004: the professional
asks the patient's read receipt (« accusé de lecture »), and the operator's
automatic notice of a closed patient mailbox comes back that way. What kind of
automatic message a message is, is read from its content.
"""

from __future__ import annotations

from enum import Enum

from mss_relay.core.conversation import message_ids, references
from mss_relay.core.message import MessageInfo


class Automatic(Enum):
    DSN = "dsn"  # multipart/report; report-type=delivery-status (RFC 3464)
    MDN = "mdn"  # multipart/report; report-type=disposition-notification (RFC 8098)
    AUTO_REPLY = "auto-replied"  # Auto-Submitted: auto-replied (RFC 3834 §5.1)
    AUTO_GENERATED = "auto-generated"  # any other Auto-Submitted value but « no »


_REPORTS = {"delivery-status": Automatic.DSN, "disposition-notification": Automatic.MDN}
# What the outgoing side sends with a null sender: the reports and automatic
# replies (the absence message of seed 002) a mailbox server produces.
OUTGOING = frozenset({Automatic.DSN, Automatic.MDN, Automatic.AUTO_REPLY})


def automatic_kind(info: MessageInfo) -> Automatic | None:
    """The kind of automatic message this is, or None for any other message."""
    report = _REPORTS.get(info.report_type or "")
    if report is not None:
        return report
    # RFC 3834 §5: « auto-submitted = "auto-submitted:" [CFWS] auto-submitted-value
    # *(";" ...) »; « no » (the default) says a person sent it.
    value = (info.auto_submitted or "").split(";", 1)[0].strip().lower()
    if not value or value == "no":
        return None
    return Automatic.AUTO_REPLY if value == "auto-replied" else Automatic.AUTO_GENERATED


def is_null_sender_mdn(sender: str, info: MessageInfo) -> bool:
    """A read receipt as RFC 8098 §2.1 sends it: with a null reverse-path."""
    return not sender and automatic_kind(info) is Automatic.MDN


def reported_ids(info: MessageInfo) -> list[str]:
    """The Message-IDs a read receipt reports on: its Original-Message-ID
    (RFC 8098 §3.2.5) when it gives one, else those it replies to
    (In-Reply-To, References), which mail clients that omit the field give."""
    return message_ids(info.original_message_id) or references(info)
