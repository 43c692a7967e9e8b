"""The floor of mss-relay's stack: aiosmtpd in front, aiosmtplib behind, nothing between.

    .venv/bin/python bench/passthrough.py --port 2525 --upstream-port 2526

Each client session gets one upstream aiosmtplib connection, opened at its
first message and reused for the next ones (as mss-relay does), closed when the
client goes. The message is handed over as aiosmtpd received it: no parsing,
no rule, no signing, no log. Whatever mss-relay does on top of this costs
time this server does not spend: bench/compare.py measures both in one run.
Loopback only, no TLS, no AUTH.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

# Above the 20 MB attachment case (about 28 MB in base64) with room to spare.
DATA_SIZE_LIMIT = 100 * 1024 * 1024


class PassThrough:
    """The aiosmtpd handler: DATA is sent on, the upstream's reply is the reply."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port

    async def _client(self, session: Session) -> aiosmtplib.SMTP:
        client: aiosmtplib.SMTP | None = getattr(session, "upstream", None)
        if client is None or not client.is_connected:
            client = aiosmtplib.SMTP(
                hostname="127.0.0.1",
                port=self.upstream_port,
                start_tls=False,
                local_hostname="passthrough.bench",
                timeout=600,
            )
            await client.connect()
            session.upstream = client  # type: ignore[attr-defined]
        return client

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        try:
            client = await self._client(session)
            _, reply = await client.sendmail(envelope.mail_from or "", envelope.rcpt_tos, content)
        except aiosmtplib.SMTPResponseException as error:
            return f"{error.code} {error.message}"
        except (aiosmtplib.SMTPException, OSError) as error:
            return f"451 4.4.1 upstream: {error}"
        return f"250 {reply}"  # sendmail raised unless the upstream said 250


class PassThroughSMTP(SMTP):
    """Closes the session's upstream connection when the client goes."""

    def connection_lost(self, error: Exception | None) -> None:
        client: aiosmtplib.SMTP | None = getattr(self.session, "upstream", None)
        if client is not None:
            task = self.loop.create_task(_quit(client))
            _pending.add(task)
            task.add_done_callback(_pending.discard)
        super().connection_lost(error)


_pending: set[asyncio.Task[None]] = set()  # strong references until done


async def _quit(client: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(aiosmtplib.SMTPException, OSError):
        await client.quit()
    client.close()


async def serve(port: int, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    handler = PassThrough(upstream_port)

    def factory() -> SMTP:
        return PassThroughSMTP(
            handler,
            data_size_limit=DATA_SIZE_LIMIT,
            hostname="passthrough.bench",  # no getfqdn(): no DNS look-up
            loop=loop,
        )

    server = await loop.create_server(factory, host="127.0.0.1", port=port, backlog=1024)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.upstream_port))


if __name__ == "__main__":
    main()
