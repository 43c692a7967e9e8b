"""Which rules run at which SMTP stage (docs/flow.md lists the same, kept true).

evaluate_* run the stage's rules in order; the first that fires decides. An
accepting verdict names the rules that were checked, so the log keeps the audit
trail of hits and misses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mss_relay.core.facts import MailFacts, MessageFacts, RcptFacts
from mss_relay.core.mailbox import BalDirectory
from mss_relay.core.rules import recipients, sender, size
from mss_relay.core.verdict import Verdict


@dataclass(frozen=True, slots=True)
class Limits:
    max_attachment_size: int
    max_message_size: int
    max_recipients: int

    @property
    def wire_size_limit(self) -> int:
        return size.wire_size_limit(self.max_message_size)


def _first(stage: str, checks: Sequence[tuple[str, Callable[[], Verdict | None]]]) -> Verdict:
    for _name, check in checks:
        verdict = check()
        if verdict is not None:
            return verdict
    return Verdict.accept(rule=stage, reason="checked: " + ",".join(n for n, _ in checks))


class Policy:
    def __init__(self, limits: Limits, bals: BalDirectory) -> None:
        self.limits = limits
        self.bals = bals

    def evaluate_mail(self, facts: MailFacts) -> Verdict:
        return _first(
            "mail",
            [
                ("sender_owned", lambda: sender.sender_owned(facts, self.bals)),
                (
                    "declared_size",
                    lambda: size.declared_size(facts, self.limits.max_message_size),
                ),
            ],
        )

    def evaluate_rcpt(self, facts: RcptFacts) -> Verdict:
        return _first(
            "rcpt",
            [
                # Permanent causes first: a client told 452 would retry a
                # recipient that can never be accepted.
                ("trust_space", lambda: recipients.trust_space(facts)),
                ("patient_matricule", lambda: recipients.patient_matricule(facts)),
                (
                    "max_recipients",
                    lambda: recipients.max_recipients(facts, self.limits.max_recipients),
                ),
            ],
        )

    def evaluate_message(self, facts: MessageFacts) -> Verdict:
        return _first(
            "data",
            [
                (
                    "attachment_size",
                    lambda: size.attachment_sizes(
                        facts, self.limits.max_attachment_size, self.limits.max_message_size
                    ),
                ),
            ],
        )
