"""Several relays, one state (issue 18): the throttles two real relay
processes share on one private PostgreSQL database — an AUTH lockout earned
on one relay refuses on the other, a user's messages per minute are counted
over both, and 50 parallel sends over both let exactly the limit through.

Each test would fail with per-relay counters: the failures or messages are
spread over the two relays so that neither reaches the limit on its own.

The rates' windows are sliding, not calendar minutes (state/shared_throttle.py
deletes the events at or before now - 60 s as it counts): a test whose takes
all fall within 60 s of its first sees every one of them counted, whatever
minute of the clock it starts in. The tests measure that span and say so when
a machine was too slow for it, before any figure is judged.
"""

from __future__ import annotations

import concurrent.futures
import smtplib
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mss_relay.core.reply import AUTH_LOCKED, RATE_MESSAGES, Reply, ascii_text
from tests.conftest import PASSWORDS, PgDatabase, Pki
from tests.e2e.test_several_relays import DR, Pair, two_relays
from tests.support.mail import make_message, wire_data
from tests.support.processes import Relay, wait_for

COLLEAGUE = "confrere@chu-exemple.mssante.fr"
WINDOW = 60.0  # messages_per_minute's sliding window (state/shared_throttle.py)
# No delay after a failure (the tests count failures, not time), connection
# caps well above the tests' parallel sessions (they stay per process), no
# recipients' limit that could refuse first.
QUICK: dict[str, Any] = {
    "auth_failure_delay": 0,
    "auth_max_delay": 0,
    "max_connections": 200,
    "max_connections_per_client": 100,
    "recipients_per_hour": 0,
}


def refused_with(reply: Reply, answer: tuple[int, bytes]) -> bool:
    """Whether an (code, text) answer is `reply` as the relay sends it: its
    code, enhanced code and text folded to ASCII, then the session's id."""
    code, text = answer
    return code == reply.code and text.startswith(
        f"{reply.enhanced} {ascii_text(reply.text)} (id ".encode()
    )


def _client(pair: Pair, relay: Relay) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", relay.port, timeout=60)
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
        text = error.smtp_error  # typeshed: bytes | str; smtplib gives bytes
        return error.smtp_code, text if isinstance(text, bytes) else text.encode()
    finally:
        client.close()


def logged_in(pair: Pair, relay: Relay) -> smtplib.SMTP:
    """A session of jdupont's on `relay`, authenticated, before MAIL."""
    client = _client(pair, relay)
    try:
        client.login("jdupont", PASSWORDS["jdupont"])
    except BaseException:
        client.close()
        raise
    return client


def message(client: smtplib.SMTP) -> tuple[int, bytes]:
    """One message of jdupont's on an authenticated session: the MAIL reply
    when refused, else the reply at the end of DATA. The session is closed."""
    content = make_message(sender=DR, to=COLLEAGUE, subject="Compte rendu")
    try:
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


def sends(pair: Pair, relay: Relay) -> tuple[int, bytes]:
    """One message of jdupont's through `relay` (message())."""
    return message(logged_in(pair, relay))


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
        # The fifth, on A (its third): the user is locked out on both. The
        # text tells the lockout from AUTH_BUSY (attempts still being
        # verified), which has the same 454 4.7.0.
        assert login(pair, pair.a, "jdupont", "wrong-4")[0] == 535
        for relay in (pair.b, pair.a):
            answer = login(pair, relay, "jdupont", PASSWORDS["jdupont"])
            assert refused_with(AUTH_LOCKED, answer), answer
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
        for relay in (pair.a, pair.b):
            answer = login(pair, relay, "jdupont", PASSWORDS["jdupont"])
            assert refused_with(AUTH_LOCKED, answer), answer
        assert pair.rows(
            "SELECT count(*) FROM throttle_locks WHERE key = 'auth:client:127.0.0.1'"
        ) == [(1,)]


def test_messages_per_minute_counts_the_messages_sent_through_both(
    tmp_path: Path, pki: Pki, password_hashes: dict[str, str], postgres_db: PgDatabase
) -> None:
    throttle = QUICK | {"messages_per_minute": 4}
    with two_relays(tmp_path, pki, password_hashes, postgres_db, throttle=throttle) as pair:
        started = time.time()  # before the first take: the window's start, or earlier
        replies = [sends(pair, relay) for relay in (pair.a, pair.b, pair.a, pair.b)]
        # A fifth, through either relay: over the user's minute (each relay saw 2).
        refusals = [sends(pair, relay) for relay in (pair.a, pair.b)]
        assert time.time() - started < WINDOW, "the machine was too slow for one window"
        assert [code for code, _ in replies] == [250] * 4, replies
        assert all(refused_with(RATE_MESSAGES, answer) for answer in refusals), refusals
        assert wait_for(lambda: len(pair.operator.messages()) == 4)
        assert pair.rows("SELECT count(*) FROM throttle_events WHERE key LIKE 'rate:%'") == [(4,)]
        assert len(pair.operator.messages()) == 4


@pytest.mark.parametrize("limit", [20])
def test_fifty_parallel_sends_over_both_relays_let_exactly_the_limit_through(
    tmp_path: Path,
    pki: Pki,
    password_hashes: dict[str, str],
    postgres_db: PgDatabase,
    limit: int,
) -> None:
    # The AUTH limits high too: a relay lets at most the limit less the
    # failures be verified at once, the others wait for them (at most 10 s,
    # then 454): 25 scrypt verifications per relay on two cores could take
    # longer than that. Up to 50 DATA phases at once on either relay.
    throttle = QUICK | {
        "messages_per_minute": limit,
        "max_concurrent_messages": 50,
        "auth_max_failures_per_user": 100,
        "auth_max_failures_per_client": 100,
    }
    with two_relays(tmp_path, pki, password_hashes, postgres_db, throttle=throttle) as pair:
        # 50 sessions authenticated first, then all their MAILs released at
        # once (a barrier): the takes race on the user's key within a second
        # or so, not spread over the time the logins took.
        ready = threading.Barrier(50, timeout=120)
        went: list[float] = []

        def one(i: int) -> tuple[int, bytes]:
            client = logged_in(pair, pair.a if i % 2 else pair.b)
            try:
                ready.wait()
            except threading.BrokenBarrierError:
                client.close()
                raise
            went.append(time.time())
            return message(client)

        with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
            replies = list(pool.map(one, range(50)))
        assert time.time() - min(went) < WINDOW, "the machine was too slow for one window"
        # Exactly the limit accepted, every other refused with the rate's
        # reply: no count lost (more accepted) nor granted twice, nothing else.
        accepted = [answer for answer in replies if answer[0] == 250]
        refused = [answer for answer in replies if answer[0] != 250]
        assert len(accepted) == limit, replies
        assert len(refused) == 50 - limit, replies
        assert all(refused_with(RATE_MESSAGES, answer) for answer in refused), refused
        assert wait_for(lambda: len(pair.operator.messages()) >= limit)
        assert len(pair.operator.messages()) == limit
        assert pair.rows(
            "SELECT count(*) FROM throttle_events WHERE key = 'rate:messages:jdupont'"
        ) == [(limit,)]
