"""The audit chain's and the patients' pseudonyms' cost per message, as a share
of the relay's CPU per message (issue 17: under 3 % at 2 KB, same run).

    .venv/bin/python bench/audit_cost.py [--messages 2000] [--repeats 5]
    .venv/bin/python bench/audit_cost.py --quick     # 600 messages, 3 repeats

Two real relays in the same run (1 worker, every rule on, DKIM signing:
bench/compare.py's configuration; smtp-sink as the operator), the same but
for log.pseudonymize_patients: false (« off ») and true, the default (« on »).
bench/state_cost.py's client: 2 KB messages from the DPI's BAL over 10
persistent sessions, each to a patient of its own (a valid INS never written
to before in the run: each message opens a conversation, in both relays
alike). Patients only, not a mix with professionals: the masking step does
work only on lines naming a patient, so this is its dearest traffic, and a
share under 3 % here is one under 3 % for any mix; a patient of its own per
message, not a pool the relay's cache of pseudonyms would hold whole: each
message pays its HMAC, as a structure writing to many patients would. Every
message must be accepted (250, or the client stops) and forwarded (the
sink's count, and each relay's transaction lines).

Figures, as bench/metrics_cost.py's: each relay's CPU per message (from
/proc) and msgs/s, median of the runs, the runs of the two interleaved (off
on, on off, ...); the ratio on/off of the CPU per message, the median of the
pairs' ratios: the pseudonyms' cost seen at the relay's level, blurred by
the box's load. Then each step alone, timed in a quiet process of its own
(step_cost()) on the lines as the relay gave them to that step: the chain
(mss_relay/audit/chain.py's Chain, the last finish step of the log) on the
« on » relay's lines, their seal removed; the masking (mss_relay/pseudonym.py's
Pseudonyms.mask, the first) on the « off » relay's lines, which hold the INS
in clear, under a key of its own and a cold cache of pseudonyms. Each per
message, as a share of the « on » relay's CPU per message (the relay as it
ships, both steps in it); their sum is the figure against the 3 % target.
The chain cannot be switched off in the relay (there is no such setting, on
purpose), so it has no on/off ratio. Writes bench/results/audit_cost.json
(audit_cost-quick.json with --quick). Loopback only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if not TYPE_CHECKING and not __package__:  # python bench/audit_cost.py: see bench/_script.py
    import _script

    _script.rerun(__file__)

import argparse
import json
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import report
from .harness import RESULTS, Sink, free_port, make_dkim_key
from .metrics_cost import Subject, prepare, ratios
from .state_cost import one_run, patient

TARGET = 0.03  # issue 17: the chain and the pseudonyms under 3 % of the CPU per message
PASSES = 3  # each step timed this many times over all the lines, the median quoted
# An INS in clear before the patient domain: 15 characters not preceded by a
# hex digit, so that the tail of a pseudonym (ins: + 16 hex) is not one.
_CLEAR_INS = re.compile(r"(?<![0-9A-Fa-f])[0-9][0-9AB]{12}[0-9]{2}@patient\.mssante\.fr")
_SEAL = ', "stream": '


def unsealed(line: str) -> str | None:
    """A written line as the finish steps were given it: the text up to the
    chain's « , "stream": ... » suffix, closed again (None: not sealed)."""
    cut = line.rfind(_SEAL)
    return line[:cut] + "}" if cut > 0 else None


def clear_ins_lines(lines: list[str]) -> int:
    """How many lines name a patient by the INS in clear."""
    return sum(1 for line in lines if _CLEAR_INS.search(line))


def step_cost(step: str, log: Path, messages: int) -> dict[str, float]:
    """One finish step alone, in a process of its own: CPU µs per message and
    the lines it changed per message."""
    command = [sys.executable, "-m", "bench.audit_cost", "--step", step, "--log", str(log)]
    command += ["--messages", str(messages)]
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=root)
    result: dict[str, float] = json.loads(done.stdout)
    return result


def _step_only(step: str, log: Path, messages: int) -> None:
    from mss_relay.audit.chain import Chain, Head
    from mss_relay.pseudonym import KEY_BYTES, Pseudonyms

    rendered = [u for raw in log.read_text(encoding="utf-8").splitlines() if (u := unsealed(raw))]
    key = secrets.token_bytes(KEY_BYTES)

    def fresh() -> Callable[[str], str]:
        # A new chain (seq from 0) or new pseudonyms (their cache empty, as
        # the relay's is for a patient it never wrote to): each pass alike.
        return Chain("w0", Head()) if step == "chain" else Pseudonyms(key).mask

    warm = fresh()
    for line in rendered[:1000]:
        warm(line)
    times = []
    for _ in range(PASSES):
        run = fresh()
        started = time.process_time()
        for line in rendered:
            run(line)
        times.append(time.process_time() - started)
    changed = sum(fresh()(line) != line for line in rendered)
    print(
        json.dumps(
            {
                "us_per_msg": statistics.median(times) * 1e6 / messages,
                "lines_per_msg": len(rendered) / messages,
                "changed_lines_per_msg": changed / messages,
            }
        )
    )


def measure(args: argparse.Namespace, work: Path, sink: Sink) -> list[Subject]:
    subjects: list[Subject] = []
    try:
        for name, on in (("off", False), ("on", True)):
            log = {"pseudonymize_patients": on}
            subjects.append(prepare(name, work, sink, False, patient, log=log))
        for repeat in range(args.repeats):
            # off on, on off, ...: a drift within a pair weighs on both ways.
            # Both relays write to the same patients (each its own state).
            first = repeat * args.messages
            for s in subjects if repeat % 2 == 0 else subjects[::-1]:
                s.runs.append(one_run(s.port, s.relay.pids(), args.messages, first, patient))
        return subjects
    finally:
        for s in subjects:
            s.relay.stop()


