"""DSN parameters (RFC 3461 §4) of MAIL (RET, ENVID) and RCPT (NOTIFY, ORCPT):
read from the parameters as the client wrote them, checked, and kept as
written, since xtext is case-sensitive (« +2B » is « + », and an ENVID is the
client's own token, compared byte for byte when the DSN comes back)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mss_relay.core.reply import (
    DSN_ENVID_INVALID,
    DSN_ENVID_TOO_LONG,
    DSN_NOTIFY_INVALID,
    DSN_ORCPT_INVALID,
    DSN_ORCPT_TOO_LONG,
    DSN_RET_INVALID,
    Reply,
    dsn_repeated,
)
from mss_relay.core.verdict import Verdict

MAIL_KEYWORDS = ("RET", "ENVID")
RCPT_KEYWORDS = ("NOTIFY", "ORCPT")

# RFC 3461 §4: xtext = *( xchar / hexchar ); xchar is "!" to "~" but "+" and
# "="; hexchar is "+" and two upper-case hexadecimal digits.
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")
# RFC 3461 §4.2: addr-type is an atom (RFC 5322 atext), e.g. « rfc822 ».
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
_NOTIFY_EVENTS = frozenset({"SUCCESS", "FAILURE", "DELAY"})
# RFC 3461 §4.4.
ENVID_LIMIT = 100
# RFC 3461 §4.2: an original recipient address of 500 characters at most
# (the xtext checked here, a bound on what is passed on either way).
ORCPT_LIMIT = 500

# The transaction line's `dsn` field, for a transaction that had DSN parameters.
PASSED = "passed"
DROPPED = "dropped: upstream does not advertise DSN"


def fate(upstream_has_dsn: bool) -> str:
    return PASSED if upstream_has_dsn else DROPPED


def is_xtext(text: str) -> bool:
    return _XTEXT.fullmatch(text) is not None


def xtext_decode(text: str) -> str:
    """The characters an xtext stands for (RFC 3461 §4): for tests and the
    curious; the relay passes the xtext itself on."""
    return re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m[1], 16)), text)


def _ret(value: str) -> bool:
    return value.upper() in ("FULL", "HDRS")


def _envid(value: str) -> bool:
    # RFC 5321 §4.1.2: an esmtp-value is one character at least.
    return bool(value) and is_xtext(value)


def _notify(value: str) -> bool:
    events = value.upper().split(",")
    if events == ["NEVER"]:
        return True
    return all(event in _NOTIFY_EVENTS for event in events)


def _orcpt(value: str) -> bool:
    # The address is not held to addr-type's syntax (RFC 3461 §4.2): only xtext.
    addr_type, semicolon, address = value.partition(";")
    return (
        bool(semicolon and address) and _ATOM.fullmatch(addr_type) is not None and is_xtext(address)
    )


_CHECKS: dict[str, tuple[Callable[[str], bool], Reply]] = {
    "RET": (_ret, DSN_RET_INVALID),
    "ENVID": (_envid, DSN_ENVID_INVALID),
    "NOTIFY": (_notify, DSN_NOTIFY_INVALID),
    "ORCPT": (_orcpt, DSN_ORCPT_INVALID),
}


@dataclass(frozen=True, slots=True)
class DsnSplit:
    """A command's parameters: its DSN ones (« KEYWORD=value », the keyword in
    upper case, the value as written) and the others, untouched."""

    dsn: tuple[str, ...]
    others: tuple[str, ...]


def _refused(reply: Reply, reason: str) -> Verdict:
    return Verdict.reject(reply, rule="dsn_syntax", reason=reason)


def split_dsn(words: Sequence[str], keywords: Sequence[str]) -> DsnSplit | Verdict:
    """The DSN parameters among a command's parameters (words split on white
    space), checked: a refusal (501 5.5.4) for a bad or repeated one."""
    dsn: list[str] = []
    others: list[str] = []
    seen: set[str] = set()
    for word in words:
        name, _, value = word.partition("=")
        keyword = name.upper()
        if keyword not in keywords:
            others.append(word)
            continue
        if keyword in seen:
            return _refused(dsn_repeated(keyword), f"{keyword} repeated")
        seen.add(keyword)
        check, reply = _CHECKS[keyword]
        if not check(value):
            return _refused(reply, f"{keyword} value is not RFC 3461 syntax")
        if keyword == "ENVID" and len(value) > ENVID_LIMIT:
            return _refused(DSN_ENVID_TOO_LONG, f"ENVID of {len(value)} characters")
        if keyword == "ORCPT" and len(value) > ORCPT_LIMIT:
            return _refused(DSN_ORCPT_TOO_LONG, f"ORCPT of {len(value)} characters")
        dsn.append(f"{keyword}={value}")
    return DsnSplit(tuple(dsn), tuple(others))


def mentions(arg: str, keywords: Sequence[str]) -> bool:
    """Whether a MAIL or RCPT argument may hold one of these parameters: the
    cheap test that spares the rest of commands (nearly all) any parsing."""
    upper = arg.upper()
    return any(f"{keyword}=" in upper for keyword in keywords)
