"""Property tests (hypothesis) of issue 13, item 7: a control character in a
MAIL or RCPT argument, wherever it is, is refused as a syntax error, and
nothing aiosmtplib would refuse to send upstream (its ValueError, the 451 of
the issue) gets past the checks."""

from __future__ import annotations

from aiosmtplib.protocol import COMMAND_INJECTION_REGEX
from hypothesis import given, settings
from hypothesis import strategies as st

from mss_relay.core.addresses import has_control_character
from mss_relay.core.rules.syntax import path_syntax
from mss_relay.front.smtp import RelaySMTP, argument_syntax

CONTROLS = [chr(c) for c in range(32)] + ["\x7f"]
LOCAL = "jean.dupont"
DOMAIN = "ch-exemple.mssante.fr"


def _insert(text: str, position: int, char: str) -> str:
    position %= len(text) + 1
    return text[:position] + char + text[position:]


# Where the control character goes: (layout, its argument, refused as address?).
LAYOUTS = {
    "local_part": lambda c, p: (f"<{_insert(LOCAL, p, c)}@{DOMAIN}>", True),
    "domain": lambda c, p: (f"<{LOCAL}@{_insert(DOMAIN, p, c)}>", True),
    "quoted_local_part": lambda c, p: (f'<"{_insert("jean dupont", p, c)}"@{DOMAIN}>', True),
    "parameter": lambda c, p: (f"<{LOCAL}@{DOMAIN}> {_insert('SIZE=2048', p, c)}", False),
    "second_parameter": lambda c, p: (
        f"<{LOCAL}@{DOMAIN}> BODY=8BITMIME {_insert('SMTPUTF8', p, c)}",
        False,
    ),
}


@settings(max_examples=1000)
@given(
    st.sampled_from(sorted(LAYOUTS)),
    st.sampled_from(CONTROLS),
    st.integers(0, 40),
    st.sampled_from(["FROM:", "TO:"]),
)
def test_a_control_character_anywhere_is_refused_before_parsing(
    layout: str, control: str, position: int, keyword: str
) -> None:
    path, in_address = LAYOUTS[layout](control, position)
    if control == "\t" and not in_address:
        return  # white space between parameters, as aiosmtpd takes it
    verdict = argument_syntax(keyword + path)
    assert verdict is not None and verdict.reply is not None
    assert (verdict.reply.code, verdict.reply.enhanced) == (
        (501, "5.1.3") if in_address else (501, "5.5.4")
    )
    assert verdict.rule == "address_syntax"
    # The same without its control character passes.
    assert argument_syntax(keyword + path.replace(control, "")) is None


def _aiosmtpd_reads(arg: str) -> tuple[str, list[str]] | None:
    """The address and parameters aiosmtpd makes of « MAIL FROM:arg » (the
    line's ends stripped, the keyword's white space too), with the relay's
    parser (its fast path, or aiosmtpd's)."""
    rest = ("FROM:" + arg).encode("ascii").strip().decode("ascii")[5:].strip()
    smtp = RelaySMTP.__new__(RelaySMTP)  # only its parser, which needs no set-up
    smtp.local_part_limit = 64
    address, params = smtp._getaddr(rest)
    if not address or params is None:
        return None  # a syntax error aiosmtpd answers itself
    return address, params.upper().split()


PIECES = ["a", "@", ".", "<", ">", '"', " ", "\\", "(", ")", "SIZE=1", *CONTROLS]


@settings(max_examples=3000)
@given(st.lists(st.sampled_from(PIECES), max_size=14).map("".join))
def test_nothing_that_passes_the_checks_holds_what_aiosmtplib_refuses(arg: str) -> None:
    if argument_syntax("FROM:" + arg) is not None:
        return  # refused before aiosmtpd parses it
    assert not has_control_character(arg.replace("\t", ""))
    assert "\t" not in arg.lstrip(" \t").partition(">")[0]  # the path holds no tab
    read = _aiosmtpd_reads(arg)
    if read is None:
        return
    address, options = read
    if path_syntax(address, options) is not None:
        return  # refused by the session before the policy (a tab in the path)
    for sent in (address, *options):
        assert not COMMAND_INJECTION_REGEX.search(sent.encode("utf-8", "surrogateescape"))


@settings(max_examples=500)
@given(st.text(max_size=40))
def test_has_control_character_is_exactly_c0_and_del(text: str) -> None:
    assert has_control_character(text) == any(ord(c) < 32 or ord(c) == 127 for c in text)
