"""The liste blanche in force in a running relay, and how it is kept current.

Each worker holds a WhitelistView (the policy's look-up) and checks the
file's identity (inode, size, modification time) every few seconds: a new
file (« mss-relay whitelist update », or worker 0's own refresh) is parsed in
a thread and swapped in whole, without a restart and without touching the
connections. Worker 0 also downloads it every trust_space.refresh when
trust_space.whitelist_url is set; the other workers pick the file up.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

from structlog.typing import FilteringBoundLogger

from mss_relay.config import TrustSpaceConfig
from mss_relay.core.addresses import PATIENT_DOMAIN, domain_of
from mss_relay.trust import source
from mss_relay.trust.whitelist import InvalidWhitelist, Whitelist

CHECK_INTERVAL = 2.0  # seconds between two looks at the file: a new list in force within 10 s
# The longest sleep of the refresh loop between two reads of its settings.
REFRESH_STEP = 5.0

Signature = tuple[int, int, int, int]
MISSING: Signature = (-1, -1, -1, -1)  # the failure of a file that is not there


def signature(path: Path) -> Signature:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class WhitelistView:
    """The list in force, for the policy (its domains, and their operators'
    DNs: a core.operator.OperatorList): one reference, swapped whole, read
    by each look-up."""

    def __init__(self, path: Path, whitelist: Whitelist, seen: Signature) -> None:
        self.path = path
        self.current = whitelist
        self.seen = seen
        self.failed: Signature | None = None  # a file that did not parse, not tried again

    @classmethod
    def open(cls, path: Path) -> WhitelistView:
        """At start: the file must be there and parse (OSError, InvalidWhitelist)."""
        seen = signature(path)
        return cls(path, source.load(path), seen)

    def __contains__(self, domain: object) -> bool:
        return domain in self.current

    def operator_dns(self, domain: str) -> frozenset[str]:
        return self.current.operator_dns(domain)

    def is_operator(self, dn: str) -> bool:
        return self.current.is_operator(dn)

    def changed(self) -> tuple[Whitelist, Signature] | None:
        """In a thread: the new list when the file changed since, else None.
        A failure (OSError, InvalidWhitelist) is raised once for a given file,
        or once for as long as it is missing; after one, the file is read
        again even if it is back as it was (so its return is logged)."""
        try:
            now = signature(self.path)
        except OSError:
            if self.failed == MISSING:
                return None
            self.failed = MISSING
            raise
        if now == self.failed or (now == self.seen and self.failed is None):
            return None
        try:
            return source.load(self.path), now
        except (OSError, InvalidWhitelist):
            self.failed = now
            raise


def unlisted(domains: Iterable[str], whitelist: Whitelist) -> list[str]:
    return sorted({d for d in domains if d not in whitelist})


def bal_domains(addresses: Iterable[str]) -> list[str]:
    return sorted({domain_of(a) for a in addresses})


def list_warnings(bals: Iterable[str], whitelist: Whitelist) -> list[tuple[str, list[str]]]:
    """What is wrong with the list for this structure, as (message, domains):
    patient.mssante.fr missing, the structure's own BAL domains not listed.
    Warnings, not errors (a new domain takes days to be published by the ANS)."""
    found: list[tuple[str, list[str]]] = []
    if PATIENT_DOMAIN not in whitelist:
        # With the list, the trust space is its domains exactly: patients too.
        found.append(
            (
                f"trust_space.whitelist: {PATIENT_DOMAIN} is not in the liste blanche:"
                " mail to and from patients is refused until a list holds it",
                [PATIENT_DOMAIN],
            )
        )
    missing = unlisted(bal_domains(bals), whitelist)
    if missing:
        found.append(
            (
                "trust_space.whitelist: the BAL domain(s) "
                + ", ".join(missing)
                + " are not in the liste blanche (mail from them may be refused"
                " by other operators until the ANS publishes them)",
                missing,
            )
        )
    return found


def warn_unlisted_bals(
    bals: Iterable[str], whitelist: Whitelist, log: FilteringBoundLogger
) -> list[str]:
    """list_warnings as config_warning lines: said at start, and again for
    each new list (or configuration) while one is missing, so the operator
    sees when the ANS has published it. The BAL domains missing."""
    missing: list[str] = []
    for message, domains in list_warnings(bals, whitelist):
        log.warning("config_warning", message=message, domains=domains)
        if domains != [PATIENT_DOMAIN]:
            missing = domains
    return missing


def stale_days(whitelist: Whitelist, max_age: float, now: datetime | None = None) -> float | None:
    """The list's age in days when DateDeGeneration is older than max_age."""
    age = whitelist.age_days(now or datetime.now(UTC))
    return age if age * 86400 > max_age else None


def warn_if_stale(
    whitelist: Whitelist, max_age: float, log: FilteringBoundLogger, now: datetime | None = None
) -> bool:
    """whitelist_stale when DateDeGeneration is older than max_age (the list
    is still used: an old list is better than none)."""
    age = stale_days(whitelist, max_age, now)
    if age is None:
        return False
    log.warning(
        "whitelist_stale",
        generated=whitelist.generated,
        age_days=round(age, 1),
        max_age_days=round(max_age / 86400, 3),
    )
    return True


