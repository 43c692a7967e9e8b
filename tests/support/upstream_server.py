"""A real upstream SMTP server, run as its own process by the tests.

It records every message it accepts as NNNN.eml plus NNNN.json (envelope) in
its directory, and reads control.json there before each step, so a test can
make it refuse a sender, a recipient or the data, or stall before answering:

    {"mail": "451 4.3.0 busy", "rcpt": {"x@y.mssante.fr": "550 5.1.1 unknown"},
     "data": "554 5.6.0 no", "data_delay": 30}

or hang: {"hang": "mail"} (or "rcpt", or "data": after the final dot) leaves
that command unanswered for as long as control.json says so. A message hung
after its final dot is then committed like a real server's (even if the client
has closed its side meanwhile), unless the connection was reset.

It writes what each connection did to journal.jsonl, one JSON object a line,
keyed by the client's port: {"peer_port": N, "event": E} where E is a command
(MAIL, RCPT, DATA once the final dot is in, RSET, QUIT), "hang" when it
starts to hang, "committed" or "dropped" when a hung message is decided,
"eof" when the client closed its side, "lost" (with "reset": true or false)
when the connection is gone.

With --dsn it advertises DSN (RFC 3461) and takes RET, ENVID, NOTIFY and
ORCPT; without it, aiosmtpd refuses them (555), as a server without DSN may.
Each message's NNNN.json records the DSN parameters exactly as they came:
"mail_dsn" (a list of words) and "rcpt_dsn" (recipient -> list of words).

Usage: python -m tests.support.upstream_server --port N --dir DIR [--dsn]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import signal
import ssl
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

# How often a hung command looks at control.json again.
_HANG_POLL = 0.05
_DSN_MAIL = ("RET=", "ENVID=")
_DSN_RCPT = ("NOTIFY=", "ORCPT=")


class Recorder:
    def __init__(self, directory: Path, discard: bool = False, dsn: bool = False) -> None:
        self.directory = directory
        self.discard = discard  # benchmarks: keep the size and hash, not the bytes
        self.dsn = dsn  # advertise DSN and take its parameters
        existing = sorted(directory.glob("*.eml"))
        start = int(existing[-1].stem) + 1 if existing else 1
        self.counter = itertools.count(start)

    def control(self) -> dict[str, Any]:
        path = self.directory / "control.json"
        if not path.exists():
            return {}
        return dict(json.loads(path.read_text()))

    def journal(self, session: Session, event: str, **details: Any) -> None:
        port = session.peer[1] if session.peer else None
        line = json.dumps({"peer_port": port, "event": event, **details})
        with (self.directory / "journal.jsonl").open("a") as journal:
            journal.write(line + "\n")

    async def hang(self, session: Session, stage: str) -> bool:
        """Leave the command unanswered while control.json says to hang at
        this stage; whether it did."""
        if self.control().get("hang") != stage:
            return False
        self.journal(session, "hang", stage=stage)
        # control.json is written by the test process: polled, no event to wait on.
        while self.control().get("hang") == stage:  # noqa: ASYNC110
            await asyncio.sleep(_HANG_POLL)
        return True

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if self.dsn:
            return [*responses[:-1], "250-DSN", responses[-1]]
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.journal(session, "MAIL")
        await self.hang(session, "mail")
        refusal = self.control().get("mail")
        if refusal:
            return str(refusal)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.mail_dsn = list(getattr(server, "dsn_words", ()))  # type: ignore[attr-defined]
        envelope.rcpt_dsn = {}  # type: ignore[attr-defined]
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.journal(session, "RCPT")
        await self.hang(session, "rcpt")
        refusal = self.control().get("rcpt", {}).get(address)
        if refusal:
            return str(refusal)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_dsn[address] = list(getattr(server, "dsn_words", ()))  # type: ignore[attr-defined]
        return "250 2.1.5 Ok"

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.journal(session, "RSET")
        return "250 OK"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.journal(session, "QUIT")
        return "221 Bye"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.journal(session, "DATA")
        if self.control().get("hang") == "data":
            # aiosmtpd cancels the command when the client closes its side: a
            # real server has the message by now, and commits it all the same.
            return await asyncio.shield(self.hung_data(server, session, envelope))
        return await self.receive(session, envelope)

    async def hung_data(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await self.hang(session, "data")
        if isinstance(server, RecordingSMTP) and server.reset:
            self.journal(session, "dropped")  # the client is known to be gone
            return "451 4.3.0 connection reset"
        reply = await self.receive(session, envelope)
        self.journal(session, "committed")
        return reply

    async def receive(self, session: Session, envelope: Envelope) -> str:
        control = self.control()
        delay = control.get("data_delay")
        if delay:
            await asyncio.sleep(float(delay))
        if control.get("data"):
            return str(control["data"])
        number = next(self.counter)
        content = envelope.original_content or b""
        meta = {
            "tls": session.ssl is not None,
            "peer_port": session.peer[1] if session.peer else None,
            "mail_from": envelope.mail_from,
            "mail_options": envelope.mail_options,
            "rcpt_tos": envelope.rcpt_tos,
            "mail_dsn": getattr(envelope, "mail_dsn", []),
            "rcpt_dsn": getattr(envelope, "rcpt_dsn", {}),
        }
        if self.discard:
            meta["size"] = len(content)
            meta["sha256"] = hashlib.sha256(content).hexdigest()
            body = content.split(b"\r\n\r\n", 1)[-1]  # what no relay should touch
            meta["body_sha256"] = hashlib.sha256(body).hexdigest()
            content = b""
        (self.directory / f"{number:04d}.json").write_text(json.dumps(meta))
        temporary = self.directory / f".{number:04d}.tmp"
        temporary.write_bytes(content)
        temporary.replace(self.directory / f"{number:04d}.eml")
        return f"250 2.0.0 Ok: queued as UP{number:04d}"


class RecordingSMTP(SMTP):
    """aiosmtpd's server, writing how each connection ended to the journal."""

    reset = False  # the client reset the connection (rather than closing it)
    # The DSN parameters of the MAIL or RCPT being run (a new list each time).
    dsn_words: tuple[str, ...] = ()

    def _take_dsn(self, arg: str | None, prefixes: tuple[str, ...]) -> str | None:
        """With DSN on, its parameters taken out as they came (aiosmtpd would
        upper-case them, and refuse them as unknown): the tests' paths have no
        space, so the words after the first are the parameters."""
        self.dsn_words = ()
        if not arg or not self.event_handler.dsn:
            return arg
        path, *params = arg.split(" ")
        self.dsn_words = tuple(p for p in params if p.upper().startswith(prefixes))
        return " ".join([path, *(p for p in params if p not in self.dsn_words)])

    async def smtp_MAIL(self, arg: str | None) -> None:
        await super().smtp_MAIL(self._take_dsn(arg, _DSN_MAIL))

    async def smtp_RCPT(self, arg: str | None) -> None:
        await super().smtp_RCPT(self._take_dsn(arg, _DSN_RCPT))

    def eof_received(self) -> bool | None:
        if self.session is not None:
            self.event_handler.journal(self.session, "eof")
        return super().eof_received()

    def connection_lost(self, error: Exception | None) -> None:
        self.reset = isinstance(error, ConnectionResetError)
        if self.session is not None:
            self.event_handler.journal(self.session, "lost", reset=self.reset)
        super().connection_lost(error)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--tls-cert", type=Path, help="offer and require STARTTLS")
    parser.add_argument("--tls-key", type=Path)
    parser.add_argument("--discard", action="store_true", help="record size and hash only")
    parser.add_argument("--dsn", action="store_true", help="advertise DSN, take its parameters")
    args = parser.parse_args()
    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    args.dir.mkdir(parents=True, exist_ok=True)
    recorder = Recorder(args.dir, args.discard, args.dsn)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: RecordingSMTP(
            recorder,
            hostname="upstream.test",
            data_size_limit=None,
            tls_context=context,
            require_starttls=context is not None,
        ),
        host="127.0.0.1",
        port=args.port,
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print("READY", flush=True)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
