"""Findings of the content checks on structured health mail (issue 19: IHE-XDM
packages, the X-MSS headers), and the decision an operator's mode makes of them.

A check reports findings; a separate step decides (maddy's check/action
split): `xdm.mode: refuse` refuses on the first refusable finding, `warn`
only logs them (the default: structures turn refusal on once their software is
known to send clean packages), `off` does not look. The log gets each
finding's code and detail, never a patient's identifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from mss_relay.core.reply import Reply
from mss_relay.core.verdict import Verdict


class Mode(Enum):
    REFUSE = "refuse"
    WARN = "warn"
    OFF = "off"


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem found. code: stable, for logs, metrics and tests. reply:
    the refusal it gives in refuse mode; None for a finding that is only
    reported (logged) whatever the mode. detail: for the log only, never
    health data (no INS, no file name, no header value)."""

    code: str
    reply: Reply | None
    detail: str = ""

    @property
    def refusable(self) -> bool:
        return self.reply is not None


def decide(findings: tuple[Finding, ...], mode: Mode, *, rule: str = "xdm") -> Verdict | None:
    """The refusal the findings give in this mode, or None (accept: the
    caller logs the findings in every mode but off). The first refusable
    finding names the refusal; the reason lists every code (the log's)."""
    if mode is not Mode.REFUSE:
        return None
    refusable = [f for f in findings if f.reply is not None]
    if not refusable:
        return None
    first = refusable[0]
    assert first.reply is not None
    return Verdict.reject(first.reply, rule=rule, reason=",".join(f.code for f in findings))
