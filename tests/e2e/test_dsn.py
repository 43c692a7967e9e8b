"""End to end: DSN (RFC 3461) through the real relay. The relay advertises
DSN, checks RET, ENVID, NOTIFY and ORCPT, and passes them on exactly as the
client wrote them to an upstream that advertises DSN; to one that does not
(the recording upstream without --dsn, which would refuse them 555), they are
dropped and the transaction line says so."""

from __future__ import annotations

import re
import smtplib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Pki, Stack, _stack
from tests.support.mail import connect, make_message, send, wire_data

SENDER = "jean.dupont@ch-exemple.mssante.fr"
DEST = "dr.martin@chu-b.mssante.fr"
OTHER = "dr.durand@chu-b.mssante.fr"
# The transaction line's `dsn` field (its contract: docs/trust/dsn.md).
PASSED = "passed"
DROPPED = "dropped: upstream does not advertise DSN"
QUOTED_ID = re.compile(rb" \(id [0-9A-F]+\)$")

# Mixed case in the xtext, a hex escape (+2B is « + »), lower-case keywords
# and values: the upstream must see the values byte for byte.
MAIL_DSN = "ret=hdrs EnVid=Qx7+2Bab.Z-09"
RCPT_DSN = "notify=Success,DELAY ORCPT=rfc822;Dr.Martin+2Btag@CHU-B.mssante.fr"


@pytest.fixture(scope="module")
def dsn_stack(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, password_hashes: dict[str, str]
) -> Iterator[Stack]:
    """A relay whose upstream advertises DSN."""
    yield from _stack(tmp_path_factory.mktemp("dsn"), pki, password_hashes, upstream_dsn=True)


def _deliver(stack: Stack) -> tuple[dict[str, Any], bytes, str]:
    """One message with DSN parameters on MAIL and on the first RCPT: what the
    upstream recorded (envelope, bytes) and the transaction's id."""
    before = len(stack.upstream.messages())
    with connect(stack) as client:
        code, text = client.docmd("MAIL", f"FROM:<{SENDER}> {MAIL_DSN} BODY=8BITMIME SIZE=500")
        assert code == 250, text
        code, text = client.docmd("RCPT", f"TO:<{DEST}> {RCPT_DSN}")
        assert code == 250, text
        code, text = client.docmd("RCPT", f"TO:<{OTHER}>")
        assert code == 250, text
        code, text = client.docmd("DATA")
        assert code == 354, text
        client.send(wire_data(make_message()))
        code, text = client.getreply()
        assert code == 250, text
    txid = re.search(rb"id ([0-9A-F]+)", text)
    assert txid is not None
    messages = stack.upstream.messages()
    assert len(messages) == before + 1
    meta, eml = messages[-1]
    return meta, eml, txid.group(1).decode()


def _transaction(stack: Stack, txid: str) -> dict[str, Any]:
    return stack.relay.wait_event("transaction", where=lambda e: e["txid"] == txid)[0]


def test_ehlo_advertises_dsn(shared_stack: Stack) -> None:
    with connect(shared_stack) as client:
        assert client.has_extn("dsn")


def test_dsn_parameters_reach_a_dsn_upstream_as_written(dsn_stack: Stack) -> None:
    meta, _, txid = _deliver(dsn_stack)
    # The keyword in upper case, the value as the client wrote it.
    assert meta["mail_dsn"] == ["RET=hdrs", "ENVID=Qx7+2Bab.Z-09"]
    assert meta["rcpt_dsn"] == {
        DEST: ["NOTIFY=Success,DELAY", "ORCPT=rfc822;Dr.Martin+2Btag@CHU-B.mssante.fr"],
        OTHER: [],
    }
    # BODY is passed on as before (SIZE too, to an upstream that advertises it: not this one).
    assert meta["mail_options"] == ["BODY=8BITMIME"]
    assert _transaction(dsn_stack, txid)["dsn"] == PASSED


def test_dsn_parameters_dropped_for_an_upstream_without_dsn(shared_stack: Stack) -> None:
    # That upstream refuses DSN parameters (aiosmtpd's 555): a 250 means they
    # were not sent; its record says no DSN parameter came.
    meta, _, txid = _deliver(shared_stack)
    assert meta["mail_dsn"] == [] and meta["rcpt_dsn"] == {DEST: [], OTHER: []}
    assert "BODY=8BITMIME" in meta["mail_options"]
    assert _transaction(shared_stack, txid)["dsn"] == DROPPED


def test_a_transaction_without_dsn_parameters_has_no_dsn_field(dsn_stack: Stack) -> None:
    with connect(dsn_stack) as client:
        _, (code, text) = send(client, SENDER, [DEST], make_message())
    assert code == 250, text
    txid = re.search(rb"id ([0-9A-F]+)", text)
    assert txid is not None
    assert "dsn" not in _transaction(dsn_stack, txid.group(1).decode())


