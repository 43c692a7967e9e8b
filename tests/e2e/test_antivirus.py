"""Issue 19, the antivirus end to end: the real relay (SMTP listener, both
sides, and the milter behind a real Postfix) scanning through the real,
private clamd of tests/support/clamd.py. The test pattern in a PDF, in a zip,
base64 in a nested multipart is refused with 550 5.7.1 naming the signature,
and nothing reaches the upstream; a clean message passes; clamd stopped, or
frozen beyond antivirus.timeout, is a 451 4.3.0 (nothing upstream); with
on_error: accept the message passes, a warning logged for each. The log and
the metrics name the rule, never the subject nor the attachment's name."""

from __future__ import annotations

import json
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Pki, Stack, _stack, base_config, two_sided
from tests.e2e.test_antivirus_client import CARRIERS, mail
from tests.e2e.test_metrics import scrape, value
from tests.e2e.test_postfix import DEST as POSTFIX_DEST
from tests.e2e.test_postfix import SENDER as POSTFIX_SENDER
from tests.e2e.test_postfix import gateway_for
from tests.support import files
from tests.support.clamd import FOUND, TEST_PATTERN, Clamd, pdf_with
from tests.support.mail import connect, send, wire_data, without_id
from tests.support.processes import free_port

SENDER = "jean.dupont@ch-exemple.mssante.fr"
DEST = "dr.martin@chu-b.mssante.fr"
REFUSED = f"5.7.1 Message refuse : contenu malveillant detecte ({FOUND})".encode()
UNAVAILABLE = b"4.3.0 Analyse antivirus indisponible, reessayez plus tard"
# What the log must never hold (issue 17): the subject, the file names.
SUBJECT = "Compte rendu"
NAMES = ("compte-rendu.pdf", "dossier.zip", "imagerie.bin")


def antivirus(clamd: Clamd, **settings: object) -> dict[str, object]:
    return {"clamd": clamd.address, "timeout": "10s", **settings}


@pytest.fixture(scope="module")
def scanned(
    tmp_path_factory: pytest.TempPathFactory,
    clamd_server: Clamd,
    pki: Pki,
    password_hashes: dict[str, str],
) -> Iterator[Stack]:
    """A relay scanning with the session's clamd, its metrics served."""
    tmp = tmp_path_factory.mktemp("antivirus")
    yield from _stack(
        tmp, pki, password_hashes, antivirus=antivirus(clamd_server), metrics={"port": free_port()}
    )


def submit(stack: Stack, content: bytes) -> tuple[int, bytes]:
    with connect(stack) as client:
        _, (code, text) = send(client, SENDER, [DEST], content)
        client.quit()
    return code, text


def delivered(stack: Stack) -> int:
    return len(stack.upstream.messages())


def no_health_data(stack: Stack) -> None:
    for line in stack.relay.log_text().splitlines():
        event = json.loads(line)
        if event.get("event") in ("virus_found", "antivirus_unavailable", "decision"):
            assert SUBJECT not in line and not any(n in line for n in NAMES), line


@pytest.mark.parametrize("carrier", ["pdf", "zip", "nested-base64"])
def test_the_pattern_is_refused_and_nothing_goes_upstream(
    scanned: Stack, clamd: Clamd, carrier: str
) -> None:
    before, found = delivered(scanned), len(scanned.relay.events("virus_found"))
    code, text = submit(scanned, CARRIERS[carrier]())
    assert (code, without_id(text)) == (550, REFUSED), text
    events = scanned.relay.wait_event("virus_found", found + 1)
    assert len(events) == found + 1
    event = events[-1]
    assert event["signature"] == FOUND and event["level"] == "warning"
    assert text.endswith(f"(id {event['txid']})".encode())
    txid = event["txid"]
    decision = scanned.relay.wait_event(
        "decision", where=lambda e: e.get("txid") == txid and e.get("stage") == "antivirus"
    )[-1]
    assert (decision["verdict"], decision["rule"]) == ("reject", "malware")
    outcome = scanned.relay.wait_event("transaction", where=lambda e: e.get("txid") == txid)[-1]
    assert (outcome["outcome"], outcome["rule"]) == ("rejected", "malware")
    no_health_data(scanned)
    assert delivered(scanned) == before


