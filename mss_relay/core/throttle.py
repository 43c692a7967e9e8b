"""Throttling: AUTH failures, per-user sending rates, connection counts.

Seed 000 §10 (strictly personal accounts) makes a guessed password the worst
thing that can happen to a structure's mail: failures slow the guesser down,
then lock the client address and the user name out for a while. A stolen
account is contained by per-user rates.

Time is passed in (monotonic seconds), never read here: the tests drive it.
Memory is bounded: a key holds at most `limit` timestamps, and keys whose
timestamps have all expired are dropped as new ones come.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass

from mss_relay.core.reply import (
    AUTH_BUSY,
    AUTH_LOCKED,
    RATE_MESSAGES,
    RATE_RECIPIENTS,
    TOO_MANY_CONNECTIONS,
    Reply,
)
from mss_relay.core.verdict import Verdict

# Keys kept before expired ones are swept (a sweep costs one pass over them).
_SWEEP_AT = 10_000


@dataclass(frozen=True, slots=True)
class ThrottleSettings:
    auth_max_failures_per_user: int = 5
    auth_max_failures_per_client: int = 10
    auth_window: float = 900.0  # failures older than this are forgotten
    auth_lockout: float = 900.0
    auth_failure_delay: float = 1.0  # added per failure before answering 535
    auth_max_delay: float = 5.0
    messages_per_minute: int = 30  # per user; 0: no limit
    recipients_per_hour: int = 500  # per user; 0: no limit
    max_connections: int = 200
    max_connections_per_client: int = 20
    max_concurrent_messages: int = 4  # DATA phases at once (memory)


class SlidingWindow:
    """At most `limit` events per `period` seconds and key."""

    def __init__(self, limit: int, period: float) -> None:
        self.limit = limit
        self.period = period
        self._events: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        events = self._events.get(key)
        if events is None:
            if len(self._events) >= _SWEEP_AT:
                self._sweep(now)
            events = self._events[key] = deque(maxlen=self.limit)
        while events and events[0] <= now - self.period:
            events.popleft()
        return events

    def _sweep(self, now: float) -> None:
        for key in [k for k, e in self._events.items() if not e or e[-1] <= now - self.period]:
            del self._events[key]

    def full(self, key: str, now: float) -> bool:
        return len(self._recent(key, now)) >= self.limit

    def count(self, key: str, now: float) -> int:
        return len(self._recent(key, now))

    def add(self, key: str, now: float) -> None:
        self._recent(key, now).append(now)

    def clear(self, key: str) -> None:
        self._events.pop(key, None)

    def resize(self, limit: int, period: float) -> None:
        """New settings (a reload): the events counted so far are kept, the
        newest `limit` of each key, and age out by the new period."""
        if limit != self.limit:
            self._events = {k: deque(e, maxlen=limit) for k, e in self._events.items()}
        self.limit, self.period = limit, period

    def retry_after(self, key: str, now: float) -> float:
        events = self._recent(key, now)
        return max(0.0, events[0] + self.period - now) if events else 0.0


def ip_address(address: str) -> str:
    """One spelling per client address: IPv4-mapped IPv6 (« ::ffff:10.0.0.1 »,
    as a dual-stack socket reports IPv4 clients) as plain IPv4."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def client_key(address: str) -> str:
    """What counts as one client: an IPv4 address, or an IPv6 /64 (one site's
    prefix: a guesser rotating through its addresses stays one client)."""
    normalized = ip_address(address)
    if ":" in normalized:
        return str(ipaddress.ip_network(f"{normalized}/64", strict=False))
    return normalized


