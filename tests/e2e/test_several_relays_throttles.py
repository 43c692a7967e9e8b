"""Several relays, one state (issue 18): the throttles two real relay
processes share on one private PostgreSQL database — an AUTH lockout earned
on one relay refuses on the other, a user's messages per minute are counted
over both, and 50 parallel sends over both let exactly the limit through.

Each test would fail with per-relay counters: the failures or messages are
spread over the two relays so that neither reaches the limit on its own.
"""

from __future__ import annotations

import concurrent.futures
import smtplib
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSWORDS, PgDatabase, Pki
from tests.e2e.test_several_relays import DR, Pair, two_relays
from tests.support.mail import make_message, wire_data
from tests.support.processes import Relay, wait_for

COLLEAGUE = "confrere@chu-exemple.mssante.fr"
# No delay after a failure (the tests count failures, not time), connection
# caps well above the tests' parallel sessions (they stay per process).
QUICK: dict[str, Any] = {
    "auth_failure_delay": 0,
    "auth_max_delay": 0,
    "max_connections": 200,
    "max_connections_per_client": 100,
    "recipients_per_hour": 0,
}


def _client(pair: Pair, relay: Relay) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", relay.port, timeout=30)
    client.ehlo("client.test")
    client.starttls(context=pair.pki.client_context())
    client.ehlo("client.test")
    return client


def login(pair: Pair, relay: Relay, user: str, password: str) -> tuple[int, bytes]:
    """AUTH PLAIN once, on a connection of its own: the reply. (Not
    smtplib's login(), which tries LOGIN after a refused PLAIN and reports
    the second reply: the lockout the first earned.)"""
    client = _client(pair, relay)
    try:
        client.user, client.password = user, password
        return client.auth("PLAIN", client.auth_plain, initial_response_ok=True)
    except smtplib.SMTPAuthenticationError as error:
        return error.smtp_code, error.smtp_error
    finally:
        client.close()


def sends(pair: Pair, relay: Relay) -> tuple[int, bytes]:
    """One message of jdupont's through `relay`: the MAIL reply when refused,
    else the reply at the end of DATA."""
    content = make_message(sender=DR, to=COLLEAGUE, subject="Compte rendu")
    client = _client(pair, relay)
    try:
        client.login("jdupont", PASSWORDS["jdupont"])
        code, text = client.mail(DR)  # the rate is taken here, once
        if code != 250:
            return code, text
        code, text = client.rcpt(COLLEAGUE)
        assert code == 250, (code, text)
        code, text = client.docmd("DATA")
        assert code == 354, (code, text)
        client.send(wire_data(content))
        return client.getreply()
    finally:
        client.close()


def test_an_auth_lockout_earned_on_a_refuses_on_b(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str], postgres_db: PgDatabase
) -> None:
    throttle = QUICK | {"auth_max_failures_per_user": 5, "auth_max_failures_per_client": 100}
    with two_relays(tmp_path, pki, password_hashes, postgres_db, throttle=throttle) as pair:
        # Four failures, two on each relay: each relay alone has seen two.
        for i, relay in enumerate((pair.a, pair.b, pair.a, pair.b)):
            code, _ = login(pair, relay, "jdupont", f"wrong-{i}")
            assert code == 535
        # Below the limit, the right password still opens B (nothing forgiven).
        assert login(pair, pair.b, "jdupont", PASSWORDS["jdupont"])[0] == 235
        # The fifth, on A (its third): the user is locked out on both.
        assert login(pair, pair.a, "jdupont", "wrong-4")[0] == 535
        for relay in (pair.b, pair.a):
            code, text = login(pair, relay, "jdupont", PASSWORDS["jdupont"])
            assert (code, text[:5]) == (454, b"4.7.0"), (code, text)
        assert pair.rows("SELECT count(*) FROM throttle_locks WHERE key = 'auth:user:jdupont'") == [
            (1,)
        ]
        # Another user is not locked (the client's limit is far off).
        assert login(pair, pair.b, "msecret", PASSWORDS["msecret"])[0] == 235


def test_a_client_address_locked_out_on_b_is_refused_on_a(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str], postgres_db: PgDatabase
) -> None:
    throttle = QUICK | {"auth_max_failures_per_user": 100, "auth_max_failures_per_client": 4}
    with two_relays(tmp_path, pki, password_hashes, postgres_db, throttle=throttle) as pair:
        # Four user names guessed from 127.0.0.1, two on each relay.
        for i, relay in enumerate((pair.b, pair.a, pair.b, pair.a)):
            assert login(pair, relay, f"inconnu{i}", "guess")[0] == 535
        code, text = login(pair, pair.a, "jdupont", PASSWORDS["jdupont"])
        assert (code, text[:5]) == (454, b"4.7.0"), (code, text)
        assert login(pair, pair.b, "jdupont", PASSWORDS["jdupont"])[0] == 454


def test_messages_per_minute_counts_the_messages_sent_through_both(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str], postgres_db: PgDatabase
) -> None:
    throttle = QUICK | {"messages_per_minute": 4}
    with two_relays(tmp_path, pki, password_hashes, postgres_db, throttle=throttle) as pair:
        started = time.time()
        replies = [sends(pair, relay) for relay in (pair.a, pair.b, pair.a, pair.b)]
        assert [code for code, _ in replies] == [250] * 4
        # A fifth, through either relay: over the user's minute (each relay saw 2).
        for relay in (pair.a, pair.b):
            code, text = sends(pair, relay)
            assert (code, text[:5]) == (450, b"4.7.1"), (code, text)
        # The 60 s window is the limit's own: these figures hold within it.
        assert time.time() - started < 60, "the machine was too slow for one minute's window"
        assert wait_for(lambda: len(pair.operator.messages()) == 4)
        assert pair.rows("SELECT count(*) FROM throttle_events WHERE key LIKE 'rate:%'") == [(4,)]


@pytest.mark.parametrize("limit", [20])
def test_fifty_parallel_sends_over_both_relays_let_exactly_the_limit_through(
    tmp_path: Path,
    pki: Pki,
    password_hashes: dict[str, str],
    postgres_db: PgDatabase,
    limit: int,
) -> None:
    throttle = QUICK | {"messages_per_minute": limit, "max_concurrent_messages": 50}
    with two_relays(tmp_path, pki, password_hashes, postgres_db, throttle=throttle) as pair:
        started = time.time()

        def one(i: int) -> tuple[int, bytes]:
            return sends(pair, pair.a if i % 2 else pair.b)

        with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
            replies = list(pool.map(one, range(50)))
        elapsed = time.time() - started
        codes = sorted(code for code, _ in replies)
        assert codes == [250] * limit + [450] * (50 - limit), replies
        assert all(text[:5] == b"4.7.1" for code, text in replies if code == 450)
        # No count lost (more than the limit) nor granted twice: the window is
        # the limit's own minute, which all 50 sends fell in.
        assert elapsed < 60, "the machine was too slow for one minute's window"
        assert wait_for(lambda: len(pair.operator.messages()) == limit)
        assert pair.rows(
            "SELECT count(*) FROM throttle_events WHERE key = 'rate:messages:jdupont'"
        ) == [(limit,)]