def test_a_clean_message_passes_scanned(scanned: Stack, clamd: Clamd) -> None:
    before = delivered(scanned)
    content = mail(("compte-rendu.pdf", pdf_with(b"Compte rendu operatoire")))
    code, text = submit(scanned, content)
    assert code == 250, text
    assert delivered(scanned) == before + 1
    txid = scanned.relay.wait_event("transaction")[-1]["txid"]
    decision = scanned.relay.wait_event(
        "decision", where=lambda e: e.get("txid") == txid and e.get("stage") == "antivirus"
    )[-1]
    assert (decision["verdict"], decision["rule"], decision["reason"]) == (
        "accept",
        "antivirus",
        "clean",
    )


def test_refusals_are_counted_by_rule(scanned: Stack, clamd: Clamd) -> None:
    """mss_relay/metrics.py counts the decision lines: the antivirus's rule
    names are labels like every other rule's."""
    port = int(scanned.relay.config["metrics"]["port"])
    labels = {"listener": "submission", "stage": "antivirus"}
    before = scrape(port)
    assert submit(scanned, CARRIERS["zip"]())[0] == 550
    clamd.stop()
    assert submit(scanned, mail())[0] == 451
    after = scrape(port)
    for rule in ("malware", "antivirus_unavailable"):
        counted = value(after, "mss_relay_refusals_total", rule=rule, **labels)
        assert counted == value(before, "mss_relay_refusals_total", rule=rule, **labels) + 1
    # Every scan timed, whatever clamd said (or could not say).
    scans = "mss_relay_antivirus_scan_seconds_count"
    assert value(after, scans) == value(before, scans) + 2


def test_clamd_stopped_is_a_451_and_nothing_goes_upstream(scanned: Stack, clamd: Clamd) -> None:
    before = delivered(scanned)
    clamd.stop()
    code, text = submit(scanned, mail())
    assert (code, without_id(text)) == (451, UNAVAILABLE), text
    txid = scanned.relay.wait_event("transaction")[-1]["txid"]
    decision = scanned.relay.wait_event(
        "decision", where=lambda e: e.get("txid") == txid and e.get("stage") == "antivirus"
    )[-1]
    assert (decision["verdict"], decision["rule"]) == ("tempfail", "antivirus_unavailable")
    assert decision["reason"].startswith(f"clamd at {clamd.address}: ")
    assert delivered(scanned) == before
    # The client retries once clamd is back: the same message passes.
    clamd.start()
    assert submit(scanned, mail())[0] == 250
    assert delivered(scanned) == before + 1


def test_clamd_slower_than_the_timeout_is_a_451(
    tmp_path: Path, clamd: Clamd, pki: Pki, password_hashes: dict[str, str]
) -> None:
    for stack in _stack(tmp_path, pki, password_hashes, antivirus=antivirus(clamd, timeout="1s")):
        with clamd.frozen_while():
            code, text = submit(stack, CARRIERS["zip"]())
        assert (code, without_id(text)) == (451, UNAVAILABLE), text
        decision = stack.relay.wait_event(
            "decision", where=lambda e: e.get("stage") == "antivirus"
        )[-1]
        assert decision["reason"] == "no verdict within 1s"
        assert delivered(stack) == 0
        # Thawed, the same relay refuses it for what it is.
        assert submit(stack, CARRIERS["zip"]())[0] == 550


def test_on_error_accept_passes_unscanned_with_a_warning_each_time(
    tmp_path: Path, clamd: Clamd, pki: Pki, password_hashes: dict[str, str]
) -> None:
    for stack in _stack(
        tmp_path, pki, password_hashes, antivirus=antivirus(clamd, on_error="accept")
    ):
        clamd.stop()
        for _ in range(2):
            code, text = submit(stack, mail())
            assert code == 250, text
        warnings = stack.relay.wait_event("antivirus_unavailable", 2)
        assert len(warnings) == 2
        assert all(w["level"] == "warning" and w["on_error"] == "accept" for w in warnings)
        assert {w["txid"] for w in warnings} == {
            e["txid"] for e in stack.relay.events("transaction") if e["outcome"] == "delivered"
        }
        assert delivered(stack) == 2
        # A signature found is refused all the same.
        clamd.start()
        assert submit(stack, CARRIERS["pdf"]())[0] == 550
        assert delivered(stack) == 2


