"""What a delivered message changes in the patient conversations.

Computed here, purely; applied by the state store only once the message has
been delivered (a message that was not delivered opens or closes nothing).
"""

from __future__ import annotations

from mss_relay.core.addresses import is_patient_address, normalize_address
from mss_relay.core.conversation import (
    Change,
    ConversationFacts,
    Status,
    closing,
    patient_sender,
    reply_to_address,
)
from mss_relay.core.facts import MessageFacts
from mss_relay.core.mailbox import Bal, BalDirectory


def outgoing_changes(bal: Bal, facts: MessageFacts, message_id: str) -> list[Change]:
    """A professional's message to patients opens (or continues) one conversation
    per patient, and closes it on [FIN] or when the BAL closes automatically."""
    if not facts.mail.sender:
        return []  # a notification (<>) opens, continues and closes nothing
    how = closing(facts.info) or ("auto_close" if bal.auto_close else None)
    reply_to = reply_to_address(facts.info)
    return [
        Change(
            bal=normalize_address(bal.address),
            patient=normalize_address(recipient),
            message_id=message_id,
            direction="out",
            close=how,
            reply_to=reply_to,
        )
        for recipient in dict.fromkeys(facts.recipients)
        if is_patient_address(recipient)
    ]


def inbound_change(
    facts: MessageFacts, conversation: ConversationFacts | None, bals: BalDirectory
) -> Change | None:
    """An accepted patient message continues its conversation, or (officine)
    opens one with the BAL that lets patients write first."""
    patient = patient_sender(facts.mail.sender, facts.info)
    if patient is None or not facts.mail.sender:
        # <>: a read receipt, a delivery report or an automatic reply is no
        # word of the patient's: it neither opens nor continues a conversation.
        return None
    message_id = facts.info.message_id
    if conversation is not None and conversation.status is Status.OPEN and conversation.bal:
        return Change(conversation.bal, patient, message_id, "in")
    for recipient in facts.recipients:
        bal = bals.get(recipient)
        if bal is not None and bal.patients_may_initiate:
            return Change(
                normalize_address(bal.address), patient, message_id, "in", opened_by_patient=True
            )
    return None
