"""mss-relay side by side with Postfix, its own floor, and the box's limit.

    .venv/bin/python bench/compare.py            # full run, about 15 minutes
    .venv/bin/python bench/compare.py --quick    # smoke run, a minute or two
    .venv/bin/python bench/compare.py --trust    # + the trust space on (issue 16), ~25 min
    .venv/bin/python -m bench.compare ...        # the same

In one run, on 127.0.0.1 only, smtp-source (Postfix's C load generator) and a
timed Python probe (one of the clients: the per-message latency) send the same
MIME message (a text part and a base64 PDF attachment making up the size) to
each of:

    sink         smtp-sink alone: the box's limit
    postfix      a private Postfix instance relaying to smtp-sink (no milter), with
                 the honest peer's settings (bench/harness.py PEER_SETTINGS)
    passthrough  aiosmtpd -> aiosmtplib, nothing between (bench/passthrough.py)
    relay-1w     mss-relay, every rule on, DKIM signing, a state file holding
    relay-Nw     --conversations conversations; 1 worker, then N (--workers)
    relay-1w-trust  with --trust only: the same relays with trust_space.whitelist
    relay-Nw-trust  (a generated liste blanche of 6,500 entries) and directory.mode:
                 refuse (a generated extraction of 600,000 rows imported), the
                 bench's recipient listed in both (bench/trust_space.py); each
                 measured right after its plain twin. The report adds « The trust
                 space on and off »: each relay's ratio to Postfix off and on, and
                 on/off, per cell and per pattern (issue 16 asks >= 0.95). Without
                 --trust the output is what it was.

in both connection patterns, side by side: persistent sessions (a DPI
connector) and a new connection per message (Thunderbird, Outlook). All of
them forward to one smtp-sink, which counts what it receives: a rate is
messages *received by smtp-sink* over the time from the start of the run to
the last of them; Postfix queues, so what it accepts (its receive rate) and
what it delivers are both reported. Runs are interleaved (each repeat goes
through every server in turn) and bounded in count, bytes and time; medians
quoted. bench/plan.py says what is measured, bench/run.py runs it,
bench/report.py writes it.

Writes bench/results/compare.md (the tables, also printed) and compare.json
(every run, and the machine); a --quick run writes compare-quick.{md,json}.
Needs smtp-source, smtp-sink and postfix: installed from Debian's postfix
package when missing (root only). Every process started is stopped at the end,
on Ctrl-C or on error too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if not TYPE_CHECKING and not __package__:  # python bench/compare.py: see bench/_script.py
    import _script

    _script.rerun(__file__)

import os
import shutil
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from . import plan, report
from .harness import Sink, free_port
from .run import measure
from .targets import Target


def _terminate(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt  # the same clean-up as Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = plan.options(argv)
    plan.ensure_tools()
    signal.signal(signal.SIGTERM, _terminate)
    workdir = Path(tempfile.mkdtemp(prefix="mss-compare-"))
    notes: list[str] = []
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(
            [".venv/bin/python", "bench/compare.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "quick": args.quick,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": report.machine(),
        "notes": notes,
        "workdir": str(workdir),
    }
    results: list[dict[str, Any]] = []
    targets: list[Target] = []
    interrupted = False
    started = time.monotonic()
    try:
        with ExitStack() as stack:
            sink = stack.enter_context(Sink(free_port(), workdir))
            targets = plan.build_targets(args, sink, workdir, notes)
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
        report.write(args.output, plan.report_name(args), meta, results, targets)
    return 130 if interrupted else (1 if any(r["errors"] for r in results) else 0)


def _stop(target: Target) -> None:
    try:
        target.stop()
    except Exception as error:  # the others must still be stopped
        print(f"stopping {target.key}: {error}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
