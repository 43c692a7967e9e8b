"""The milter front end: the same rules inside an existing Postfix.

Postfix connects once per SMTP session it filters and describes each stage
(connect, HELO, MAIL, RCPT, headers, body, end of message) in milter packets;
each stage becomes the same facts the SMTP listener builds, asked of the same
policy. Refusals are returned as full SMTP replies (SMFIR_REPLYCODE), so a
client sees exactly what the SMTP listener would have answered.

Direction: a session is outgoing when Postfix authenticated it (the
{auth_authen} macro names the user) or when its client address is one of
trusted_clients; every other session is incoming.

Postfix owns delivery here: a message is « accepted » at end of message, and
conversation state changes then (on the SMTP listener it changes once the
operator took the message).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable

from mss_relay.config import ListenerConfig
from mss_relay.core.message import crlf_lines
from mss_relay.core.reply import BUSY, ascii_text, with_id
from mss_relay.front import milter_protocol as mp
from mss_relay.front.ending import Ending
from mss_relay.front.session import ClientSession, RelayContext

# What mss-relay asks of Postfix: add headers (Message-ID, Date,
# Authentication-Results, DKIM-Signature) and delete forged
# Authentication-Results.
ACTIONS = mp.ACTION_ADDHDRS | mp.ACTION_CHGHDRS
# Protocol steps we do without (SMFIP_NOUNKNOWN) and header values exactly as
# sent (SMFIP_HDR_LEADSPC), which the DKIM signature must cover.
WANTED_STEPS = mp.SKIP_UNKNOWN | mp.HEADER_LEADING_SPACE
# Postfix waits milter_command_timeout (30 s by default) for each answer: a
# message slot is not waited for longer than this.
MAX_SLOT_WAIT = 20.0
READ_SIZE = 1 << 16
# Commands that expect no reply.
_SILENT = frozenset((mp.MACRO, mp.ABORT, mp.QUIT, mp.QUIT_NC))
_LINE_BREAK = re.compile(rb"\r?\n")


def _reply(text: str) -> bytes:
    return mp.replycode(ascii_text(text))


class MilterSession(ClientSession):
    """One connection from Postfix: one SMTP session it filters (or several in
    a row, with QUIT_NC in between)."""

    def __init__(
        self, context: RelayContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        super().__init__(context)
        self.reader = reader
        self.writer = writer
        self.leading_space = False
        self.macros: dict[str, str] = {}
        self._reset_message()
        self._slot = False
        context.sessions.add(self)

    @property
    def inbound(self) -> bool:
        # Authenticated by Postfix, or a trusted client: outgoing.
        return self.user is None

    def disconnect(self) -> None:
        self.writer.close()

    def _reset_message(self) -> None:
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.size = 0

    def _release(self) -> None:
        if self._slot:
            self._slot = False
            self.ctx.data_slots.release()

    def _end_transaction(self, outcome: str | None = None, why: str = "") -> None:
        if outcome is not None and self.txn is not None:
            self.outcome(outcome, why, queue_id=self.macros.get("i"))
        self.txn = None
        self._reset_message()
        self._release()

    # The connection -----------------------------------------------------------
    async def run(self) -> None:
        decoder = mp.Decoder()
        try:
            while True:
                async with asyncio.timeout(self.ctx.timeouts.idle):
                    data = await self.reader.read(READ_SIZE)
                if not data:
                    return
                for packet in decoder.feed(data):
                    reply = await self._answer(packet)
                    if reply is None:
                        return
                    if reply:
                        self.writer.write(reply)
                await self.writer.drain()
        except mp.MilterProtocolError as error:
            self.log.warning("milter_protocol_error", error=str(error)[:200])
        except (TimeoutError, ConnectionError):
            pass
        finally:
            self._end_transaction("abandoned", "milter connection closed")
            self.log.info("disconnect", client=self.client, via="milter")
            self.ctx.sessions.discard(self)
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    async def _answer(self, packet: mp.Packet) -> bytes | None:
        """The reply to one packet (b"" for none); None ends the connection.
        Any unexpected failure tempfails: nothing passes unchecked."""
        try:
            return await self._handle(packet)
        except mp.MilterProtocolError:
            raise
        except Exception as error:
            reply = self.internal_error(error)
            self._end_transaction("tempfailed", "internal error")
            if packet.command in _SILENT:
                return b""
            return _reply(str(reply))

    async def _handle(self, packet: mp.Packet) -> bytes | None:
        command, data = packet.command, packet.data
        if command == mp.OPTNEG:
            offer = mp.parse_optneg(data)
            if offer.version < 6:
                raise mp.MilterProtocolError(f"milter protocol {offer.version}, 6 needed")
            steps = offer.protocol & WANTED_STEPS
            self.leading_space = bool(steps & mp.HEADER_LEADING_SPACE)
            return mp.optneg(mp.VERSION, ACTIONS & offer.actions, steps)
        if command == mp.MACRO:
            _, macros = mp.parse_macros(data)
            self.macros.update(macros)
            return b""
        if command == mp.CONNECT:
            connection = mp.parse_connect(data)
            self.client = connection.address
            self.trust()
            self.log.info("connect", client=self.client, via="milter")
            return mp.CONTINUE
        if command == mp.HELO:
            self.helo = mp.strings(data, 1)[0]
            self.tls = bool(self.macros.get("tls_version"))
            return mp.CONTINUE
        if command == mp.MAIL:
            return await self._mail(*mp.parse_address(data))
        if command == mp.RCPT:
            return await self._rcpt(mp.parse_address(data)[0])
        if command == mp.HEADER:
            name, value = mp.parse_header(data)
            self.headers.append((name, value))
            self.size += len(name) + len(value) + 4
            return self._size_check()
        if command == mp.EOH:
            return await self._take_slot()
        if command == mp.BODY:
            self.body.append(data)
            self.size += len(data)
            return self._size_check()
        if command == mp.BODYEOB:
            if data:
                self.body.append(data)
            return await self._end_of_message()
        if command == mp.ABORT:
            self._end_transaction("abandoned", "aborted by the MTA")
            return b""
        if command == mp.QUIT_NC:  # the next SMTP session on this connection
            self._end_transaction("abandoned", "milter session ended")
            self.user, self.trusted, self.client, self.helo = None, False, "", ""
            self.tls = False
            self.macros = {}
            return b""
        if command == mp.QUIT:
            return None
        return mp.CONTINUE  # DATA, UNKNOWN: nothing to decide there

    async def _mail(self, sender: str, options: list[str]) -> bytes:
        self._end_transaction("abandoned", "new MAIL")
        authenticated = self.macros.get("auth_authen")
        if authenticated:
            self.user = authenticated
            self.trusted = False
        elif not self.trusted:
            self.user = None
        verdict = await self.begin_transaction(
            sender, options, direction=self.role, queue_id=self.macros.get("i")
        )
        if verdict.reply is not None:
            return _reply(str(verdict.reply))
        return mp.CONTINUE

    async def _rcpt(self, recipient: str) -> bytes:
        txn = self.txn
        if txn is None:  # MAIL was refused: Postfix should not go on
            return mp.CONTINUE
        verdict = await self.check_recipient(recipient)
        if verdict.reply is not None:
            return _reply(str(verdict.reply))
        txn.recipients.append(recipient)
        return mp.CONTINUE

    def _size_check(self) -> bytes:
        verdict = self.ctx.policy.evaluate_wire_size(self.size)
        if verdict is None or verdict.reply is None:
            return mp.CONTINUE
        verdict = self.quoted(verdict)
        self.decision("data", verdict, size=self.size)
        self._end_transaction("rejected", str(verdict.reply))
        return _reply(str(verdict.reply))

    async def _take_slot(self) -> bytes:
        """The body is held in memory until the end of the message: a cap on
        messages at once, shared with the SMTP listeners."""
        if self._slot or self.txn is None:
            return mp.CONTINUE
        wait = min(self.ctx.timeouts.busy_wait, MAX_SLOT_WAIT)
        try:
            async with asyncio.timeout(wait):
                await self.ctx.data_slots.acquire()
        except TimeoutError:
            busy = with_id(BUSY, self.ref)  # the transaction's id, before it ends
            self._end_transaction("tempfailed", "busy")
            return _reply(str(busy))
        self._slot = True
        return mp.CONTINUE

    def _message(self, extra: list[tuple[str, str]]) -> bytes:
        """The message as Postfix will pass it on: headers (ours appended, as
        SMFIR_ADDHEADER does), blank line, body; CRLF line ends."""
        lines = []
        for name, value in [*self.headers, *extra]:
            raw = _LINE_BREAK.sub(b"\r\n", value.encode("utf-8", "surrogateescape"))
            separator = b":" if self.leading_space else b": "
            lines.append(name.encode("utf-8", "surrogateescape") + separator + raw + b"\r\n")
        return b"".join(lines) + b"\r\n" + crlf_lines(b"".join(self.body))

    def _value(self, value: str) -> str:
        return " " + value if self.leading_space else value

    async def _end_of_message(self) -> bytes:
        """The pipeline's ending, rendered as milter replies: the refusal, or
        the header changes for Postfix to make (it delivers the message)."""
        if self.txn is None:
            return mp.CONTINUE
        ending = await self.finish(self._message([]))
        queue_id = self.macros.get("i")
        if ending.refusal is not None:
            await self.settle(ending, "rejected", ending.refusal, queue_id=queue_id)
            self._end_transaction()
            return _reply(str(ending.refusal))
        actions = self._actions(ending)
        await self.settle(
            ending,
            "accepted",
            "accepted by the milter (Postfix delivers)",
            delivered=True,
            queue_id=queue_id,
        )
        self._end_transaction()
        return b"".join(actions) + mp.CONTINUE

    def _actions(self, ending: Ending) -> list[bytes]:
        """SMFIR_CHGHEADER, SMFIR_INSHEADER and SMFIR_ADDHEADER for what the
        ending applies: forged results removed, ours on top, our fields added
        (at the end, as SMFIR_ADDHEADER does: layout() too), the signatures
        on top of all."""
        actions: list[bytes] = []
        if ending.results is not None:
            actions += self._forged_results_removed()
            name, _, value = ending.results.decode("ascii").partition(":")
            actions.append(mp.insert_header(0, name, self._value(value.strip())))
        actions += [mp.add_header(name, self._value(value)) for name, value in ending.added]
        # Last, and on top: the signatures cover every other change. One
        # line each (folding inside a milter header value is not portable;
        # relaxed canonicalization makes both forms the same).
        for signature in _fields(ending.signatures):
            name, _, value = signature.partition(":")
            actions.append(mp.insert_header(0, name, self._value(value.strip())))
        return actions

    def layout(self, wire: bytes, results: bytes | None, added: list[tuple[str, str]]) -> bytes:
        """The message as Postfix will pass it on, for its signatures (the
        outgoing side, which has no results to add): its headers, ours
        appended as SMFIR_ADDHEADER does, the body."""
        return self._message([(name, self._value(value)) for name, value in added])

    def _forged_results_removed(self) -> list[bytes]:
        """Authentication-Results claiming to be ours, from before us: deleted
        (SMFIR_CHGHEADER with an empty value; the index counts that name only)."""
        verifier = self.ctx.verifier
        assert verifier is not None
        deletions, index = [], 0
        for name, value in self.headers:
            if name.lower() != "authentication-results":
                continue
            index += 1
            raw = f"{name}:{value}".encode("utf-8", "surrogateescape")
            if verifier.claims_ours(raw):
                deletions.append(mp.change_header(index, name, ""))
        return deletions


def _fields(signatures: bytes) -> list[str]:
    """Header fields, unfolded, from a block of them."""
    text = signatures.decode("ascii")
    return [f.replace("\r\n", "") for f in re.split(r"\r\n(?=\S)", text) if f.strip()]


async def listen_milter(
    listener: ListenerConfig, context: Callable[[], RelayContext], shared: bool = False
) -> asyncio.Server:
    """A milter listener: TCP host and port (shared: SO_REUSEPORT, for the
    workers), or a Unix socket (path). context: the current one, taken by
    each connection when it is accepted (a reload swaps it)."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await MilterSession(context(), reader, writer).run()

    if listener.path is None:
        return await asyncio.start_server(
            session, host=listener.host, port=listener.port, reuse_port=shared
        )
    path = listener.path
    if path.is_socket():  # left by a previous run; any other file is not ours to remove
        path.unlink()
    server = await asyncio.start_unix_server(session, path=str(path))
    # Postfix's smtpd runs as its own user: the directory's permissions decide
    # who may connect (docs/milter.md), not the socket's.
    path.chmod(0o666)
    return server
