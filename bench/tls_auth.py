"""What STARTTLS and AUTH cost per connection, which smtp-source cannot tell.

    .venv/bin/python bench/tls_auth.py [--messages 300]

The real relay (DKIM signing on) with two listeners on 127.0.0.1: one
`tls: starttls` where the client does STARTTLS and AUTH PLAIN (scrypt), one
`tls: none` with `trusted_clients` (no TLS, no AUTH: what bench/compare.py
drives). A Python client (aiosmtplib) sends the same 2 KB message, one
connection per message, one after the other, alternating the two listeners so
that both see the same machine; the difference of the medians is the price
of STARTTLS + AUTH. Writes bench/results/tls_auth.json.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if not TYPE_CHECKING and not __package__:  # python bench/tls_auth.py: see bench/_script.py
    import _script

    _script.rerun(__file__)

import argparse
import asyncio
import json
import ssl
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiosmtplib

from .harness import (
    RESULTS,
    RecordingUpstream,
    RelayProcess,
    free_port,
    hash_password,
    listener,
    relay_config,
)

SENDER = "bench@ch-bench.mssante.fr"
DEST = "dest@chu-b.mssante.fr"
MESSAGE = (
    f"From: {SENDER}\r\nTo: {DEST}\r\nSubject: bench\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
    "Message-ID: <bench@ch-bench.mssante.fr>\r\n\r\n" + "Compte rendu.\r\n" * 130
).encode()


async def one(port: int, secure: bool) -> float:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the relay's self-signed demo certificate
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=port, start_tls=secure, tls_context=context, timeout=60
    )
    started = time.perf_counter()
    await client.connect()
    if secure:
        await client.login("bench", "bench-password")
    await client.sendmail(SENDER, [DEST], MESSAGE)  # raises unless 250
    await client.quit()
    return (time.perf_counter() - started) * 1000


def config(work: Path, upstream_port: int, ports: tuple[int, int]) -> dict[str, Any]:
    return relay_config(
        work,
        [listener("tls", ports[0], tls="starttls"), listener("plain", ports[1])],
        upstream_port,
        tls=True,
        throttle={"messages_per_minute": 0, "recipients_per_hour": 0},
        users=[{"name": "bench", "password_hash": hash_password("bench-password")}],
        bals=[{"address": SENDER, "type": "applicative", "users": ["bench"]}],
        trusted_clients={"127.0.0.1": "bench"},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300, help="per listener")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mss-bench-") as name:
        tmp = Path(name)
        ports = (free_port(), free_port())
        upstream = RecordingUpstream(tmp)
        relay = RelayProcess(tmp, config(tmp, upstream.port, ports))
        upstream.start()
        relay.start()
        try:

            async def measure() -> dict[str, list[float]]:
                times: dict[str, list[float]] = {"starttls_auth": [], "plain_trusted": []}
                for _ in range(args.messages):
                    times["starttls_auth"].append(await one(ports[0], True))
                    times["plain_trusted"].append(await one(ports[1], False))
                return times

            times = asyncio.run(measure())
        finally:
            relay.stop()
            upstream.stop()
    medians = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "messages_per_listener": args.messages,
        "median_ms": {k: round(v, 2) for k, v in medians.items()},
        "p99_ms": {k: round(sorted(v)[int(len(v) * 0.99) - 1], 2) for k, v in times.items()},
        "starttls_auth_cost_ms": round(medians["starttls_auth"] - medians["plain_trusted"], 2),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tls_auth.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
