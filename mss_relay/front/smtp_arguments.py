"""The arguments of MAIL and RCPT, read before and instead of aiosmtpd's
parser where it is slow or lets through what it should not."""

from __future__ import annotations

import re

from mss_relay.core.addresses import PLAIN_MAILBOX, has_control_character
from mss_relay.core.rules.syntax import path_syntax
from mss_relay.core.verdict import Verdict

# DSN parameters (RFC 3461) that clients send although we do not offer DSN:
# tolerated and dropped rather than refused.
DSN_RCPT_PARAMS = ("NOTIFY=", "ORCPT=")
DSN_MAIL_PARAMS = ("RET=", "ENVID=")


def strip_params(arg: str | None, prefixes: tuple[str, ...]) -> str | None:
    """Drop trailing ESMTP parameters we tolerate but do not implement."""
    if not arg:
        return arg
    words = arg.split(" ")
    while len(words) > 1 and words[-1].upper().startswith(prefixes):
        words.pop()
    return " ".join(words)


_TRAILING_DOT = re.compile(r"^((?:TO|FROM):\s*<[^<>]*@[^<>]*?)\.+>", re.IGNORECASE)


def without_trailing_dot(arg: str | None) -> str | None:
    """« x@ch.mssante.fr. » (the FQDN form) is « x@ch.mssante.fr »: aiosmtpd's
    parser refuses the dot, and the upstream should not see it either."""
    if not arg or ".>" not in arg:  # nearly always: no regex substitution to run
        return arg
    return _TRAILING_DOT.sub(r"\1>", arg)


# What nearly every MAIL and RCPT carries: <dot-atom@host.name>.
_PLAIN_ADDRESS = re.compile(rf"[ \t]*<({PLAIN_MAILBOX})>")


def argument_syntax(arg: str) -> Verdict | None:
    """path_syntax() on a MAIL or RCPT argument as sent (« FROM:<path> params »).
    A tab is white space before the path and between parameters, as aiosmtpd
    and plain_address() take it; inside the path it is refused like the rest."""
    if not has_control_character(arg):
        return None  # nearly always
    keyword, colon, rest = arg.partition(":")
    path, bracket, parameters = rest.lstrip(" \t").partition(">")
    return path_syntax(keyword + colon + path + bracket, (parameters.replace("\t", " "),))


def plain_address(arg: str, local_part_limit: int) -> tuple[str | None, str | None] | None:
    """aiosmtpd's _getaddr() for a plain address in angle brackets, without
    the email package's RFC 5322 tokenizer (a tenth of the relay's CPU per
    small message); None for anything else, which aiosmtpd parses."""
    match = _PLAIN_ADDRESS.match(arg)
    if match is None:
        return None
    rest = arg[match.end() :].lstrip(" \t")  # as the tokenizer drops folding white space
    if rest.startswith("("):
        return None  # a comment, which the tokenizer drops too
    address = match[1]
    if local_part_limit and len(address.rpartition("@")[0]) > local_part_limit:
        return None, None
    return address, rest


def null_path(address: str) -> str:
    """RFC 5321 §4.1.1.2 « MAIL FROM:<> », which aiosmtpd's parser hands on
    as the address « <> » (a sender the rules would quote as « <<>> »)."""
    return "" if address.strip() == "<>" else address
