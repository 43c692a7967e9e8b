"""The Annuaire Santé at RCPT, as the core sees it: the settings, whether a
recipient is looked up, and the answer the session brings back.

The look-up itself is I/O (the state database): the session does it and
hands the answer in as a fact (RcptFacts.directory), like the conversation
look-up. Seeds 000 §5 and 003: the sender checks the recipient in the
Annuaire Santé (homonyms); the relay can do it for every outgoing recipient.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from mss_relay.core.addresses import domain_of, is_patient_address, normalize_address


class DirectoryMode(StrEnum):
    OFF = "off"  # never looked up
    WARN = "warn"  # an unlisted recipient is accepted, and logged
    REFUSE = "refuse"  # an unlisted recipient is refused (550 5.1.1)


@dataclass(frozen=True, slots=True)
class DirectorySettings:
    mode: DirectoryMode = DirectoryMode.OFF
    # Normalized addresses (with « @ ») and domains (without): never looked
    # up; a domain covers its sub-domains too.
    also_accept: frozenset[str] = frozenset()

    def looks_up(self, recipient: str) -> bool:
        """Whether this outgoing recipient is looked up: not with mode off,
        not a patient (patients are not in the Annuaire Santé), not one of
        also_accept."""
        if self.mode is DirectoryMode.OFF or is_patient_address(recipient):
            return False
        if normalize_address(recipient) in self.also_accept:
            return False
        labels = domain_of(recipient).split(".")
        return not any(".".join(labels[i:]) in self.also_accept for i in range(len(labels)))


@dataclass(frozen=True, slots=True)
class DirectoryAnswer:
    """The look-up's outcome: listed, or not, or (listed None) the database
    could not answer, and why (logged, never sent)."""

    listed: bool | None
    unavailable: str | None = None

    @property
    def label(self) -> str:
        """The decision line's `directory` field."""
        if self.listed is None:
            return "unavailable"
        return "listed" if self.listed else "unlisted"