def test_the_inbound_listener_scans_too(
    tmp_path: Path, clamd: Clamd, pki: Pki, password_hashes: dict[str, str]
) -> None:
    """The operator delivering to the structure's BALs: the same scan."""
    bal = "jean.dupont@ch-exemple.mssante.fr"
    with two_sided(tmp_path, pki, password_hashes, antivirus=antivirus(clamd)) as (relay, _, box):

        def deliver(content: bytes) -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", relay.port_of("inbound"), timeout=30) as client:
                client.ehlo("mta.operateur.test")
                assert client.mail(DEST)[0] == 250
                assert client.rcpt(bal)[0] == 250
                client.docmd("DATA")
                client.send(wire_data(content))
                return client.getreply()

        def inbound_mail(*parts: tuple[str, bytes]) -> bytes:
            return mail(*parts).replace(f"From: {SENDER}".encode(), f"From: {DEST}".encode())

        code, text = deliver(
            inbound_mail(("dossier.zip", files.zip_of({"cr.txt": TEST_PATTERN + b"x" * 500})))
        )
        assert (code, without_id(text)) == (550, REFUSED), text
        assert relay.wait_event("virus_found")[-1]["signature"] == FOUND
        assert box.messages() == []
        assert deliver(inbound_mail(("compte-rendu.pdf", pdf_with(b"CR"))))[0] == 250
        assert len(box.messages()) == 1


def test_the_milter_behind_postfix_refuses_and_passes(
    tmp_path: Path, clamd: Clamd, pki: Pki, password_hashes: dict[str, str]
) -> None:
    with gateway_for(tmp_path, pki, password_hashes, antivirus=antivirus(clamd)) as gateway:
        infected = mail(("compte-rendu.pdf", pdf_with(TEST_PATTERN)))
        with gateway.client() as client, pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(POSTFIX_SENDER, [POSTFIX_DEST], infected)
        assert refused.value.smtp_code == 550
        error = refused.value.smtp_error
        assert isinstance(error, bytes) and without_id(error) == REFUSED, error
        event = gateway.relay.wait_event("virus_found")[-1]
        assert event["signature"] == FOUND
        outcome = gateway.relay.wait_event(
            "transaction", where=lambda e: e.get("txid") == event["txid"]
        )[-1]
        assert (outcome["outcome"], outcome["rule"]) == ("rejected", "malware")
        with gateway.client() as client:
            assert client.sendmail(POSTFIX_SENDER, [POSTFIX_DEST], mail()) == {}
        messages = gateway.arrived(1)
        assert len(messages) == 1
        assert messages[0][0]["rcpt_tos"] == [POSTFIX_DEST]


def test_check_config_and_serve_refuse_a_max_size_below_the_limits(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    """No message is ever passed unscanned for its size: the operator is
    told before the relay starts (base_config's limits: 60 MiB of content,
    87142246 bytes on the wire)."""
    from tests.e2e.test_cli import run, write

    config = base_config(
        pki, password_hashes, 10025, antivirus={"clamd": "unix:/run/clamav/clamd.ctl"}
    )
    path = write(tmp_path, config)
    assert run("check-config", "--config", str(path)).returncode == 0
    config["antivirus"]["max_size"] = "80MiB"
    path = write(tmp_path, config)
    for command in ("check-config", "serve"):
        result = run(command, "--config", str(path))
        assert result.returncode != 0
        assert "antivirus.max_size: must be at least 87142246 bytes" in result.stderr
        assert "Traceback" not in result.stderr


def test_a_reload_turns_the_antivirus_on_and_off(
    tmp_path: Path, clamd: Clamd, pki: Pki, password_hashes: dict[str, str]
) -> None:
    """The scanner is part of the configuration's generation (runtime.py):
    a reload adding or removing the section applies to the next sessions."""
    from tests.e2e.test_reload import mss_relay, rewrite

    for stack in _stack(tmp_path, pki, password_hashes):
        assert submit(stack, CARRIERS["zip"]())[0] == 250  # not scanned
        rewrite(stack.relay, lambda c: c.update(antivirus=antivirus(clamd)))
        done = mss_relay("reload", "--config", str(stack.relay.config_path))
        assert done.returncode == 0, done
        assert stack.relay.wait_event("reloaded")[0]["changed"] == ["antivirus"]
        assert submit(stack, CARRIERS["zip"]())[0] == 550
        rewrite(stack.relay, lambda c: c.pop("antivirus"))
        assert mss_relay("reload", "--config", str(stack.relay.config_path)).returncode == 0
        assert len(stack.relay.wait_event("reloaded", 2)) == 2
        assert submit(stack, CARRIERS["zip"]())[0] == 250
        assert delivered(stack) == 2
