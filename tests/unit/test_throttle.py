"""Throttling with a clock the test drives (no sleeping)."""

from __future__ import annotations

from mss_relay.core.throttle import (
    AuthGuard,
    SendingRates,
    SlidingWindow,
    ThrottleSettings,
    client_key,
    connection_verdict,
)

SETTINGS = ThrottleSettings(
    auth_max_failures_per_user=3,
    auth_max_failures_per_client=5,
    auth_window=600,
    auth_lockout=900,
    auth_failure_delay=1,
    auth_max_delay=2.5,
    messages_per_minute=2,
    recipients_per_hour=3,
    max_connections=10,
    max_connections_per_client=3,
)


def test_lockout_starts_at_the_limit_and_ends_after_the_lockout_time() -> None:
    guard = AuthGuard(SETTINGS)
    delays = [guard.failed("10.0.0.1", "jd", t)[0] for t in (0, 1)]
    assert delays == [1, 2]  # slower and slower...
    assert guard.locked("10.0.0.1", "jd", 2) is None
    delay, locked = guard.failed("10.0.0.1", "jd", 2)
    assert (delay, locked) == (2.5, ["user"])  # ...up to the cap, then locked out
    verdict = guard.locked("10.0.0.2", "jd", 3)  # the user name, from anywhere
    assert verdict is not None and verdict.reply is not None
    assert (verdict.reply.code, verdict.reply.enhanced) == (454, "4.7.0")
    assert guard.locked("10.0.0.1", "other", 3) is None  # the address is not locked yet
    assert guard.locked("10.0.0.2", "jd", 2 + 899) is not None
    assert guard.locked("10.0.0.2", "jd", 2 + 900) is None  # the lockout is over


def test_old_failures_are_forgotten_and_a_success_forgives_nothing() -> None:
    guard = AuthGuard(SETTINGS)
    guard.failed("10.0.0.1", "jd", 0)
    guard.failed("10.0.0.1", "jd", 1)
    assert guard.failed("10.0.0.1", "jd", 700)[1] == []  # the first two are out of the window
    # (the legitimate user logs in here: the guesser's count stays)
    assert guard.failed("10.0.0.1", "jd", 701)[1] == []
    assert guard.failed("10.0.0.1", "jd", 702)[1] == ["user"]


def test_ipv6_clients_are_counted_by_their_64_prefix() -> None:
    assert (
        client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    )
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert client_key("10.0.0.1") == "10.0.0.1"
    guard = AuthGuard(SETTINGS)
    for i in range(5):
        guard.failed(f"2001:db8::{i + 1}", f"user{i}", i)
    assert guard.locked("2001:db8::abcd", "other", 10) is not None


def test_the_client_address_is_locked_across_user_names() -> None:
    guard = AuthGuard(SETTINGS)
    outcomes = [guard.failed("10.0.0.9", f"user{i}", i)[1] for i in range(5)]
    assert outcomes == [[], [], [], [], ["client"]]
    assert guard.locked("10.0.0.9", "jd", 10) is not None
    assert guard.locked("10.0.0.8", "jd", 10) is None


def test_sending_rates_slide() -> None:
    rates = SendingRates(SETTINGS)
    assert rates.message("jd", 0) is None and rates.message("jd", 10) is None
    refused = rates.message("jd", 59)
    assert refused is not None and refused.reply is not None and refused.reply.code == 450
    assert rates.message("ms", 59) is None  # per user
    assert rates.message("jd", 60.5) is None  # the first one left the minute
    assert [rates.recipient("jd", t) is None for t in (0, 1, 2, 3)] == [True, True, True, False]
    assert rates.recipient("jd", 3600.5) is None
    assert rates.message(None, 0) is None  # no user: the incoming side
    unlimited = SendingRates(ThrottleSettings(messages_per_minute=0, recipients_per_hour=0))
    assert all(unlimited.message("jd", 0) is None for _ in range(1000))


def test_connection_caps_total_and_per_client() -> None:
    assert connection_verdict(SETTINGS, 10, 3) is None
    total = connection_verdict(SETTINGS, 11, 1)
    per_client = connection_verdict(SETTINGS, 5, 4)
    assert total is not None and total.rule == "max_connections"
    assert per_client is not None and per_client.rule == "max_connections_per_client"
    for verdict in (total, per_client):
        assert verdict.reply is not None
        assert (verdict.reply.code, verdict.reply.enhanced) == (421, "4.7.0")


def test_memory_stays_bounded_under_many_keys() -> None:
    window = SlidingWindow(limit=3, period=10)
    for i in range(50_000):
        window.add(f"k{i}", float(i))
    assert len(window._events) <= 10_001


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_attempts_in_flight_count_against_the_limits_before_they_are_verified() -> None:
    # Issue 13, item 8: 50 attempts at once, none settled yet (their scrypt
    # verification is slow): only as many reserved as the user's limit allows.
    guard, clock = AuthGuard(SETTINGS), FakeClock()
    refusals = [guard.begin("10.0.0.1", "jd", clock()) for _ in range(50)]
    reserved = refusals.count(None)
    assert reserved == SETTINGS.auth_max_failures_per_user == 3
    busy = refusals[-1]
    assert busy is not None and busy.reply is not None and busy.rule == "auth_in_flight"
    assert (busy.reply.code, busy.reply.enhanced) == (454, "4.7.0")
    assert "3 attempts being verified" in busy.reason
    clock.now = 1.0
    outcomes = [guard.failed("10.0.0.1", "jd", clock())[1] for _ in range(reserved)]
    assert outcomes == [[], [], ["user"]]  # verified: exactly the limit, then locked
    locked = guard.begin("10.0.0.1", "jd", clock())
    assert locked is not None and locked.rule == "auth_lockout"
    assert guard._in_flight == {}  # settled: nothing kept


