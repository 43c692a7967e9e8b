"""End to end: the Annuaire Santé imported by « mss-relay directory import »
(generated extractions, tests/support/extraction.py), looked up by the real
relay at RCPT (warn, refuse), searched and shown on the command line."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Pki, Stack, base_config
from tests.support.extraction import COLUMNS, Bal, generated, write
from tests.support.mail import connect, make_message, send
from tests.support.processes import Relay, Upstream

SENDER = "jean.dupont@ch-exemple.mssante.fr"
LISTED = "dr.martin@chu-b.mssante.fr"
HOMONYM = "h.lefevre@clinique-c.mssante.fr"
UNLISTED = "inconnu@chu-b.mssante.fr"
PATIENT = "295109912611193@patient.mssante.fr"
ACCEPTED_DOMAIN = "x@labo.partenaire.mssante.fr"  # partenaire.mssante.fr in also_accept
ACCEPTED_ADDRESS = "Secretariat@Cabinet-D.mssante.fr"
BALS = [
    Bal("PER", "Dr.Martin@CHU-B.mssante.fr", "Martin", "Zoé", "Médecin", "CHU B", "69003 LYON"),
    Bal("PER", HOMONYM, "Lefèvre", "Hélène", "Infirmier", "Clinique C", "75013 PARIS"),
    Bal("PER", "helene.lefevre@chu-b.mssante.fr", "Lefèvre", "Hélène", "Médecin", "CHU B", "LYON"),
    Bal("ORG", "accueil@chu-b.mssante.fr", structure="Centre Hospitalier Universitaire B"),
    Bal("PER", HOMONYM, "Lefèvre", "Hélène", "Infirmier", "Clinique C", "75013 PARIS"),
    "APP|appli@chu-b.mssante.fr" + "|" * 29,  # an applicative BAL: skipped
    "PER|short|line",
]


def mss_relay(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mss_relay", "directory", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def rcpt(stack: Stack, recipient: str) -> tuple[int, bytes]:
    with connect(stack) as client:
        code, _ = client.mail(SENDER)
        assert code == 250
        return client.rcpt(recipient)


def decision(stack: Stack, recipient: str) -> dict[str, Any]:
    shown = stack.relay.pseudonym(recipient)  # a patient's, as the log shows it (issue 17)
    found = stack.relay.wait_event(
        "decision", where=lambda e: e.get("stage") == "rcpt" and e.get("recipient") == shown
    )
    assert found, recipient
    return found[-1]


@pytest.fixture(scope="module")
def directory_stack(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, password_hashes: dict[str, str]
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("directory")
    upstream = Upstream(tmp)
    upstream.start()
    settings = {"mode": "refuse", "also_accept": ["partenaire.mssante.fr", ACCEPTED_ADDRESS]}
    relay = Relay(tmp, base_config(pki, password_hashes, upstream.port, directory=settings))
    try:
        relay.start()
        yield Stack(relay, upstream, pki)
    finally:
        relay.stop()
        upstream.stop()


def test_never_imported_is_451_then_refuse_and_not_looked_up(
    directory_stack: Stack, tmp_path: Path
) -> None:
    stack = directory_stack
    config = stack.relay.config_path
    # Fail closed: a directory that cannot answer is no unchecked accept.
    code, text = rcpt(stack, LISTED)
    assert (code, text[:5]) == (451, b"4.3.0"), text
    assert decision(stack, LISTED)["directory"] == "unavailable"

    done = mss_relay(config, "import", str(write(tmp_path / "extraction", BALS, zipped=True)))
    assert done.returncode == 0, done.stderr
    assert "5 rows, 4 distinct addresses, 1 duplicate rows, 2 lines skipped" in done.stdout
    assert "Type de BAL 'APP'" in done.stdout and "3 columns instead of 31" in done.stdout
    # The running relay loaded it before the command returned (control socket).
    assert "mss-relay: in force in the running relay (1 process(es))" in done.stdout
    assert stack.relay.wait_event("directory_loaded")[0]["addresses"] == 4

    code, _ = rcpt(stack, LISTED.upper())  # case-insensitive, as every address here
    assert code == 250
    assert decision(stack, LISTED.upper())["directory"] == "listed"
    code, text = rcpt(stack, UNLISTED)
    assert code == 550, text
    assert text.startswith(
        f"5.1.1 <{UNLISTED}> : adresse absente de l'Annuaire Sante (id ".encode()
    ), text
    refused = decision(stack, UNLISTED)
    assert (refused["rule"], refused["directory"]) == ("directory", "unlisted")
    # Never looked up: patients, and also_accept (domain and its sub-domains, address).
    for recipient in (PATIENT, ACCEPTED_DOMAIN, ACCEPTED_ADDRESS):
        code, text = rcpt(stack, recipient)
        assert code == 250, (recipient, text)
        assert "directory" not in decision(stack, recipient)
    # The whole message to a listed recipient goes through.
    before = len(stack.upstream.messages())
    with connect(stack) as client:
        rcpts, (code, _) = send(client, SENDER, [LISTED], make_message())
    assert rcpts[0][0] == 250 and code == 250
    assert len(stack.upstream.messages()) == before + 1


def test_warn_accepts_and_logs_unlisted(directory_stack: Stack, tmp_path: Path) -> None:
    stack = directory_stack
    config = stack.relay.config
    config["directory"] = {"mode": "warn"}
    stack.relay.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "mss_relay", "reload", "--config", str(stack.relay.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        recipient = "warn." + UNLISTED
        code, text = rcpt(stack, recipient)
        assert code == 250, text
        line = decision(stack, recipient)
        assert (line["verdict"], line["directory"]) == ("accept", "unlisted")
    finally:
        config["directory"] = {"mode": "refuse"}
        stack.relay.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        # In force again for the tests that follow on this relay.
        subprocess.run(
            [sys.executable, "-m", "mss_relay", "reload", "--config", str(stack.relay.config_path)],
            capture_output=True,
            timeout=60,
            check=True,
        )


def test_search_with_and_without_accents_and_show(directory_stack: Stack, tmp_path: Path) -> None:
    config = directory_stack.relay.config_path
    write_done = mss_relay(config, "import", str(write(tmp_path / "e.txt", BALS)))
    assert write_done.returncode == 0, write_done.stderr
    for text in ("Hélène LEFÈVRE", "helene lefevre", "lefe hele"):
        done = mss_relay(config, "search", *text.split())
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert len(lines) == 3, (text, lines)  # the homonyms, the duplicate row too
        assert any("helene.lefevre@chu-b.mssante.fr" in line for line in lines)
    done = mss_relay(config, "search", "lefevre", "paris")  # every word must match
    assert (
        done.stdout.splitlines()
        == [f"PER | {HOMONYM} | Hélène Lefèvre | Infirmier | Clinique C | 75013 PARIS"] * 2
    )
    done = mss_relay(config, "search", "universitaire")
    assert done.stdout.startswith("ORG | accueil@chu-b.mssante.fr | - | - | Centre Hosp")
    done = mss_relay(config, "show", "DR.MARTIN@chu-b.mssante.fr")
    assert done.returncode == 0
    assert done.stdout == (
        "PER | dr.martin@chu-b.mssante.fr | DR Zoé Martin | Médecin | CHU B | 69003 LYON\n"
    )
    done = mss_relay(config, "show", UNLISTED)
    assert done.returncode == 1 and "not in the Annuaire Santé" in done.stderr
    assert mss_relay(config, "search", "personne").returncode == 1


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("missing-columns", "not an Annuaire Santé extraction: missing column(s) Adresse BAL"),
        ("zip-two", "a ZIP must hold exactly one .txt file (found: a.txt, b.txt)"),
        ("zip-none", "a ZIP must hold exactly one .txt file (found: none)"),
        ("latin-1", "not UTF-8 (line 4)"),
    ],
)
def test_bad_file_is_one_line_and_keeps_the_previous_import(
    directory_stack: Stack, tmp_path: Path, case: str, error: str
) -> None:
    stack = directory_stack
    config = stack.relay.config_path
    assert mss_relay(config, "import", str(write(tmp_path / "good.txt", BALS))).returncode == 0
    if case == "missing-columns":
        path = write(
            tmp_path / "bad.txt", BALS[:2], columns=[c for c in COLUMNS if c != "Adresse BAL"]
        )
    elif case == "latin-1":
        path = write(tmp_path / "bad.txt", BALS[:2])
        with path.open("ab") as out:  # a row in Latin-1 after two in UTF-8
            out.write(BALS[0].line().replace("Zoé", "Zoë").encode("latin-1") + b"\r\n")
    else:
        path = tmp_path / "bad.zip"
        with zipfile.ZipFile(path, "w") as archive:
            for name in ("a.txt", "b.txt") if case == "zip-two" else ("readme.md",):
                archive.writestr(name, "x")
    done = mss_relay(config, "import", str(path))
    assert done.returncode == 1
    assert done.stderr == f"mss-relay: directory import: {path}: {error}\n"
    assert mss_relay(config, "show", LISTED).returncode == 0  # the previous import is current


def test_an_import_removing_over_a_fifth_needs_force(
    directory_stack: Stack, tmp_path: Path
) -> None:
    stack = directory_stack
    config = stack.relay.config_path
    big = [*BALS[:1], *generated(99, duplicates_every=0)]
    last = big[-1].address
    assert mss_relay(config, "import", str(write(tmp_path / "big.txt", big))).returncode == 0
    small = write(tmp_path / "small.txt", big[:70])  # a cut download: 30 % of the BALs gone
    done = mss_relay(config, "import", str(small))
    assert done.returncode == 1
    assert done.stderr == (
        f"mss-relay: directory import: {small}: 70 distinct addresses where the current"
        " import has 100 (would remove 30%; more than 20% needs --force): the previous"
        " import is kept\n"
    )
    rcpt(stack, last)  # the previous import still in force
    assert decision(stack, last)["directory"] == "listed"
    done = mss_relay(config, "import", "--force", str(small))
    assert done.returncode == 0, done.stderr
    rcpt(stack, last)
    both = stack.relay.wait_event(
        "decision", count=2, where=lambda e: e.get("stage") == "rcpt" and e.get("recipient") == last
    )
    assert [e["directory"] for e in both] == ["listed", "unlisted"]


def test_import_of_a_large_generated_extraction(directory_stack: Stack, tmp_path: Path) -> None:
    """600,000 rows are measured in bench/directory_cost.py; 60,000 here."""
    config = directory_stack.relay.config_path
    path = write(tmp_path / "large.txt", [*BALS[:1], *generated(60_000)])
    done = mss_relay(config, "import", str(path))
    assert done.returncode == 0, done.stderr
    assert (
        "60001 rows, 58802 distinct addresses, 1199 duplicate rows, 0 lines skipped" in done.stdout
    )
    code, _ = rcpt(directory_stack, "bal59999@hopital-53.mssante.fr")  # the last row
    assert code == 250
    assert decision(directory_stack, "bal59999@hopital-53.mssante.fr")["directory"] == "listed"