def summary(s: Subject, sent: int) -> dict[str, Any]:
    events = s.relay.events()
    transactions = [e for e in events if e.get("event") == "transaction"]
    lines = s.relay.log_path.read_text(encoding="utf-8").splitlines()
    return {
        "pseudonymize_patients": s.name == "on",
        "runs": s.runs,
        "cpu_ms_per_msg": round(statistics.median(r["cpu_ms_per_msg"] for r in s.runs), 3),
        "msgs_per_s": round(statistics.median(r["msgs_per_s"] for r in s.runs), 1),
        "sent": sent,
        "transactions": len(transactions),
        "delivered": sum(e.get("outcome") == "delivered" for e in transactions),
        "log_lines_per_msg": round(len(events) / max(len(transactions), 1), 2),
        "clear_ins_lines": clear_ins_lines(lines),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="600 messages, 3 repeats")
    parser.add_argument("--messages", type=int, help="per run (default 2000)")
    parser.add_argument("--repeats", type=int, help="runs per relay, interleaved (default 5)")
    parser.add_argument("--step", choices=["chain", "mask"], help=argparse.SUPPRESS)  # child
    parser.add_argument("--log", type=Path, help=argparse.SUPPRESS)  # step_cost()'s child
    args = parser.parse_args()
    if args.step:
        _step_only(args.step, args.log, args.messages)
        return
    args.messages = args.messages or (600 if args.quick else 2000)
    args.repeats = args.repeats or (3 if args.quick else 5)
    sent = 100 + args.messages * args.repeats  # per relay, its warm-up included
    with tempfile.TemporaryDirectory(prefix="mss-bench-") as name:
        work = Path(name)
        make_dkim_key(work / "dkim")
        with Sink(free_port(), work) as sink:
            subjects = measure(args, work, sink)
            sink.counter.wait_for(2 * sent, timeout=30)
            forwarded = sink.counter.value
        off, on = (summary(s, sent) for s in subjects)
        # Each step on the lines as the relay handed them to it.
        chain = step_cost("chain", subjects[1].relay.log_path, on["transactions"])
        mask = step_cost("mask", subjects[0].relay.log_path, off["transactions"])
    cpu_us = on["cpu_ms_per_msg"] * 1000
    share = (chain["us_per_msg"] + mask["us_per_msg"]) / cpu_us
    result = {
        "command": " ".join([".venv/bin/python", "bench/audit_cost.py", *sys.argv[1:]]),
        "messages": args.messages,
        "repeats": args.repeats,
        "traffic": "2 KB, DPI's BAL to a patient of its own per message, 10 sessions",
        "machine": report.machine(),
        "off": off,
        "on": on,
        "forwarded_by_sink": forwarded,
        **ratios(on, off),
        "chain_us_per_msg": round(chain["us_per_msg"], 2),
        "chain_share_of_cpu": round(chain["us_per_msg"] / cpu_us, 4),
        "mask_us_per_msg": round(mask["us_per_msg"], 2),
        "mask_changed_lines_per_msg": round(mask["changed_lines_per_msg"], 2),
        "mask_share_of_cpu": round(mask["us_per_msg"] / cpu_us, 4),
        "chain_and_mask_share_of_cpu": round(share, 4),
        "target_share": TARGET,
        "under_target": share < TARGET,
        # Every message delivered (one refused or lost is one the figures do
        # not weigh), INS in clear for the masking to work on, none once masked.
        "checks_passed": forwarded == 2 * sent
        and off["delivered"] == on["delivered"] == sent
        and off["clear_ins_lines"] > 0
        and on["clear_ins_lines"] == 0,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("audit_cost-quick.json" if args.quick else "audit_cost.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    for r in (off, on):
        print(
            f"pseudonyms {'on' if r['pseudonymize_patients'] else 'off':>3}:"
            f" {r['cpu_ms_per_msg']:.3f} ms CPU/msg, {r['msgs_per_s']:.0f} msgs/s,"
            f" {r['delivered']}/{r['sent']} delivered, {r['log_lines_per_msg']} log lines/msg,"
            f" {r['clear_ins_lines']} lines with an INS in clear"
        )
    print(
        f"forwarded (sink): {forwarded}/{2 * sent}; ratio on/off: {result['cpu_ratio_on_to_off']}"
        f" (median of the pairs' ratios; ratio of the medians {result['cpu_ratio_of_medians']})"
    )
    print(
        f"the chain alone: {chain['us_per_msg']:.1f} µs CPU/msg"
        f" ({result['chain_share_of_cpu']:.2%}); the masking alone: {mask['us_per_msg']:.1f} µs"
        f" ({result['mask_share_of_cpu']:.2%},"
        f" {mask['changed_lines_per_msg']:.1f} lines masked/msg)"
    )
    verdict = "under" if result["under_target"] else "NOT under"
    print(
        f"chain + masking: {share:.2%} of the relay's CPU per message, {verdict} the"
        f" {TARGET:.0%} target (written to {out})"
    )
    if not result["checks_passed"]:
        sys.exit("checks failed: a message not delivered, or INS where they should not be")


if __name__ == "__main__":
    main()