def log_loaded(log: FilteringBoundLogger, event: str, whitelist: Whitelist, path: Path) -> None:
    log.info(
        event,
        file=str(path),
        entries=whitelist.entries,
        domains=len(whitelist.operators),
        certificates=whitelist.certificates,
        generated=whitelist.generated,
        truncated_end=whitelist.truncated_end,
    )


async def follow(
    view: Callable[[], WhitelistView | None],
    log: FilteringBoundLogger,
    interval: float = CHECK_INTERVAL,
    loaded: Callable[[Whitelist], object] | None = None,
) -> None:
    """Every interval, for ever: a changed file parsed off the event loop and
    swapped in (whitelist_reloaded, then loaded(new list)); one that does not
    parse, or a file gone, is logged once (whitelist_invalid) and the list
    in force kept."""
    while True:
        await asyncio.sleep(interval)
        current = view()
        if current is None:
            continue
        try:
            found = await asyncio.to_thread(current.changed)
        except (OSError, InvalidWhitelist) as error:
            log.error("whitelist_invalid", file=str(current.path), error=str(error))
            continue
        if found is not None:
            current.current, current.seen = found
            current.failed = None
            log_loaded(log, "whitelist_reloaded", found[0], current.path)
            if loaded is not None:
                loaded(found[0])


def _mtime(path: Path) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None  # missing: due at once (the download makes it)


async def refresh(
    settings: Callable[[], TrustSpaceConfig],
    view: Callable[[], WhitelistView | None],
    log: FilteringBoundLogger,
    step: float = REFRESH_STEP,
) -> None:
    """Worker 0, for ever: download trust_space.whitelist_url when due (the
    same checks as « mss-relay whitelist update »), then say whether the list
    in force is stale; without a URL, say so every refresh all the same.

    Due: one refresh after the file's modification time (a relay restarted
    daily with refresh: 1d still refreshes; a file older than refresh is
    fetched at start), and one refresh after the last attempt (an unchanged
    or refused download is not retried at once). The settings are read again
    at least every step, so a reload shortening refresh is in force at once.
    Nothing stops the loop: an unexpected failure is logged and it goes on."""
    tried = -math.inf  # the last download attempt (wall clock, as the mtime)
    warned = time.time()  # the age was said (keep_current says it at start)
    while True:
        config = settings()
        try:
            wait = await _refresh_once(config, view, log, tried, warned)
        except Exception as error:  # logged, and the loop goes on: the list in force is kept
            log.error("whitelist_refresh_failed", url=config.whitelist_url, error=repr(error))
            wait = None
        if wait is None:  # attempted (or the age said): the next one is a refresh away
            tried = warned = time.time()
            continue
        await asyncio.sleep(min(step, wait))


async def _refresh_once(
    config: TrustSpaceConfig,
    view: Callable[[], WhitelistView | None],
    log: FilteringBoundLogger,
    tried: float,
    warned: float,
) -> float | None:
    """Seconds until something is due (nothing done), or None: downloaded
    (or tried to) and said whether the list in force is stale."""
    if config.whitelist is None:
        return math.inf
    now = time.time()
    current = view()
    in_force = current.current if current is not None else None
    if config.whitelist_url is None:
        if now < warned + config.refresh:
            return warned + config.refresh - now
        if in_force is not None:
            warn_if_stale(in_force, config.max_age, log)
        return None
    mtime = await asyncio.to_thread(_mtime, config.whitelist)
    due = max(-math.inf if mtime is None else mtime, tried) + config.refresh
    if now < due:
        return due - now
    try:
        done = await asyncio.to_thread(
            source.update, config.whitelist, config.whitelist_url, config.whitelist_ca
        )
    except (source.UpdateRefused, OSError) as error:
        log.error("whitelist_refresh_failed", url=config.whitelist_url, error=str(error))
    else:
        log.info(
            "whitelist_refreshed",
            url=config.whitelist_url,
            entries=done.whitelist.entries,
            domains=len(done.whitelist.operators),
            generated=done.whitelist.generated,
            replaced=done.replaced,
        )
        if done.replaced:
            return None  # every worker loads it within CHECK_INTERVAL; worker 0 then says its age
    if in_force is not None:
        warn_if_stale(in_force, config.max_age, log)
    return None


async def keep_current(
    settings: Callable[[], TrustSpaceConfig],
    view: Callable[[], WhitelistView | None],
    bals: Callable[[], Iterable[str]],
    log: FilteringBoundLogger,
    worker: int,
) -> None:
    """A worker's part, for ever: worker 0 says what is wrong with the list
    (stale, the structure's own BAL domains (those of the configuration in
    force) not in it) at start and for each new list, and refreshes it;
    every worker follows the file."""
    current = view()
    if worker != 0:
        await follow(view, log)
        return
    if current is not None:
        warn_unlisted_bals(bals(), current.current, log)
        warn_if_stale(current.current, settings().max_age, log)

    def loaded(new: Whitelist) -> None:
        warn_unlisted_bals(bals(), new, log)
        warn_if_stale(new, settings().max_age, log)

    await asyncio.gather(follow(view, log, loaded=loaded), refresh(settings, view, log))
