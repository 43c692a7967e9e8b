"""The arguments of MAIL and RCPT, read before and instead of aiosmtpd's
parser where it is slow or lets through what it should not."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from mss_relay.core.addresses import PLAIN_MAILBOX, has_control_character
from mss_relay.core.dsn import mentions, split_dsn
from mss_relay.core.rules.syntax import path_syntax
from mss_relay.core.verdict import Verdict


def dsn_apart(
    arg: str,
    keyword: str,
    keywords: Sequence[str],
    getaddr: Callable[[str], tuple[str | None, str | None]],
) -> tuple[str, tuple[str, ...]] | Verdict:
    """A MAIL or RCPT argument without its DSN parameters (RFC 3461), and
    them as written; or the refusal of a bad one. aiosmtpd upper-cases the
    parameters it parses and refuses those it does not know: the DSN ones
    are taken out before, wherever they stand among the others. An argument
    aiosmtpd refuses anyway (no path it can read) goes to it unchanged."""
    if not mentions(arg, keywords) or arg[: len(keyword)].upper() != keyword:
        return arg, ()  # nearly always: no parsing
    body = arg[len(keyword) :].strip()
    address, params = getaddr(body)  # the same parser aiosmtpd then uses
    if not address or not params:
        return arg, ()
    split = split_dsn(params.split(), keywords)
    if isinstance(split, Verdict):
        return split
    # params is what follows the path in body (both parsers give the rest as is).
    head = body[: len(body) - len(params)]
    return keyword + head + " ".join(split.others), split.dsn


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
