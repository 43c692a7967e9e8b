"""Per-message CPU of the relay with metrics on, against the same relay without.

    .venv/bin/python bench/metrics_cost.py [--messages 2000] [--repeats 5] [--scrape 5]
    .venv/bin/python bench/metrics_cost.py --quick     # 600 messages, 3 repeats

Two real relays in the same run (1 worker, every rule on, DKIM signing;
bench/compare.py's configuration), the same but for the « metrics » section:
one without, one with it and scraped (GET /metrics every --scrape seconds,
as Prometheus would, 15 s being its default: 5 s is on the heavy side).
smtp-sink is the operator. A Python client sends 2 KB messages from the DPI's
BAL over 10 persistent sessions (bench/state_cost.py's client, to a
professional recipient: no conversation state). Figures: each relay's CPU per
message (from /proc, its whole process tree) and msgs/s, median of the runs,
the runs of the two interleaved (off on, on off, ...) so that a drift of the
machine weighs on both alike; the ratio on/off, as the median of each
repeat's pair (issue 15: the metrics cost under 3 %, i.e. a ratio under
1.03); and the tap alone (the counting of one message's log events, timed
in a quiet process of its own: tap_cost()), as a share of the CPU per
message without metrics, a figure the box's load does not blur. Writes
bench/results/metrics_cost.json (metrics_cost-quick.json with --quick).
Loopback only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if not TYPE_CHECKING and not __package__:  # python bench/metrics_cost.py: see bench/_script.py
    import _script

    _script.rerun(__file__)

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import report
from .harness import RESULTS, RelayProcess, Sink, free_port, listener, make_dkim_key, relay_config
from .procfs import cpu_seconds
from .state_cost import one_run
from .targets import RELAY_SECTIONS

RECIPIENT = "dr.martin@chu-b.mssante.fr"
WARM_UP = 60_000_000  # the warm-up's first number (patients: state_cost.patient)


def professional(_: int) -> str:
    return RECIPIENT


@dataclass
class Subject:
    name: str
    relay: RelayProcess
    port: int
    metrics_port: int | None
    runs: list[dict[str, float]] = field(default_factory=list)
    scrapes: int = 0
    scrape_ms: float | None = None  # the relay's CPU for one scrape, idle otherwise


def prepare(
    name: str,
    work: Path,
    sink: Sink,
    metrics: bool,
    recipient: Callable[[int], str] = professional,
    **extra: Any,
) -> Subject:
    """One relay started and warmed up (100 messages to `recipient`, from
    WARM_UP up: numbers no run uses); `extra`: more sections of its
    configuration (bench/audit_cost.py's « log »)."""
    directory = work / name
    directory.mkdir()
    port, metrics_port = free_port(), free_port() if metrics else None
    sections = {**RELAY_SECTIONS, **extra}
    if metrics_port is not None:
        sections["metrics"] = {"host": "127.0.0.1", "port": metrics_port}
    config = relay_config(
        directory,
        [listener("dpi", port)],
        sink.port,
        dkim_key=work / "dkim" / "bench.key",
        **sections,
    )
    relay = RelayProcess(directory, config)
    relay.start()
    one_run(port, relay.pids(), 100, WARM_UP, recipient)  # warm-up, not recorded
    return Subject(name, relay, port, metrics_port)


def scrape_cost(subject: Subject, count: int) -> float:
    """The relay's CPU (ms) for one GET /metrics, with no mail meanwhile."""
    url = f"http://127.0.0.1:{subject.metrics_port}/metrics"
    pids = subject.relay.pids()
    before = cpu_seconds(pids)
    for _ in range(count):
        with urllib.request.urlopen(url, timeout=10) as answer:
            answer.read()
    return (cpu_seconds(pids) - before) * 1000 / count


class Scraper:
    """GET /metrics every `interval` seconds while the runs go on."""

    def __init__(self, subject: Subject, interval: float) -> None:
        self.subject = subject
        self.interval = interval
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        url = f"http://127.0.0.1:{self.subject.metrics_port}/metrics"
        while not self.stop.wait(self.interval):
            try:
                with urllib.request.urlopen(url, timeout=10) as answer:
                    answer.read()
                self.subject.scrapes += 1
            except OSError as error:
                self.errors.append(str(error))

    def __enter__(self) -> Scraper:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=15)


def measure(args: argparse.Namespace, work: Path, sink: Sink) -> tuple[list[Subject], list[str]]:
    subjects: list[Subject] = []
    try:
        subjects.append(prepare("off", work, sink, metrics=False))
        subjects.append(prepare("on", work, sink, metrics=True))
        with Scraper(subjects[1], args.scrape) as scraper:
            for repeat in range(args.repeats):
                # off on, on off, ...: a drift within a pair weighs on both ways.
                for s in subjects if repeat % 2 == 0 else subjects[::-1]:
                    s.runs.append(one_run(s.port, s.relay.pids(), args.messages, 0, professional))
        on = subjects[1]
        on.scrape_ms = scrape_cost(on, 20)
        return subjects, scraper.errors
    finally:
        for s in subjects:
            s.relay.stop()


