"""The liste blanche parser, the DN normaliser and the shrink guard."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mss_relay.trust.source import removed_share
from mss_relay.trust.watcher import warn_unlisted_bals
from mss_relay.trust.whitelist import InvalidWhitelist, normalize_dn, parse_whitelist
from tests.support.whitelist import entries, whitelist_xml

SMALL = whitelist_xml(entries(12, 8, 5))
NO_DATE = SMALL.replace(b"<DateDeGeneration>", b"<X>").replace(b"</DateDeGeneration>", b"</X>")


def test_the_generated_list_has_the_published_shape() -> None:
    listed = parse_whitelist(whitelist_xml())
    assert (listed.entries, len(listed.operators), listed.certificates) == (6500, 5000, 400)
    assert "uc-cmp.mssante.fr" in listed and "UC-CMP.MSSANTE.FR." in listed
    assert "sub.uc-cmp.mssante.fr" not in listed
    assert len(listed.operators_of("mssante.apicrypt.org")) == 2
    assert any("Rhône" in dn for dns in listed.operators.values() for dn in dns)
    assert any("\n" in dn for dns in listed.operators.values() for dn in dns)
    assert max(len(d.split(".")) for d in listed.operators) == 6


@pytest.mark.parametrize(
    ("dn", "normal"),
    [
        ("CN=a.fr,OU=1,O=GIP MIPIH,C=FR", "CN=a.fr,OU=1,O=GIP MIPIH,C=FR"),
        ("CN=a.fr, OU=1,  O=GIP MIPIH , C=FR", "CN=a.fr,OU=1,O=GIP MIPIH,C=FR"),
        ("cn=a.fr,ou=1,o=GIP MIPIH,c=FR", "CN=a.fr,OU=1,O=GIP MIPIH,C=FR"),
        ("CN=a.fr,\n    O=X", "CN=a.fr,O=X"),
        ("CN=a.fr,ST=Bouches-du-Rhône (13)", "CN=a.fr,ST=Bouches-du-Rhône (13)"),
        ("CN=a\\, b,O=X", "CN=a\\, b,O=X"),  # an escaped comma stays in its value
        ("O=x,CN=a", "O=x,CN=a"),  # order as written
        ("CN=A.fr", "CN=A.fr"),  # values keep their case
    ],
)
def test_dn_normal_form(dn: str, normal: str) -> None:
    assert normalize_dn(dn) == normal


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"<x/>", "root element"),
        (SMALL.replace(b"schema", b"schemas"), "root element"),
        (SMALL.replace(b"<Nom>ch-exemple.mssante.fr</Nom>", b""), "has no Nom"),
        (NO_DATE, "no DateDeGeneration"),
        (b'<!DOCTYPE x [<!ENTITY a "aaa">]>' + SMALL[38:], "DTDForbidden"),
        (SMALL[: SMALL.rindex(b"</Domaine>") + 4], "not well-formed"),
        (SMALL[: SMALL.rindex(b"<Domaine>") + 9], "not well-formed"),
    ],
)
def test_refused(data: bytes, why: str) -> None:
    with pytest.raises(InvalidWhitelist, match=why):
        parse_whitelist(data)


def test_missing_end_tags_after_a_whole_entry_are_accepted() -> None:
    for cut in (b"</ListeBlancheMSSante>", b"</ListeDomaines>"):
        listed = parse_whitelist(SMALL[: SMALL.index(cut)])
        assert listed.truncated_end and listed.entries == 12


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(SMALL) - 1))
def test_a_cut_file_is_refused_unless_cut_between_entries(at: int) -> None:
    """Any prefix: refused, or accepted with exactly the whole entries before
    the cut, and only when nothing but blanks (and end tags) follow the last
    </Domaine>."""
    data = SMALL[:at]
    try:
        listed = parse_whitelist(data)
    except InvalidWhitelist:
        return
    assert listed.entries == data.count(b"</Domaine>")
    if not listed.truncated_end:
        assert data.rstrip() == SMALL.rstrip()
        return
    tail = data[data.rindex(b"</Domaine>") + len(b"</Domaine>") :]
    assert tail.strip() in (b"", b"</ListeDomaines>")


def test_shrink_share() -> None:
    full = parse_whitelist(whitelist_xml(entries(100, 100, 10)))
    assert removed_share(full, parse_whitelist(whitelist_xml(entries(10, 10, 2)))) == 0.9
    assert removed_share(full, full) == 0.0


@pytest.mark.parametrize(
    ("recipient", "code"),
    [
        ("a@chu-b.mssante.fr", None),
        ("a@CHU-B.mssante.fr.", None),
        ("a@mssante.apicrypt.org", None),
        ("a@x.chu-b.mssante.fr", 550),
        ("a@nobody.mssante.fr", 550),
    ],
)
def test_trust_space_rule_with_a_list(recipient: str, code: int | None) -> None:
    from mss_relay.core.facts import MailFacts, RcptFacts, SessionFacts
    from mss_relay.core.rules.recipients import trust_space

    session = SessionFacts("127.0.0.1", "h", True, "u", "submission")
    facts = RcptFacts(MailFacts(session, "s@ch-exemple.mssante.fr", None), recipient, 0)
    verdict = trust_space(facts, frozenset({"chu-b.mssante.fr", "mssante.apicrypt.org"}))
    assert (verdict.reply.code if verdict and verdict.reply else None) == code
    if verdict is not None and verdict.reply is not None:
        assert verdict.reply.enhanced == "5.7.1"
        assert verdict.reply.text == f"<{recipient}> : domaine absent de la liste blanche MSSante"


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, object]]] = []

    def warning(self, event: str, **fields: object) -> None:
        self.lines.append((event, fields))


def test_a_list_without_the_patients_domain_is_warned_of() -> None:
    listed = parse_whitelist(whitelist_xml(entries(100, 80, 10)))
    log = _Log()
    assert warn_unlisted_bals(["dpi@chu-b.mssante.fr"], listed, log) == []  # type: ignore[arg-type]
    assert log.lines == []
    without = [(n, dn) for n, dn in entries(100, 80, 10) if n != "patient.mssante.fr"]
    warn_unlisted_bals(["dpi@chu-b.mssante.fr"], parse_whitelist(whitelist_xml(without)), log)  # type: ignore[arg-type]
    assert [fields["domains"] for _, fields in log.lines] == [["patient.mssante.fr"]]
    assert "mail to and from patients is refused" in str(log.lines[0][1]["message"])


def test_an_entry_whose_nom_is_not_a_domain_name_is_left_out_and_counted() -> None:
    rows = [*entries(12, 8, 5), ("bad domain!", "CN=x,C=FR"), ("-x-.mssante.fr", "CN=y,C=FR")]
    listed = parse_whitelist(whitelist_xml(rows))
    assert (listed.entries, listed.bad_names) == (12, 2)
    assert "bad domain!" not in listed and "-x-.mssante.fr" not in listed
    assert "chu-b.mssante.fr" in listed
