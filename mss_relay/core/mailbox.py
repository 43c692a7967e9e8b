"""Boîtes aux lettres (BAL) and who may use them.

Seeds 001 and 003: a BAL is nominative (one professional), organisationnelle
(a service shared by several people) or applicative (a software connector,
typically a DPI). Accounts are strictly personal (seed 000 §10): a user sends
only from the BALs they were given.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from mss_relay.core.addresses import normalize_address


class BalType(Enum):
    NOMINATIVE = "nominative"
    ORGANISATIONNELLE = "organisationnelle"
    APPLICATIVE = "applicative"


@dataclass(frozen=True, slots=True)
class Bal:
    address: str
    type: BalType
    users: frozenset[str]
    # The officine exception (seed 001): patients may write first, for a
    # digital prescription.
    patients_may_initiate: bool = False
    # Close every conversation right after each message this BAL sends
    # (typically an applicative no_reply box; seed 004).
    auto_close: bool = False


class BalDirectory:
    """Look-up of the structure's BALs by normalized address."""

    def __init__(self, bals: Iterable[Bal]) -> None:
        self._by_address: Mapping[str, Bal] = {normalize_address(b.address): b for b in bals}

    def get(self, address: str) -> Bal | None:
        return self._by_address.get(normalize_address(address))

    def may_send_as(self, user: str | None, address: str) -> bool:
        bal = self.get(address)
        return bal is not None and user is not None and user in bal.users

    def __len__(self) -> int:
        return len(self._by_address)
