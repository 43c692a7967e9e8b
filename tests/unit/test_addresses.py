from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mss_relay.core.addresses import (
    in_trust_space,
    is_patient_address,
    is_valid_ins_matricule,
    normalize_address,
)


@pytest.mark.parametrize(
    ("domain", "inside"),
    [
        ("mssante.fr", True),
        ("ch-exemple.mssante.fr", True),
        ("patient.mssante.fr", True),
        ("a.b.c.mssante.fr", True),
        ("MSSANTE.FR", True),
        ("Ch-Exemple.MSSante.Fr", True),
        ("mssante.fr.", True),
        ("ch.mssante.fr.", True),
        ("evilmssante.fr", False),
        ("mssante.fr.example.com", False),
        ("gmail.com", False),
        ("mssante.com", False),
        ("mssante.fr.evil", False),
        ("xmssante.fr", False),
        ("ch-mssante.fr", False),
        ("", False),
        (".", False),
        ("fr", False),
    ],
)
def test_trust_space(domain: str, inside: bool) -> None:
    assert in_trust_space(domain) is inside


# Keys computed by hand: 97 - (first 13 digits mod 97), 2A -> 19, 2B -> 18.
@pytest.mark.parametrize(
    ("matricule", "valid"),
    [
        ("295109912611193", True),
        ("185057800608491", True),
        ("253072B07300470", True),  # Corsica, Haute-Corse
        ("253072A07300443", True),  # Corsica, Corse-du-Sud
        ("253072a07300443", True),
        ("753072500100148", True),  # NIA-style leading 7
        ("295109912611199", False),  # wrong key
        ("185057800608492", False),  # wrong key
        ("253072B07300443", False),  # 2A's key with 2B
        ("2951099126111", False),  # 13 characters: no key
        ("2951099126111930", False),  # 16 characters
        ("29510991261119", False),  # 14 characters
        ("2 95 10 99 126 111 93", False),  # separators are not part of an address
        ("295.10.99.126.111.93", False),
        ("29510991261119X", False),
        ("29510A9912611193", False),
        ("253072C07300443", False),
        ("", False),
        ("295109912611193\n", False),
        ("２95109912611193", False),  # full-width digit
    ],
)
def test_ins_matricule(matricule: str, valid: bool) -> None:
    assert is_valid_ins_matricule(matricule) is valid


def test_patient_address_and_normalization() -> None:
    assert is_patient_address("295109912611193@Patient.MSSante.fr")
    assert not is_patient_address("295109912611193@ch.mssante.fr")
    assert normalize_address("Jean.Dupont@CH.MSSANTE.FR.") == "jean.dupont@ch.mssante.fr"


@given(st.text(max_size=40))
def test_matricule_check_never_raises_and_accepts_only_15_characters(text: str) -> None:
    if is_valid_ins_matricule(text):
        assert len(text) == 15 and text.isascii()


@given(st.text(max_size=60))
def test_trust_space_never_raises(domain: str) -> None:
    if in_trust_space(domain):
        assert normalize_address("x@" + domain).endswith("mssante.fr")
