"""Per-message cost of patient mail against the number of stored conversations,
with the state in SQLite and in PostgreSQL.

    .venv/bin/python bench/state_cost.py [--counts 1000 1000000] [--messages 1500]
        [--repeats 5] [--backends sqlite postgres] [--postgres URL]

The real relay (1 worker, every rule on, DKIM signing; bench/compare.py's
configuration) with its state pre-filled with each count of conversations,
smtp-sink as the operator. A Python client sends 2 KB messages from the DPI's
BAL to patients over 10 persistent sessions; each message has its own
Message-ID and patient, so each one opens a conversation: a look-up and
writes in the state, as in real life.

Backends (issue 18): `sqlite` is the state file of one machine; `postgres` is
`state.database: postgresql://...` on a private PostgreSQL server the bench
starts (tests/support/postgres.py: initdb under /tmp, 127.0.0.1, a random
port, fsync off), or on --postgres URL (a role that may CREATE DATABASE: one
database per count is made there, and dropped at the end). The PostgreSQL
state is filled the way an installation moves to several relays: the SQLite
file is filled as for `sqlite`, then copied by the real `mss-relay state copy
--from sqlite:PATH --to postgresql://...` with the relay's configuration (so
its pseudonym key, whose check the copy stores in the database, is the one
the relay then opens it with), then VACUUM ANALYZE'd: the tables as
autovacuum would leave them, not mid-way through its first pass. On
PostgreSQL the shared throttles (per-user messages and recipients, state/
shared_throttle.py) are on the server too, as with several relays.

Every (backend, count) cell has its relay running from the start; the runs
of all cells are interleaved, in the order A B C D then D C B A and so on,
so that a drift of the machine weighs on every cell alike. Figures per cell,
medians of the runs: msgs/s, the relay's CPU per message, the PostgreSQL
server's CPU per message (every process of its postmaster, /proc utime+stime
with the reaped children's; measured when the server is the bench's own, or
a local one whose data_directory the URL's role may read), and their sum.
`others_cores`: the CPU of every other process on the machine during the run,
in cores, and `steal_cores`, the CPU the hypervisor gave other guests (noise:
another job, here or in another virtual machine). Ratios: the largest count to the smallest for
each backend (issue 6's flat cost: within ±10 %), and postgres to sqlite at
each count.

bench/results/state_cost.json: {"sessions", "messages", "repeats",
"backends", "rates", "postgres" (server version, or "given"), "results": one entry per
cell (backend, conversations, fill_seconds [+ copy_seconds], runs in the
order measured, the medians: msgs_per_s, cpu_ms_per_msg (the relay's, as
before), server_cpu_ms_per_msg, total_cpu_ms_per_msg; spread: min and max of
the relay's and the total CPU; conversations_opened, state_errors),
"ratios": {"largest_to_smallest": {backend: {relay_cpu, total_cpu, msgs_per_s,
and paired_*: the median of the ratios of the runs of the same repeat}},
"postgres_to_sqlite": {count: {...}}}, "cpu_ratio_largest_to_smallest" (the
relay's CPU, SQLite, as before; PostgreSQL's alone when only it ran)}.
--no-rates: the per-user sending rates off on both backends (with PostgreSQL
they are two transactions a message on the server), written to
bench/results/state_cost-no-rates.json instead.
Loopback only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if not TYPE_CHECKING and not __package__:  # python bench/state_cost.py: see bench/_script.py
    import _script

    _script.rerun(__file__)

import argparse
import asyncio
import contextlib
import json
import secrets
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from tests.support.postgres import PostgresServer, postgres_available

from .harness import (
    RESULTS,
    ROOT,
    RelayProcess,
    Sink,
    free_port,
    listener,
    make_dkim_key,
    make_state,
    python_module,
    relay_config,
    write_config,
)
from .load import SENDER
from .procfs import cpu_seconds, others_cpu_seconds, process_tree, steal_seconds
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
    *,
    server: Callable[[], list[int]] | None = None,
) -> dict[str, float]:
    """One run of `count` messages: msgs/s and the relay's CPU per message;
    with `server` (its processes, read at both ends), the server's CPU per
    message and the CPU of every other process in cores (noise)."""
    numbers = list(range(count))
    chunks = [numbers[i::SESSIONS] for i in range(SESSIONS)]

    async def all_sessions() -> None:
        await asyncio.gather(*(session(port, chunk, first, recipient) for chunk in chunks))

    server_pids = server() if server else []
    others = others_cpu_seconds() if server else 0.0
    steal = steal_seconds()
    server_cpu = cpu_seconds(server_pids)
    cpu, started = cpu_seconds(pids), time.monotonic()
    asyncio.run(all_sessions())
    elapsed, used = time.monotonic() - started, cpu_seconds(pids) - cpu
    result = {"msgs_per_s": count / elapsed, "cpu_ms_per_msg": used * 1000 / count}
    if server:
        # A backend that exited meanwhile was reaped by the postmaster: its
        # time is in the postmaster's cutime, read from the pids of the start.
        server_used = cpu_seconds(sorted({*server_pids, *server()})) - server_cpu
        result["server_cpu_ms_per_msg"] = server_used * 1000 / count
        # The server is not the bench's child (pg_ctl detaches it): it is
        # taken out of the others' CPU, which is then every other job's.
        result["others_cores"] = (others_cpu_seconds() - others - server_used) / elapsed
        result["steal_cores"] = (steal_seconds() - steal) / elapsed
    return result


# -- PostgreSQL ----------------------------------------------------------------------------


@dataclass
class Postgres:
    """Where the PostgreSQL cells' databases are made: `admin`, a URL whose
    role may CREATE DATABASE; `pids`, the server's processes when they can
    be read here (else None: its CPU is not measured)."""

    admin: str
    pids: Callable[[], list[int]] | None
    version: str
    made: list[str] = field(default_factory=list)

    def database(self, count: int) -> str:
        """A database of its own for a cell: its URL (the admin's role owns it)."""
        name = f"mss_bench_{count}_{secrets.token_hex(3)}"
        with psycopg.connect(self.admin, autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.made.append(name)
        parts = urlsplit(self.admin)
        return urlunsplit(parts._replace(path="/" + name))

    def vacuum(self, url: str) -> None:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute("VACUUM ANALYZE")

    def drop_all(self) -> None:
        with psycopg.connect(self.admin, autocommit=True) as connection:
            for name in self.made:
                statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                connection.execute(statement.format(sql.Identifier(name)))


def _local_pids(admin: str) -> Callable[[], list[int]] | None:
    """The processes of a server given by URL, when it runs here and its
    postmaster.pid can be read (a superuser's SHOW data_directory)."""
    try:
        with psycopg.connect(admin, autocommit=True) as connection:
            row = connection.execute("SHOW data_directory").fetchone()
        if row is None:
            return None
        first = (Path(str(row[0])) / "postmaster.pid").read_text().split("\n", 1)[0]
    except (psycopg.Error, OSError):
        return None  # not a superuser, or not on this machine
    if not first.strip().isdigit():
        return None
    postmaster = int(first)
    return lambda: process_tree(postmaster)


@contextlib.contextmanager
def postgres(work: Path, url: str | None) -> Iterator[Postgres]:
    """The bench's own server (or the one of `url`), its databases dropped at the end."""
    if url is not None:
        given = Postgres(url, _local_pids(url), "given")
        try:
            yield given
        finally:
            given.drop_all()
        return
    reason = postgres_available()
    if reason is not None:
        raise SystemExit(f"postgres: {reason}")
    with PostgresServer(work / "postgres") as server:
        password = secrets.token_urlsafe(18)
        server.create_role("bench", password)
        server.sql("ALTER ROLE bench CREATEDB")
        admin = server.url("bench", "postgres", password)

        def pids() -> list[int]:
            pid = server.postmaster_pid()
            return process_tree(pid) if pid is not None else []

        yield Postgres(admin, pids, server.binaries.version)


def state_copy(config: Path, source: Path, url: str) -> None:
    """The real command, as an operator runs it."""
    command = python_module(
        "mss_relay",
        "state",
        "copy",
        "--from",
        f"sqlite:{source}",
        "--to",
        url,
        "--config",
        str(config),
    )
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"state copy: {out.stderr.strip()}")


# -- the cells -------------------------------------------------------------------------------


@dataclass
class Subject:
    """One relay and its state of `count` conversations on `backend`."""

    backend: str
    count: int
    directory: Path
    relay: RelayProcess
    port: int
    fill_seconds: float
    copy_seconds: float | None = None
    server: Callable[[], list[int]] | None = None
    runs: list[dict[str, float]] = field(default_factory=list)


# --no-rates: the per-user sending rates off (0: no limit), on both backends:
# with PostgreSQL they are counted on the server (two transactions a
# message); without them, what is left is the conversation state's own cost.
NO_RATES = {"throttle": {"messages_per_minute": 0, "recipients_per_hour": 0}}


def prepare(
    backend: str,
    count: int,
    work: Path,
    sink: Sink,
    pg: Postgres | None = None,
    *,
    rates: bool = True,
) -> Subject:
    directory = work / f"{backend}-{count}"
    directory.mkdir()
    # The SQLite state, and its pseudonym key beside it (where the relay
    # looks by default: with PostgreSQL, state.directory is this folder too).
    state = directory / "state.sqlite3"
    seconds = make_state(state, count)
    port = free_port()
    key = work / "dkim" / "bench.key"
    sections: dict[str, Any] = dict(RELAY_SECTIONS)
    if not rates:
        sections["throttle"] = {**sections["throttle"], **NO_RATES["throttle"]}
    url = None
    if pg is not None:
        url = pg.database(count)
        sections["state"] = {"database": url, "directory": str(directory)}
    config = relay_config(directory, [listener("dpi", port)], sink.port, dkim_key=key, **sections)
    copied = None
    if pg is not None and url is not None:
        started = time.monotonic()
        state_copy(write_config(directory / "relay.yaml", config), state, url)
        pg.vacuum(url)
        copied = time.monotonic() - started
    relay = RelayProcess(directory, config)
    relay.start()
    server = pg.pids if pg is not None else None
    one_run(port, relay.pids(), 100, 7_000_000)  # warm-up, not recorded
    return Subject(backend, count, directory, relay, port, seconds, copied, server)


def measure_all(subjects: list[Subject], messages: int, repeats: int) -> None:
    """The runs of every cell interleaved, A B C D then D C B A ...: a drift
    of the machine meanwhile (linear, at least) weighs on every cell alike."""
    for i in range(repeats):
        for s in subjects if i % 2 == 0 else reversed(subjects):
            # server: the postgres cells' server; a sqlite cell has none (its
            # others_cores then include the idle PostgreSQL's background work).
            server = s.server or (lambda: [])
            s.runs.append(one_run(s.port, s.relay.pids(), messages, i * messages, server=server))


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def summary(s: Subject) -> dict[str, Any]:
    runs = s.runs
    for r in runs:
        r["total_cpu_ms_per_msg"] = r["cpu_ms_per_msg"] + r.get("server_cpu_ms_per_msg", 0.0)
    log = (s.directory / "relay.jsonl").read_text()
    result: dict[str, Any] = {
        "backend": s.backend,
        "conversations": s.count,
        "fill_seconds": round(s.fill_seconds, 1),
    }
    if s.copy_seconds is not None:
        result["copy_seconds"] = round(s.copy_seconds, 1)  # state copy + VACUUM ANALYZE
    measured = s.backend == "sqlite" or s.server is not None
    result |= {
        "runs": runs,
        "cpu_ms_per_msg": round(_median(runs, "cpu_ms_per_msg"), 2),
        "server_cpu_ms_per_msg": (
            round(_median(runs, "server_cpu_ms_per_msg"), 2) if measured else None
        ),
        "total_cpu_ms_per_msg": round(_median(runs, "total_cpu_ms_per_msg"), 2)
        if measured
        else None,
        "msgs_per_s": round(_median(runs, "msgs_per_s"), 1),
        "cpu_ms_per_msg_range": [
            round(min(r["cpu_ms_per_msg"] for r in runs), 2),
            round(max(r["cpu_ms_per_msg"] for r in runs), 2),
        ],
        "total_cpu_ms_per_msg_range": [
            round(min(r["total_cpu_ms_per_msg"] for r in runs), 2),
            round(max(r["total_cpu_ms_per_msg"] for r in runs), 2),
        ],
        "others_cores": round(_median(runs, "others_cores"), 2),
        "steal_cores": round(_median(runs, "steal_cores"), 2),
        "conversations_opened": log.count('"event": "conversation_opened"'),
        "state_errors": log.count('"event": "state_error"'),
    }
    return result


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _paired(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
    """The median of the ratios of the runs of the same repeat: a cost that
    drifts along the run (the shared throttles' rows piling up within their
    hour, the machine's load) then divides out, where the medians' ratio
    compares runs of different repeats."""
    pairs = [x[key] / y[key] for x, y in zip(a["runs"], b["runs"], strict=True) if y[key]]
    return round(statistics.median(pairs), 3) if pairs else None


def _ratios(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float | None]:
    # A server whose CPU was not read (--postgres elsewhere): its runs'
    # totals are the relay's alone, no total to compare.
    totals = a["total_cpu_ms_per_msg"] is not None and b["total_cpu_ms_per_msg"] is not None
    return {
        "relay_cpu": _ratio(a["cpu_ms_per_msg"], b["cpu_ms_per_msg"]),
        "total_cpu": _ratio(a["total_cpu_ms_per_msg"], b["total_cpu_ms_per_msg"]),
        "msgs_per_s": _ratio(a["msgs_per_s"], b["msgs_per_s"]),
        "paired_relay_cpu": _paired(a, b, "cpu_ms_per_msg"),
        "paired_total_cpu": _paired(a, b, "total_cpu_ms_per_msg") if totals else None,
        "paired_msgs_per_s": _paired(a, b, "msgs_per_s"),
    }


def ratios(results: list[dict[str, Any]]) -> dict[str, Any]:
    cells = {(r["backend"], r["conversations"]): r for r in results}
    flat = {}
    for backend in dict.fromkeys(r["backend"] for r in results):
        counts = sorted(c for b, c in cells if b == backend)
        flat[backend] = _ratios(cells[backend, counts[-1]], cells[backend, counts[0]])
    across = {
        str(count): _ratios(cells["postgres", count], cells["sqlite", count])
        for b, count in cells
        if b == "sqlite" and ("postgres", count) in cells
    }
    return {"largest_to_smallest": flat, "postgres_to_sqlite": across}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1_000, 1_000_000])
    parser.add_argument("--messages", type=int, default=1500, help="per run")
    parser.add_argument("--repeats", type=int, default=5, help="runs per cell, interleaved")
    parser.add_argument(
        "--backends", nargs="+", choices=("sqlite", "postgres"), default=["sqlite", "postgres"]
    )
    parser.add_argument("--postgres", metavar="URL", help="a server of yours (CREATE DATABASE)")
    parser.add_argument(
        "--no-rates",
        action="store_true",
        help="per-user sending rates off (state_cost-no-rates.json)",
    )
    args = parser.parse_args()
    backends = list(dict.fromkeys(args.backends))
    with tempfile.TemporaryDirectory(prefix="mss-bench-") as name, contextlib.ExitStack() as stack:
        work = Path(name)
        make_dkim_key(work / "dkim")
        sink = stack.enter_context(Sink(free_port(), work))
        pg = stack.enter_context(postgres(work, args.postgres)) if "postgres" in backends else None
        subjects: list[Subject] = []
        try:
            for backend in backends:
                for count in args.counts:
                    cell_pg = pg if backend == "postgres" else None
                    subject = prepare(backend, count, work, sink, cell_pg, rates=not args.no_rates)
                    subjects.append(subject)
                    print(f"{backend} {count:,}: filled", flush=True)
            measure_all(subjects, args.messages, args.repeats)
        finally:
            for s in subjects:
                s.relay.stop()
        results = [summary(s) for s in subjects]
    figures = ratios(results)
    flat = figures["largest_to_smallest"]
    output = {
        "sessions": SESSIONS,
        "messages": args.messages,
        "repeats": args.repeats,
        "backends": backends,
        "rates": not args.no_rates,
        "postgres": pg.version if pg else None,
        "results": results,
        "ratios": figures,
        "cpu_ratio_largest_to_smallest": flat.get("sqlite", flat.get("postgres", {})).get(
            "relay_cpu"
        ),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "state_cost-no-rates.json" if args.no_rates else "state_cost.json"
    (RESULTS / name).write_text(json.dumps(output, indent=2) + "\n")
    for r in results:
        server = r["server_cpu_ms_per_msg"]
        print(
            f"{r['backend']:>8} {r['conversations']:>10,} conversations:"
            f" relay {r['cpu_ms_per_msg']:.2f} ms CPU/msg"
            f" (runs {r['cpu_ms_per_msg_range'][0]:.2f}-{r['cpu_ms_per_msg_range'][1]:.2f}),"
            f" server {'-' if server is None else f'{server:.2f}'},"
            f" total {r['total_cpu_ms_per_msg']}, {r['msgs_per_s']:.0f} msgs/s,"
            f" others {r['others_cores']:.2f} + steal {r['steal_cores']:.2f} cores,"
            f" {r['conversations_opened']} opened,"
            f" {r['state_errors']} state errors"
        )
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
