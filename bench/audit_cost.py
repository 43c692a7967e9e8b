"""The audit chain's cost per message, as a share of the relay's CPU per message.

    .venv/bin/python bench/audit_cost.py [--messages 2000] [--repeats 5]
    .venv/bin/python bench/audit_cost.py --quick     # 600 messages, 3 repeats

One real relay (1 worker, every rule on, DKIM signing: bench/compare.py's
configuration, bench/metrics_cost.py's client: 2 KB messages from the DPI's
BAL over 10 persistent sessions, smtp-sink as the operator); its CPU per
message from /proc, median of the runs. Then the chain step alone
(mss_relay/audit/chain.py's Chain, the last finish step of the log), timed
in a quiet process of its own on the very lines that relay logged (their
seal removed, so they are sealed again as the relay sealed them), per
message: a figure the box's load does not blur, as metrics_cost's tap_cost.
The chain cannot be switched off in the relay (there is no such setting, on
purpose): the share is of the CPU per message with it. Writes
bench/results/audit_cost.json (audit_cost-quick.json with --quick).
Loopback only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if not TYPE_CHECKING and not __package__:  # python bench/audit_cost.py: see bench/_script.py
    import _script

    _script.rerun(__file__)

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import report
from .harness import RESULTS, Sink, free_port, make_dkim_key
from .metrics_cost import prepare
from .state_cost import one_run


def professional(_: int) -> str:
    return "dr.martin@chu-b.mssante.fr"


def chain_cost(log: Path, messages: int) -> float:
    """The chain step alone (µs per message), in a process of its own."""
    command = [sys.executable, "-m", "bench.audit_cost", "--chain-log", str(log)]
    command += ["--messages", str(messages)]
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=root)
    return float(done.stdout.strip())


def _chain_only(log: Path, messages: int) -> None:
    from mss_relay.audit.chain import Chain, Head

    # The lines as the relay rendered them before its chain step: the text
    # up to its « , "stream": ... » suffix, closed again.
    rendered = []
    for raw in log.read_text(encoding="utf-8").splitlines():
        cut = raw.rfind(', "stream": ')
        if cut > 0:
            rendered.append(raw[:cut] + "}")
    chain = Chain("w0", Head())
    for line in rendered[:1000]:  # warm
        chain(line)
    started = time.process_time()
    for line in rendered:
        chain(line)
    print((time.process_time() - started) * 1e6 / messages)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="600 messages, 3 repeats")
    parser.add_argument("--messages", type=int, help="per run (default 2000)")
    parser.add_argument("--repeats", type=int, help="runs (default 5)")
    parser.add_argument("--chain-log", type=Path, help=argparse.SUPPRESS)  # chain_cost()'s child
    args = parser.parse_args()
    if args.chain_log:
        _chain_only(args.chain_log, args.messages)
        return
    args.messages = args.messages or (600 if args.quick else 2000)
    args.repeats = args.repeats or (3 if args.quick else 5)
    with tempfile.TemporaryDirectory(prefix="mss-bench-") as name:
        work = Path(name)
        make_dkim_key(work / "dkim")
        with Sink(free_port(), work) as sink:
            subject = prepare("relay", work, sink, metrics=False)
            try:
                for _ in range(args.repeats):
                    pids = subject.relay.pids()
                    subject.runs.append(one_run(subject.port, pids, args.messages, 0, professional))
            finally:
                subject.relay.stop()
        events = subject.relay.events()
        delivered = sum(e.get("event") == "transaction" for e in events)
        chain_us = chain_cost(subject.relay.log_path, delivered)
    cpu_ms = statistics.median(r["cpu_ms_per_msg"] for r in subject.runs)
    result = {
        "command": " ".join([".venv/bin/python", "bench/audit_cost.py", *sys.argv[1:]]),
        "messages": args.messages,
        "repeats": args.repeats,
        "machine": report.machine(),
        "runs": subject.runs,
        "cpu_ms_per_msg": round(cpu_ms, 3),
        "msgs_per_s": round(statistics.median(r["msgs_per_s"] for r in subject.runs), 1),
        "log_lines_per_msg": round(len(events) / max(delivered, 1), 2),
        "chain_us_per_msg": round(chain_us, 2),
        "chain_share_of_cpu": round(chain_us / 1000 / cpu_ms, 4),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("audit_cost-quick.json" if args.quick else "audit_cost.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"relay: {cpu_ms:.3f} ms CPU/msg, {result['msgs_per_s']:.0f} msgs/s,"
        f" {result['log_lines_per_msg']} log lines/msg"
    )
    print(
        f"the chain alone: {chain_us:.1f} µs CPU/msg,"
        f" {result['chain_share_of_cpu']:.2%} of the relay's CPU per message (written to {out})"
    )


if __name__ == "__main__":
    main()
