"""Which rules run at which SMTP stage (docs/flow.md lists the same, kept true).

evaluate_* run the stage's rules in order; the first that fires decides. An
accepting verdict names the rules that were checked, so the log keeps the audit
trail of hits and misses. The outgoing side (role « submission ») and the
incoming side (role « inbound ») have their own lists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from mss_relay.core.directory import DirectoryMode, DirectorySettings
from mss_relay.core.facts import MailFacts, MessageFacts, RcptFacts, ScanResult
from mss_relay.core.filetypes import AttachmentRules
from mss_relay.core.mailbox import BalDirectory
from mss_relay.core.operator import OperatorList
from mss_relay.core.rules import (
    antivirus,
    availability,
    content,
    directory,
    inbound,
    null_sender,
    operator,
    recipients,
    sender,
    signing,
    size,
)
from mss_relay.core.verdict import Verdict
from mss_relay.core.xdm import XdmReport, XdmSettings, decision

INBOUND = "inbound"
Check = tuple[str, Callable[[], Verdict | None]]


@dataclass(frozen=True, slots=True)
class Limits:
    max_attachment_size: int
    max_message_size: int
    max_recipients: int
    # Destination domain -> its own maximum message size (bytes on the wire).
    per_domain: Mapping[str, int] = field(default_factory=dict)

    @property
    def wire_size_limit(self) -> int:
        return size.wire_size_limit(self.max_message_size)


def _first(stage: str, checks: list[Check]) -> Verdict:
    for _name, check in checks:
        verdict = check()
        if verdict is not None:
            return verdict
    return Verdict.accept(rule=stage, reason="checked: " + ",".join(n for n, _ in checks))


class Policy:
    def __init__(
        self,
        limits: Limits,
        bals: BalDirectory,
        *,
        require_patient_dkim: bool = False,
        attachments: AttachmentRules | None = None,
        directory: DirectorySettings | None = None,
        whitelist: OperatorList | None = None,
        require_operator_certificate: bool = False,
        accept_unscanned: bool = False,
        xdm: XdmSettings | None = None,
    ) -> None:
        self.limits = limits
        self.bals = bals
        self.require_patient_dkim = require_patient_dkim
        self.attachments = attachments or AttachmentRules()
        self.directory = directory or DirectorySettings()
        # The ANS liste blanche's domains (None: the « *.mssante.fr » rule).
        # A view that may be swapped for a newer list between two look-ups:
        # each look-up is one membership test, on one list.
        self.whitelist = whitelist
        # inbound.require_operator_certificate (config.py: only with a whitelist).
        self.require_operator_certificate = require_operator_certificate
        # antivirus.on_error: accept (config.py): a message clamd could not
        # scan is accepted (and the front warns), rather than 451.
        self.accept_unscanned = accept_unscanned
        # The xdm section (config.py): whether packages and X-MSS fields are
        # read at all, and what their findings become.
        self.xdm = xdm or XdmSettings()

    def evaluate_mail(self, facts: MailFacts) -> Verdict:
        limits = self.limits
        checks: list[Check] = [
            ("log_required", lambda: availability.log_required(facts.log_writable))
        ]
        incoming = facts.session.role == INBOUND
        if not facts.sender:  # <>: a notification, decided at the end of DATA
            checks.append(("null_sender", lambda: null_sender.null_sender_at_mail(facts, incoming)))
        elif incoming:
            checks.append(
                ("sender_trust_space", lambda: inbound.sender_in_trust_space(facts, self.whitelist))
            )
        else:
            checks.append(("sender_owned", lambda: sender.sender_owned(facts, self.bals)))
        if incoming and self.require_operator_certificate:
            # After the sender's domain (listed or refused): whose operators to compare with.
            checks.append(
                (
                    "operator_certificate",
                    lambda: operator.operator_certificate(facts, self.whitelist),
                )
            )
        checks.append(("declared_size", lambda: size.declared_size(facts, limits.max_message_size)))
        if facts.rate is not None:
            checks.append(("messages_per_minute", facts.rate))
        return _first("mail", checks)

    def evaluate_rcpt(self, facts: RcptFacts) -> Verdict:
        limits = self.limits
        checks: list[Check]
        if facts.mail.session.role == INBOUND:
            checks = [("recipient_is_bal", lambda: inbound.recipient_is_bal(facts, self.bals))]
        else:
            # Permanent causes first: a client told 452 would retry a recipient
            # that can never be accepted.
            checks = [
                ("trust_space", lambda: recipients.trust_space(facts, self.whitelist)),
                ("patient_matricule", lambda: recipients.patient_matricule(facts)),
                (
                    "per_domain_size",
                    lambda: size.per_domain_declared_size(facts, limits.per_domain),
                ),
            ]
            if self.directory.mode is not DirectoryMode.OFF:
                checks.append(
                    ("directory", lambda: directory.listed_in_directory(facts, self.directory.mode))
                )
        checks.append(
            ("max_recipients", lambda: recipients.max_recipients(facts, limits.max_recipients))
        )
        if facts.rate is not None:
            checks.append(("recipients_per_hour", facts.rate))
        if facts.mail.session.role != INBOUND:
            checks.append(("conversation_state", lambda: availability.conversation_state(facts)))
        return _first("rcpt", checks)

    def evaluate_message(self, facts: MessageFacts) -> Verdict:
        limits = self.limits
        checks: list[Check] = [
            ("mime_structure", lambda: content.mime_structure(facts)),
            (
                "attachment_size",
                lambda: size.attachment_sizes(
                    facts, limits.max_attachment_size, limits.max_message_size
                ),
            ),
        ]
        checks.append(
            (
                "dangerous_attachment",
                lambda: content.dangerous_attachments(facts, self.attachments),
            )
        )
        checks.append(("single_from", lambda: sender.single_from(facts)))
        incoming = facts.mail.session.role == INBOUND
        if not facts.mail.sender:
            checks.append(
                (
                    "null_sender",
                    lambda: null_sender.null_sender_at_data(facts, incoming, self.whitelist),
                )
            )
        if incoming:
            checks.append(
                ("patient_dkim", lambda: inbound.patient_dkim(facts, self.require_patient_dkim))
            )
            checks.append(
                (
                    "patient_conversation",
                    lambda: inbound.patient_conversation(facts, facts.conversation, self.bals),
                )
            )
        else:
            checks.append(("from_aligned", lambda: sender.from_aligned(facts, self.bals)))
            checks.append(
                ("per_domain_size", lambda: size.per_domain_size(facts, limits.per_domain))
            )
        # The log may have failed since MAIL: nothing is sent on without its trace.
        checks.append(("log_required", lambda: availability.log_required(facts.log_writable)))
        return _first("data", checks)

    def evaluate_wire_size(self, received: int) -> Verdict | None:
        """The milter, as the message comes (None while within the limit):
        the refusal is the message's, decided before its end."""
        return size.wire_size(received, self.limits.wire_size_limit)

    def evaluate_signature(self, failure: str | None) -> Verdict | None:
        """After signing (outgoing side): a message dkimpy could not sign
        (failure names its error) is refused; None when it was signed."""
        return signing.dkim_signable(failure)

    def evaluate_scan(self, scan: ScanResult) -> Verdict:
        """After the antivirus (a message the rules of DATA accepted, before
        it is signed): a refusal, or an acceptance saying whether the message
        was scanned (not, with antivirus.on_error: accept)."""
        stage = "antivirus"
        refused = antivirus.no_malware(scan, self.accept_unscanned)
        if refused is not None:
            return refused
        if scan.error is not None:
            reason = f"not scanned (on_error: accept): {scan.error}"
            return Verdict.accept(rule=stage, reason=reason)
        return Verdict.accept(rule=stage, reason="clean")

    def evaluate_xdm(self, report: XdmReport) -> Verdict:
        """After the antivirus (a message clamd passed: suspect attachments
        are not opened), before signing: the refusal its findings give in
        xdm.mode: refuse, or an acceptance naming them (warn, or findings
        that are only reported). The reason has the codes only, never an
        identifier or a name."""
        refused = decision(report, self.xdm)
        if refused is not None:
            return refused
        codes = ",".join(report.codes)
        return Verdict.accept(rule="xdm", reason=f"{self.xdm.mode.value}: {codes}")