def test_a_success_releases_its_reservation_and_forgives_nothing() -> None:
    guard, clock = AuthGuard(SETTINGS), FakeClock()
    assert guard.begin("10.0.0.1", "jd", clock()) is None
    guard.failed("10.0.0.1", "jd", clock())
    assert guard.begin("10.0.0.1", "jd", clock()) is None
    assert guard.begin("10.0.0.1", "jd", clock()) is None
    assert guard.begin("10.0.0.1", "jd", clock()) is not None  # 1 failure + 2 in flight
    guard.succeeded("10.0.0.1", "jd")
    assert guard.begin("10.0.0.1", "jd", clock()) is None  # room again
    guard.succeeded("10.0.0.1", "jd")
    guard.succeeded("10.0.0.1", "jd")
    assert guard._in_flight == {}
    clock.now = 2.0
    assert guard.failed("10.0.0.1", "jd", clock())[1] == []
    assert guard.failed("10.0.0.1", "jd", clock())[1] == ["user"]  # the first failure stays


def test_attempts_in_flight_from_one_address_count_across_user_names() -> None:
    guard, clock = AuthGuard(SETTINGS), FakeClock()
    assert [guard.begin("10.0.0.9", f"user{i}", clock()) for i in range(5)] == [None] * 5
    refused = guard.begin("10.0.0.9", "user5", clock())
    assert refused is not None and "client: 5 attempts" in refused.reason
    assert guard.begin("10.0.0.8", "user5", clock()) is None  # another address
    for i in range(5):
        guard.failed("10.0.0.9", f"user{i}", clock())
    assert guard.locked("10.0.0.9", "user5", clock()) is not None
    clock.now = SETTINGS.auth_lockout
    guard.succeeded("10.0.0.8", "user5")
    assert guard.begin("10.0.0.9", "user5", clock()) is None  # the lockout is over


def _lock_out(guard: AuthGuard, client: str, user: str, now: float) -> list[str]:
    locked: list[str] = []
    while not locked:
        locked = guard.failed(client, user, now)[1]
    return locked


def test_unlock_lifts_a_user_lockout_and_forgets_its_failures() -> None:
    guard = AuthGuard(SETTINGS)
    assert _lock_out(guard, "10.0.0.1", "jd", 0) == ["user"]
    guard.failed("10.0.0.1", "jd", 1)  # (locked: a client would not get this far)
    assert guard.unlock("someone-else") == []
    assert guard.unlock("jd") == ["user"]
    assert guard.locked("10.0.0.1", "jd", 2) is None
    assert guard.unlock("jd") == []  # nothing left to lift
    # Its failures are forgotten too: one more is not a new lockout.
    assert guard.failed("10.0.0.9", "jd", 3)[1] == []


def test_unlock_lifts_a_client_lockout_by_its_address() -> None:
    guard = AuthGuard(SETTINGS)
    for i in range(5):  # five users from one address: the client's limit
        guard.failed("2001:db8:1:2::1", f"u{i}", 0)
    assert guard.locked("2001:db8:1:2::7", "new", 1) is not None
    # Any address of the /64 names it, as it was counted.
    assert guard.unlock("2001:db8:1:2::9") == ["client"]
    assert guard.locked("2001:db8:1:2::7", "new", 1) is None


def test_new_settings_keep_the_counts_and_apply_to_running_lockouts() -> None:
    guard = AuthGuard(SETTINGS)
    guard.failed("10.0.0.1", "jd", 0)
    guard.failed("10.0.0.1", "jd", 1)
    stricter = ThrottleSettings(auth_max_failures_per_user=2, auth_lockout=60)
    guard.reconfigure(stricter)
    # The two failures still count: the limit is now reached by them.
    assert guard.failed("10.0.0.1", "jd", 2)[1] == ["user"]
    assert guard.locked("10.0.0.1", "jd", 2 + 59) is not None
    assert guard.locked("10.0.0.1", "jd", 2 + 60) is None  # the new lockout length
    # A lockout under way takes the new length too.
    other = AuthGuard(SETTINGS)
    _lock_out(other, "10.0.0.2", "mx", 0)
    other.reconfigure(ThrottleSettings(auth_lockout=30))
    assert other.locked("10.0.0.2", "mx", 31) is None


def test_sending_rates_keep_their_counts_across_new_settings() -> None:
    rates = SendingRates(SETTINGS)  # 2 messages a minute
    assert rates.message("jd", 0) is None
    rates.reconfigure(ThrottleSettings(messages_per_minute=1))
    assert rates.message("jd", 1) is not None  # the one already sent counts
    rates.reconfigure(ThrottleSettings(messages_per_minute=0))
    assert rates.message("jd", 2) is None  # no limit any more
    rates.reconfigure(ThrottleSettings(messages_per_minute=3))
    assert [rates.message("jd", 3 + i) is None for i in range(4)] == [True] * 3 + [False]


def test_a_smaller_window_keeps_the_newest_events() -> None:
    window = SlidingWindow(5, 60)
    for t in range(5):
        window.add("k", t)
    window.resize(2, 60)
    assert window.count("k", 5) == 2 and window.full("k", 5)
    assert window.retry_after("k", 5) == 3 + 60 - 5  # the newest two: at 3 and 4
