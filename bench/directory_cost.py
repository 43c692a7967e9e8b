"""The Annuaire Santé: the import of a generated extraction (time and peak
RSS of the « mss-relay directory import » process), then the RCPT look-up
and a search, with 1,000 and 600,000 rows imported, measured in the same run.

    .venv/bin/python bench/directory_cost.py [--sizes 1000 600000] [--lookups 5000]
        [--postgres postgresql://USER:PASSWORD@HOST:PORT/DB]

--postgres: the same, on that PostgreSQL database (state/pg_directory.py; its
Annuaire tables are overwritten by each size's import) rather than a SQLite
file; the results go to bench/results/directory_cost-postgres.json.

Each size: an extraction written by tests/support/extraction.py (31 columns,
PER/ORG, accents, one address in 50 twice), imported by the real command in a
child process (/usr/bin/time-like figures from its rusage), then looked up
through DirectoryStore.answer, as a session does at RCPT (half listed, half
not): by the database first, then from memory once the import is loaded
(state/directory_index.py), as the relay answers. Writes bench/results/directory_cost.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mss_relay.state.api import Directory  # noqa: E402
from mss_relay.state.directory import DirectoryStore  # noqa: E402
from mss_relay.state.pg_directory import PgDirectoryStore  # noqa: E402
from mss_relay.state.postgres import PostgresDatabase, PostgresSettings  # noqa: E402
from tests.support.extraction import generated, write  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def imported(folder: Path, rows: int, postgres: str | None = None) -> dict[str, float]:
    """Write and import an extraction of `rows` rows: the child's figures."""
    extraction = write(folder / "extraction.txt", generated(rows))
    figures = {"rows": rows, "file_mb": round(extraction.stat().st_size / 1e6, 1)}
    return figures | import_extraction(extraction, folder / "state.sqlite3", postgres)


def import_extraction(
    extraction: Path, database: Path, postgres: str | None = None
) -> dict[str, float]:
    """Import `extraction` into the state file `database` by the real command
    (« mss-relay directory import »), in a child process: its wall time, CPU
    and peak RSS (ru_maxrss of the children: the largest child waited for
    so far, which is this one when it is the only one). bench/compare.py
    --trust uses it too."""
    config = database.parent / "directory-import.yaml"
    config.write_text(
        "listeners: [{name: m, role: milter, port: 10999}]\n"
        + (
            f"state: {{database: '{postgres}', directory: {database.parent}}}\n"
            if postgres
            else f"state: {{database: {database}}}\n"
        )
        + "log: {file: '-'}\n"
    )
    command = [sys.executable, "-m", "mss_relay", "directory", "import", str(extraction)]
    command += ["--config", str(config)]
    if postgres:  # the database keeps the previous size's import: replaced whatever its size
        command.append("--force")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(done.stdout.strip())
    return {
        "import_s": round(wall, 2),
        "import_cpu_s": round(
            after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 2
        ),
        "peak_rss_mb": round(after.ru_maxrss / 1024, 1),
    }


async def lookups(
    database: Path, rows: int, count: int, postgres: str | None = None
) -> dict[str, float]:
    pg = await PostgresDatabase.open(PostgresSettings(postgres)) if postgres else None
    store: Directory = PgDirectoryStore(pg) if pg else await DirectoryStore.open(database)
    try:
        rng = random.Random(rows)
        addresses = [
            f"bal{i}@hopital-{i % 97}.mssante.fr"
            if rng.random() < 0.5
            else f"absent{i}@hopital-{i % 97}.mssante.fr"
            for i in (rng.randrange(rows) for _ in range(count))
        ]
        # The database's answer (before the import is loaded in memory),
        # then the relay's usual one, from memory (directory_index.py).
        database_times = await _timed(store, addresses)
        started = time.perf_counter()
        loaded = await store.refresh()
        load_s = time.perf_counter() - started
        assert loaded is not None
        times = await _timed(store, addresses)
        searches = []
        for words in (["helene", "lefevre"], ["lyon"], ["zzz"]):
            started = time.perf_counter()
            await store.search(words, 51)
            searches.append(time.perf_counter() - started)
        return {
            "lookup_median_us": round(statistics.median(times) * 1e6, 1),
            "lookup_p99_us": round(times[int(len(times) * 0.99)] * 1e6, 1),
            "lookup_database_median_us": round(statistics.median(database_times) * 1e6, 1),
            "lookup_database_p99_us": round(database_times[int(len(times) * 0.99)] * 1e6, 1),
            "index_load_s": round(load_s, 2),
            "index_mb": round(
                (
                    len(loaded) * loaded.digests.itemsize
                    + len(loaded.starts) * loaded.starts.itemsize
                )
                / 1e6,
                1,
            ),
            "search_ms": round(max(searches) * 1000, 1),
        }
    finally:
        await store.close()
        if pg is not None:
            await pg.close()


async def _timed(store: Directory, addresses: list[str]) -> list[float]:
    """Each answer's wall time, sorted."""
    times = []
    for address in addresses:
        started = time.perf_counter()
        answer = await store.answer(address, 2.0)
        times.append(time.perf_counter() - started)
        assert answer.listed is not None, answer
    return sorted(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 600_000])
    parser.add_argument("--lookups", type=int, default=5000)
    parser.add_argument("--postgres", metavar="URL", help="a PostgreSQL database instead")
    args = parser.parse_args()
    results = []
    for rows in args.sizes:
        with tempfile.TemporaryDirectory() as folder:
            figures = imported(Path(folder), rows, args.postgres)
            figures |= asyncio.run(
                lookups(Path(folder) / "state.sqlite3", rows, args.lookups, args.postgres)
            )
        print(json.dumps(figures))
        results.append(figures)
    RESULTS.mkdir(exist_ok=True)
    out = {"cpus": os.cpu_count(), "results": results}
    name = "directory_cost-postgres.json" if args.postgres else "directory_cost.json"
    (RESULTS / name).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
