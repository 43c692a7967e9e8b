"""A verdict: what the policy decided, the reply to send, and why.

The reason is for the log only; it is never sent to the client (it may name
configuration). The reply is what the client sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from mss_relay.core.reply import Reply


class Action(Enum):
    ACCEPT = "accept"
    TEMPFAIL = "tempfail"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    reply: Reply | None
    rule: str
    reason: str = ""

    @classmethod
    def accept(cls, rule: str = "policy", reason: str = "") -> Verdict:
        return cls(Action.ACCEPT, None, rule, reason)

    @classmethod
    def reject(cls, reply: Reply, *, rule: str, reason: str = "") -> Verdict:
        if reply.code < 500:
            raise ValueError(f"a rejection needs a 5xx reply, not {reply.code}")
        return cls(Action.REJECT, reply, rule, reason)

    @classmethod
    def tempfail(cls, reply: Reply, *, rule: str, reason: str = "") -> Verdict:
        if not reply.is_temporary:
            raise ValueError(f"a temporary failure needs a 4xx reply, not {reply.code}")
        return cls(Action.TEMPFAIL, reply, rule, reason)

    @property
    def accepted(self) -> bool:
        return self.action is Action.ACCEPT
