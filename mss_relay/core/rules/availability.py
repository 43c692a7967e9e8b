"""What the relay needs to keep its word: the audit log and the conversation state.

Neither is a fault of the message: both refusals are temporary, and the relay
resumes by itself once the log or the state can be written again.
"""

from __future__ import annotations

from mss_relay.core.addresses import is_patient_address
from mss_relay.core.facts import RcptFacts
from mss_relay.core.reply import LOG_UNAVAILABLE, STATE_UNAVAILABLE
from mss_relay.core.verdict import Verdict


def log_required(log_writable: bool) -> Verdict | None:
    """log.required: no new transaction, and no message sent on, while the
    audit log cannot be written (checked at MAIL and at the end of DATA)."""
    if log_writable:
        return None
    return Verdict.tempfail(
        LOG_UNAVAILABLE, rule="log_required", reason="the log cannot be written"
    )


def conversation_state(facts: RcptFacts) -> Verdict | None:
    """A professional's message to a patient opens or continues a
    conversation: not while the state cannot record it (deleted under the
    relay, writes piling up), rather than deliver it unrecorded."""
    why = facts.state_unavailable
    if why is None or not is_patient_address(facts.recipient):
        return None
    return Verdict.tempfail(
        STATE_UNAVAILABLE, rule="conversation_state", reason=f"state unavailable ({why})"
    )
