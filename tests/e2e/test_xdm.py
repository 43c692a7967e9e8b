"""Issue 19 §2 and §3 end to end: IHE-XDM packages and the X-MSS fields
through the real relay (the SMTP listener, and the milter), one relay per
xdm.mode. refuse: each defect is a 550 with its French text and nothing
reaches the upstream; warn (the default, no xdm section): accepted and
delivered, the finding's code on the decision line; off: nothing read,
nothing logged. The log never holds a matricule INS nor the file's name."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Pki, Stack, base_config, with_inbound
from tests.e2e.test_metrics import scrape, value
from tests.support import xdm as build
from tests.support.mail import connect, make_message, send, wire_data, without_id
from tests.support.milter_client import MilterClient
from tests.support.processes import Relay, Upstream, free_port

SENDER = "jean.dupont@ch-exemple.mssante.fr"
PRO = "dr.martin@chu-b.mssante.fr"
PATIENT = f"{build.PATIENT}@patient.mssante.fr"
NAME = "IHE_XDM.zip"
REFUSED = "550 5.7.1 Paquet IHE_XDM refuse : "


def message(
    package: bytes | None = None, to: str = PRO, headers: dict[str, str] | None = None
) -> bytes:
    content = make_message(
        sender=SENDER, to=to, attachments={NAME: package} if package is not None else None
    )
    if headers:
        head, body = content.split(b"\r\n\r\n", 1)
        extra = "".join(f"\r\n{k}: {v}" for k, v in headers.items()).encode()
        content = head + extra + b"\r\n\r\n" + body
    return content


# id -> (message, recipient, finding code, the refusal in refuse mode: None = accepted)
CASES: dict[str, tuple[bytes, str, str | None, str | None]] = {
    "valid-to-patient": (message(build.for_patient(), PATIENT), PATIENT, None, None),
    "valid-to-professional": (message(build.for_patient()), PRO, None, None),
    "missing-metadata": (
        message(build.without_metadata()),
        PRO,
        "xdm_missing_metadata",
        REFUSED + "fichier IHE_XDM/SUBSET*/METADATA.XML absent",
    ),
    "test-oid": (
        message(build.for_patient(oid=build.TEST_NIR_OID)),
        PRO,
        "xdm_test_identity",
        REFUSED + "identite de test interdite sur ce relais",
    ),
    "two-patients": (
        message(
            build.package(metadata_xml=build.metadata(build.cx(), build.cx(build.OTHER_PATIENT)))
        ),
        PRO,
        "xdm_several_patients",
        REFUSED + "un message ne doit concerner qu'un seul patient",
    ),
    "other-patient": (
        message(build.for_patient(build.OTHER_PATIENT), PATIENT),
        PATIENT,
        "xdm_other_patient",
        REFUSED + "l'INS du paquet n'est pas celui du patient destinataire",
    ),
    "billion-laughs": (
        message(build.package(metadata_xml=build.BILLION_LAUGHS)),
        PRO,
        "xdm_unsafe_metadata",
        REFUSED + "METADATA.XML invalide (DTD ou entites XML interdites)",
    ),
    "external-entity": (
        message(build.package(metadata_xml=build.EXTERNAL_ENTITY)),
        PRO,
        "xdm_unsafe_metadata",
        REFUSED + "METADATA.XML invalide (DTD ou entites XML interdites)",
    ),
    "x-mss-ins-malformed": (
        message(headers={"X-MSS-INS": "oui"}),
        PRO,
        "mss_header_malformed",
        "550 5.6.0 En-tete X-MSS-INS mal forme : valeur O ou N attendue",
    ),
    # Reported whatever the mode (but off), never refused.
    "x-mss-ins-without-package": (
        message(headers={"X-MSS-INS": "O"}),
        PRO,
        "mss_ins_without_package",
        None,
    ),
}
IDS = list(CASES)


@dataclass
class Relayed(Stack):
    mailbox: Upstream  # inbound_delivery: the structure's mailbox server


def start(tmp: Path, pki: Pki, hashes: dict[str, str], **overrides: Any) -> Iterator[Relayed]:
    """A relay with the milter and the inbound listener too."""
    upstream, mailbox = Upstream(tmp / "op"), Upstream(tmp / "mb")
    upstream.start()
    mailbox.start()
    config = with_inbound(base_config(pki, hashes, upstream.port, **overrides), mailbox.port)
    config["listeners"].append({"name": "milter", "role": "milter", "port": free_port()})
    relay = Relay(tmp, config)
    try:
        relay.start()
        yield Relayed(relay, upstream, pki, mailbox)
    finally:
        relay.stop()
        upstream.stop()
        mailbox.stop()


@pytest.fixture(scope="module")
def refuse(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, password_hashes: dict[str, str]
) -> Iterator[Relayed]:
    tmp = tmp_path_factory.mktemp("xdm-refuse")
    metrics = {"port": free_port()}
    yield from start(tmp, pki, password_hashes, xdm={"mode": "refuse"}, metrics=metrics)


@pytest.fixture(scope="module")
def warn(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, password_hashes: dict[str, str]
) -> Iterator[Stack]:
    """No xdm section: the default, warn."""
    yield from start(tmp_path_factory.mktemp("xdm-warn"), pki, password_hashes)


@pytest.fixture(scope="module")
def off(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, password_hashes: dict[str, str]
) -> Iterator[Stack]:
    yield from start(tmp_path_factory.mktemp("xdm-off"), pki, password_hashes, xdm={"mode": "off"})


def submit(stack: Stack, content: bytes, to: str) -> tuple[str, str]:
    """The end-of-DATA reply (« 250 ... », « 550 5.7.1 ... » without its id), and the txid."""
    before = len(stack.relay.events("transaction"))
    with connect(stack) as client:
        _, (code, text) = send(client, SENDER, [to], content)
        client.quit()
    txid = stack.relay.wait_event("transaction", before + 1)[-1]["txid"]
    return f"{code} {without_id(text.decode())}", str(txid)


def xdm_lines(stack: Stack, txid: str) -> list[dict[str, Any]]:
    return [
        e
        for e in stack.relay.events("decision")
        if e.get("txid") == txid and e.get("stage") == "xdm"
    ]


def no_health_data(stack: Stack) -> None:
    """Issue 17: no matricule INS (the recipient's is pseudonymized), no file name."""
    text = stack.relay.log_text()
    for secret in (build.PATIENT, build.OTHER_PATIENT, NAME.lower(), NAME):
        assert secret not in text, secret


@pytest.mark.parametrize("case", IDS)
def test_refuse_mode(refuse: Stack, case: str) -> None:
    content, to, code, refusal = CASES[case]
    before = len(refuse.upstream.messages())
    reply, txid = submit(refuse, content, to)
    lines = xdm_lines(refuse, txid)
    if refusal is None:
        assert reply.startswith("250 "), reply
        assert len(refuse.upstream.messages()) == before + 1
    else:
        assert reply == refusal
        assert len(refuse.upstream.messages()) == before
        assert lines and (lines[0]["verdict"], lines[0]["rule"]) == ("reject", "xdm")
        outcome = refuse.relay.wait_event("transaction", where=lambda e: e["txid"] == txid)[-1]
        assert (outcome["outcome"], outcome["rule"]) == ("rejected", "xdm")
    assert [e["xdm"] for e in lines] == ([[code]] if code else [])
    no_health_data(refuse)


@pytest.mark.parametrize("case", IDS)
def test_warn_mode_delivers_and_logs_the_code(warn: Stack, case: str) -> None:
    content, to, code, _ = CASES[case]
    before = len(warn.upstream.messages())
    reply, txid = submit(warn, content, to)
    assert reply.startswith("250 "), reply
    assert len(warn.upstream.messages()) == before + 1
    lines = xdm_lines(warn, txid)
    assert [(e["verdict"], e["rule"], e["xdm"]) for e in lines] == (
        [("accept", "xdm", [code])] if code else []
    )
    no_health_data(warn)


@pytest.mark.parametrize("case", IDS)
def test_off_mode_reads_nothing(off: Stack, case: str) -> None:
    content, to, _, _ = CASES[case]
    reply, txid = submit(off, content, to)
    assert reply.startswith("250 "), reply
    assert xdm_lines(off, txid) == []


def test_refusals_are_counted_under_the_xdm_stage(refuse: Stack) -> None:
    port = int(refuse.relay.config["metrics"]["port"])
    labels = {"listener": "submission", "stage": "xdm", "rule": "xdm"}
    before = value(scrape(port), "mss_relay_refusals_total", **labels)
    content, to, _, _ = CASES["test-oid"]
    assert submit(refuse, content, to)[0].startswith("550 ")
    assert value(scrape(port), "mss_relay_refusals_total", **labels) == before + 1


def test_the_milter_refuses_with_the_same_reply(refuse: Stack) -> None:
    content, to, _, refusal = CASES["test-oid"]
    with MilterClient(refuse.relay.port_of("milter")) as client:
        client.negotiate()
        client.macros("C", {"j": "mx.test", "{daemon_name}": "smtpd"})
        assert client.connect("192.0.2.7").code == "c"
        assert client.helo().code == "c"
        assert client.mail(SENDER, **{"{auth_authen}": "jdupont"}).code == "c"
        assert client.rcpt(to).code == "c"
        replies = client.message(content)
    assert replies[-1].code == "y", replies
    assert without_id(replies[-1].text) == refusal
    no_health_data(refuse)


def test_the_inbound_listener_checks_too(refuse: Relayed) -> None:
    """The operator delivering to the structure's BALs: the same check."""
    box = refuse.mailbox
    before = len(box.messages())

    def deliver(package: bytes) -> str:
        content = message(package, to=SENDER).replace(
            f"From: {SENDER}".encode(), f"From: {PRO}".encode()
        )
        with smtplib.SMTP("127.0.0.1", refuse.relay.port_of("inbound"), timeout=30) as client:
            client.ehlo("mta.operateur.test")
            assert client.mail(PRO)[0] == 250
            assert client.rcpt(SENDER)[0] == 250
            client.docmd("DATA")
            client.send(wire_data(content))
            code, text = client.getreply()
        return f"{code} {without_id(text.decode())}"

    refused = deliver(build.for_patient(oid=build.TEST_NIR_OID))
    assert refused == REFUSED + "identite de test interdite sur ce relais"
    assert len(box.messages()) == before
    assert deliver(build.for_patient()).startswith("250 ")
    assert len(box.messages()) == before + 1
    no_health_data(refuse)


def test_a_reload_changes_the_mode(off: Stack) -> None:
    """The mode is part of the configuration's generation (runtime.py): a
    reload applies to the next sessions."""
    from tests.e2e.test_reload import mss_relay, rewrite

    content, to, _, refusal = CASES["test-oid"]
    rewrite(off.relay, lambda c: c.update(xdm={"mode": "refuse"}))
    try:
        assert mss_relay("reload", "--config", str(off.relay.config_path)).returncode == 0
        assert off.relay.wait_event("reloaded")[-1]["changed"] == ["xdm"]
        assert submit(off, content, to)[0] == refusal
    finally:
        rewrite(off.relay, lambda c: c.update(xdm={"mode": "off"}))
        assert mss_relay("reload", "--config", str(off.relay.config_path)).returncode == 0
        assert len(off.relay.wait_event("reloaded", 2)) == 2
    assert submit(off, content, to)[0].startswith("250 ")


def test_the_x_mss_fields_reach_the_upstream_untouched(refuse: Stack) -> None:
    """Passed through: the fields of the client referential arrive as the
    client wrote them (folding and case too), in refuse mode as in the others."""
    fields = {
        "X-MSS-INS": "O",
        "X-MSS-CODECDA": "11488-4,34112-3",
        "X-MSS-NIL": "NIL-0001",
        "X-Mss-Mes": "FIN",
    }
    before = len(refuse.upstream.messages())
    reply, _ = submit(refuse, message(build.for_patient(), PATIENT, fields), PATIENT)
    assert reply.startswith("250 "), reply
    _, delivered = refuse.upstream.messages()[before]
    head = delivered.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    for name, written in fields.items():
        assert f"\r\n{name}: {written}\r\n".encode() in head, name