class AuthGuard:
    """Failed AUTH attempts, counted per client address and per user name.

    An attempt is reserved (begin()) before its password is verified and
    counts against both limits until it is settled: succeeded() releases it,
    failed() turns it into a failure. Verification is slow (scrypt, in a
    thread): counted only afterwards, 50 attempts at once would all be
    verified before the first failure is known. Reserved first, no more
    attempts are ever verified than the limits allow.
    """

    def __init__(self, settings: ThrottleSettings) -> None:
        self.settings = settings
        self._by_client = SlidingWindow(settings.auth_max_failures_per_client, settings.auth_window)
        self._by_user = SlidingWindow(settings.auth_max_failures_per_user, settings.auth_window)
        # "client:1.2.3.4" / "user:x" -> since when: the lockout's length is
        # read from the settings, so that a reload applies to running ones.
        self._locked: dict[str, float] = {}
        self._in_flight: dict[str, int] = {}  # the same keys -> attempts being verified

    def _keys(self, client: str, user: str) -> tuple[tuple[str, SlidingWindow, str], ...]:
        return (
            ("client", self._by_client, client_key(client)),
            ("user", self._by_user, user),
        )

    def locked(self, client: str, user: str, now: float) -> Verdict | None:
        for key in (f"client:{client_key(client)}", f"user:{user}"):
            since = self._locked.get(key)
            if since is None:
                continue
            until = since + self.settings.auth_lockout
            if until > now:
                return Verdict.tempfail(
                    AUTH_LOCKED,
                    rule="auth_lockout",
                    reason=f"{key.split(':', 1)[0]} locked for {until - now:.0f} s",
                )
            del self._locked[key]
        return None

    def begin(self, client: str, user: str, now: float) -> Verdict | None:
        """Before a password is verified: a refusal (locked out, or the limit
        taken up by failures and attempts still being verified), or None, the
        attempt then reserved until succeeded() or failed() settles it."""
        locked = self.locked(client, user, now)
        if locked is not None:
            return locked
        keys = self._keys(client, user)
        for kind, window, key in keys:
            pending = self._in_flight.get(f"{kind}:{key}", 0)
            if window.count(key, now) + pending >= window.limit:
                # Not a lockout: those in flight may yet succeed.
                return Verdict.tempfail(
                    AUTH_BUSY,
                    rule="auth_in_flight",
                    reason=f"{kind}: {pending} attempts being verified, limit {window.limit}",
                )
        for kind, _, key in keys:
            name = f"{kind}:{key}"
            self._in_flight[name] = self._in_flight.get(name, 0) + 1
        return None

    def _release(self, client: str, user: str) -> None:
        for kind, _, key in self._keys(client, user):
            name = f"{kind}:{key}"
            left = self._in_flight.get(name, 0) - 1
            if left > 0:
                self._in_flight[name] = left
            else:
                self._in_flight.pop(name, None)  # memory: only keys in flight are kept

    def succeeded(self, client: str, user: str) -> None:
        """A reserved attempt whose password was right."""
        # No forgiveness of past failures: an account that logs in often (a
        # DPI connector) would otherwise reset a guesser's count every time.
        # Failures simply age out of auth_window.
        self._release(client, user)

    def failed(self, client: str, user: str, now: float) -> tuple[float, list[str]]:
        """A reserved attempt that failed (or whose outcome is unknown), counted:
        the delay to wait before answering, and what got locked out by it
        ("client", "user")."""
        self._release(client, user)
        settings = self.settings
        locked = []
        failures = 0
        for kind, window, key in self._keys(client, user):
            window.add(key, now)
            failures = max(failures, window.count(key, now))
            if window.full(key, now):
                self._locked[f"{kind}:{key}"] = now
                window.clear(key)
                locked.append(kind)
        return min(settings.auth_failure_delay * failures, settings.auth_max_delay), locked

    def reconfigure(self, settings: ThrottleSettings) -> None:
        """New settings (a reload): failures counted and lockouts under way are
        kept, and judged by the new limits, window and lockout length."""
        self.settings = settings
        self._by_client.resize(settings.auth_max_failures_per_client, settings.auth_window)
        self._by_user.resize(settings.auth_max_failures_per_user, settings.auth_window)

    def unlock(self, what: str) -> list[str]:
        """Lift the lockout of a user name or of a client address (its /64 for
        IPv6), and forget its failures: what was lifted ("user", "client")."""
        lifted = []
        keys = [("user", self._by_user, what)]
        try:
            ipaddress.ip_address(what)
            keys.append(("client", self._by_client, client_key(what)))
        except ValueError:
            pass  # not an address: a user name only
        for kind, window, key in keys:
            if self._locked.pop(f"{kind}:{key}", None) is not None:
                lifted.append(kind)
            window.clear(key)
        return lifted


class SendingRates:
    """Per-user rates: messages per minute (at MAIL), recipients per hour (at RCPT)."""

    def __init__(self, settings: ThrottleSettings) -> None:
        self._messages: SlidingWindow | None = None
        self._recipients: SlidingWindow | None = None
        self.reconfigure(settings)

    def reconfigure(self, settings: ThrottleSettings) -> None:
        """New settings (a reload): what each user sent so far still counts."""
        self._messages = self._window(self._messages, settings.messages_per_minute, 60.0)
        self._recipients = self._window(self._recipients, settings.recipients_per_hour, 3600.0)

    @staticmethod
    def _window(window: SlidingWindow | None, limit: int, period: float) -> SlidingWindow | None:
        if not limit:
            return None  # 0: no limit (and nothing to count)
        if window is None:
            return SlidingWindow(limit, period)
        window.resize(limit, period)
        return window

    def message(self, user: str | None, now: float) -> Verdict | None:
        """Check and count one more message for the user."""
        return self._take(self._messages, user, now, RATE_MESSAGES, rule="messages_per_minute")

    def recipient(self, user: str | None, now: float) -> Verdict | None:
        return self._take(self._recipients, user, now, RATE_RECIPIENTS, rule="recipients_per_hour")

    @staticmethod
    def _take(
        window: SlidingWindow | None, user: str | None, now: float, reply: Reply, *, rule: str
    ) -> Verdict | None:
        if window is None or user is None:
            return None
        if window.full(user, now):
            wait = window.retry_after(user, now)
            return Verdict.tempfail(
                reply, rule=rule, reason=f"limit {window.limit}, retry in {wait:.0f} s"
            )
        window.add(user, now)
        return None


def connection_verdict(settings: ThrottleSettings, total: int, from_client: int) -> Verdict | None:
    """total and from_client include the new connection."""
    if total > settings.max_connections:
        return Verdict.tempfail(
            TOO_MANY_CONNECTIONS, rule="max_connections", reason=f"{total - 1} open"
        )
    if from_client > settings.max_connections_per_client:
        return Verdict.tempfail(
            TOO_MANY_CONNECTIONS.with_text(
                "Trop de connexions simultanées depuis votre adresse, réessayez plus tard"
            ),
            rule="max_connections_per_client",
            reason=f"{from_client - 1} open from this address",
        )
    return None
