"""The in-memory throttles behind the async interface of throttles.py (SQLite,
one machine): the same answers as core/throttle.py gives, with a clock the
test drives; the policy's place for the rate (front/session.py RatePlace)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from mss_relay.core.reply import AUTH_BUSY, AUTH_LOCKED, RATE_MESSAGES, RATE_RECIPIENTS
from mss_relay.core.throttle import AuthGuard, SendingRates, ThrottleSettings
from mss_relay.front.session import RatePlace
from mss_relay.throttles import LocalGuard, LocalRates, make_throttles

T = TypeVar("T")
SETTINGS = ThrottleSettings(
    auth_max_failures_per_user=3,
    auth_max_failures_per_client=5,
    auth_window=600,
    auth_lockout=900,
    auth_failure_delay=1,
    auth_max_delay=2.5,
    messages_per_minute=2,
    recipients_per_hour=3,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(body: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await body()

    return asyncio.run(main())


def test_the_factory_keeps_sqlite_in_memory() -> None:
    guard, rates = make_throttles(SETTINGS, None)
    assert isinstance(guard, LocalGuard) and isinstance(rates, LocalRates)


def test_local_guard_answers_as_the_auth_guard() -> None:
    async def body() -> None:
        clock = Clock()
        guard = LocalGuard(AuthGuard(SETTINGS), clock=clock)
        for expected in ([], []):
            assert await guard.begin("10.0.0.1", "jd") is None
            assert (await guard.failed("10.0.0.1", "jd"))[1] == expected
            clock.now += 1
        # Three in flight would reach the limit: the third one waits (454).
        assert await guard.begin("10.0.0.1", "jd") is None
        busy = await guard.begin("10.0.0.2", "jd")
        assert busy is not None and busy.reply == AUTH_BUSY and busy.rule == "auth_in_flight"
        delay, locked = await guard.failed("10.0.0.1", "jd")
        assert (delay, locked) == (2.5, ["user"])
        refused = await guard.begin("10.0.0.2", "jd")
        assert refused is not None and refused.reply == AUTH_LOCKED
        assert refused.reason == "user locked for 900 s"
        assert await guard.unlock("jd") == ["user"]
        assert await guard.begin("10.0.0.2", "jd") is None
        guard.succeeded("10.0.0.2", "jd")
        guard.reconfigure(ThrottleSettings(auth_max_failures_per_user=1))
        assert (await guard.failed("10.0.0.2", "jd"))[1] == ["user"]

    run(body)


def test_local_rates_answer_as_the_sending_rates() -> None:
    async def body() -> None:
        clock = Clock()
        rates = LocalRates(SendingRates(SETTINGS), clock=clock)
        assert await rates.message("jd") is None
        clock.now = 10
        assert await rates.message("jd") is None
        clock.now = 59
        refused = await rates.message("jd")
        assert refused is not None and refused.reply == RATE_MESSAGES
        assert (refused.rule, refused.reason) == ("messages_per_minute", "limit 2, retry in 1 s")
        assert await rates.message(None) is None
        clock.now = 60.5
        assert await rates.message("jd") is None
        for _ in range(3):
            assert await rates.recipient("jd") is None
        refused = await rates.recipient("jd")
        assert refused is not None and refused.reply == RATE_RECIPIENTS
        assert refused.rule == "recipients_per_hour"
        rates.reconfigure(ThrottleSettings(recipients_per_hour=0))
        assert await rates.recipient("jd") is None

    run(body)


def test_the_rate_place_says_whether_the_rules_before_it_passed() -> None:
    place = RatePlace()
    assert not place.reached
    assert place() is None  # lets the rules after it run
    assert place.reached
