"""The throttles several relays share on one PostgreSQL database
(state/shared_throttle.py): two PostgresDatabase objects, two pools, are two
relays; the private server of tests/support/postgres.py is the database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TypeVar

import pytest
import structlog
from structlog.testing import CapturingLogger

from mss_relay.core.mailbox import Bal, BalDirectory, BalType
from mss_relay.core.policy import Limits, Policy
from mss_relay.core.reply import (
    AUTH_LOCKED,
    RATE_MESSAGES,
    RATE_RECIPIENTS,
    SHARED_STATE_UNAVAILABLE,
)
from mss_relay.core.throttle import ThrottleSettings
from mss_relay.front.session import RelayContext
from mss_relay.front.smtp import RelayHandler
from mss_relay.state.errors import SharedStateUnavailable
from mss_relay.state.postgres import PostgresDatabase, PostgresSettings
from mss_relay.state.shared_throttle import SWEEP_EVERY, SharedGuard, SharedRates
from mss_relay.throttles import make_throttles
from tests.conftest import PgDatabase

T = TypeVar("T")
SETTINGS = ThrottleSettings(
    auth_max_failures_per_user=5,
    auth_max_failures_per_client=100,
    auth_window=600,
    auth_lockout=900,
    auth_failure_delay=1,
    auth_max_delay=3,
    messages_per_minute=7,
    recipients_per_hour=3,
)


class Clock:
    """Epoch seconds the test moves (the relays' NTP-synced wall clock)."""

    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


def run(body: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await body()

    return asyncio.run(main())


@asynccontextmanager
async def relays(db: PgDatabase, count: int = 2) -> AsyncIterator[list[PostgresDatabase]]:
    settings = PostgresSettings(url=db.url, pool_size=4, wait=1.0, connect_timeout=3.0)
    opened = [await PostgresDatabase.open(settings) for _ in range(count)]
    try:
        yield opened
    finally:
        for database in opened:
            await database.close()


async def rows(database: PostgresDatabase, key: str) -> int:
    [(count,)] = await database.fetch("SELECT count(*) FROM throttle_events WHERE key = %s", [key])
    return int(count)


def test_fifty_concurrent_takes_over_two_relays_grant_exactly_the_limit(
    postgres_db: PgDatabase,
) -> None:
    async def body() -> None:
        async with relays(postgres_db) as (a, b):
            clock = Clock()
            rates = [SharedRates(a, SETTINGS, clock=clock), SharedRates(b, SETTINGS, clock=clock)]
            verdicts = await asyncio.gather(*(rates[i % 2].message("jd") for i in range(50)))
            granted = [v for v in verdicts if v is None]
            refused = [v for v in verdicts if v is not None]
            assert len(granted) == 7
            assert {(v.reply, v.rule) for v in refused} == {(RATE_MESSAGES, "messages_per_minute")}
            # A refused take inserts nothing: the key holds its limit of rows.
            assert await rows(a, "rate:messages:jd") == 7
            assert await rates[1].message("ms") is None  # per user

            # The window slides by the shared wall clock.
            clock.now += 59
            late = await rates[0].message("jd")
            assert late is not None and late.reason == "limit 7, retry in 1 s"
            clock.now += 1.5
            assert await rates[1].message("jd") is None
            assert await rows(b, "rate:messages:jd") == 1  # the expired ones deleted as it went

            # Recipients per hour, the same way.
            takes = await asyncio.gather(*(rates[i % 2].recipient("jd") for i in range(10)))
            assert sum(t is None for t in takes) == 3
            assert {t.reply for t in takes if t is not None} == {RATE_RECIPIENTS}

            # A reload's new limit applies to what was counted.
            for r in rates:
                r.reconfigure(ThrottleSettings(messages_per_minute=1, recipients_per_hour=0))
            assert await rates[0].message("jd") is not None
            assert await rates[0].recipient("jd") is None  # 0: no limit
            assert await rates[0].message(None) is None  # no user: nothing counted

    run(body)


def test_unused_keys_are_swept(postgres_db: PgDatabase) -> None:
    async def body() -> None:
        async with relays(postgres_db, 1) as (a,):
            clock = Clock()
            rates = SharedRates(a, SETTINGS, clock=clock)
            guard = SharedGuard(a, SETTINGS, clock=clock)
            for i in range(20):
                assert await rates.recipient(f"user{i}") is None
                await guard.failed("10.0.0.1", f"user{i}")
            clock.now += 3600 + SWEEP_EVERY
            assert await rates.message("other") is None  # sweeps the rates' stale keys
            await guard.failed("10.0.0.2", "other")  # and the AUTH failures'
            left = await a.fetch("SELECT key FROM throttle_events ORDER BY key")
            assert left == [
                ("auth:client:10.0.0.2",),
                ("auth:user:other",),
                ("rate:messages:other",),
            ]

    run(body)


def test_a_lockout_earned_over_two_relays_refuses_on_both_until_unlocked(
    postgres_db: PgDatabase,
) -> None:
    async def body() -> None:
        async with relays(postgres_db) as (a, b):
            clock = Clock()
            guards = [SharedGuard(a, SETTINGS, clock=clock), SharedGuard(b, SETTINGS, clock=clock)]
            # 7 failures at once, from two addresses, over both relays: the
            # limit of 5 is reached once, the lockout reported once.
            outcomes = await asyncio.gather(
                *(guards[i % 2].failed(f"10.0.0.{i % 2 + 1}", "jd") for i in range(7))
            )
            locked = [o[1] for o in outcomes if o[1]]
            assert locked == [["user"]]
            assert max(delay for delay, _ in outcomes) == 3  # auth_max_delay
            for guard in guards:
                refused = await guard.begin("10.0.0.9", "jd")  # the user name, from anywhere
                assert refused is not None and refused.reply == AUTH_LOCKED
                assert refused.reason == "user locked for 900 s"
            assert await guards[0].begin("10.0.0.9", "other") is None  # per user
            guards[0].succeeded("10.0.0.9", "other")

            assert await guards[1].unlock("jd") == ["user"]
            for guard in guards:
                assert await guard.begin("10.0.0.1", "jd") is None
                guard.succeeded("10.0.0.1", "jd")
            assert await guards[0].unlock("jd") == []  # nothing left to lift

            # A client address, over its user names; an IPv6 /64 is one client.
            tight = ThrottleSettings(auth_max_failures_per_client=3, auth_max_failures_per_user=50)
            for guard in guards:
                guard.reconfigure(tight)
            results = [
                (await guards[i % 2].failed(f"2001:db8::{i + 1}", f"u{i}"))[1] for i in range(3)
            ]
            assert results == [[], [], ["client"]]
            refused = await guards[1].begin("2001:db8::ffff", "someone")
            assert refused is not None and refused.reply == AUTH_LOCKED
            assert await guards[0].unlock("2001:db8::1") == ["client"]
            assert await guards[1].begin("2001:db8::ffff", "someone") is None

            # The lockout ends by itself after auth_lockout seconds.
            await guards[0].failed("10.0.0.5", "x")
            await guards[1].failed("10.0.0.5", "x")
            assert (await guards[0].failed("10.0.0.5", "x"))[1] == ["client"]
            clock.now += 899
            assert await guards[1].begin("10.0.0.5", "y") is not None
            clock.now += 1
            assert await guards[1].begin("10.0.0.5", "y") is None

    run(body)


def test_in_flight_reservations_are_per_process(postgres_db: PgDatabase) -> None:
    async def body() -> None:
        async with relays(postgres_db) as (a, b):
            settings = ThrottleSettings(auth_max_failures_per_user=2)
            one, two = SharedGuard(a, settings), SharedGuard(b, settings)
            assert await one.begin("10.0.0.1", "jd") is None
            assert await one.begin("10.0.0.2", "jd") is None
            busy = await one.begin("10.0.0.3", "jd")
            assert busy is not None and busy.rule == "auth_in_flight"
            assert await two.begin("10.0.0.4", "jd") is None  # the other relay's own
            # A failure counted on one relay is seen by the other's reservations.
            assert (await one.failed("10.0.0.1", "jd"))[1] == []
            busy = await two.begin("10.0.0.5", "jd")
            assert busy is not None and busy.rule == "auth_in_flight"

    run(body)


async def _until(condition: Callable[[], Awaitable[bool]], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail("the shared throttle did not come back")
        await asyncio.sleep(0.2)


def test_the_server_down_gives_451_and_the_same_objects_work_again(
    postgres_db: PgDatabase,
) -> None:
    server = postgres_db.server

    async def body() -> None:
        async with relays(postgres_db) as (a, b):
            guard, rates = make_throttles(SETTINGS, a)
            other_guard, other_rates = make_throttles(SETTINGS, b)
            for database in (a, b):
                database.watch()
            assert await rates.message("jd") is None
            try:
                await asyncio.to_thread(server.stop)
                for check, rule in (
                    (rates.message, "messages_per_minute"),
                    (other_rates.message, "messages_per_minute"),
                    (rates.recipient, "recipients_per_hour"),
                ):
                    verdict = await check("jd")
                    assert verdict is not None and verdict.reply == SHARED_STATE_UNAVAILABLE
                    assert (verdict.reply.code, verdict.reply.enhanced) == (451, "4.3.0")
                    assert verdict.rule == rule
                    assert verdict.reason.startswith("shared state unavailable: ")
                    assert "jd" not in verdict.reason
                refused = await other_guard.begin("10.0.0.1", "jd")
                assert refused is not None and refused.reply == SHARED_STATE_UNAVAILABLE
                with pytest.raises(SharedStateUnavailable):
                    await guard.failed("10.0.0.1", "jd")
                with pytest.raises(SharedStateUnavailable):
                    await guard.unlock("jd")
                assert a.down is not None and b.down is not None
            finally:
                await asyncio.to_thread(server.start)

            async def back() -> bool:
                return a.down is None and b.down is None

            await _until(back)
            assert await rates.message("jd") is None
            assert await other_rates.recipient("jd") is None
            assert await other_guard.begin("10.0.0.1", "jd") is None
            assert (await other_guard.failed("10.0.0.1", "jd"))[1] == []
            assert await rows(a, "rate:messages:jd") == 2  # the one before, this one

    run(body)


SENDER = "dr.dupont@hopital.mssante.fr"


def test_the_smtp_front_counts_after_the_rules_and_answers_451_when_down(
    postgres_db: PgDatabase,
) -> None:
    """A session of the SMTP front (its MAIL and AUTH, called as aiosmtpd
    does) on the shared throttles: the rate only counts what the rules let
    through; the server down, 451 4.3.0 and one line saying why."""
    server = postgres_db.server

    async def body() -> None:
        async with relays(postgres_db, 1) as (a,):
            settings = ThrottleSettings(messages_per_minute=1)
            guard, rates = make_throttles(settings, a)
            logger = CapturingLogger()
            context = RelayContext(
                policy=Policy(
                    Limits(1 << 20, 1 << 20, 5),
                    BalDirectory([Bal(SENDER, BalType.NOMINATIVE, frozenset({"jd"}))]),
                ),
                upstream=None,
                users={},
                hostname="relay.test",
                role="submission",
                log=structlog.wrap_logger(logger, processors=[]),
                clock=lambda: datetime.now(UTC),
                throttle=settings,
                auth_guard=guard,
                rates=rates,
            )
            session = RelayHandler(context)
            session.client, session.user = "10.0.0.1", "jd"
            refused = await session.begin_transaction("other@hopital.mssante.fr", [])
            assert refused.rule == "sender_owned"  # refused by a rule: not counted
            assert await rows(a, "rate:messages:jd") == 0
            assert (await session.begin_transaction(SENDER, [])).reply is None
            late = await session.begin_transaction(SENDER, [])
            assert late.rule == "messages_per_minute" and late.reply is not None
            assert (late.reply.code, late.reply.enhanced) == (450, "4.7.1")
            try:
                await asyncio.to_thread(server.stop)
                logger.calls.clear()
                down = await session.begin_transaction(SENDER, [])
                assert down.reply is not None and str(down.reply).startswith(
                    "451 4.3.0 État partagé des relais indisponible"
                )
                assert session.txn is None
                [line] = [c.kwargs for c in logger.calls if c.kwargs.get("event") == "decision"]
                assert line["rule"] == "messages_per_minute"
                assert line["reason"].startswith("shared state unavailable: database unreachable")
                logger.calls.clear()
                answer = await session.authenticate(b"jd", b"secret")
                assert not answer.success and str(answer.message).startswith("451 4.3.0")
                [line] = [c.kwargs for c in logger.calls if c.kwargs.get("event") == "auth"]
                assert line["result"] == "unavailable"
            finally:
                await asyncio.to_thread(server.start)

    run(body)
