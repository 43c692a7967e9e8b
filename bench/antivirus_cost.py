"""Messages per second and CPU per message with the antivirus on, against off.

    .venv/bin/python bench/antivirus_cost.py [--repeats 3] [--small 300] [--large 30]
    .venv/bin/python bench/antivirus_cost.py --quick     # 1 repeat, 100 and 10 messages

Two real relays in the same run (1 worker, every rule on, DKIM signing;
bench/compare.py's configuration), the same but for the « antivirus »
section: one without, one streaming every message to a private clamd
(tests/support/clamd.py: Debian's clamd, its one test signature; a real
structure's clamd loads some 8 million signatures, which makes its own scan
slower, not the relay's part). smtp-sink is the operator. A Python client
sends from the DPI's BAL over persistent sessions (10 for 100 KB, 4 for
5 MB) messages with one PDF-like attachment of random bytes in base64, of
100 KB and of 5 MB. Figures per size and relay: msgs/s, the relay's CPU per
message (its process tree, /proc), clamd's CPU per message (counted: it is
the scan's cost, on the same machine), and the scan's latency as the relay
logged it (scan_ms on the « antivirus » decision lines, median). The runs of
the two relays interleaved (off on, on off, ...): a drift of the machine
weighs on both alike. Writes bench/results/antivirus_cost.json
(antivirus_cost-quick.json with --quick). Loopback only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if not TYPE_CHECKING and not __package__:  # python bench/antivirus_cost.py: see bench/_script.py
    import _script

    _script.rerun(__file__)

import argparse
import asyncio
import base64
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.clamd import Clamd

from .harness import RESULTS, RelayProcess, Sink, free_port, listener, make_dkim_key, relay_config
from .load import SENDER
from .procfs import cpu_seconds
from .targets import RELAY_SECTIONS

RECIPIENT = "dr.martin@chu-b.mssante.fr"
SIZES = {"100KB": (100_000, 10), "5MB": (5_000_000, 4)}  # attachment bytes, sessions


def message(number: int, attachment: bytes) -> bytes:
    """One text part and one attachment in base64 (76-character lines), CRLF."""
    encoded = base64.encodebytes(attachment).replace(b"\n", b"\r\n")
    return (
        (
            f"From: {SENDER}\r\nTo: {RECIPIENT}\r\nSubject: Resultats\r\n"
            "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
            f"Message-ID: <av{time.monotonic_ns()}.{number}@ch-bench.mssante.fr>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
            "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nCi-joint le compte rendu.\r\n"
            "--b1\r\nContent-Type: application/pdf; name=cr.pdf\r\n"
            "Content-Disposition: attachment; filename=cr.pdf\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n"
        ).encode()
        + encoded
        + b"--b1--\r\n.\r\n"
    )


async def session(port: int, numbers: list[int], attachment: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def expect(code: bytes) -> None:
        while True:
            line = await reader.readline()
            if not line.startswith(code):
                raise RuntimeError(f"expected {code!r}, got {line!r}")
            if line[3:4] == b" ":
                return

    await expect(b"220")
    writer.write(b"EHLO dpi.ch-bench.mssante.fr\r\n")
    await expect(b"250")
    for number in numbers:
        writer.write(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n".encode())
        await expect(b"250")
        await expect(b"250")
        await expect(b"354")
        writer.write(message(number, attachment))
        await writer.drain()
        await expect(b"250")
    writer.write(b"QUIT\r\n")
    writer.close()


def one_run(
    port: int, pids: list[int], clamd_pids: list[int], count: int, size: str
) -> dict[str, float]:
    length, sessions = SIZES[size]
    attachment = os.urandom(length)
    numbers = list(range(count))
    chunks = [numbers[i::sessions] for i in range(sessions)]

    async def all_sessions() -> None:
        await asyncio.gather(*(session(port, chunk, attachment) for chunk in chunks))

    cpu, scans, started = cpu_seconds(pids), cpu_seconds(clamd_pids), time.monotonic()
    asyncio.run(all_sessions())
    elapsed = time.monotonic() - started
    used, scanned = cpu_seconds(pids) - cpu, cpu_seconds(clamd_pids) - scans
    return {
        "msgs_per_s": count / elapsed,
        "cpu_ms_per_msg": used * 1000 / count,
        "clamd_cpu_ms_per_msg": scanned * 1000 / count,
    }


@dataclass
class Subject:
    name: str
    relay: RelayProcess
    port: int
    runs: dict[str, list[dict[str, float]]] = field(default_factory=dict)


def prepare(name: str, work: Path, sink: Sink, clamd: Clamd | None) -> Subject:
    directory = work / name
    directory.mkdir()
    port = free_port()
    sections: dict[str, Any] = dict(RELAY_SECTIONS)
    if clamd is not None:
        sections["antivirus"] = {"clamd": clamd.address, "timeout": "60s"}
    config = relay_config(
        directory,
        [listener("dpi", port)],
        sink.port,
        dkim_key=work / "dkim" / "bench.key",
        **sections,
    )
    relay = RelayProcess(directory, config)
    relay.start()
    return Subject(name, relay, port)


def median(runs: list[dict[str, float]], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 3)


def summary(subject: Subject, size: str) -> dict[str, Any]:
    runs = subject.runs[size]
    return {
        "antivirus": subject.name,
        "size": size,
        "runs": runs,
        "msgs_per_s": median(runs, "msgs_per_s"),
        "relay_cpu_ms_per_msg": median(runs, "cpu_ms_per_msg"),
        "clamd_cpu_ms_per_msg": median(runs, "clamd_cpu_ms_per_msg"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", type=int, default=300, help="100 KB messages per run")
    parser.add_argument("--large", type=int, default=30, help="5 MB messages per run")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.small, args.large = 1, 100, 10
    counts = {"100KB": args.small, "5MB": args.large}
    with tempfile.TemporaryDirectory(prefix="mss-bench-av-") as folder:
        work = Path(folder)
        make_dkim_key(work / "dkim")
        with Sink(free_port(), work) as sink, Clamd(work / "clamd") as clamd:
            assert clamd.proc is not None
            clamd_pids = [clamd.proc.pid]
            subjects: list[Subject] = []
            try:
                subjects.append(prepare("off", work, sink, None))
                subjects.append(prepare("on", work, sink, clamd))
                for s in subjects:  # warm-up, not recorded
                    one_run(s.port, s.relay.pids(), clamd_pids, 20, "100KB")
                for size, count in counts.items():
                    for repeat in range(args.repeats):
                        for s in subjects if repeat % 2 == 0 else subjects[::-1]:
                            run = one_run(s.port, s.relay.pids(), clamd_pids, count, size)
                            s.runs.setdefault(size, []).append(run)
                latency: dict[str, float | None] = {}
                lines = [
                    e
                    for e in subjects[1].relay.events()
                    if e.get("event") == "decision" and e.get("stage") == "antivirus"
                ]
                # The warm-up's lines first, then each size's runs in order.
                lines = lines[20:]
                start = 0
                for size, count in counts.items():
                    taken = lines[start : start + count * args.repeats]
                    start += count * args.repeats
                    times = [float(e["scan_ms"]) for e in taken]
                    latency[size] = round(statistics.median(times), 1) if times else None
            finally:
                for s in subjects:
                    s.relay.stop()
    results = {
        "benchmark": "antivirus_cost",
        "machine": {"cpus": os.cpu_count()},
        "repeats": args.repeats,
        "messages": counts,
        "results": [summary(s, size) for size in counts for s in subjects],
        "scan_ms_median": latency,
    }
    ratios: dict[str, dict[str, float]] = {}
    for size in counts:
        off, on = (summary(s, size) for s in subjects)
        ratios[size] = {
            "msgs_per_s_on_over_off": round(on["msgs_per_s"] / off["msgs_per_s"], 3),
            "relay_cpu_on_minus_off_ms": round(
                on["relay_cpu_ms_per_msg"] - off["relay_cpu_ms_per_msg"], 3
            ),
            "total_cpu_on_over_off": round(
                (on["relay_cpu_ms_per_msg"] + on["clamd_cpu_ms_per_msg"])
                / off["relay_cpu_ms_per_msg"],
                3,
            ),
        }
    results["ratios"] = ratios
    name = "antivirus_cost-quick.json" if args.quick else "antivirus_cost.json"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / name).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({k: results[k] for k in ("ratios", "scan_ms_median")}, indent=1))
    for row in results["results"]:
        print(
            f"{row['size']:>6} antivirus {row['antivirus']:>3}: {row['msgs_per_s']:8.1f} msgs/s,"
            f" relay {row['relay_cpu_ms_per_msg']:8.2f} ms CPU/msg,"
            f" clamd {row['clamd_cpu_ms_per_msg']:8.2f} ms CPU/msg"
        )


if __name__ == "__main__":
    main()
