"""Per-message cost of patient mail against the number of stored conversations.

    .venv/bin/python bench/state_cost.py [--counts 1000 1000000] [--messages 1500] [--repeats 5]

The real relay (1 worker, every rule on, DKIM signing; bench/compare.py's
configuration) with its state file pre-filled with each count of
conversations, smtp-sink as the operator. A Python client sends 2 KB messages
from the DPI's BAL to patients over 10 persistent sessions; each message has
its own Message-ID and patient, so each one opens a conversation: a look-up
and writes in the state file, as in real life. Figures: the relay's CPU per
message (from /proc) and msgs/s, median of 5 runs per count (the runs of the
counts interleaved, so that the machine's drift weighs on all alike), and the
ratio of the largest count to the smallest (issue 6: within ±10 %).
Writes bench/results/state_cost.json. Loopback only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if not TYPE_CHECKING and not __package__:  # python bench/state_cost.py: see bench/_script.py
    import _script

    _script.rerun(__file__)

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .harness import (
    RESULTS,
    RelayProcess,
    Sink,
    free_port,
    listener,
    make_dkim_key,
    make_state,
    relay_config,
)
from .load import SENDER
from .procfs import cpu_seconds
from .targets import RELAY_SECTIONS

SESSIONS = 10


def patient(i: int) -> str:
    """A valid INS matricule of its own for each i (< 69,000,000), none of
    those conversation_lookup.py fills the state with."""
    order, rest = i % 999 + 1, i // 999
    commune, rest = rest % 900 + 100, rest // 900
    department, month = rest % 80 + 10, rest // 80 % 12 + 1
    base = f"185{month:02d}{department:02d}{commune:03d}{order:03d}"
    return f"{base}{97 - int(base) % 97:02d}@patient.mssante.fr"


def message(number: int, to: str) -> bytes:
    return (
        f"From: {SENDER}\r\nTo: {to}\r\nSubject: Resultats\r\n"
        "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
        f"Message-ID: <run{time.monotonic_ns()}.{number}@ch-bench.mssante.fr>\r\n\r\n"
        + "Vos resultats sont disponibles.\r\n" * 60
        + ".\r\n"
    ).encode()


async def session(
    port: int, numbers: list[int], first: int, recipient: Callable[[int], str] = patient
) -> None:
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
        # Patients never written to before: each message opens a conversation.
        to = recipient(first + number)
        writer.write(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{to}>\r\nDATA\r\n".encode())
        await expect(b"250")
        await expect(b"250")
        await expect(b"354")
        writer.write(message(number, to))
        await expect(b"250")
    writer.write(b"QUIT\r\n")
    writer.close()


def one_run(
    port: int,
    pids: list[int],
    count: int,
    first: int,
    recipient: Callable[[int], str] = patient,
) -> dict[str, float]:
    numbers = list(range(count))
    chunks = [numbers[i::SESSIONS] for i in range(SESSIONS)]

    async def all_sessions() -> None:
        await asyncio.gather(*(session(port, chunk, first, recipient) for chunk in chunks))

    cpu, started = cpu_seconds(pids), time.monotonic()
    asyncio.run(all_sessions())
    elapsed, used = time.monotonic() - started, cpu_seconds(pids) - cpu
    return {"msgs_per_s": count / elapsed, "cpu_ms_per_msg": used * 1000 / count}


@dataclass
class Subject:
    """One relay and its state file of `count` conversations."""

    count: int
    directory: Path
    relay: RelayProcess
    port: int
    fill_seconds: float
    runs: list[dict[str, float]] = field(default_factory=list)


def prepare(count: int, work: Path, sink: Sink) -> Subject:
    directory = work / f"state-{count}"
    directory.mkdir()
    seconds = make_state(directory / "state.sqlite3", count)
    port = free_port()
    key = work / "dkim" / "bench.key"
    config = relay_config(
        directory, [listener("dpi", port)], sink.port, dkim_key=key, **RELAY_SECTIONS
    )
    relay = RelayProcess(directory, config)
    relay.start()
    one_run(port, relay.pids(), 100, 7_000_000)  # warm-up, not recorded
    return Subject(count, directory, relay, port, seconds)


def measure_all(
    counts: list[int], messages: int, repeats: int, work: Path, sink: Sink
) -> list[dict[str, Any]]:
    """The runs of every count interleaved (A B A B ...), so that a drift of
    the machine meanwhile weighs on every count alike; medians quoted."""
    subjects: list[Subject] = []
    try:
        for count in counts:
            subjects.append(prepare(count, work, sink))
        for i in range(repeats):
            for s in subjects:
                pids = s.relay.pids()
                s.runs.append(one_run(s.port, pids, messages, i * messages))
    finally:
        for s in subjects:
            s.relay.stop()
    return [summary(s) for s in subjects]


def summary(s: Subject) -> dict[str, Any]:
    runs = s.runs
    log = (s.directory / "relay.jsonl").read_text()
    return {
        "conversations": s.count,
        "fill_seconds": round(s.fill_seconds, 1),
        "runs": runs,
        "cpu_ms_per_msg": round(statistics.median(r["cpu_ms_per_msg"] for r in runs), 2),
        "msgs_per_s": round(statistics.median(r["msgs_per_s"] for r in runs), 1),
        "conversations_opened": log.count('"event": "conversation_opened"'),
        "state_errors": log.count('"event": "state_error"'),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1_000, 1_000_000])
    parser.add_argument("--messages", type=int, default=1500, help="per run")
    parser.add_argument("--repeats", type=int, default=5, help="runs per count, interleaved")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mss-bench-") as name:
        work = Path(name)
        make_dkim_key(work / "dkim")
        with Sink(free_port(), work) as sink:
            results = measure_all(args.counts, args.messages, args.repeats, work, sink)
    by_count = sorted(results, key=lambda r: r["conversations"])
    first, last = by_count[0], by_count[-1]
    summary = {
        "sessions": SESSIONS,
        "results": results,
        "cpu_ratio_largest_to_smallest": round(last["cpu_ms_per_msg"] / first["cpu_ms_per_msg"], 3),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "state_cost.json").write_text(json.dumps(summary, indent=2) + "\n")
    for r in results:
        print(
            f"{r['conversations']:>10,} conversations: {r['cpu_ms_per_msg']:.2f} ms CPU/msg,"
            f" {r['msgs_per_s']:.0f} msgs/s, {r['conversations_opened']} opened,"
            f" {r['state_errors']} state errors"
        )
    print(f"ratio: {summary['cpu_ratio_largest_to_smallest']}")


if __name__ == "__main__":
    main()
