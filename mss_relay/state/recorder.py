"""Recording delivered messages in the conversation state without holding the
client's reply: issue 13, defects 3 and 9a.

The upstream already has the message when its conversation is recorded: a
client kept waiting for a locked (or frozen) database times out and sends the
message again, a duplicate. So a write is queued, and the client waits for it
`timeout` seconds at most; past that the write is *deferred*: one writer task
goes on trying, in the order the messages were accepted (a « [FIN] » stays
after the message that opened its conversation), logs when it is done at last
or given up, and the graceful stop waits a little for what is left.

Meanwhile the state is incomplete, and a look-up that could be wrong is not
answered: a patient's message is tempfailed (451 4.3.0, the patient's operator
retries) while a write for that patient is pending, while the queue is full,
when the look-up itself takes longer than `timeout`, and once the database
file was deleted or replaced under the running relay (checked every
`check_interval` seconds); professionals' mail to patients is tempfailed at
RCPT in the last two cases. A write given up is not in the state: a reply to
that Message-ID is then refused like one to an unknown conversation (fail
closed), and the operator has the `state_write_failed` line.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from structlog.typing import FilteringBoundLogger

from mss_relay.core.conversation import Change, ConversationFacts, Status
from mss_relay.state.api import Conversations
from mss_relay.state.errors import STATE_ERRORS, TRANSIENT

QUEUE_LIMIT = 1000  # writes waiting at most (memory; then patient mail is tempfailed)
CHECK_INTERVAL = 1.0  # seconds between two checks that the database file is still there
GIVE_UP_AFTER = 3600.0  # seconds one write keeps failing before it is given up
RETRY_DELAYS = (0.1, 0.2, 0.5, 1.0)  # between attempts, then the last one again


@dataclass(eq=False)
class _Write:
    change: Change
    actor: str
    txid: str | None
    log: FilteringBoundLogger  # the session's: its lines keep their session id
    done: asyncio.Future[None]
    deferred: bool = False
    attempts: int = 0
    failing_since: float | None = None

    def fields(self) -> dict[str, Any]:
        """What identifies it in the log: never the patient (an INS)."""
        change = self.change
        return {
            "txid": self.txid,
            "bal": change.bal,
            "message_id": change.message_id,
            "direction": change.direction,
            "close": change.close,
        }


@dataclass
class Recorder:
    store: Conversations
    log: FilteringBoundLogger
    timeout: float = 2.0
    limit: int = QUEUE_LIMIT
    check_interval: float = CHECK_INTERVAL
    give_up_after: float = GIVE_UP_AFTER
    monotonic: Callable[[], float] = time.monotonic
    lost: str | None = None  # "deleted" or "replaced", once seen
    _queue: deque[_Write] = field(default_factory=deque)
    _patients: Counter[str] = field(default_factory=Counter)
    _work: asyncio.Event = field(default_factory=asyncio.Event)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._idle.set()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._writer()), loop.create_task(self._watch())]

    async def close(self, grace: float) -> None:
        """Graceful stop: the pending writes get `grace` seconds to finish;
        those still pending then are given up, each logged."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._idle.wait()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._queue:
            self._failed(self._pop(), "stopping")

    # Asked by the sessions ------------------------------------------------------
    def unavailable(self, patient: str | None = None) -> str | None:
        """Why the state cannot be trusted now (for this patient), or None."""
        if self.lost is not None:
            return f"database {self.lost}"
        down = self.store.down()
        if down is not None:  # a server not answering (PostgreSQL): nothing could be recorded
            return down
        if len(self._queue) >= self.limit:
            return "write queue full"
        if patient is not None and self._patients[patient]:
            return "write pending"
        return None

    async def lookup(
        self, patient: str, references: Sequence[str], *, sent_only: bool = False
    ) -> ConversationFacts:
        """The conversation a patient's message replies to, within `timeout`,
        or UNAVAILABLE (the policy tempfails it). sent_only: as the store's
        (a read receipt reports on a Message-ID sent to the patient)."""
        why = self.unavailable(patient)
        if why is None:
            try:
                async with asyncio.timeout(self.timeout):
                    return await self.store.lookup(patient, references, sent_only=sent_only)
            except TimeoutError:
                why = "look-up timed out"
            except STATE_ERRORS as error:
                why = f"look-up failed: {type(error).__name__}"
        return ConversationFacts(Status.UNAVAILABLE, unavailable=why)

    async def record(
        self,
        changes: Sequence[Change],
        actor: str,
        txid: str | None,
        log: FilteringBoundLogger,
    ) -> None:
        """Queue the changes of a delivered message, and wait `timeout`
        seconds at most for them to be written."""
        loop = asyncio.get_running_loop()
        queued: list[_Write] = []
        for change in changes:
            item = _Write(change, actor, txid, log, loop.create_future())
            why = f"database {self.lost}" if self.lost else None
            if why is None and len(self._queue) >= self.limit:
                why = "write queue full"
            if why is not None:
                self._failed(item, why)
                continue
            self._queue.append(item)
            self._patients[change.patient] += 1
            queued.append(item)
        if not queued:
            return
        self._idle.clear()
        self._work.set()
        await asyncio.wait([item.done for item in queued], timeout=self.timeout)
        for item in queued:
            if not item.done.done():
                item.deferred = True
                item.log.warning(
                    "state_write_deferred",
                    **item.fields(),
                    waited=self.timeout,
                    pending=len(self._queue),
                )

    # The writer ---------------------------------------------------------------
    def _pop(self) -> _Write:
        item = self._queue.popleft()
        self._patients[item.change.patient] -= 1
        if self._patients[item.change.patient] <= 0:
            del self._patients[item.change.patient]
        if not self._queue:
            self._idle.set()
        return item

    def _failed(self, item: _Write, why: str) -> None:
        item.log.error("state_write_failed", **item.fields(), reason=why, attempts=item.attempts)
        if not item.done.done():
            item.done.set_result(None)

    async def _writer(self) -> None:
        """The one task that writes the queue, in order: the head is retried
        until it is written or given up; the others wait behind it."""
        while True:
            if not self._queue:
                self._work.clear()
                await self._work.wait()
                continue
            if await self._attempt(self._queue[0]):
                self._pop()

    async def _attempt(self, item: _Write) -> bool:
        """One try at the queue's head: True when it is done with (written or
        given up), False to try again."""
        if self.lost is not None:
            self._failed(item, f"database {self.lost}")
            return True
        item.attempts += 1
        try:
            events = await self.store.apply(item.change, item.actor)
        except TRANSIENT as error:  # locked, busy, I/O, the server unreachable: may pass
            now = self.monotonic()
            if item.failing_since is None:
                item.failing_since = now
            if now - item.failing_since >= self.give_up_after:
                self._failed(item, f"{type(error).__name__}: {error}")
                return True
            delay = RETRY_DELAYS[min(item.attempts, len(RETRY_DELAYS)) - 1]
            await asyncio.sleep(delay)
            return False
        except Exception as error:  # the statement itself fails: trying again cannot help
            self._failed(item, f"{type(error).__name__}: {error}")
            return True
        conversation = None
        for event, fields in events:
            conversation = fields.get("conversation")
            item.log.info(event, txid=item.txid, **fields)
        if item.deferred:
            item.log.info(
                "state_write_retried",
                **item.fields(),
                conversation=conversation,
                attempts=item.attempts,
            )
        item.done.set_result(None)
        return True

    async def _watch(self) -> None:
        """Defect 9a: a database deleted (or replaced) under the running relay
        would be silently empty at the next start. A stat now and then, in a
        worker thread; once seen, it stays lost until a restart."""
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                how = await self.store.vanished()
            except OSError as error:
                self.log.warning("state_check_error", error=type(error).__name__)
                continue
            if how is not None:
                self.lost = how
                self.log.error(
                    "state_lost",
                    database=str(self.store.path),
                    how=how,
                    pending=len(self._queue),
                )
                self._work.set()  # the pending writes are given up, logged
                return
