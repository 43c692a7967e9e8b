"""End to end: the private Postfix harness itself (tests/support/postfix.py).

A real Postfix on loopback relays to the recording upstream; with an
unreachable milter it must temp-fail, since the milter tests rely on
milter_default_action = tempfail. Each test starts its own instances: this
also checks that instances run one after another, and side by side, in one
pytest session, and that stop() leaves no Postfix process behind.
"""

from __future__ import annotations

import os
import smtplib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.mail import make_message
from tests.support.postfix import PostfixInstance, postfix_available
from tests.support.processes import Upstream, free_port

SENDER = "jean.dupont@ch-exemple.mssante.fr"
DEST = "dr.martin@chu-b.mssante.fr"
DEST2 = "secretariat@chu-b.mssante.fr"
TEMPFAIL = b"4.7.1 Service unavailable - try again later"

StartPostfix = Callable[..., PostfixInstance]


@pytest.fixture(scope="module")
def postfix_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = postfix_available()
    if reason:
        # scripts/test.sh installs Postfix: in CI a missing one is a failure,
        # never a silently skipped end-to-end check.
        if os.environ.get("CI"):
            pytest.fail(f"Postfix is required in CI: {reason}")
        pytest.skip(reason)
    return tmp_path_factory.mktemp("postfix")


@pytest.fixture(scope="module")
def upstream(postfix_workdir: Path) -> Iterator[Upstream]:
    server = Upstream(postfix_workdir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def start_postfix(tmp_path: Path, upstream: Upstream) -> Iterator[StartPostfix]:
    """Start instances relaying to the upstream; all are stopped at teardown."""
    started: list[PostfixInstance] = []

    def start(name: str = "mta", **options: Any) -> PostfixInstance:
        options.setdefault("milter", None)
        instance = PostfixInstance(
            tmp_path / name, smtp_port=free_port(), relay_port=upstream.port, **options
        )
        started.append(instance)
        instance.start()
        return instance

    yield start
    for instance in started:
        instance.stop()


def wait_messages(upstream: Upstream, count: int, timeout: float = 10.0) -> list[Any]:
    """Delivery is asynchronous (queue manager, then smtp): poll until it is there."""
    deadline = time.monotonic() + timeout
    while True:
        messages = upstream.messages()
        if len(messages) >= count or time.monotonic() > deadline:
            return messages
        time.sleep(0.05)


def instance_pids(instance: PostfixInstance) -> list[int]:
    """Processes started for this instance, found independently of stop()'s own
    bookkeeping: every Postfix process inherits MAIL_CONFIG (import_environment)."""
    marker = f"MAIL_CONFIG={instance.config_dir}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker in environ and state != "Z":
            pids.append(int(entry.name))
    return pids


def test_relays_a_message_to_the_upstream(upstream: Upstream, start_postfix: StartPostfix) -> None:
    mta = start_postfix()
    before = len(upstream.messages())
    content = make_message(SENDER, DEST, body="Bonjour,\nrelayé par Postfix.\n")
    with smtplib.SMTP("127.0.0.1", mta.port, timeout=30) as client:
        code, banner = client.ehlo("client.test")
        assert code == 250 and banner.startswith(b"mx.ch-exemple.mssante.fr")
        # Our relay's 20/60 MB rules must decide, not Postfix's own limit.
        assert client.esmtp_features["size"] == "83886080"
        assert client.sendmail(SENDER, [DEST, DEST2], content) == {}

    messages = wait_messages(upstream, before + 1)
    assert len(messages) == before + 1, mta.log_text()
    envelope, data = messages[-1]
    assert envelope["mail_from"] == SENDER
    assert sorted(envelope["rcpt_tos"]) == sorted([DEST, DEST2])
    # Postfix only prepends its Received: the message itself arrives intact.
    assert data.startswith(b"Received: from ")
    assert b"by mx.ch-exemple.mssante.fr (Postfix)" in data
    assert data.endswith(content)
    assert mta.wait_log(r"status=sent \(250 2\.0\.0 Ok: queued as UP\d+\)"), mta.log_text()
    assert mta.queued() == []


def test_unreachable_milter_tempfails_at_mail_from(
    upstream: Upstream, start_postfix: StartPostfix
) -> None:
    milter_port = free_port()  # nothing listens there
    mta = start_postfix(milter=f"inet:127.0.0.1:{milter_port}")
    before = len(upstream.messages())
    with smtplib.SMTP("127.0.0.1", mta.port, timeout=30) as client:
        # Postfix 3.7 meets the failed milter connection with 220 and EHLO 250,
        # and gives milter_default_action's answer to MAIL FROM.
        assert client.ehlo("client.test")[0] == 250
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail(SENDER, [DEST], make_message(SENDER, DEST))
    assert refused.value.smtp_code == 451
    assert refused.value.smtp_error == TEMPFAIL

    # postlogd writes asynchronously: wait for the last line, then read them all.
    assert mta.wait_log(r"NOQUEUE: milter-reject: MAIL from .*: 451 4\.7\.1 "), mta.log_text()
    assert f"connect to Milter service inet:127.0.0.1:{milter_port}: Connection" in mta.log_text()
    # Refused before DATA: nothing was queued, so nothing can reach the upstream
    # later (no need to wait and see).
    assert mta.queued() == []
    assert len(upstream.messages()) == before


def test_instances_run_side_by_side_and_stop_leaves_no_process(
    upstream: Upstream, start_postfix: StartPostfix
) -> None:
    first = start_postfix("first")
    second = start_postfix("second")
    assert first.port != second.port
    first_pids = instance_pids(first)
    assert first_pids and set(first_pids).isdisjoint(instance_pids(second))
    master = first.master_pid()
    assert master in first_pids

    first.stop()
    assert instance_pids(first) == []
    assert first.processes() == []

    # The other instance is untouched and still relays.
    before = len(upstream.messages())
    with smtplib.SMTP("127.0.0.1", second.port, timeout=30) as client:
        client.sendmail(SENDER, [DEST], make_message(SENDER, DEST))
    assert len(wait_messages(upstream, before + 1)) == before + 1, second.log_text()
    second.stop()
    assert instance_pids(second) == []
    second.stop()  # idempotent: teardown stops every instance again
