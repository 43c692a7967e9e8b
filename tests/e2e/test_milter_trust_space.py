"""Issue 16: every refusal of the trust space (ANS liste blanche) and of the
Annuaire Santé is the same through the milter as through the SMTP listener
(same code, enhanced code and text; each quotes its own transaction's id):
the milter sees the same list and the same directory. Driven packet by packet
(tests/support/milter_client.py) and through a real Postfix."""

from __future__ import annotations

import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import PASSWORDS, Pki, base_config
from tests.e2e.test_postfix import DPI, gateway_for
from tests.support.extraction import Bal, write
from tests.support.mail import without_id
from tests.support.milter_client import MilterClient
from tests.support.processes import Relay, Upstream, free_port
from tests.support.whitelist import whitelist_xml

SENDER = "jean.dupont@ch-exemple.mssante.fr"
LISTED = "dr.martin@chu-b.mssante.fr"  # listed domain, in the Annuaire
OTHER_CASE = "y.leroy@uc-cmp.MSSANTE.FR"  # listed as UC-CMP.mssante.fr, in the Annuaire
NOT_LISTED = "x@nobody-registered.mssante.fr"  # ends in mssante.fr, not in the list
NOT_IN_DIRECTORY = "inconnu@chu-b.mssante.fr"  # listed domain, not in the Annuaire
BALS = [
    Bal("PER", "Dr.Martin@CHU-B.mssante.fr", "Martin", "Zoé", "Médecin", "CHU B", "69003 LYON"),
    Bal("PER", "y.leroy@UC-CMP.mssante.fr", "Leroy", "Yves", "Infirmier", "CMP", "31000 TOULOUSE"),
]
ACCEPTED = "accepted"

# Reply: "accepted", or the whole refusal « 550 5.7.1 text » without its id.
ReplyOf = Callable[[str], str]


def trust_settings(tmp: Path) -> dict[str, Any]:
    listed = tmp / "listeblanchemssante.xml"
    listed.write_bytes(whitelist_xml())
    return {"trust_space": {"whitelist": str(listed)}, "directory": {"mode": "refuse"}}


def smtp_reply(relay: Relay, pki: Pki) -> ReplyOf:
    """What the submission listener answers to RCPT."""

    def reply(recipient: str) -> str:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as client:
            client.starttls(context=pki.client_context())
            client.login("jdupont", PASSWORDS["jdupont"])
            assert client.mail(SENDER)[0] == 250
            code, text = client.rcpt(recipient)
        return ACCEPTED if code == 250 else without_id(f"{code} {text.decode()}")

    return reply


def milter_reply(relay: Relay) -> ReplyOf:
    """What the milter answers to the same RCPT, for a session Postfix
    authenticated (outgoing)."""

    def reply(recipient: str) -> str:
        with MilterClient(relay.port_of("milter")) as client:
            client.negotiate()
            client.macros("C", {"j": "mx.test", "{daemon_name}": "smtpd"})
            assert client.connect().code == "c"
            assert client.helo().code == "c"
            assert client.mail(SENDER, **{"{auth_authen}": "jdupont"}).code == "c"
            answer = client.rcpt(recipient)
        if answer.code == "c":
            return ACCEPTED
        assert answer.code == "y", answer
        return without_id(answer.text)

    return reply


def postfix_reply(client: Callable[[], smtplib.SMTP]) -> ReplyOf:
    """What a client of Postfix (the DPI, outgoing) is answered at RCPT."""

    def reply(recipient: str) -> str:
        with client() as smtp:
            assert smtp.mail(SENDER)[0] == 250
            code, text = smtp.rcpt(recipient)
            smtp.rset()
        return ACCEPTED if code == 250 else without_id(f"{code} {text.decode()}")

    return reply


def cli(relay: Relay, *args: str) -> None:
    done = relay.cli(*args)
    assert done.returncode == 0, done.stderr


def same_everywhere(replies: dict[str, ReplyOf], recipient: str) -> str:
    """The reply of each front; they must all be the same one."""
    seen = {front: reply(recipient) for front, reply in replies.items()}
    assert len(set(seen.values())) == 1, (recipient, seen)
    return seen["smtp"]


def the_whole_story(relay: Relay, tmp: Path, replies: dict[str, ReplyOf]) -> None:
    """Never imported (the directory cannot answer), then imported (refuse),
    then directory.mode warn; the liste blanche in force throughout."""
    # Whitelist first (a permanent cause comes before the directory's).
    assert same_everywhere(replies, NOT_LISTED) == (
        f"550 5.7.1 <{NOT_LISTED}> : domaine absent de la liste blanche MSSante"
    )
    unavailable = same_everywhere(replies, LISTED)
    assert unavailable.startswith("451 4.3.0 "), unavailable  # fail closed

    cli(relay, "directory", "import", str(write(tmp / "extraction.txt", BALS)))
    assert same_everywhere(replies, LISTED) == ACCEPTED
    assert same_everywhere(replies, OTHER_CASE) == ACCEPTED
    assert same_everywhere(replies, NOT_IN_DIRECTORY) == (
        f"550 5.1.1 <{NOT_IN_DIRECTORY}> : adresse absente de l'Annuaire Sante"
    )
    assert same_everywhere(replies, NOT_LISTED).startswith("550 5.7.1 ")

    config = relay.config
    config["directory"] = {"mode": "warn"}
    relay.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    cli(relay, "reload")
    assert same_everywhere(replies, NOT_IN_DIRECTORY) == ACCEPTED
    warned = relay.wait_event(
        "decision",
        len(replies),
        where=lambda e: e.get("recipient") == NOT_IN_DIRECTORY and e.get("verdict") == "accept",
    )
    assert {e["directory"] for e in warned} == {"unlisted"}
    # One line per front (Postfix asks the milter).
    assert {e["listener"] for e in warned} == {"submission", "milter"}
    # The liste blanche still enforced (warn is the directory's mode only).
    assert same_everywhere(replies, NOT_LISTED).startswith("550 5.7.1 ")


@pytest.fixture
def relay(tmp_path: Path, pki: Pki, password_hashes: dict[str, str]) -> Iterator[Relay]:
    upstream = Upstream(tmp_path)
    upstream.start()
    config = base_config(pki, password_hashes, upstream.port, **trust_settings(tmp_path))
    config["listeners"].append({"name": "milter", "role": "milter", "port": free_port()})
    relay = Relay(tmp_path, config)
    try:
        relay.start()
        yield relay
    finally:
        relay.stop()
        upstream.stop()


def test_same_replies_through_the_milter(relay: Relay, tmp_path: Path, pki: Pki) -> None:
    the_whole_story(
        relay, tmp_path, {"smtp": smtp_reply(relay, pki), "milter": milter_reply(relay)}
    )


def test_same_replies_through_postfix(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    with gateway_for(tmp_path, pki, password_hashes, **trust_settings(tmp_path)) as gateway:
        replies = {
            "smtp": smtp_reply(gateway.relay, pki),
            "postfix": postfix_reply(lambda: gateway.client(DPI)),
        }
        the_whole_story(gateway.relay, tmp_path, replies)
