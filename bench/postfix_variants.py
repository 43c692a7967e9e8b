"""Why the bench's Postfix was slower than an independent run's: Postfix
variants side by side, 2 KB, 10 smtp-source sessions, to smtp-sink.

    .venv/bin/python bench/postfix_variants.py [--messages 3000] [--repeats 3]

Each variant is a private Postfix (bench/harness.py's bench_postfix) with
tests/support/postfix.py's loopback settings plus the variant's, or another
message shape (the bench's MIME message, a base64 PDF attachment, or plain
text of the same size), or the other connection pattern. The runs of the
variants are interleaved (A B C ... A B C ...), medians quoted; the figure
least disturbed by other jobs on the box is Postfix's CPU per message (from
/proc), the rates are given too: received (smtp-source's exit: every 250)
and end to end (smtp-sink's count). Writes bench/results/postfix_variants.json.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if not TYPE_CHECKING and not __package__:  # python bench/postfix_variants.py
    import _script

    _script.rerun(__file__)

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import procfs
from .harness import PEER_SETTINGS, RESULTS, Sink, bench_postfix, free_port
from .load import RECIPIENT, SENDER, Pattern, build_message, parse_size, run_source
from .plan import ensure_tools

PLAIN = f"From: <{SENDER}>\nTo: <{RECIPIENT}>\nSubject: bench\nMessage-ID: <plain@ch-bench>\n\n" + (
    "Compte rendu de consultation, texte brut sans piece jointe.............\n" * 27
)


@dataclass
class Variant:
    name: str
    settings: dict[str, str]
    shape: str = "mime"
    pattern: Pattern = "persistent"
    runs: list[dict[str, float]] = field(default_factory=list)


def variants() -> list[Variant]:
    # The loopback harness's own settings, as the bench used them before: the
    # honest peer's set back to Postfix's defaults, to see what each is worth.
    defaults = {key: postconf_default(key) for key in PEER_SETTINGS}
    no_log = {"maillog_file": ""}
    no_mime = {"disable_mime_input_processing": "yes"}
    cache = {"smtp_connection_cache_destinations": "$relayhost"}
    return [
        Variant("loopback harness only (the bench before)", defaults),
        Variant("  + plain-text message", defaults, shape="plain"),
        Variant("  + smtp_dns_support_level = disabled", defaults | _only("smtp_dns")),
        Variant("  + initial_destination_concurrency = 20", defaults | _only("initial")),
        Variant("  + smtp_connection_cache_destinations", defaults | cache),
        Variant("  + disable_mime_input_processing", defaults | no_mime),
        # No maillog_file: Postfix logs through syslog(3), and without a syslog
        # daemon (no /dev/log, as in a container) nothing is written at all.
        Variant("  + no log file (syslog; no /dev/log here)", defaults | no_log),
        Variant("  + plain-text message, no log file", defaults | no_log, shape="plain"),
        Variant("honest peer (PEER_SETTINGS)", {}),
        Variant("honest peer, plain-text message", {}, shape="plain"),
        Variant("honest peer, new connection per message", {}, pattern="new"),
    ]


def postconf_default(key: str) -> str:
    out = subprocess.run(["postconf", "-dh", key], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _only(prefix: str) -> dict[str, str]:
    return {k: v for k, v in PEER_SETTINGS.items() if k.startswith(prefix)}


def one_run(variant: Variant, work: Path, sink: Sink, messages: int, sessions: int) -> None:
    text = build_message(parse_size("2KB"), "variant") if variant.shape == "mime" else PLAIN
    path = work / f"{variant.shape}.txt"
    path.write_text(text)
    port = free_port()
    postfix = bench_postfix(work / f"pf-{port}", port, sink.port, variant.settings)
    postfix.start()
    try:
        pids = postfix.processes()
        cpu, before, others = (
            procfs.cpu_seconds(pids),
            sink.counter.value,
            procfs.others_cpu_seconds(),
        )
        started = time.monotonic()
        source = run_source(port, path, sessions, messages, started + 120, variant.pattern)
        sink.counter.wait_for(before + messages, 120)
        elapsed = time.monotonic() - started
        pids = postfix.processes()
        variant.runs.append(
            {
                "received_msgs_s": round(source.sent / (source.ended_at - started), 1),
                "end_to_end_msgs_s": round(
                    (sink.counter.value - before) / (sink.counter.changed_at - started), 1
                ),
                "cpu_ms_msg": round((procfs.cpu_seconds(pids) - cpu) * 1000 / messages, 3),
                "others_load": round(
                    (procfs.others_cpu_seconds() - others) / elapsed / (os.cpu_count() or 1), 2
                ),
                "errors": source.returncode or 0,
            }
        )
    finally:
        postfix.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000, help="per run")
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per variant")
    parser.add_argument("--only", type=int, nargs="+", help="these variants (0 the first)")
    args = parser.parse_args()
    ensure_tools()
    chosen = variants()
    if args.only:
        chosen = [chosen[i] for i in args.only]
    with tempfile.TemporaryDirectory(prefix="mss-variants-") as name:
        work = Path(name)
        with Sink(free_port(), work) as sink:
            for _ in range(args.repeats):
                for variant in chosen:
                    one_run(variant, work, sink, args.messages, args.sessions)
                    print(variant.name, variant.runs[-1], flush=True)
    rows = [summary(v) for v in chosen]
    document = {
        "command": "bench/postfix_variants.py",
        "options": vars(args),
        "load_average_at_end": os.getloadavg()[0],
        "variants": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "postfix_variants.json").write_text(json.dumps(document, indent=2) + "\n")
    print("\n| variant | received msgs/s | end to end msgs/s | CPU ms/msg | other load |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['variant']} | {r['received_msgs_s']} | {r['end_to_end_msgs_s']}"
            f" | {r['cpu_ms_msg']} | {r['others_load_max']:.0%} |"
        )


def summary(v: Variant) -> dict[str, Any]:
    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in v.runs), 2)

    return {
        "variant": v.name.strip(),
        "settings": v.settings,
        "shape": v.shape,
        "pattern": v.pattern,
        "received_msgs_s": median("received_msgs_s"),
        "end_to_end_msgs_s": median("end_to_end_msgs_s"),
        "cpu_ms_msg": median("cpu_ms_msg"),
        "others_load_max": max(r["others_load"] for r in v.runs),
        "runs": v.runs,
    }


if __name__ == "__main__":
    main()
