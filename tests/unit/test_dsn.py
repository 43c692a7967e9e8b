"""The DSN parameters' parser (RFC 3461 §4): table tests and properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mss_relay.core.dsn import (
    ENVID_LIMIT,
    MAIL_KEYWORDS,
    RCPT_KEYWORDS,
    DsnSplit,
    is_xtext,
    split_dsn,
    xtext_decode,
)
from mss_relay.core.verdict import Verdict
from mss_relay.front.smtp_arguments import dsn_apart, plain_address


def _getaddr(arg: str) -> tuple[str | None, str | None]:
    found = plain_address(arg, 64)
    return found if found is not None else (None, None)


def xtext_encode(text: str) -> str:
    """RFC 3461 §4: "+", "=" and characters outside "!".."~" as +HH."""
    return "".join(c if 33 <= ord(c) <= 126 and c not in "+=" else f"+{ord(c):02X}" for c in text)


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("", True),
        ("abc", True),
        ("Ab+2Bc", True),
        ("a+2b", False),  # hex digits in upper case only
        ("a+2", False),
        ("a+G0", False),
        ("a=b", False),
        ("a b", False),
        ("é", False),
        ("<x@y>", True),
    ],
)
def test_xtext(text: str, valid: bool) -> None:
    assert is_xtext(text) is valid


@pytest.mark.parametrize(
    ("words", "keywords", "expected"),
    [
        (["SIZE=10"], MAIL_KEYWORDS, DsnSplit((), ("SIZE=10",))),
        (
            ["ret=hdrs", "SIZE=10", "envid=Ab+2B"],
            MAIL_KEYWORDS,
            DsnSplit(("RET=hdrs", "ENVID=Ab+2B"), ("SIZE=10",)),
        ),
        (["NOTIFY=never"], RCPT_KEYWORDS, DsnSplit(("NOTIFY=never",), ())),
        (
            ["NOTIFY=SUCCESS,FAILURE,DELAY", "ORCPT=rfc822;A+2B@x"],
            RCPT_KEYWORDS,
            DsnSplit(("NOTIFY=SUCCESS,FAILURE,DELAY", "ORCPT=rfc822;A+2B@x"), ()),
        ),
        # RCPT's keywords on MAIL are not DSN's: left to aiosmtpd (its 555).
        (["NOTIFY=NEVER"], MAIL_KEYWORDS, DsnSplit((), ("NOTIFY=NEVER",))),
    ],
)
def test_split(words: list[str], keywords: tuple[str, ...], expected: DsnSplit) -> None:
    assert split_dsn(words, keywords) == expected


@pytest.mark.parametrize(
    ("words", "keywords", "text"),
    [
        (["RET=ALL"], MAIL_KEYWORDS, "RET invalide"),
        (["RET"], MAIL_KEYWORDS, "RET invalide"),
        (["RET=FULL", "ret=FULL"], MAIL_KEYWORDS, "RET répété"),
        (["ENVID="], MAIL_KEYWORDS, "ENVID invalide"),
        (["ENVID=a+2b"], MAIL_KEYWORDS, "ENVID invalide"),
        (["ENVID=" + "a" * (ENVID_LIMIT + 1)], MAIL_KEYWORDS, "ENVID trop long"),
        (["NOTIFY=NEVER,DELAY"], RCPT_KEYWORDS, "NOTIFY invalide"),
        (["NOTIFY="], RCPT_KEYWORDS, "NOTIFY invalide"),
        (["NOTIFY=SUCCESS,"], RCPT_KEYWORDS, "NOTIFY invalide"),
        (["ORCPT=;a@b"], RCPT_KEYWORDS, "ORCPT invalide"),
        (["ORCPT=rfc822;"], RCPT_KEYWORDS, "ORCPT invalide"),
        (["ORCPT=rfc 822;a"], RCPT_KEYWORDS, "ORCPT invalide"),
        (["ORCPT=rfc822;a", "ORCPT=rfc822;b"], RCPT_KEYWORDS, "ORCPT répété"),
        (["ORCPT=rfc822;" + "a" * 494], RCPT_KEYWORDS, "ORCPT trop long"),
    ],
)
def test_refusals(words: list[str], keywords: tuple[str, ...], text: str) -> None:
    verdict = split_dsn(words, keywords)
    assert isinstance(verdict, Verdict) and verdict.reply is not None
    assert (verdict.reply.code, verdict.reply.enhanced) == (501, "5.5.4")
    assert text in verdict.reply.text and verdict.rule == "dsn_syntax"


def test_envid_of_exactly_the_limit_is_taken() -> None:
    assert isinstance(split_dsn(["ENVID=" + "a" * ENVID_LIMIT], MAIL_KEYWORDS), DsnSplit)


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("FROM:<a@b.fr>", ("FROM:<a@b.fr>", ())),
        ("FROM:<a@b.fr> SIZE=5", ("FROM:<a@b.fr> SIZE=5", ())),
        ("FROM:<a@b.fr> RET=full SIZE=5", ("FROM:<a@b.fr> SIZE=5", ("RET=full",))),
        ("from:<a@b.fr>  ENVID=Xy BODY=8BITMIME", ("FROM:<a@b.fr>  BODY=8BITMIME", ("ENVID=Xy",))),
        # A path aiosmtpd cannot read goes to it as it is (its 553).
        ("FROM:<a@@b> RET=FULL", ("FROM:<a@@b> RET=FULL", ())),
        # "RET=" inside the path is no parameter.
        ("FROM:<ret=x@b.fr>", ("FROM:<ret=x@b.fr>", ())),
    ],
)
def test_dsn_apart(arg: str, expected: tuple[str, tuple[str, ...]]) -> None:
    assert dsn_apart(arg, "FROM:", MAIL_KEYWORDS, _getaddr) == expected


# --- properties -----------------------------------------------------------------------

_PRINTABLE = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
_XCHAR = st.characters(min_codepoint=33, max_codepoint=126).filter(lambda c: c not in "+=")
_HEXCHAR = st.sampled_from("0123456789ABCDEF")
_XTEXT = st.lists(
    st.one_of(_XCHAR, st.tuples(_HEXCHAR, _HEXCHAR).map(lambda h: "+" + "".join(h))),
    max_size=40,
).map("".join)
_CASED = st.sampled_from(["", "lower", "title"])


def _cased(word: str, how: str) -> str:
    return word.lower() if how == "lower" else word.title() if how == "title" else word


@given(_PRINTABLE)
def test_xtext_encoding_is_xtext_and_decodes_back(text: str) -> None:
    encoded = xtext_encode(text)
    assert is_xtext(encoded) and xtext_decode(encoded) == text


@given(_XTEXT)
def test_generated_xtext_is_xtext(text: str) -> None:
    assert is_xtext(text)


@given(st.text(max_size=30))
def test_xtext_is_printable_ascii_without_a_bare_plus_or_equals(text: str) -> None:
    if is_xtext(text):
        assert all(33 <= ord(c) <= 126 for c in text) and "=" not in text
        assert all(text[i + 1 : i + 3].isalnum() for i, c in enumerate(text) if c == "+")


@given(st.lists(st.text(max_size=20), max_size=6), st.sampled_from([MAIL_KEYWORDS, RCPT_KEYWORDS]))
def test_split_never_raises_and_loses_nothing(words: list[str], keywords: tuple[str, ...]) -> None:
    result = split_dsn(words, keywords)
    if isinstance(result, Verdict):
        assert result.reply is not None and str(result.reply).startswith("501 5.5.4 ")
        return
    assert list(result.others) == [w for w in words if w.partition("=")[0].upper() not in keywords]
    # Each DSN word keeps its value as written.
    values = [w.partition("=")[2] for w in words if w.partition("=")[0].upper() in keywords]
    assert [d.partition("=")[2] for d in result.dsn] == values


@given(
    _XTEXT.filter(lambda t: 0 < len(t) <= ENVID_LIMIT),
    _XTEXT.filter(bool),
    st.sampled_from(["FULL", "hdrs", "Full"]),
    st.sampled_from(["NEVER", "success", "FAILURE,delay", "DELAY,SUCCESS,FAILURE"]),
    _CASED,
)
def test_valid_parameters_are_taken_as_written(
    envid: str, orcpt: str, ret: str, notify: str, case: str
) -> None:
    mail = split_dsn([f"{_cased('ENVID', case)}={envid}", f"RET={ret}", "SIZE=1"], MAIL_KEYWORDS)
    assert mail == DsnSplit((f"ENVID={envid}", f"RET={ret}"), ("SIZE=1",))
    rcpt = split_dsn([f"{_cased('NOTIFY', case)}={notify}", f"ORCPT=rfc822;{orcpt}"], RCPT_KEYWORDS)
    assert rcpt == DsnSplit((f"NOTIFY={notify}", f"ORCPT=rfc822;{orcpt}"), ())
    arg = f"TO:<a@b.mssante.fr> NOTIFY={notify} ORCPT=rfc822;{orcpt}"
    assert dsn_apart(arg, "TO:", RCPT_KEYWORDS, _getaddr) == (
        "TO:<a@b.mssante.fr> ",
        (f"NOTIFY={notify}", f"ORCPT=rfc822;{orcpt}"),
    )
