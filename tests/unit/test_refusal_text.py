"""Refusal texts (issue 15): the id every refusal quotes, and sizes shown as
the limit was configured, never a rounding that contradicts the refusal."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mss_relay.core.reply import NOT_TRUST_SPACE, message_accepted, with_id, with_id_line
from mss_relay.core.rules.size import _limit, _measured

MIB, MB = 1024**2, 1000**2


def test_with_id_appends_once() -> None:
    quoted = with_id(NOT_TRUST_SPACE, "0A1B2C3D4E5F")
    assert quoted.text == NOT_TRUST_SPACE.text + " (id 0A1B2C3D4E5F)"
    assert (quoted.code, quoted.enhanced) == (NOT_TRUST_SPACE.code, NOT_TRUST_SPACE.enhanced)
    assert with_id(quoted, "FFFFFFFFFFFF") == quoted
    assert with_id(message_accepted("AB12"), "CD34") == message_accepted("AB12")


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("535 5.7.8 Identifiant incorrect", "535 5.7.8 Identifiant incorrect (id S1)"),
        ("503 5.5.1 Envoyez d'abord MAIL FROM", "503 5.5.1 Envoyez d'abord MAIL FROM (id S1)"),
        ("550-5.7.1 first line", "550-5.7.1 first line"),  # only the last line
        ("250 2.0.0 OK", "250 2.0.0 OK"),
        ("354 End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"),
        ("451 4.3.0 Erreur (id AB12)", "451 4.3.0 Erreur (id AB12)"),
        ("", ""),
    ],
)
def test_with_id_line(line: str, shown: str) -> None:
    assert with_id_line(line, "S1") == shown


@pytest.mark.parametrize(
    ("limit", "shown"),
    [
        (20 * MIB, "20 Mio"),
        (20 * MB, "20 Mo"),
        (60 * MIB, "60 Mio"),
        (1024, "1 Kio"),
        (25_000, "25 ko"),
        (2 * 1024**3, "2 Gio"),
        (1500, "1500 octets"),
    ],
)
def test_a_limit_is_shown_as_configured(limit: int, shown: str) -> None:
    assert _limit(limit) == shown


def test_the_issue_example() -> None:
    # 21.0 Mo, maximum 21.0 Mo: the measured size and the limit, both rounded.
    assert _measured(20 * MIB + 100, 20 * MIB) == "20.0001 Mio"


@given(limit=st.integers(1, 10 * 1024**3), over=st.integers(1, 10 * 1024**3))
def test_a_measured_size_never_reads_as_within_the_limit(limit: int, over: int) -> None:
    shown = _measured(limit + over, limit)
    number, unit = re.fullmatch(r"([0-9.]+) (\S+)", shown).groups()  # type: ignore[union-attr]
    limit_number, limit_unit = _limit(limit).split(" ")
    if unit == limit_unit:
        assert float(number) > float(limit_number)
    else:
        assert unit == "octets" and int(number) > limit
