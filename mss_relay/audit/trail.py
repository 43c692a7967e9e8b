"""The audit trail of one process: its stream's chain, where it starts, its
head kept in the state, and (worker 0, log.rotate: daily) the upkeep of the
daily files. The wiring (app.py, admin.py) only asks this module."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from structlog.typing import FilteringBoundLogger

from mss_relay.audit.anchors import EVENT, HOURLY, REOPEN, START, anchor_fields
from mss_relay.audit.chain import Chain, Head, newest_head, stream_name
from mss_relay.audit.rotation import DailyFiles, dated_files, keep_up, upkeep_delay
from mss_relay.config import Config, LogRotation
from mss_relay.log import Finish, LineWriter, make_logger
from mss_relay.logfiles import log_files, rotated_copies
from mss_relay.state.heads import HeadStore, saved_head

# How often a changed head is saved: at most one small write per interval,
# never one per line. A crash loses at most this much of the state's copy,
# and the log file's own last line is preferred at start anyway.
SAVE_EVERY = 10.0

CLI_STREAM = "cli"


def _daily(config: Config) -> DailyFiles | None:
    if config.log.rotate == LogRotation.DAILY and config.log.file is not None:
        return DailyFiles(config.log.file)
    return None


def _written(config: Config, daily: DailyFiles | None) -> list[Path]:
    """The files the log went to, newest first: daily, the dated files (today's
    may not exist yet) then the copies of log.file kept from before; external,
    log.file then logrotate's copies. After daily.current() (which moves a
    plain log.file aside, under a kept name)."""
    if config.log.file is None:
        return []
    if daily is not None:
        return [*reversed(dated_files(daily.directory)), *reversed(rotated_copies(daily.link))]
    return list(reversed(log_files(config.log.file)))


def _file_head(config: Config, daily: DailyFiles | None, stream: str) -> Head | None:
    return newest_head(_written(config, daily), stream)


async def _start_head(config: Config, stream: str, daily: DailyFiles | None) -> Head:
    def read() -> Head:
        return Head.later(_file_head(config, daily, stream), saved_head(config.database, stream))

    return await asyncio.to_thread(read)


class Trail:
    def __init__(self, config: Config, worker: int, chain: Chain, daily: DailyFiles | None):
        self.config = config
        self.worker = worker
        self.chain = chain
        self.daily = daily
        self._store: HeadStore | None = None
        # None: the start head is saved too, at once (after a crash the
        # state's copy is behind the file's last line; an anchor reads it).
        self._saved: Head | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._save_now = asyncio.Event()
        self._anchor_now = asyncio.Event()

    @classmethod
    async def prepare(cls, config: Config, worker: int) -> Trail:
        daily = _daily(config)
        if daily is not None:
            daily.current()  # today's link, a plain log.file moved aside first
        stream = stream_name(worker)
        return cls(config, worker, Chain(stream, await _start_head(config, stream, daily)), daily)

    @property
    def path(self) -> Path | None:
        """Where the writer writes first."""
        return self.daily.current() if self.daily is not None else self.config.log.file

    @property
    def current_path(self) -> Callable[[], Path] | None:
        return self.daily.current if self.daily is not None else None

    async def start(self, log: FilteringBoundLogger) -> None:
        """Once the state is open (after the conversation store's checks)."""
        self._store = await HeadStore.open(self.config.database, self.config.record_timeout)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._keep_head(log)))
        if self.worker == 0:
            self._tasks.append(loop.create_task(self._keep_anchors(log)))
            if self.daily is not None:
                self._tasks.append(loop.create_task(self._keep_files(log)))

    def reopened(self) -> None:
        """The log was reopened (logrotate): save the head now, and (worker
        0) anchor the new file."""
        self._save_now.set()
        self._anchor_now.set()

    async def _save(self) -> None:
        # The head as written, never one still in the writer's queue.
        head = self.chain.written_head
        if self._store is not None and head != self._saved and head.seq:
            await self._store.save(self.chain.stream, head)
            self._saved = head

    async def _keep_head(self, log: FilteringBoundLogger) -> None:
        while True:
            try:
                await self._save()
            except Exception as error:  # the database busy: next round
                log.warning("log_head_error", error=type(error).__name__)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SAVE_EVERY):
                    await self._save_now.wait()
            self._save_now.clear()

    async def _anchor(self, log: FilteringBoundLogger, reason: str) -> None:
        """The audit_heads line (audit/anchors.py): worker 0's own head saved
        first, then every stream's as the state has it (those of the other
        workers up to SAVE_EVERY behind: verify takes a stale one as such)."""
        assert self._store is not None
        await self._save()
        heads = await self._store.heads()
        log.info(EVENT, reason=reason, **anchor_fields(heads))

    async def _keep_anchors(self, log: FilteringBoundLogger) -> None:
        """At start, at each reopening, and five minutes past each hour: the
        first of a day in the day's new file (log.rotate: daily), and no file
        without a recent one (a stream idle since needs no other)."""
        reason = START
        while True:
            try:
                await self._anchor(log, reason)
            except Exception as error:  # the database busy: next time
                log.warning("audit_heads_error", error=type(error).__name__)
            reason = HOURLY
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(upkeep_delay()):
                    await self._anchor_now.wait()
                reason = REOPEN
            self._anchor_now.clear()

    async def _keep_files(self, log: FilteringBoundLogger) -> None:
        assert self.daily is not None
        directory, retention = self.daily.directory, self.config.log.retention_days
        link = self.daily.link.name
        while True:
            try:
                done = await asyncio.to_thread(keep_up, directory, retention, None, link)
            except Exception as error:
                log.error("log_upkeep_error", error=type(error).__name__)
            else:
                if done.purged:
                    log.info("log_purged", count=done.purged, retention_days=retention)
                if done.compressed:
                    log.info("log_compressed", count=done.compressed)
            # At start, then five minutes past each hour: 00:05 compresses
            # the day just ended (docs/audit-trail.md).
            await asyncio.sleep(upkeep_delay())

    async def close(self) -> None:
        """After the last line: its head saved."""
        for task in self._tasks:
            task.cancel()
        if self._store is not None:
            with contextlib.suppress(Exception):
                await self._save()
            await self._store.close()
            self._store = None


@contextlib.asynccontextmanager
async def command_log(
    config: Config, masking: Sequence[Finish] = ()
) -> AsyncIterator[FilteringBoundLogger]:
    """A logger for the lines a CLI command logs, in the « cli » stream: the
    stream's head taken and saved under the state database's write lock (one
    IMMEDIATE transaction), so two commands at once make one sequence.
    masking: the steps before the chain (the patients' pseudonyms)."""
    daily = _daily(config)
    path = daily.current() if daily is not None else config.log.file
    store = await HeadStore.open(config.database)
    try:
        await store.db.execute("BEGIN IMMEDIATE")
        try:
            in_file = await asyncio.to_thread(_file_head, config, daily, CLI_STREAM)
            chain = Chain(CLI_STREAM, Head.later(in_file, await store.load(CLI_STREAM)))
            writer = LineWriter(path, current_path=daily.current if daily else None)
            writer.seal = chain
            try:
                yield make_logger(writer, finish=[*masking, chain])
            finally:
                writer.close()  # written before the head is saved and the lock let go
            await store.save(CLI_STREAM, chain.head)
            await store.db.execute("COMMIT")
        except BaseException:
            await store.db.execute("ROLLBACK")
            raise
    finally:
        await store.close()
