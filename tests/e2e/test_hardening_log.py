"""Issue 13, defect 2: the log's file system full, for real (a small tmpfs).

With log.required (the default) new transactions get 451 4.3.0 while the log
cannot be written, on the SMTP listener and on the milter, and the relay
resumes by itself once space is freed; with log.required false mail goes on,
and the lines of that time are written on recovery. Either way the writer
survives, says so once on stderr, and writes a log_recovered line."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Pki, Stack, base_config
from tests.support.filesystems import fill, small_tmpfs
from tests.support.mail import connect, make_message, send, wire_data, without_id
from tests.support.milter_client import MilterClient
from tests.support.processes import Relay, Upstream, free_port

SENDER = "jean.dupont@ch-exemple.mssante.fr"
DEST = "dr.martin@chu-b.mssante.fr"
REFUSED = b"4.3.0 Journal d'audit indisponible, reessayez plus tard"
TIMEOUT = 30.0


def until(condition: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"not in {timeout} s: {what}"
        time.sleep(0.05)
    return result


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "fs") as directory:
        yield directory


def start(tmp: Path, pki: Pki, hashes: dict[str, str], disk: Path, **log: Any) -> Stack:
    upstream = Upstream(tmp)
    upstream.start()
    config = base_config(pki, hashes, upstream.port, log={"file": str(disk / "log.jsonl"), **log})
    config["listeners"].append({"name": "milter", "role": "milter", "port": free_port()})
    # Many MAILs in a row until the log's page is full: no sending rate here.
    config["throttle"] = {"messages_per_minute": 0}
    relay = Relay(tmp, config)
    relay.start()
    return Stack(relay, upstream, pki)


def stop(stack: Stack) -> None:
    stack.relay.stop()
    stack.upstream.stop()


def mail_reply(client: smtplib.SMTP) -> tuple[int, bytes]:
    """MAIL, and RSET after it when it was accepted."""
    code, text = client.mail(SENDER)
    if code == 250:
        client.rset()
    return code, without_id(text)  # issue 15: refusals end with (id ...)


def milter_mail(stack: Stack) -> tuple[str, str]:
    with MilterClient(stack.relay.port_of("milter")) as client:
        client.negotiate()
        client.connect()
        client.helo()
        reply = client.mail(SENDER, **{"{auth_authen}": "jdupont"})
        return reply.code, without_id(reply.text) if reply.code == "y" else ""


def test_required_log_refuses_mail_while_full_and_resumes(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str], disk: Path
) -> None:
    stack = start(tmp_path, pki, password_hashes, disk)  # log.required: true by default
    relay = stack.relay
    try:
        with connect(stack) as client:
            _, (code, _) = send(client, SENDER, [DEST], make_message())
        assert code == 250
        relay.wait_event("transaction")
        filler = fill(disk)
        # The writer learns of the full disk at its next write: the lines
        # of the next MAILs fill the log file's last page, then ENOSPC.
        with connect(stack) as client:
            replies = until(lambda: (r := mail_reply(client))[0] != 250 and r, "a refusal at MAIL")
            assert replies == (451, REFUSED), replies
            assert mail_reply(client) == (451, REFUSED)  # and it stays so
        assert milter_mail(stack) == ("y", REFUSED.decode().replace("4.3.0", "451 4.3.0", 1))
        assert len(stack.upstream.messages()) == 1  # nothing went out untraced
        err = relay.process.stderr()
        assert err.count("cannot write the log") == 1, err
        assert "No space left on device" in err and "log.required" in err
        assert "Traceback" not in err and "Exception in thread" not in err

        filler.unlink()
        with connect(stack) as client:
            until(lambda: mail_reply(client)[0] == 250, "MAIL accepted again")
            _, (code, _) = send(client, SENDER, [DEST], make_message())
        assert code == 250
        (recovered,) = relay.wait_event("log_recovered")
        assert recovered["dropped"] == 0 and recovered["error"] == "ENOSPC"
        assert recovered["outage_s"] > 0
        # The refusals of the outage were held and written: the trail is whole.
        refusals = relay.wait_event(
            "decision", where=lambda e: e["rule"] == "log_required" and e["stage"] == "mail"
        )
        assert len(refusals) >= 3
        delivered = relay.wait_event(
            "transaction", count=2, where=lambda e: e["outcome"] == "delivered"
        )
        assert len(delivered) == 2 and len(stack.upstream.messages()) == 2
        assert "log written again" in relay.process.stderr()
    finally:
        stop(stack)


def test_log_not_required_lets_mail_through_and_catches_up(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str], disk: Path
) -> None:
    stack = start(tmp_path, pki, password_hashes, disk, required=False)
    relay = stack.relay
    try:
        relay.wait_event("started")
        filler = fill(disk)
        sent = 0

        def one_more() -> bool:
            nonlocal sent
            with connect(stack) as client:
                _, (code, text) = send(client, SENDER, [DEST], make_message())
            assert code == 250, text  # never refused: log.required is false
            sent += 1
            return "cannot write the log" in relay.process.stderr()

        until(one_more, "the writer's report on stderr")
        err = relay.process.stderr()
        assert "mail goes on without its audit trail (log.required: false)" in err
        assert "Traceback" not in err
        assert len(stack.upstream.messages()) == sent

        filler.unlink()
        with connect(stack) as client:
            _, (code, _) = send(client, SENDER, [DEST], make_message())
        assert code == 250
        (recovered,) = relay.wait_event("log_recovered")
        assert recovered["dropped"] == 0
        # The transactions of the outage were held and are in the log now.
        delivered = relay.wait_event(
            "transaction", count=sent + 1, where=lambda e: e["outcome"] == "delivered"
        )
        assert len(delivered) == sent + 1
    finally:
        stop(stack)


def test_a_transaction_past_mail_is_not_sent_on_untraced(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str], disk: Path
) -> None:
    stack = start(tmp_path, pki, password_hashes, disk)
    relay = stack.relay
    try:
        with connect(stack) as client, connect(stack) as other:
            assert client.mail(SENDER)[0] == 250
            assert client.rcpt(DEST)[0] == 250
            filler = fill(disk)
            until(lambda: mail_reply(other)[0] == 451, "the log failing")
            code, _ = client.docmd("DATA")
            assert code == 354
            client.send(wire_data(make_message()))
            code, text = client.getreply()
            assert (code, without_id(text)) == (451, REFUSED)
        assert stack.upstream.messages() == []  # no 250 without its trace
        filler.unlink()
        (refused,) = relay.wait_event(
            "transaction", where=lambda e: e["rule"] == "log_required", timeout=TIMEOUT
        )
        assert refused["outcome"] == "rejected" and refused["recipients"] == [DEST]
    finally:
        stop(stack)


def test_a_log_that_cannot_be_opened_is_a_configuration_error(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str]
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    log = {"file": str(blocker / "log.jsonl")}
    relay = Relay(tmp_path, base_config(pki, password_hashes, free_port(), log=log))
    with pytest.raises(RuntimeError, match="exited with 78"):
        relay.start()
    err = relay.process.stderr()
    assert "configuration error: log.file: cannot open" in err and "Traceback" not in err
