"""The relay's fast reading of MAIL FROM / RCPT TO addresses against aiosmtpd's
own parser, which it stands in for on plain addresses."""

from __future__ import annotations

from types import SimpleNamespace

from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from mss_relay.front.smtp import plain_address

PIECES = [
    "a",
    "Z",
    "0",
    ".",
    "-",
    "_",
    "+",
    "'",
    "é",
    "@",
    "<",
    ">",
    " ",
    "\t",
    '"',
    "(c)",
    "[1.2.3.4]",
]
PLAIN = st.from_regex(r"\A[a-z0-9.+-]{1,70}@[a-z0-9-]{1,9}(\.[a-z0-9-]{1,9}){0,3}\Z")


def aiosmtpd(arg: str, limit: int) -> tuple[str | None, str | None]:
    result: tuple[str | None, str | None] = SMTP._getaddr(  # type: ignore[arg-type]
        SimpleNamespace(local_part_limit=limit), arg
    )
    return result


@settings(max_examples=1500)
@given(
    st.one_of(
        st.builds(
            lambda a, rest: f"<{a}>{rest}",
            PLAIN,
            st.sampled_from(["", " SIZE=2048", "x", " (c) x", "\t "]),
        ),
        st.lists(st.sampled_from(PIECES), max_size=12).map("".join),
    ),
    st.sampled_from([0, 64]),
    st.sampled_from(["", " ", "\t "]),
)
def test_plain_addresses_read_as_aiosmtpd_reads_them(arg: str, limit: int, lead: str) -> None:
    fast = plain_address(lead + arg, limit)
    if fast is not None:
        assert fast == aiosmtpd(lead + arg, limit)


def test_the_usual_forms_take_the_fast_path() -> None:
    assert plain_address("<dr.martin@chu-b.mssante.fr> SIZE=2048", 0) == (
        "dr.martin@chu-b.mssante.fr",
        "SIZE=2048",
    )
    assert plain_address("<" + "x" * 65 + "@a.mssante.fr>", 64) == (None, None)
    for other in ("<>", "a@b.fr", '<"a b"@c.fr>', "<a@[1.2.3.4]>", "<a..b@c.fr>", "<a@b_c.fr>"):
        assert plain_address(other, 0) is None
