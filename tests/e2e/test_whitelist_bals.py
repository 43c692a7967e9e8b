"""The structure's own BALs and the ANS liste blanche (issue 16), with the
real relay process: a BAL domain the list does not name is a warning at start
(not an error), said again for each new list while it is missing; with a
liste blanche, a BAL outside mssante.fr that the list names
(mssante.apicrypt.org) can be configured and sends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import Pki, Stack, base_config
from tests.support.mail import connect, make_message, send
from tests.support.processes import Relay, Upstream
from tests.support.whitelist import whitelist_xml, with_domains

APICRYPT_BAL = "dr.durand@mssante.apicrypt.org"  # listed, outside mssante.fr
UNLISTED_BAL = "accueil@ch-nouveau.mssante.fr"  # not (yet) published by the ANS
DEST = "dr.martin@chu-b.mssante.fr"


def unlisted_warnings(relay: Relay, count: int = 0) -> list[dict[str, Any]]:
    """The start warning's lines (count: wait until there are that many)."""

    def about_bals(event: dict[str, Any]) -> bool:
        return str(event.get("message", "")).startswith("trust_space.whitelist: the BAL domain")

    if count:
        return relay.wait_event("config_warning", count, where=about_bals)
    return [e for e in relay.events("config_warning") if about_bals(e)]


def update(relay: Relay, path: Path, data: bytes) -> None:
    path.write_bytes(data)
    done = relay.cli("whitelist", "update", "--from", str(path), "--force")
    assert done.returncode == 0, done.stderr


def test_unlisted_bal_domain_warned_at_start_and_for_each_new_list_apicrypt_bal_sends(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    listed = tmp_path / "listeblanchemssante.xml"
    listed.write_bytes(whitelist_xml())
    bals = [
        {"address": APICRYPT_BAL, "type": "nominative", "users": ["jdupont"]},
        {"address": UNLISTED_BAL, "type": "organisationnelle", "users": ["msecret"]},
    ]
    upstream = Upstream(tmp_path)
    upstream.start()
    config = base_config(
        pki, password_hashes, upstream.port, trust_space={"whitelist": str(listed)}, workers=2
    )
    config["bals"] += bals
    relay = Relay(tmp_path, config)
    stack = Stack(relay, upstream, pki)
    try:
        relay.start()
        # Not an error: the relay runs (both workers); the warning comes
        # once, from worker 0, naming exactly the unlisted domain (neither
        # ch-exemple.mssante.fr nor the apicrypt one, both listed).
        assert len(relay.wait_event("started", count=2)) == 2
        unlisted_warnings(relay, 1)
        (warning,) = unlisted_warnings(relay)
        assert warning["worker"] == 0 and warning["level"] == "warning"
        assert warning["domains"] == ["ch-nouveau.mssante.fr"]
        assert "ch-nouveau.mssante.fr" in warning["message"]
        assert "ch-exemple" not in warning["message"] and "apicrypt" not in warning["message"]

        # The apicrypt-style BAL sends to a listed recipient: delivered.
        with connect(stack) as client:
            rcpts, (code, text) = send(
                client, APICRYPT_BAL, [DEST], make_message(sender=APICRYPT_BAL, to=DEST)
            )
        assert rcpts == [(250, rcpts[0][1])] and code == 250, (rcpts, text)
        envelope, _ = stack.upstream.messages()[-1]
        assert envelope["mail_from"] == APICRYPT_BAL and envelope["rcpt_tos"] == [DEST]

        # A new list still without it: said again (the operator waits for the
        # ANS to publish the domain; each new list tells whether it has).
        update(relay, tmp_path / "newer.xml", with_domains(["new-ets.mssante.fr"]))
        again = unlisted_warnings(relay, 2)
        assert len(again) == 2 and again[-1]["domains"] == ["ch-nouveau.mssante.fr"]
        assert again[-1]["worker"] == 0

        # A list that names it: no more warning, at this list nor at a
        # configuration reload (whose own line comes after, worker 0 writing
        # its lines in order).
        reloads = len(relay.events("whitelist_reloaded"))
        update(relay, tmp_path / "published.xml", with_domains(["ch-nouveau.mssante.fr"]))
        assert relay.wait_event("whitelist_reloaded", reloads + 2, timeout=15)
        done = relay.cli("reload")
        assert done.returncode == 0, done.stderr
        assert relay.wait_event("reloaded", 2)
        assert len(unlisted_warnings(relay)) == 2
    finally:
        relay.stop()
        upstream.stop()
