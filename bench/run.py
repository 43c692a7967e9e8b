"""The load runs of bench/compare.py: one run is `count` messages over a cell's
sessions to one server, end to end (smtp-sink counts what arrives); a cell is
repeated, interleaved across the servers; what each run saw becomes one record
of compare.json (figures)."""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import procfs
from .harness import Sink
from .load import Probe, SourceRun, run_source
from .plan import Cell, Message, Planner, cells, prepare
from .targets import Target

NOISE = 0.05  # other processes' share of the CPUs above which a run is disturbed


def drive(port: int, cell: Cell, count: int, deadline: float) -> tuple[SourceRun | None, Probe]:
    """The load of one run: `cell.used` sessions, one of them the timed probe
    (alone, it sends all `count` messages; else smtp-source's sessions send the
    rest, and the probe goes on until smtp-source is done)."""
    sessions, message = cell.used, cell.message
    alone = sessions == 1
    probe = Probe(
        port, message.wire, cell.pattern, limit=count if alone else None, deadline=deadline
    )
    thread = probe.start()
    source = None
    try:
        if not alone:
            others = sessions - 1
            wanted = max(others, count - count // sessions)
            source = run_source(port, message.path, others, wanted, deadline, cell.pattern)
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


def run(target: Target, sink: Sink, cell: Cell, count: int, timeout: float) -> Observed:
    """One run: `count` messages over the cell's sessions, end to end."""
    idle = target.wait_idle()
    pids = target.pids()
    procfs.reset_peaks(pids)
    cpu_before, received_before = procfs.cpu_seconds(pids), sink.counter.value
    others_before = procfs.others_cpu_seconds()
    started = time.monotonic()
    deadline = started + timeout
    source, probe = drive(target.port, cell, count, deadline)
    accepted = (source.sent if source else 0) + probe.accepted
    # The relays answer once smtp-sink has; Postfix's queue may still be busy.
    drained = sink.counter.wait_for(
        received_before + accepted, max(5.0, deadline - time.monotonic())
    )
    delivered = sink.counter.value - received_before
    others = procfs.others_cpu_seconds() - others_before
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
        cpu=procfs.cpu_seconds(pids) - cpu_before,
        rss_kib=procfs.peak_rss_kib(pids),
        processes=len(pids),
        latencies=probe.latencies,
        sessions_used=(min(cell.used - 1, source.sent) if source else 0) + 1,
        others_load=others / max(1e-3, time.monotonic() - started) / (os.cpu_count() or 1),
        errors=errors + check.problems,
        logged=check.logged,
    )


def figures(target: Target, cell: Cell, seen: Observed) -> dict[str, Any]:
    """One run as recorded in compare.json."""
    deliver_s, accept_s = seen.delivered_at - seen.started, seen.accepted_at - seen.started
    nbytes = cell.message.nbytes
    return {
        "target": target.key,
        "size": cell.message.size.label,
        "bytes": nbytes,
        "pattern": cell.pattern,
        "concurrency": cell.asked,
        "sessions_used": seen.sessions_used,
        "accepted": seen.accepted,
        "delivered": seen.delivered,
        "accept_s": round(accept_s, 4),
        "deliver_s": round(deliver_s, 4),
        "msgs_s": _rate(seen.delivered, deliver_s),
        "accept_msgs_s": _rate(seen.accepted, accept_s),
        "mb_s": _rate(seen.delivered * nbytes / 1e6, deliver_s),
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


# -- every cell ---------------------------------------------------------------------------------


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
        message = prepare(spec, workdir)
        print(f"\n== {spec}: {message.nbytes / 1e6:.3f} MB on the wire", flush=True)
        warm_up(args, targets, sink, message, planner)
        for cell in cells(args, message, planner):
            if isinstance(cell, str):
                notes.append(cell)
                print(f"  skipped: {cell}", flush=True)
                continue
            measure_cell(args, targets, sink, cell, planner, results)


def warm_up(
    args: argparse.Namespace, targets: list[Target], sink: Sink, message: Message, planner: Planner
) -> None:
    """One unrecorded run per server: first connections, lazy imports, caches;
    and the first rate estimate for this size."""
    cell = Cell(message, "persistent", 1, 1)
    for target in targets:
        seen = run(target, sink, cell, planner.warm_count(message), args.run_timeout)
        result = figures(target, cell, seen)
        planner.learn(result)
        _report_errors(result, "warm-up")


def measure_cell(
    args: argparse.Namespace,
    targets: list[Target],
    sink: Sink,
    cell: Cell,
    planner: Planner,
    results: list[dict[str, Any]],
) -> None:
    """Repeats of one cell, interleaved across the servers, each server's
    repeats stopping once its cell budget is spent."""
    spent = {t.key: 0.0 for t in targets}
    last = {t.key: 0.0 for t in targets}
    for repeat in range(args.repeats):
        for target in targets:
            if repeat and spent[target.key] + last[target.key] > args.cell_budget:
                continue
            count = planner.count(target.key, cell)
            began = time.monotonic()
            seen = run(target, sink, cell, count, args.run_timeout)
            last[target.key] = time.monotonic() - began
            spent[target.key] += last[target.key]
            result = figures(target, cell, seen) | {"repeat": repeat}
            planner.learn(result)
            results.append(result)
            _progress(result)


def _progress(r: dict[str, Any]) -> None:
    lat = sorted(r["latencies_ms"])
    p50 = f"{lat[len(lat) // 2]:.1f}" if lat else "-"
    print(
        f"  {r['size']:>8} {r['pattern']:<10} c={r['sessions_used']:<3} {r['target']:<12}"
        f" {r['delivered']:>6} msgs {r['msgs_s'] or 0:>9.1f}/s {r['mb_s'] or 0:>7.1f} MB/s"
        f" p50 {p50} ms cpu {r['cpu_ms_msg'] or 0:.2f} ms/msg",
        flush=True,
    )
    if r["others_load"] > NOISE:
        print(f"    (other processes used {r['others_load']:.0%} of the CPUs meanwhile)")
    _report_errors(r, "")


def _report_errors(r: dict[str, Any], what: str) -> None:
    for error in r["errors"]:
        print(
            f"    !! {what} {r['target']} {r['size']} {r['pattern']} c={r['concurrency']}: {error}",
            flush=True,
        )