def _refused_then_taken(
    client: smtplib.SMTP, command: str, path: str, params: str, text: bytes
) -> None:
    """With params: 501 5.5.4 with that text and an id, then the session goes
    on (the command without them is taken); without: the command taken."""
    if params:
        code, reply = client.docmd(command, f"{path} {params}")
        assert (code, reply[:5]) == (501, b"5.5.4"), reply
        assert reply[6:].startswith(text) and QUOTED_ID.search(reply), reply
    code, reply = client.docmd(command, path)
    assert code == 250, reply


@pytest.mark.parametrize(
    ("mail", "rcpt", "text"),
    [
        ("RET=FULLX", "", b"Parametre RET invalide"),
        ("RET=FULL RET=HDRS", "", b"Parametre RET repete"),
        ("ENVID=ab+2bc", "", b"Parametre ENVID invalide"),  # lower-case hex
        ("ENVID=ab+Z1", "", b"Parametre ENVID invalide"),
        ("ENVID=a=b", "", b"Parametre ENVID invalide"),
        ("ENVID=" + "A" * 101, "", b"Parametre ENVID trop long"),
        ("", "NOTIFY=NEVER,SUCCESS", b"Parametre NOTIFY invalide"),
        ("", "NOTIFY=SOMETIMES", b"Parametre NOTIFY invalide"),
        ("", "NOTIFY=SUCCESS NOTIFY=FAILURE", b"Parametre NOTIFY repete"),
        ("", "ORCPT=rfc822", b"Parametre ORCPT invalide"),
        ("", "ORCPT=rfc822;x+2b@y", b"Parametre ORCPT invalide"),
        ("", "ORCPT=rfc822;a@b ORCPT=rfc822;a@b", b"Parametre ORCPT repete"),
    ],
)
def test_bad_dsn_parameters_are_501_5_5_4(
    dsn_stack: Stack, mail: str, rcpt: str, text: bytes
) -> None:
    before = [e for e in dsn_stack.upstream.journal() if e["event"] in ("MAIL", "RCPT")]
    with connect(dsn_stack) as client:
        _refused_then_taken(client, "MAIL", f"FROM:<{SENDER}>", mail, text)
        _refused_then_taken(client, "RCPT", f"TO:<{DEST}>", rcpt, text)
        client.rset()
    after = [e for e in dsn_stack.upstream.journal() if e["event"] in ("MAIL", "RCPT")]
    # The refused command never reached the upstream: one MAIL, one RCPT.
    assert [e["event"] for e in after[len(before) :]] == ["MAIL", "RCPT"]
    refused = dsn_stack.relay.wait_event("decision", where=lambda e: e["rule"] == "dsn_syntax")
    assert refused[-1]["reply"].startswith("501 5.5.4")
    # The log names the path alone, not the parameters refused with it.
    paths = {e.get("sender") or e.get("recipient") for e in refused}
    assert paths <= {f"<{SENDER}>", f"<{DEST}>"}, paths


def test_bad_dsn_parameter_before_mail_is_aiosmtpd_503(dsn_stack: Stack) -> None:
    with connect(dsn_stack) as client:
        code, _ = client.docmd("RCPT", f"TO:<{DEST}> NOTIFY=NEVER,DELAY")
        assert code == 503


def test_read_receipt_header_passes_untouched(dsn_stack: Stack) -> None:
    header = b"Disposition-Notification-To: Jean Dupont <jean.dupont@ch-exemple.mssante.fr>\r\n"
    before = len(dsn_stack.upstream.messages())
    with connect(dsn_stack) as client:
        _, (code, text) = send(client, SENDER, [DEST], header + make_message())
    assert code == 250, text
    messages = dsn_stack.upstream.messages()
    assert len(messages) == before + 1 and header in messages[-1][1]


def test_dsn_parameters_on_a_plain_smtplib_send(dsn_stack: Stack) -> None:
    """smtplib's own sendmail() with mail and rcpt options, as a client sends them."""
    with connect(dsn_stack) as client:
        refused = client.sendmail(
            SENDER,
            [DEST],
            make_message(),
            mail_options=["RET=FULL", "ENVID=abc"],
            rcpt_options=["NOTIFY=FAILURE"],
        )
    assert refused == {}
    meta, _ = dsn_stack.upstream.messages()[-1]
    assert meta["mail_dsn"] == ["RET=FULL", "ENVID=abc"]
    assert meta["rcpt_dsn"] == {DEST: ["NOTIFY=FAILURE"]}


def test_a_bad_notify_from_smtplib_is_refused(shared_stack: Stack) -> None:
    with (
        connect(shared_stack) as client,
        pytest.raises(smtplib.SMTPRecipientsRefused) as refused,
    ):
        client.sendmail(SENDER, [DEST], make_message(), rcpt_options=["NOTIFY=NEVER,DELAY"])
    code, text = refused.value.recipients[DEST]
    assert (code, text[:5]) == (501, b"5.5.4")
