"""What bench/compare.py measures: the options, the servers (targets), and the
cells: sizes x connection patterns x sessions, each cell run on every server.

    sizes        2KB, 100KB, 5MB (the message on the wire), 20MB-att (an attachment of
                 20 MB decoded, just under the relay's 20 MiB limit)
    patterns     persistent (smtp-source -d: a DPI connector) and new (a new connection
                 per message: Thunderbird, Outlook); both in the same run, side by side
    sessions     1, 10, 50 persistent; 1, 10 with a new connection per message
    servers      sink, postfix, passthrough, relay-1w, relay-Nw; with --trust also
                 relay-1w-trust and relay-Nw-trust (the liste blanche and the Annuaire
                 Santé on, bench/trust_space.py), each right after its plain twin

How many messages a run sends is decided here too (Planner): enough for
--duration seconds at the rate the server last showed, within the caps.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from .harness import RESULTS, Sink, make_dkim_key, make_state, postfix_available, workers_supported
from .load import PATTERNS, Pattern, Size, build_message, parse_size, wire_bytes
from .targets import PassthroughTarget, PostfixTarget, RelayTarget, SinkTarget, Target
from .trust_space import DIRECTORY_ROWS, WHITELIST_ENTRIES, make_trust_space

TOOLS = ("smtp-source", "smtp-sink", "postfix")
SBIN = "/usr/sbin:/usr/bin:/sbin:/bin"
MAX_MESSAGES = 50_000  # per run, whatever the rate
SERVERS = ("sink", "postfix", "passthrough", "relay")

FULL: dict[str, Any] = {
    "sizes": ["2KB", "100KB", "5MB", "20MB-att"],
    "concurrency": [1, 10, 50],
    # A client opening a connection per message: 10 of them is the issue's
    # case; 50 would add minutes to a run for a pattern no connector uses.
    "new_concurrency": [1, 10],
    "repeats": 3,
    "duration": 3.0,
    "conversations": 100_000,
}
# Every server, both patterns and both code paths (small and base64-heavy), in
# a minute or two.
QUICK: dict[str, Any] = {
    "sizes": ["2KB", "100KB"],
    "concurrency": [1, 10],
    "new_concurrency": [10],
    "repeats": 1,
    "duration": 1.0,
    "conversations": 10_000,
}


def options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/compare.py",
        description="mss-relay side by side with Postfix, a bare pass-through and smtp-sink.",
    )
    add = parser.add_argument
    add(
        "--quick",
        action="store_true",
        help="smoke run: 2KB and 100KB, 1 and 10 persistent sessions, 10 new-connection"
        " clients, one 1 s run each, 10,000 conversations (options given explicitly win);"
        " written to compare-quick.{md,json}, never over a full run's results",
    )
    add("--sizes", nargs="+", help="default 2KB 100KB 5MB 20MB-att (20MB-att: a 20 MB attachment)")
    add("--concurrency", nargs="+", type=int, help="persistent sessions at once (default 1 10 50)")
    add(
        "--new-concurrency",
        nargs="+",
        type=int,
        help="clients at once opening a new connection per message (default 1 10)",
    )
    add("--patterns", nargs="+", choices=PATTERNS, default=list(PATTERNS), help="default both")
    add("--repeats", type=int, help="runs per server and cell, median quoted (default 3)")
    add("--duration", type=float, help="seconds a run aims at, sets its count (default 3)")
    add("--cell-budget", type=float, default=30.0, help="no repeat once a cell took this (s)")
    add("--run-timeout", type=float, default=120.0, help="hard limit of one run, in seconds")
    add("--max-mb-per-run", type=float, default=300.0, help="bytes sent in one run, at most")
    add("--targets", nargs="+", choices=SERVERS, default=list(SERVERS), help="servers measured")
    add("--workers", type=int, default=os.cpu_count() or 1, help="workers of the second relay")
    add("--conversations", type=int, help="conversations in the state file (default 100000)")
    add(
        "--trust",
        action="store_true",
        help="also relay-1w-trust and relay-Nw-trust: the same relays with trust_space.whitelist"
        " (a generated liste blanche) and directory.mode: refuse (a generated extraction"
        " imported), interleaved with the others; the report gets their on/off ratios",
    )
    add("--whitelist-entries", type=int, default=WHITELIST_ENTRIES, help="with --trust")
    add("--directory-rows", type=int, default=DIRECTORY_ROWS, help="with --trust")
    add("--output", type=Path, default=RESULTS, help="where compare.md and compare.json go")
    add("--keep", action="store_true", help="keep the work directory (configs, logs)")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def report_name(args: argparse.Namespace) -> str:
    """compare (a full run) or compare-quick: a smoke run never replaces the figures."""
    return "compare-quick" if args.quick else "compare"


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


# -- messages and cells ---------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    size: Size
    path: Path  # for smtp-source -F: LF line endings
    wire: bytes  # for the probe: CRLF, dot-stuffed, final dot
    nbytes: int  # the message on the wire, without the final dot


def prepare(spec: str, workdir: Path) -> Message:
    size = parse_size(spec)
    text = build_message(size, f"bench-{size.label.lower()}")
    path = workdir / f"message-{size.label}.txt"
    path.write_text(text)
    wire = wire_bytes(text)
    return Message(size, path, wire, len(wire) - len(b".\r\n"))


@dataclass(frozen=True)
class Cell:
    """One row of the tables: a size, a pattern, sessions asked and really used."""

    message: Message
    pattern: Pattern
    asked: int
    used: int


def cells(args: argparse.Namespace, message: Message, planner: Planner) -> Iterator[Cell | str]:
    """The cells of one size, pattern by pattern; a note (str) for a cell the
    byte cap turns into one already measured."""
    for pattern in args.patterns:
        concurrency = args.concurrency if pattern == "persistent" else args.new_concurrency
        measured: set[int] = set()
        for sessions in concurrency:
            used = planner.sessions(message, sessions)
            if used in measured:
                yield (
                    f"{message.size.label}, {pattern}, {sessions} sessions: not measured,"
                    f" {sessions} messages of {message.nbytes / 1e6:.1f} MB exceed"
                    f" --max-mb-per-run; the {used}-session row is what fits."
                )
                continue
            measured.add(used)
            yield Cell(message, pattern, sessions, used)


@dataclass
class Planner:
    """How many messages a run sends: enough for `duration` seconds at the
    rate this server last showed for this size and pattern, at least one per
    session, within the byte and count caps."""

    duration: float
    max_bytes: float
    rates: dict[tuple[str, str, str], float]

    def count(self, target: str, cell: Cell) -> int:
        rate = self.rates.get((target, cell.message.size.label, cell.pattern))
        rate = rate or self.rates.get((target, cell.message.size.label, "persistent"), 1.0)
        wanted = max(math.ceil(rate * self.duration), cell.used)
        return max(1, min(wanted, self._by_bytes(cell.message), MAX_MESSAGES))

    def sessions(self, message: Message, sessions: int) -> int:
        """The sessions a cell really uses: one message each at least, so
        the byte cap may leave some idle (then the cell is a smaller one)."""
        return min(sessions, self._by_bytes(message))

    def _by_bytes(self, message: Message) -> int:
        return max(1, int(self.max_bytes // message.nbytes))

    def learn(self, result: dict[str, Any]) -> None:
        if result["msgs_s"]:
            key = (result["target"], result["size"], result["pattern"])
            self.rates[key] = result["msgs_s"]

    def warm_count(self, message: Message) -> int:
        """A first, unrecorded run: about 1 MB, at least one message."""
        return max(1, min(200, int(1e6 // message.nbytes)))


# -- the servers -------------------------------------------------------------------------------


def build_targets(
    args: argparse.Namespace, sink: Sink, workdir: Path, notes: list[str]
) -> list[Target]:
    targets: list[Target] = []
    if "sink" in args.targets:
        targets.append(SinkTarget(sink))
    if "postfix" in args.targets:
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
    workers = [1]
    if args.workers <= 1:
        notes.append("Only the one-worker relay: --workers is 1.")
    elif why := workers_supported(workdir / "workers-probe", args.workers):
        notes.append(
            f"The {args.workers}-worker relay is skipped: check-config refuses workers: {why}"
        )
    else:
        workers.append(args.workers)
    trust = None
    if args.trust:
        trust = make_trust_space(workdir, state, args.whitelist_entries, args.directory_rows)
        print(f"trust space: {trust.notes}", flush=True)
    relays: list[Target] = []
    for n in workers:
        relays.append(RelayTarget(sink, workdir, n, state))
        # Right after its twin: the two runs of a repeat are next to each other in time.
        if trust:
            relays.append(RelayTarget(sink, workdir, n, state, trust))
    return relays
