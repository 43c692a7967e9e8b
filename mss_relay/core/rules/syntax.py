"""The syntax of MAIL and RCPT arguments, checked before any rule of the policy."""

from __future__ import annotations

from collections.abc import Iterable

from mss_relay.core.addresses import has_control_character
from mss_relay.core.reply import ADDRESS_CONTROL_CHARACTER, PARAMETER_CONTROL_CHARACTER
from mss_relay.core.verdict import Verdict


def path_syntax(address: str, parameters: Iterable[str] = ()) -> Verdict | None:
    """RFC 5321 §4.1.2: a path and its ESMTP parameters are printable; a control
    character in either is a syntax error (501), never a fact for the policy to
    judge nor a string for the upstream to receive."""
    if has_control_character(address):
        return Verdict.reject(
            ADDRESS_CONTROL_CHARACTER,
            rule="address_syntax",
            reason="control character in the address",
        )
    if any(has_control_character(parameter) for parameter in parameters):
        return Verdict.reject(
            PARAMETER_CONTROL_CHARACTER,
            rule="address_syntax",
            reason="control character in a parameter",
        )
    return None
