"""The lifecycle check the relay runs (worker 0, at start and every
lifecycle.check_interval seconds): thresholds crossed are logged once
(`bal_lifecycle`), and with lifecycle.notify each BAL gets its notice
through the upstream at least once (`lifecycle_notice_sent`).

Per BAL, threshold and period of inactivity, recorded in the state
database. The log line is once: the crossing is recorded in one atomic
insert, so a restart or another relay on the same file does not log it
again. The notice is at least once: it is marked sent only after the
upstream's 250 (one that fails is tried again at the next check), so it is
sent twice only if the relay stops between the upstream's acceptance and
the record -- or if two relays on one database check the same BAL at the
same moment (nothing locks a notice while it is being sent). A notice
recorded as sent is not sent again, by a restart or another relay.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from structlog.typing import FilteringBoundLogger

from mss_relay.config import Config
from mss_relay.core.addresses import domain_of, normalize_address
from mss_relay.delivery.upstream import Upstream
from mss_relay.lifecycle import BalStatus, Flag, notice, notice_due, status
from mss_relay.log import Clock, iso_ms, utc_now
from mss_relay.signing import Signer
from mss_relay.state.activity import Mark
from mss_relay.state.api import Activities


def new_txid() -> str:
    return secrets.token_hex(6).upper()  # as a session's transaction ids


async def statuses(store: Activities, config: Config, clock: Clock) -> list[BalStatus]:
    """Every BAL of the configuration, as the state database knows it."""
    now = clock()
    activities = await store.activities(config.bals)
    return [status(bal, activities[bal.address], now) for bal in config.bals]


def period_marks(current: BalStatus, marks: list[Mark]) -> list[Mark]:
    """The thresholds recorded for the BAL's current period of inactivity."""
    reference = current.activity.reference
    if reference is None:
        return []
    bal, since = normalize_address(current.bal.address), iso_ms(reference)
    return [m for m in marks if m.bal == bal and m.since == since]


@dataclass(frozen=True)
class Inputs:
    """What a check reads from the configuration in force (a reload may
    change it between two checks)."""

    config: Config
    upstream: Upstream | None
    signer: Signer = field(default_factory=lambda: Signer(()))


@dataclass
class Notifier:
    current: Callable[[], Inputs]
    store: Activities
    log: FilteringBoundLogger
    clock: Clock = utc_now

    async def run(self) -> None:
        """For ever: one check now, then one per interval."""
        while True:
            try:
                await self.check()
            except Exception as error:
                self.log.error("lifecycle_error", error=type(error).__name__)
            await asyncio.sleep(self.current().config.lifecycle.check_interval)

    async def check(self) -> None:
        inputs = self.current()
        config = inputs.config
        await self.store.seen((normalize_address(b.address) for b in config.bals), self.clock())
        marks = await self.store.marks()
        flagged = sent = 0
        for current in await statuses(self.store, config, self.clock):
            reference = current.activity.reference
            if reference is None:
                continue
            bal, since = normalize_address(current.bal.address), iso_ms(reference)
            for flag in current.flags:
                if await self.store.cross(bal, flag, since, self.clock()):
                    last = current.activity.last_activity
                    self.log.info(
                        "bal_lifecycle",
                        bal=current.bal.address,
                        bal_type=current.bal.type.value,
                        flag=flag.value,
                        last_activity=last.date().isoformat() if last else None,
                        days_inactive=current.days_inactive,
                    )
            done = [m.flag for m in period_marks(current, marks) if m.notice_sent_at]
            flagged += bool(current.flags)
            due = notice_due(current, done)
            if due is not None and config.lifecycle.notify:
                sent += await self._send(inputs, current, due, since)
        # One line per check: what an operator (or a test) waits for.
        self.log.info("lifecycle_checked", bals=len(config.bals), flagged=flagged, notices=sent)

    async def _send(self, inputs: Inputs, current: BalStatus, flag: Flag, since: str) -> bool:
        """Whether the upstream took the notice (then recorded as sent)."""
        sender = inputs.config.lifecycle.notify_from
        upstream = inputs.upstream
        assert sender is not None and upstream is not None  # validated with notify
        txid = new_txid()
        message_id = f"<{txid}.{secrets.token_hex(8)}@{inputs.config.hostname}>"
        message = notice(current, flag, sender=sender, now=self.clock(), message_id=message_id)
        keys = inputs.signer.keys_for(domain_of(sender))
        if keys:
            # dkimpy off the event loop, as for the sessions' messages.
            message = (
                await asyncio.to_thread(inputs.signer.sign, message, keys, crlf=True) + message
            )
        session = upstream.session()
        try:
            result = await session.mail(sender, [])
            if result.accepted:
                result = await session.rcpt(current.bal.address)
            if result.accepted:
                result = await session.data(message, txid)
            if not result.accepted:
                await session.reset()
        finally:
            await session.close()
        if not result.accepted:
            self.log.warning(
                "lifecycle_notice_failed",
                bal=current.bal.address,
                flag=flag.value,
                txid=txid,
                upstream=result.upstream,
            )
            return False
        await self.store.notice_sent(
            normalize_address(current.bal.address), flag, since, self.clock(), txid
        )
        self.log.info(
            "lifecycle_notice_sent",
            bal=current.bal.address,
            flag=flag.value,
            txid=txid,
            message_id=message_id,
            upstream=result.upstream,
        )
        return True
