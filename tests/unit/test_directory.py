"""The Annuaire Santé: folding for search, reading an extraction's rows, and
which recipients are looked up."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mss_relay.core.directory import DirectoryAnswer, DirectoryMode, DirectorySettings
from mss_relay.directory import ExtractionError, Reading, fold, rows
from tests.support.extraction import COLUMNS, HEADER, Bal

PATH = Path("x.txt")


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        ("Hélène LEFÈVRE", "helene lefevre"),
        ("N'Diaye-Œuvray", "n diaye oeuvray"),
        ("Müller  Straße", "muller strasse"),
        ("Centre hospitalier n°12", "centre hospitalier n12"),
        ("jean.dupont@ch-x.mssante.fr", "jean dupont ch x mssante fr"),
        ("", ""),
    ],
)
def test_fold(text: str, folded: str) -> None:
    assert fold(text) == folded


@given(st.text())
def test_fold_is_ascii_lowercase_words_and_idempotent(text: str) -> None:
    folded = fold(text)
    assert folded.isascii() and folded == folded.lower()
    assert fold(folded) == folded
    assert "  " not in folded and folded == folded.strip()


def read(lines: list[str]) -> tuple[list[tuple[str, ...]], Reading]:
    reading = Reading()
    data = io.BytesIO(("\r\n".join(lines) + "\r\n").encode())
    return list(rows(data, PATH, reading)), reading


def test_columns_are_matched_by_name_not_position() -> None:
    shuffled = list(reversed(COLUMNS))
    bal = Bal("PER", "Dr.X@Y.mssante.fr", "Lefèvre", "Zoé", "Médecin", "CHU", "69003 LYON")
    found, reading = read(["|".join(shuffled), bal.line(shuffled)])
    assert reading.rows == 1 and not reading.skipped
    row = found[0]
    assert row[:2] == ("dr.x@y.mssante.fr", "PER")
    assert row[-1] == "lefevre zoe chu dr x y mssante fr 69003 lyon"


def test_lines_left_out_are_counted_by_reason() -> None:
    good = Bal("ORG", "a@b.mssante.fr", structure="S").line()
    found, reading = read(
        [HEADER, good, "", "PER|a|b", good.replace("ORG", "APP", 1), good.replace("a@b", "ab")]
    )
    assert len(found) == 1
    assert reading.skipped == {
        "empty line": 1,
        "3 columns instead of 31": 1,
        "Type de BAL 'APP' (PER or ORG expected)": 1,
        "no valid Adresse BAL": 1,
    }


def test_a_header_without_the_needed_columns_is_one_error() -> None:
    with pytest.raises(ExtractionError, match=r"missing column\(s\) Adresse BAL, Type de BAL$"):
        read(["|".join(c for c in COLUMNS if c not in ("Type de BAL", "Adresse BAL"))])


def test_a_bom_before_the_header_is_ignored() -> None:
    found, _ = read(["\ufeff" + HEADER, Bal("PER", "a@b.mssante.fr").line()])
    assert len(found) == 1


SETTINGS = DirectorySettings(
    DirectoryMode.REFUSE, frozenset({"partenaire.mssante.fr", "x@cabinet.mssante.fr"})
)


@pytest.mark.parametrize(
    ("recipient", "looked_up"),
    [
        ("dr@chu.mssante.fr", True),
        ("295109912611193@patient.mssante.fr", False),
        ("295109912611193@PATIENT.mssante.fr.", False),
        ("a@partenaire.mssante.fr", False),
        ("a@labo.partenaire.mssante.fr", False),
        ("a@autrepartenaire.mssante.fr", True),
        ("X@Cabinet.mssante.fr", False),
        ("y@cabinet.mssante.fr", True),
    ],
)
def test_who_is_looked_up(recipient: str, looked_up: bool) -> None:
    assert SETTINGS.looks_up(recipient) is looked_up
    assert not DirectorySettings().looks_up(recipient)  # mode off: nobody


def test_answer_labels() -> None:
    assert DirectoryAnswer(True).label == "listed"
    assert DirectoryAnswer(False).label == "unlisted"
    assert DirectoryAnswer(None, "never imported").label == "unavailable"