def tap_cost(log: Path, messages: int) -> float:
    """The tap alone, without the machine's noise: the CPU (µs) it takes per
    message to count the events the relay with metrics logged in its runs, in
    a process of its own in multiprocess mode (as the relay: values in files)."""
    command = [sys.executable, "-m", "bench.metrics_cost", "--tap-log", str(log)]
    command += ["--messages", str(messages)]
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=root)
    return float(done.stdout.strip())


def _tap_only(log: Path, messages: int) -> None:
    with tempfile.TemporaryDirectory(prefix="mss-metrics-") as folder:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder  # before prometheus_client
        from mss_relay.metrics import EventTap, Instruments

        tap = EventTap(Instruments())
        events = [json.loads(line) for line in log.read_text().splitlines() if line]
        for event in events[:1000]:  # children made, files opened: as in a running relay
            tap(None, "info", dict(event))
        copies = [dict(e) for e in events]
        started = time.process_time()
        for event in copies:
            tap(None, "info", event)
        print((time.process_time() - started) * 1e6 / messages)


def summary(s: Subject) -> dict[str, Any]:
    return {
        "metrics": s.name,
        "runs": s.runs,
        "scrapes": s.scrapes,
        "scrape_cpu_ms": None if s.scrape_ms is None else round(s.scrape_ms, 2),
        "cpu_ms_per_msg": round(statistics.median(r["cpu_ms_per_msg"] for r in s.runs), 3),
        "msgs_per_s": round(statistics.median(r["msgs_per_s"] for r in s.runs), 1),
    }


def ratios(on: dict[str, Any], off: dict[str, Any]) -> dict[str, float]:
    """The CPU per message of `on` to `off` (summary()'s): each repeat's pair
    of runs, next to each other in time, gives a ratio; their median is less
    at the mercy of the box's load than the ratio of the two medians (also
    given)."""
    pairs = zip(on["runs"], off["runs"], strict=True)
    return {
        "cpu_ratio_on_to_off": round(
            statistics.median(a["cpu_ms_per_msg"] / b["cpu_ms_per_msg"] for a, b in pairs), 3
        ),
        "cpu_ratio_of_medians": round(on["cpu_ms_per_msg"] / off["cpu_ms_per_msg"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="600 messages, 3 repeats")
    parser.add_argument("--messages", type=int, help="per run (default 2000)")
    parser.add_argument("--repeats", type=int, help="runs per relay, interleaved (default 5)")
    parser.add_argument("--scrape", type=float, default=5.0, help="seconds between scrapes")
    parser.add_argument("--tap-log", type=Path, help=argparse.SUPPRESS)  # tap_cost()'s child
    args = parser.parse_args()
    if args.tap_log:
        _tap_only(args.tap_log, args.messages)
        return
    args.messages = args.messages or (600 if args.quick else 2000)
    args.repeats = args.repeats or (3 if args.quick else 5)
    with tempfile.TemporaryDirectory(prefix="mss-bench-") as name:
        work = Path(name)
        make_dkim_key(work / "dkim")
        with Sink(free_port(), work) as sink:
            subjects, errors = measure(args, work, sink)
        delivered = sum(e.get("event") == "transaction" for e in subjects[1].relay.events())
        tap_us = tap_cost(subjects[1].relay.log_path, delivered)
    off, on = (summary(s) for s in subjects)
    result = {
        "command": " ".join([".venv/bin/python", "bench/metrics_cost.py", *sys.argv[1:]]),
        "messages": args.messages,
        "repeats": args.repeats,
        "scrape_interval_s": args.scrape,
        "machine": report.machine(),
        "off": off,
        "on": on,
        **ratios(on, off),
        "tap_us_per_msg": round(tap_us, 2),
        "tap_share_of_off_cpu": round(tap_us / 1000 / off["cpu_ms_per_msg"], 4),
        "scrape_errors": errors[:5],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("metrics_cost-quick.json" if args.quick else "metrics_cost.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    for r in (off, on):
        print(
            f"metrics {r['metrics']:>3}: {r['cpu_ms_per_msg']:.3f} ms CPU/msg,"
            f" {r['msgs_per_s']:.0f} msgs/s"
            + (
                f", {r['scrapes']} scrapes, {r['scrape_cpu_ms']} ms CPU per scrape"
                if r["metrics"] == "on"
                else ""
            )
        )
    print(
        f"ratio on/off: {result['cpu_ratio_on_to_off']} (median of the pairs' ratios;"
        f" ratio of the medians {result['cpu_ratio_of_medians']}; written to {out})"
    )
    print(
        f"the tap alone: {tap_us:.1f} µs CPU/msg,"
        f" {result['tap_share_of_off_cpu']:.2%} of the relay's CPU per message without metrics"
    )
    for error in errors[:5]:
        print(f"  scrape error: {error}")


if __name__ == "__main__":
    main()
