"""mss-relay side by side with Postfix, its own floor, and the box's limit.

    .venv/bin/python bench/compare.py            # full run, about 10-15 minutes
    .venv/bin/python bench/compare.py --quick    # smoke run, under a minute

In one run, on 127.0.0.1 only, smtp-source (Postfix's C load generator) and a
timed Python probe (one of the sessions: the per-message latency) send the same
MIME message (a text part and a base64 PDF attachment making up the size) to
each of:

    sink         smtp-sink alone: the box's limit
    postfix      a private Postfix instance relaying to smtp-sink (no milter)
    passthrough  aiosmtpd -> aiosmtplib, nothing between (bench/passthrough.py)
    relay-1w     mss-relay, every rule on, DKIM signing, a state file holding
    relay-Nw     --conversations conversations; 1 worker, then N (--workers)

All of them forward to one smtp-sink, which counts what it receives: a rate is
messages *received by smtp-sink* over the time from the start of the run to
the last of them (Postfix queues, so what it accepts and what it delivers are
both reported). Sizes 2KB, 100KB, 5MB (the message on the wire) and
20MB-att (an attachment of 20 MB decoded, just under the relay's 20 MiB
limit); 1, 10 and 50 sessions. Runs are interleaved (each repeat goes through
every server in turn) and bounded in count, bytes and time; medians quoted.

Writes bench/results/compare.md (the table, also printed) and compare.json
(every run, and the machine). Needs smtp-source, smtp-sink and postfix:
installed from Debian's postfix package when missing (root only). Every process
started is stopped at the end, on Ctrl-C or on error too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compare_load import (  # noqa: E402
    RECIPIENT,
    SENDER,
    Probe,
    Sink,
    Size,
    SourceRun,
    build_message,
    parse_size,
    run_source,
    wire_bytes,
)
from compare_targets import (  # noqa: E402
    PassthroughTarget,
    PostfixTarget,
    RelayTarget,
    SinkTarget,
    Target,
    cpu_seconds,
    make_dkim_key,
    make_state,
    others_cpu_seconds,
    peak_rss_kib,
    postfix_version,
    reset_peaks,
    workers_supported,
)

from tests.support.processes import free_port  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TOOLS = ("smtp-source", "smtp-sink", "postfix")
SBIN = "/usr/sbin:/usr/bin:/sbin:/bin"
MAX_MESSAGES = 50_000  # per run, whatever the rate
SERVERS = ("sink", "postfix", "passthrough", "relay")


# -- options ----------------------------------------------------------------------


FULL = {
    "sizes": ["2KB", "100KB", "5MB", "20MB-att"],
    "concurrency": [1, 10, 50],
    "repeats": 3,
    "duration": 3.0,
    "conversations": 100_000,
}
# Every server and both code paths (small and base64-heavy), in well under a minute.
QUICK = {
    "sizes": ["2KB", "100KB"],
    "concurrency": [1, 10],
    "repeats": 1,
    "duration": 1.0,
    "conversations": 10_000,
}


def options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="mss-relay side by side with Postfix, a bare pass-through and smtp-sink."
    )
    add = parser.add_argument
    add(
        "--quick",
        action="store_true",
        help="smoke run: 2KB and 100KB, 1 and 10 sessions, one 1 s run each,"
        " 10,000 conversations (options given explicitly win)",
    )
    add("--sizes", nargs="+", help="default 2KB 100KB 5MB 20MB-att (20MB-att: a 20 MB attachment)")
    add("--concurrency", nargs="+", type=int, help="sessions at once (default 1 10 50)")
    add("--repeats", type=int, help="runs per server and cell, median quoted (default 3)")
    add("--duration", type=float, help="seconds a run aims at, sets its count (default 3)")
    add("--cell-budget", type=float, default=30.0, help="no repeat once a cell took this (s)")
    add("--run-timeout", type=float, default=120.0, help="hard limit of one run, in seconds")
    add("--max-mb-per-run", type=float, default=300.0, help="bytes sent in one run, at most")
    add("--targets", nargs="+", choices=SERVERS, default=list(SERVERS), help="servers measured")
    add("--workers", type=int, default=os.cpu_count() or 1, help="workers of the second relay")
    add("--conversations", type=int, help="conversations in the state file (default 100000)")
    add("--output", type=Path, default=RESULTS, help="where compare.md and compare.json go")
    add("--keep", action="store_true", help="keep the work directory (configs, logs)")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


# -- tools ----------------------------------------------------------------------------


def missing_tools() -> list[str]:
    path = os.environ.get("PATH", "") + ":" + SBIN
    return [tool for tool in TOOLS if shutil.which(tool, path=path) is None]


def ensure_tools() -> None:
    """smtp-source, smtp-sink and postfix come with Debian's postfix package."""
    os.environ["PATH"] = os.environ.get("PATH", "") + ":" + SBIN
    missing = missing_tools()
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        why = "not root" if os.geteuid() != 0 else "no apt-get"
        fail(f"missing {', '.join(missing)} and cannot install Debian's postfix package ({why})")
    print(f"installing Debian's postfix package (missing: {', '.join(missing)})", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # "No configuration": the package installs its programs, configures no
    # system mail server, and starts none.
    selections = "postfix postfix/main_mailer_type select No configuration\n"
    steps = [
        (["debconf-set-selections"], selections),
        (["apt-get", "update", "-q"], None),
        (["apt-get", "install", "-y", "-q", "--no-install-recommends", "postfix"], None),
    ]
    for command, stdin in steps:
        done = subprocess.run(command, input=stdin, text=True, env=env, capture_output=True)
        if done.returncode != 0:
            fail(f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}")
    if missing_tools():
        fail(f"still missing after installing postfix: {', '.join(missing_tools())}")


def fail(message: str) -> NoReturn:
    print(f"bench/compare.py: {message}", file=sys.stderr)
    sys.exit(2)


# -- messages ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    size: Size
    path: Path  # for smtp-source -F: LF line endings
    wire: bytes  # for the probe: CRLF, dot-stuffed, final dot
    nbytes: int  # the message on the wire, without the final dot


def prepare(size: Size, workdir: Path) -> Message:
    text = build_message(size, f"bench-{size.label.lower()}")
    path = workdir / f"message-{size.label}.txt"
    path.write_text(text)
    wire = wire_bytes(text)
    return Message(size, path, wire, len(wire) - len(b".\r\n"))


# -- one run ----------------------------------------------------------------------------


def drive(
    port: int, message: Message, sessions: int, count: int, deadline: float
) -> tuple[SourceRun | None, Probe]:
    """The load of one run: `sessions` sessions, one of them the timed probe
    (alone, it sends all `count` messages; else smtp-source's sessions send the
    rest, and the probe goes on until smtp-source is done)."""
    alone = sessions == 1
    probe = Probe(port, message.wire, limit=count if alone else None, deadline=deadline)
    thread = probe.start()
    source = None
    try:
        if not alone:
            others = sessions - 1
            source = run_source(
                port, message.path, others, max(others, count - count // sessions), deadline
            )
            probe.stop.set()
        thread.join(max(1.0, deadline - time.monotonic()))
    finally:  # on Ctrl-C too: the probe ends with the message it is sending
        probe.stop.set()
        thread.join(timeout=probe.timeout)
    return source, probe


@dataclass
class Observed:
    """What one run saw, before it is turned into figures."""

    started: float
    accepted: int
    accepted_at: float
    delivered: int
    delivered_at: float
    cpu: float
    rss_kib: int
    processes: int
    latencies: list[float]
    sessions_used: int
    others_load: float  # share of the box's CPUs used by other processes meanwhile
    errors: list[str]
    logged: dict[str, int]


def run(
    target: Target, sink: Sink, message: Message, sessions: int, count: int, timeout: float
) -> Observed:
    """One run: `count` messages over `sessions` sessions, end to end."""
    idle = target.wait_idle()
    pids = target.pids()
    reset_peaks(pids)
    cpu_before, received_before = cpu_seconds(pids), sink.counter.value
    others_before = others_cpu_seconds()
    started = time.monotonic()
    deadline = started + timeout
    source, probe = drive(target.port, message, sessions, count, deadline)
    accepted = (source.sent if source else 0) + probe.accepted
    # The relays answer once smtp-sink has; Postfix's queue may still be busy.
    drained = sink.counter.wait_for(
        received_before + accepted, max(5.0, deadline - time.monotonic())
    )
    delivered = sink.counter.value - received_before
    others = others_cpu_seconds() - others_before
    pids = target.pids()
    check = target.check(accepted)
    errors = [e for e in (source.error if source else "", probe.error) if e]
    if (source and source.timed_out) or probe.last_done > deadline:
        errors.append(f"run timeout ({timeout:.0f}s): stopped")
    if source and source.returncode:
        errors.append(f"smtp-source exited with {source.returncode}")
    if not drained or delivered != accepted:
        errors.append(f"smtp-sink received {delivered} of {accepted} accepted")
    if not idle:
        errors.append("the previous run had not drained")
    return Observed(
        started=started,
        accepted=accepted,
        accepted_at=max(source.ended_at if source else 0.0, probe.last_done),
        delivered=delivered,
        delivered_at=sink.counter.changed_at,
        cpu=cpu_seconds(pids) - cpu_before,
        rss_kib=peak_rss_kib(pids),
        processes=len(pids),
        latencies=probe.latencies,
        sessions_used=(min(sessions - 1, source.sent) if source else 0) + 1,
        others_load=others / max(1e-3, time.monotonic() - started) / (os.cpu_count() or 1),
        errors=errors + check.problems,
        logged=check.logged,
    )


def figures(target: Target, message: Message, sessions: int, seen: Observed) -> dict[str, Any]:
    """One run as recorded in compare.json."""
    deliver_s, accept_s = seen.delivered_at - seen.started, seen.accepted_at - seen.started
    return {
        "target": target.key,
        "size": message.size.label,
        "bytes": message.nbytes,
        "concurrency": sessions,
        "sessions_used": seen.sessions_used,
        "accepted": seen.accepted,
        "delivered": seen.delivered,
        "accept_s": round(accept_s, 4),
        "deliver_s": round(deliver_s, 4),
        "msgs_s": _rate(seen.delivered, deliver_s),
        "accept_msgs_s": _rate(seen.accepted, accept_s),
        "mb_s": _rate(seen.delivered * message.nbytes / 1e6, deliver_s),
        "cpu_ms_msg": round(seen.cpu * 1000 / seen.delivered, 3) if seen.delivered else None,
        "peak_rss_mib": round(seen.rss_kib / 1024, 1),
        "processes": seen.processes,
        "others_load": round(seen.others_load, 3),
        "latencies_ms": [round(x * 1000, 3) for x in seen.latencies],
        "server_log": seen.logged,
        "errors": seen.errors,
    }


def _rate(amount: float, seconds: float) -> float | None:
    return round(amount / seconds, 3) if amount and seconds > 0 else None


# -- the plan --------------------------------------------------------------------------------


@dataclass
class Planner:
    """How many messages a run sends: enough for `duration` seconds at the
    rate this server last showed for this size, at least one per session,
    within the byte and count caps."""

    duration: float
    max_bytes: float
    rates: dict[tuple[str, str], float]

    def count(self, target: str, message: Message, sessions: int) -> int:
        rate = self.rates.get((target, message.size.label), 1.0)
        wanted = max(math.ceil(rate * self.duration), sessions)
        return max(1, min(wanted, self._by_bytes(message), MAX_MESSAGES))

    def sessions(self, message: Message, sessions: int) -> int:
        """The sessions a cell really uses: one message each at least, so
        the byte cap may leave some idle (then the cell is a smaller one)."""
        return min(sessions, self._by_bytes(message))

    def _by_bytes(self, message: Message) -> int:
        return max(1, int(self.max_bytes // message.nbytes))

    def learn(self, result: dict[str, Any]) -> None:
        if result["msgs_s"]:
            self.rates[(result["target"], result["size"])] = result["msgs_s"]

    def warm_count(self, message: Message) -> int:
        """A first, unrecorded run: about 1 MB, at least one message."""
        return max(1, min(200, int(1e6 // message.nbytes)))


def measure(
    args: argparse.Namespace,
    targets: list[Target],
    sink: Sink,
    workdir: Path,
    notes: list[str],
    results: list[dict[str, Any]],
) -> None:
    """Every cell, size by size; results are appended as they come (kept on Ctrl-C)."""
    planner = Planner(args.duration, args.max_mb_per_run * 1e6, {})
    for spec in args.sizes:
        message = prepare(parse_size(spec), workdir)
        print(f"\n== {spec}: {message.nbytes / 1e6:.3f} MB on the wire", flush=True)
        warm_up(args, targets, sink, message, planner)
        measured: set[int] = set()
        for sessions in args.concurrency:
            used = planner.sessions(message, sessions)
            if used in measured:
                notes.append(
                    f"{spec}, {sessions} sessions: not measured, {sessions} messages of"
                    f" {message.nbytes / 1e6:.1f} MB exceed --max-mb-per-run; the"
                    f" {used}-session row is what fits."
                )
                print(f"  {spec} c={sessions}: skipped ({used} sessions measured)", flush=True)
                continue
            measured.add(used)
            measure_cell(args, targets, sink, message, (sessions, used), planner, results)


def warm_up(
    args: argparse.Namespace, targets: list[Target], sink: Sink, message: Message, planner: Planner
) -> None:
    """One unrecorded run per server: first connections, lazy imports, caches;
    and the first rate estimate for this size."""
    for target in targets:
        seen = run(target, sink, message, 1, planner.warm_count(message), args.run_timeout)
        result = figures(target, message, 1, seen)
        planner.learn(result)
        _report_errors(result, "warm-up")


def measure_cell(
    args: argparse.Namespace,
    targets: list[Target],
    sink: Sink,
    message: Message,
    sessions: tuple[int, int],
    planner: Planner,
    results: list[dict[str, Any]],
) -> None:
    """Repeats of one (size, sessions) cell, interleaved across the servers,
    each server's repeats stopping once its cell budget is spent. `sessions`
    is (asked, used): fewer are used when one message each exceeds the byte cap."""
    asked, used = sessions
    spent = {t.key: 0.0 for t in targets}
    last = {t.key: 0.0 for t in targets}
    for repeat in range(args.repeats):
        for target in targets:
            if repeat and spent[target.key] + last[target.key] > args.cell_budget:
                continue
            count = planner.count(target.key, message, used)
            began = time.monotonic()
            seen = run(target, sink, message, used, count, args.run_timeout)
            last[target.key] = time.monotonic() - began
            spent[target.key] += last[target.key]
            result = figures(target, message, asked, seen) | {"repeat": repeat}
            planner.learn(result)
            results.append(result)
            _progress(result)


def _progress(r: dict[str, Any]) -> None:
    lat = sorted(r["latencies_ms"])
    p50 = f"{lat[len(lat) // 2]:.1f}" if lat else "-"
    print(
        f"  {r['size']:>8} c={r['sessions_used']:<3} {r['target']:<12} {r['delivered']:>6} msgs"
        f" {r['msgs_s'] or 0:>9.1f}/s {r['mb_s'] or 0:>7.1f} MB/s p50 {p50} ms"
        f" cpu {r['cpu_ms_msg'] or 0:.2f} ms/msg",
        flush=True,
    )
    if r["others_load"] > NOISE:
        print(f"    (other processes used {r['others_load']:.0%} of the CPUs meanwhile)")
    _report_errors(r, "")


def _report_errors(r: dict[str, Any], what: str) -> None:
    for error in r["errors"]:
        print(f"    !! {what} {r['target']} {r['size']} c={r['concurrency']}: {error}", flush=True)


# -- summary ------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Nearest rank: with fewer than 100 samples, p99 is the largest."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cells: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in results:
        cells.setdefault((r["size"], r["concurrency"], r["target"]), []).append(r)
    summary = []
    for (size, sessions, target), runs in cells.items():
        samples = [x for r in runs for x in r["latencies_ms"]]
        summary.append(
            {
                "size": size,
                "concurrency": sessions,
                "target": target,
                "runs": len(runs),
                "messages_per_run": _median([r["delivered"] for r in runs]),
                "sessions_used": min(r["sessions_used"] for r in runs),
                **{key: _median([r[key] for r in runs]) for key in MEDIANS},
                "latency_samples": len(samples),
                "p50_ms": percentile(samples, 0.50),
                "p99_ms": percentile(samples, 0.99),
                "others_load_max": max(r["others_load"] for r in runs),
                "errors": [e for r in runs for e in r["errors"]],
            }
        )
    return summary


NOISE = 0.05  # other processes' share of the CPUs above which a run is disturbed
MEDIANS = ("msgs_s", "mb_s", "accept_msgs_s", "cpu_ms_msg", "peak_rss_mib")


def ratios(summary: list[dict[str, Any]], relays: list[str]) -> list[dict[str, Any]]:
    """mss-relay over Postfix and over the pass-through, msgs/s, same run."""
    rate = {(c["size"], c["concurrency"], c["target"]): c["msgs_s"] for c in summary}
    rows = []
    for size, sessions in dict.fromkeys((c["size"], c["concurrency"]) for c in summary):
        row: dict[str, Any] = {"size": size, "concurrency": sessions}
        for relay in relays:
            mine = rate.get((size, sessions, relay))
            for base in ("postfix", "passthrough"):
                other = rate.get((size, sessions, base))
                row[f"{relay}/{base}"] = round(mine / other, 3) if mine and other else None
        rows.append(row)
    return rows


# -- report ---------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def headline(
    summary: list[dict[str, Any]], targets: list[Target], sizes: list[str], sessions: int
) -> list[str]:
    cells = {(c["size"], c["target"]): c for c in summary if c["concurrency"] == sessions}
    lines = [
        f"| msgs/s, {sessions} session{'s' if sessions > 1 else ''} | " + " | ".join(sizes) + " |",
        "| --- |" + " --- |" * len(sizes),
    ]
    for t in targets:
        lines.append(
            f"| {t.label} | " + " | ".join(_cell(cells.get((s, t.key))) for s in sizes) + " |"
        )
    return lines


def _cell(cell: dict[str, Any] | None) -> str:
    """msgs/s, and the sessions really used when the byte cap allowed fewer."""
    if cell is None:
        return "–"
    used = cell["sessions_used"]
    return _num(cell["msgs_s"]) + (f" ({used} used)" if used != cell["concurrency"] else "")


def ratio_table(rows: list[dict[str, Any]], relays: list[str]) -> list[str]:
    columns = [f"{r}/{b}" for r in relays for b in ("postfix", "passthrough")]
    lines = [
        "| size | sessions | " + " | ".join(columns) + " |",
        "| --- | --- |" + " --- |" * len(columns),
    ]
    for row in rows:
        values = " | ".join(_num(row[c], 2) for c in columns)
        lines.append(f"| {row['size']} | {row['concurrency']} | {values} |")
    return lines


# Issue 6's targets, 10 sessions: (relay, base, size) -> the least ratio of msgs/s.
TARGETS = (
    ("N", "postfix", "2KB", 1.0),
    ("N", "postfix", "100KB", 0.7),
    ("N", "postfix", "5MB", 0.7),
    ("1", "passthrough", "2KB", 0.8),
    ("1", "passthrough", "100KB", 0.8),
    ("1", "passthrough", "5MB", 0.8),
    ("1", "passthrough", "20MB-att", 0.8),
)


def acceptance(rows: list[dict[str, Any]], relays: list[str]) -> list[str]:
    """Issue 6's targets against this run's ratios: met, or missed by how much."""
    by_size = {r["size"]: r for r in rows if r["concurrency"] == 10}
    many = relays[-1]  # the relay with the most workers
    lines = ["| target (10 sessions) | needed | measured | |", "| --- | --- | --- | --- |"]
    for workers, base, size, needed in TARGETS:
        relay = many if workers == "N" else relays[0]
        ratio = by_size.get(size, {}).get(f"{relay}/{base}")
        if ratio is None:
            continue
        verdict = "met" if ratio >= needed else f"missed: ×{needed / ratio:.2f} to go"
        lines.append(f"| {relay}/{base} at {size} | ≥ {needed:.1f} | {ratio:.2f} | {verdict} |")
    return lines if len(lines) > 2 else []


def full_table(summary: list[dict[str, Any]], labels: dict[str, str]) -> list[str]:
    lines = [
        "| size | sessions | server | msgs/s | MB/s | accepted msgs/s | p50 ms | p99 ms"
        " | latency samples | CPU ms/msg | peak RSS MiB | msgs/run | runs | other load"
        " | errors |",
        "| --- | --- | --- |" + " --- |" * 12,
    ]
    for c in summary:
        used = "" if c["sessions_used"] == c["concurrency"] else f" ({c['sessions_used']} used)"
        lines.append(
            f"| {c['size']} | {c['concurrency']}{used} | {labels[c['target']]}"
            f" | {_num(c['msgs_s'])} | {_num(c['mb_s'])} | {_num(c['accept_msgs_s'])}"
            f" | {_num(c['p50_ms'], 2)} | {_num(c['p99_ms'], 2)} | {c['latency_samples']}"
            f" | {_num(c['cpu_ms_msg'], 2)} | {_num(c['peak_rss_mib'])}"
            f" | {_num(c['messages_per_run'], 0)} | {c['runs']}"
            f" | {c['others_load_max']:.0%} | {len(c['errors'])} |"
        )
    return lines


def method(meta: dict[str, Any]) -> list[str]:
    a = meta["options"]
    return [
        "## How",
        "",
        f"- Load: smtp-source (C), persistent sessions (`-d`), HELO then MAIL/RCPT/DATA, one"
        f" recipient, sender `{SENDER}`, recipient `{RECIPIENT}`, the message sent with `-F`:"
        " From: the sender BAL, Date, Message-ID, a text/plain part and a base64 PDF"
        " attachment making up the size. A refused message aborts smtp-source (no `-A`):"
        " it shows as an error of the run.",
        "- msgs/s and MB/s: messages received by smtp-sink (its `-c` counter, time-stamped"
        " as it prints) over the time from the start of the run to the last one: end to"
        " end. « accepted msgs/s »: messages answered 250, over the time to the last final"
        " reply (smtp-source's exit, or the probe's last reply): above msgs/s only where a"
        " queue builds up (Postfix).",
        "- Latency: per message, from MAIL to the final 250, timed by the probe, a Python"
        " client on plain sockets that speaks as an smtp-source session does (HELO once,"
        " then MAIL, RCPT, DATA in turn on one connection). It is one of the N sessions of"
        " every run: the other N-1 are smtp-source's; with one session it is the only"
        " client (smtp-source's `-c` counts a message when its dot is sent, before the"
        " reply: no latency from it). Samples of all repeats pooled; nearest-rank"
        " percentiles: with fewer than 100 samples, p99 is the largest.",
        "- CPU ms/msg: utime+stime+cutime+cstime of every process of the server (Postfix:"
        " master and its daemons; mss-relay: the workers too) from /proc, after/before the"
        " run, over the messages delivered. smtp-sink's own CPU is not counted except for"
        " « smtp-sink alone ».",
        "- Other load: CPU time of the user-space processes this benchmark did not start"
        " (/proc), over the run, as a share of all CPUs: another job running meanwhile"
        " shows there.",
        "- Peak RSS: VmHWM summed over the server's processes, reset before each run"
        " (/proc/PID/clear_refs). Summing counts shared pages once per process: Postfix's"
        " ~15 processes share most of theirs.",
        f"- Counts: each run aims at {a['duration']} s at the rate the server last showed for"
        f" that size (a warm-up run per server and size, not recorded, gives the first),"
        f" at least one message per session, at most {a['max_mb_per_run']:.0f} MB per run"
        " (fewer sessions are then used: shown as « (k used) »). Repeats stop once a"
        f" server's runs of a cell took {a['cell_budget']:.0f} s; hard limit"
        f" {a['run_timeout']:.0f} s per run. Medians of the runs.",
        f"- mss-relay: listener `tls: none` on 127.0.0.1, `trusted_clients: 127.0.0.1` → the"
        " DPI user owning the sender BAL (no AUTH, every rule runs), DKIM signing"
        f" (rsa-sha256, 2048 bits), state file pre-filled with {a['conversations']:,}"
        " conversations, JSON transaction log, default limits (20 MiB attachment, 60 MiB"
        " message) and default message slots (4). Raised for the benchmark: per-user"
        " rates (messages_per_minute 1,000,000, recipients_per_hour 10,000,000: on, never"
        " reached), max_connections and max_connections_per_client 1000, busy_wait 600 s."
        " The state is read for patients' replies and written for messages to patients:"
        " a message to a professional, as here, does not touch it.",
        "- Postfix: tests/support/postfix.py's private instance (relayhost = smtp-sink, no"
        " milter, queue under /tmp on the same disk, fsync as Postfix does). Postfix is a"
        " store-and-forward MTA; mss-relay and the pass-through hold the message and answer"
        " only once smtp-sink has.",
    ]


def markdown(meta: dict[str, Any], summary: list[dict[str, Any]], targets: list[Target]) -> str:
    labels = {t.key: t.label for t in targets}
    relays = [t.key for t in targets if isinstance(t, RelayTarget)]
    sizes = list(dict.fromkeys(c["size"] for c in summary))
    m = meta["machine"]
    lines = [
        "# mss-relay side by side: bench/compare.py",
        "",
        f"{meta['date']} · {m['cpus']} CPUs ({m['cpu_model']}) · Linux {m['kernel']} ·"
        f" Python {m['python']} · Postfix {m['postfix']} · mss-relay {m['mss_relay']}"
        f" (git {m['git']}) · load average {m['load_average_at_start']:.2f} before the run ·"
        f" {meta['elapsed_s'] / 60:.1f} min",
        "",
        f"Command: `{meta['command']}`",
        "",
    ]
    for note in meta["notes"]:
        lines.append(f"> {note}")
    lines.append("")
    for sessions in meta["options"]["concurrency"]:
        lines += [*headline(summary, targets, sizes, sessions), ""]
    if relays:
        rows = ratios(summary, relays)
        lines += ["Ratios, msgs/s in the same run:", "", *ratio_table(rows, relays), ""]
        if targets_met := acceptance(rows, relays):
            lines += ["Issue 6's targets, this run:", "", *targets_met, ""]
    lines += ["## Every figure (medians of the runs)", "", *full_table(summary, labels), ""]
    noisy = [c for c in summary if c["others_load_max"] > NOISE]
    if noisy:
        lines.append(
            f"Other processes used more than {NOISE:.0%} of the CPUs during some runs of"
            f" {len(noisy)} of {len(summary)} rows (« other load », the worst run of the row):"
            " those figures are low."
        )
        lines.append("")
    errors = [(c, e) for c in summary for e in c["errors"]]
    if errors:
        lines += ["## Errors", ""] + [
            f"- {c['target']} {c['size']} c={c['concurrency']}: {e}" for c, e in errors
        ]
        lines.append("")
    return "\n".join(lines + method(meta)) + "\n"


# -- machine -------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import aiosmtpd
    import aiosmtplib

    from mss_relay import __version__

    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postfix": postfix_version(),
        "mss_relay": __version__,
        "aiosmtpd": aiosmtpd.__version__,
        "aiosmtplib": aiosmtplib.__version__,
        "git": _git(),
        # Another job on the box would show here (the run itself adds ~2).
        "load_average_at_start": os.getloadavg()[0],
    }


def _git() -> str:
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "mss_relay"], cwd=ROOT, capture_output=True, text=True
    )
    return head.stdout.strip() + (
        " + uncommitted changes in mss_relay/" if dirty.stdout.strip() else ""
    )


# -- the servers -------------------------------------------------------------------------------


def build_targets(
    args: argparse.Namespace, sink: Sink, workdir: Path, notes: list[str]
) -> list[Target]:
    targets: list[Target] = []
    if "sink" in args.targets:
        targets.append(SinkTarget(sink))
    if "postfix" in args.targets:
        from tests.support.postfix import postfix_available

        reason = postfix_available()
        if reason:
            notes.append(f"Postfix skipped: {reason}.")
        else:
            targets.append(PostfixTarget(sink, workdir))
    if "passthrough" in args.targets:
        targets.append(PassthroughTarget(sink, workdir))
    if "relay" in args.targets:
        targets += relay_targets(args, sink, workdir, notes)
    return targets


def relay_targets(
    args: argparse.Namespace, sink: Sink, workdir: Path, notes: list[str]
) -> list[Target]:
    make_dkim_key(workdir / "dkim")
    state = workdir / "state.sqlite3"
    seconds = make_state(state, args.conversations)
    print(f"state file: {args.conversations:,} conversations in {seconds:.1f}s", flush=True)
    relays: list[Target] = [RelayTarget(sink, workdir, 1, state)]
    if args.workers <= 1:
        notes.append("Only the one-worker relay: --workers is 1.")
        return relays
    why = workers_supported(workdir / "workers-probe", args.workers)
    if why:
        notes.append(
            f"The {args.workers}-worker relay is skipped: check-config refuses workers: {why}"
        )
    else:
        relays.append(RelayTarget(sink, workdir, args.workers, state))
    return relays


# -- main ------------------------------------------------------------------------------------


def _terminate(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt  # the same clean-up as Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = options(argv)
    ensure_tools()
    signal.signal(signal.SIGTERM, _terminate)
    workdir = Path(tempfile.mkdtemp(prefix="mss-compare-"))
    notes: list[str] = []
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(
            [".venv/bin/python", "bench/compare.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine(),
        "notes": notes,
        "workdir": str(workdir),
    }
    results: list[dict[str, Any]] = []
    targets: list[Target] = []
    interrupted = False
    started = time.monotonic()
    try:
        with ExitStack() as stack:
            sink = Sink(free_port(), workdir)
            sink.start()
            stack.callback(sink.stop)
            targets = build_targets(args, sink, workdir, notes)
            for target in targets:
                target.start()
                stack.callback(_stop, target)
            meta["servers"] = {
                t.key: {"label": t.label, "port": t.port, **t.notes} for t in targets
            }
            measure(args, targets, sink, workdir, notes, results)
    except KeyboardInterrupt:
        interrupted = True
        notes.append("Interrupted: partial results.")
        print("\ninterrupted: every server stopped; partial results written", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    meta["machine"]["load_average_at_end"] = os.getloadavg()[0]
    if results:
        write(args.output, meta, results, targets)
    return 130 if interrupted else (1 if any(r["errors"] for r in results) else 0)


def _stop(target: Target) -> None:
    try:
        target.stop()
    except Exception as error:  # the others must still be stopped
        print(f"stopping {target.key}: {error}", file=sys.stderr)


def write(
    directory: Path, meta: dict[str, Any], results: list[dict[str, Any]], targets: list[Target]
) -> None:
    summary = summarize(results)
    relays = [t.key for t in targets if isinstance(t, RelayTarget)]
    text = markdown(meta, summary, targets)
    print("\n" + text)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "compare.md").write_text(text)
    runs = [_without_samples(r) for r in results]
    document = {**meta, "summary": summary, "ratios": ratios(summary, relays), "runs": runs}
    (directory / "compare.json").write_text(
        json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    )
    print(f"written: {directory / 'compare.md'}, {directory / 'compare.json'}")


def _without_samples(result: dict[str, Any]) -> dict[str, Any]:
    """A run as written to compare.json: its latency percentiles, not every sample."""
    samples = result["latencies_ms"]
    latency = {"samples": len(samples), "p50_ms": percentile(samples, 0.5)}
    latency["p99_ms"] = percentile(samples, 0.99)
    return {k: v for k, v in result.items() if k != "latencies_ms"} | {"latency": latency}


if __name__ == "__main__":
    sys.exit(main())
