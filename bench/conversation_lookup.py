"""Micro-benchmark: the per-message cost of the conversation look-up, with 10^3
and 10^6 conversations stored, measured in the same run.

    .venv/bin/python bench/conversation_lookup.py [--sizes 1000 1000000] [--lookups 5000]

Each stored conversation has one Message-ID. A look-up is what the inbound
listener does for a patient's reply: the Message-IDs it names (three here, as
In-Reply-To plus References) and the patient. Writes bench/results/conversation_lookup.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from mss_relay.pseudonym import Pseudonyms, load_key
from mss_relay.state.conversations import ConversationStore

# Not bench.harness's RESULTS: this module is imported by the harness
# (make_state), and needs nothing else of the package.
RESULTS = Path(__file__).resolve().parent / "results"


def patient(i: int) -> str:
    return f"1{i:012d}00@patient.mssante.fr"


def key_beside(path: Path) -> Pseudonyms:
    """The key where the relay looks by default (beside the database): made
    here first, the relay then finds the stored pseudonyms under it."""
    return load_key(path.parent / "pseudonym.key")


def populate(path: Path, count: int) -> None:
    """Patients stored as the relay stores them: by pseudonym."""
    of = key_beside(path).of
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA synchronous = OFF")
        now = "2026-11-23T00:00:00.000Z"
        db.executemany(
            "INSERT INTO conversations (id, bal, patient, opened_at, opened_by,"
            " last_activity_at) VALUES (?, ?, ?, ?, 'professional', ?)",
            (
                (i, f"bal{i % 500}@ch.mssante.fr", of(patient(i)), now, now)
                for i in range(1, count + 1)
            ),
        )
        db.executemany(
            "INSERT INTO messages (message_id, conversation_id, direction, at)"
            " VALUES (?, ?, 'out', ?)",
            ((f"<m{i}@ch.mssante.fr>", i, now) for i in range(1, count + 1)),
        )


async def measure(path: Path, count: int, lookups: int) -> dict[str, float]:
    store = await ConversationStore.open(path, idle_days=30, pseudonyms=key_beside(path))
    rng = random.Random(42)
    timings = []
    try:
        for _ in range(200):  # warm the page cache, as a running relay has
            i = rng.randint(1, count)
            await store.lookup(patient(i), [f"<m{i}@ch.mssante.fr>"])
        for _ in range(lookups):
            i = rng.randint(1, count)
            refs = [f"<m{i}@ch.mssante.fr>", "<unknown1@x>", "<unknown2@x>"]
            start = time.perf_counter()
            facts = await store.lookup(patient(i), refs)
            timings.append(time.perf_counter() - start)
            assert facts.status.value == "open"
    finally:
        await store.close()
    timings.sort()
    return {
        "conversations": count,
        "lookups": lookups,
        "mean_us": statistics.fmean(timings) * 1e6,
        "p50_us": timings[len(timings) // 2] * 1e6,
        "p99_us": timings[int(len(timings) * 0.99)] * 1e6,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 1_000_000])
    parser.add_argument("--lookups", type=int, default=5000)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in args.sizes:
            path = Path(tmp) / f"state-{count}.sqlite3"
            # Creates the schema.
            store = await ConversationStore.open(path, pseudonyms=key_beside(path))
            await store.close()
            started = time.perf_counter()
            populate(path, count)
            print(f"populated {count} conversations in {time.perf_counter() - started:.1f}s")
            results.append(await measure(path, count, args.lookups))
    base = results[0]["mean_us"]
    print("\n| conversations stored | mean µs/look-up | p50 µs | p99 µs | ratio to smallest |")
    print("| --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r['conversations']:,} | {r['mean_us']:.0f} | {r['p50_us']:.0f} |"
            f" {r['p99_us']:.0f} | {r['mean_us'] / base:.2f}x |"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "conversation_lookup.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
