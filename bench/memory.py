"""Peak memory of the relay under 10 concurrent 80 MB transfers.

    .venv/bin/python bench/memory.py [--clients 10] [--megabytes 80]

The real relay process (STARTTLS, AUTH, DKIM signing) on 127.0.0.1, a real
upstream that keeps only the size and hash of what it gets, and N aiosmtplib
clients each sending one message of the given size at the same time. Reported
for each run: the relay's peak RSS (VmHWM, from /proc), its RSS at rest before
the run (the baseline measured in the same run), the ratio, the wall time, and
whether the upstream received exactly the accepted messages, intact.

Runs:
  cap4     the default throttle.max_concurrent_messages (4), limits raised to 100 MiB
  nocap    the same with one slot per client (no cap): what the cap saves
  refused  the default limits (60 MiB per message): every transfer is refused with
           552 5.3.4 once the limit is passed, the rest of the data is discarded

Writes bench/results/memory.json. Loopback only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if not TYPE_CHECKING and not __package__:  # python bench/memory.py: see bench/_script.py
    import _script

    _script.rerun(__file__)

import argparse
import asyncio
import base64
import hashlib
import json
import os
import ssl
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


def message(megabytes: float) -> bytes:
    """One MIME message of about this many MB on the wire (base64 attachment)."""
    raw = os.urandom(int(megabytes * 1e6 * 57 / 78))
    encoded = base64.encodebytes(raw).replace(b"\n", b"\r\n")
    return (
        (
            f"From: {SENDER}\r\nTo: {DEST}\r\nSubject: bench\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\n'
            "Content-Type: text/plain\r\n\r\nimagerie\r\n--B\r\n"
            'Content-Type: application/dicom; name="irm.dcm"\r\n'
            "Content-Transfer-Encoding: base64\r\n"
            'Content-Disposition: attachment; filename="irm.dcm"\r\n\r\n'
        ).encode()
        + encoded
        + b"--B--\r\n"
    )


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


async def send_one(port: int, content: bytes) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=port, start_tls=True, tls_context=context, timeout=900
    )
    try:
        await client.connect()
        await client.login("bench", "bench")
        await client.sendmail(SENDER, [DEST], content)  # raises unless 250
        return "250"
    except aiosmtplib.SMTPResponseException as error:
        return f"{error.code} {error.message[:60]}"
    finally:
        client.close()


def run(name: str, clients: int, content: bytes, slots: int, big_limits: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mss-bench-") as tmp_name:
        tmp = Path(tmp_name)
        upstream = RecordingUpstream(tmp)
        limits = (
            {"max_attachment_size": "100MiB", "max_message_size": "100MiB"} if big_limits else {}
        )
        config = relay_config(
            tmp,
            [listener("submission", free_port(), tls="starttls")],
            upstream.port,
            tls=True,
            limits={**limits, "max_recipients": 5},
            throttle={
                "max_concurrent_messages": slots,
                "messages_per_minute": 0,
                "recipients_per_hour": 0,
                "max_connections_per_client": clients + 5,
            },
            timeouts={"busy_wait": 900, "data": 1800},
            # AUTH as the applicative user, not a trusted client.
            users=[{"name": "bench", "password_hash": hash_password("bench")}],
            bals=[{"address": SENDER, "type": "applicative", "users": ["bench"]}],
            trusted_clients=None,
        )
        relay = RelayProcess(tmp, config)
        upstream.start()
        relay.start()
        try:
            pid = relay.server.pid
            rest = rss_kib(pid, "VmRSS")

            async def all_clients() -> list[str]:
                return await asyncio.gather(
                    *(send_one(relay.port, content) for _ in range(clients))
                )

            started = time.monotonic()
            replies = asyncio.run(all_clients())
            elapsed = time.monotonic() - started
            peak = rss_kib(pid, "VmHWM")
            metas = upstream.received()
        finally:
            relay.stop()
            upstream.stop()
    accepted = sum(r == "250" for r in replies)
    # The relay adds headers on top; the body must arrive byte for byte.
    digest = hashlib.sha256(content.split(b"\r\n\r\n", 1)[1]).hexdigest()
    intact = all(m["body_sha256"] == digest for m in metas) and len(metas) == accepted
    return {
        "run": name,
        "clients": clients,
        "message_mb": round(len(content) / 1e6, 1),
        "slots": slots,
        "limits_100MiB": big_limits,
        "replies": sorted(set(replies)),
        "accepted": accepted,
        "upstream_messages": len(metas),
        "upstream_intact": intact,
        "rss_at_rest_mib": round(rest / 1024, 1),
        "peak_rss_mib": round(peak / 1024, 1),
        "peak_over_rest": round(peak / rest, 1),
        # Messages received at once: as many as there are slots, at most.
        "in_flight_mib": round(min(slots, clients) * len(content) / 2**20, 1),
        "above_rest_over_in_flight": round(
            (peak - rest) / 1024 / (min(slots, clients) * len(content) / 2**20), 2
        ),
        "wall_s": round(elapsed, 1),
        "throughput_mb_s": round(accepted * len(content) / 1e6 / elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--megabytes", type=float, default=80)
    parser.add_argument("--runs", nargs="*", default=["cap4", "nocap", "refused"])
    args = parser.parse_args()
    content = message(args.megabytes)
    plans = {
        "cap4": (4, True),
        "nocap": (args.clients, True),
        "refused": (4, False),
    }
    results = []
    for name in args.runs:
        slots, big = plans[name]
        result = run(name, args.clients, content, slots, big)
        print(json.dumps(result), flush=True)
        results.append(result)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
