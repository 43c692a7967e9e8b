"""What an upstream step came to: accepted, failed for now, or failed for good.

The temporary/permanent split is in the type, so that no caller can mistake an
unreachable upstream for a refusal, or a refusal for a delivery.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from mss_relay.core.reply import Reply

_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})\s+(.*)$", re.DOTALL)
_UNPRINTABLE = re.compile(r"[^\x20-\x7e\u00a0-\uffff]+")


class Outcome(Enum):
    ACCEPTED = "accepted"
    TEMPFAILED = "tempfailed"
    PERMFAILED = "permfailed"


@dataclass(frozen=True, slots=True)
class StepResult:
    outcome: Outcome
    reply: Reply  # what the client is told
    upstream: str  # what the upstream said (or why it could not be reached), for the log

    @property
    def accepted(self) -> bool:
        return self.outcome is Outcome.ACCEPTED


def accepted(upstream: str) -> StepResult:
    return StepResult(Outcome.ACCEPTED, Reply(250, "2.0.0", "OK"), upstream)


def unreachable(reply: Reply, why: str) -> StepResult:
    return StepResult(Outcome.TEMPFAILED, reply, why)


def from_upstream_reply(code: int, message: str) -> StepResult:
    """Pass the upstream's own refusal on (its code, its enhanced code, its text),
    as a before-queue proxy does, marked as coming from the operator."""
    text = " ".join(_UNPRINTABLE.sub(" ", message).split())[:400]
    upstream = f"{code} {text}"
    match = _ENHANCED.match(text)
    if match and match.group(1)[0] == str(code)[0]:
        enhanced, text = match.group(1), match.group(2)
    else:
        enhanced = f"{str(code)[0]}.0.0"
    if not 400 <= code <= 599:
        # An upstream that answers nonsense is treated as unreachable: retry later.
        return StepResult(
            Outcome.TEMPFAILED, Reply(451, "4.4.0", "Réponse invalide de l'opérateur"), upstream
        )
    reply = Reply(code, enhanced, f"Refusé par le serveur de l'opérateur MSSanté : {text}")
    outcome = Outcome.TEMPFAILED if code < 500 else Outcome.PERMFAILED
    return StepResult(outcome, reply, upstream)
