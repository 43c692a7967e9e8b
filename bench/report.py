"""What bench/compare.py writes: medians per cell, the ratios, the Markdown
tables (printed, and bench/results/compare.md) and every run (compare.json).
A --quick run goes to compare-quick.{md,json}: it never replaces a full run."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any

from .harness import ROOT, postfix_version
from .load import RECIPIENT, SENDER
from .run import NOISE
from .targets import RelayTarget, Target

MEDIANS = ("msgs_s", "mb_s", "accept_msgs_s", "cpu_ms_msg", "peak_rss_mib")
PATTERN_TITLES = {
    "persistent": "Persistent sessions (a DPI connector)",
    "new": "A new connection per message (Thunderbird, Outlook)",
}
# Postfix's receive rate (its 250s per second: mail accepted into its queue)
# beside its end-to-end rate: a column key of its own in the ratios.
RECEIVED = "postfix-received"
BASES = ("postfix", RECEIVED, "passthrough")


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
    cells: dict[tuple[str, str, int, str], list[dict[str, Any]]] = {}
    for r in results:
        cells.setdefault((r["pattern"], r["size"], r["concurrency"], r["target"]), []).append(r)
    summary = []
    for (pattern, size, sessions, target), runs in cells.items():
        samples = [x for r in runs for x in r["latencies_ms"]]
        summary.append(
            {
                "pattern": pattern,
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


def ratios(summary: list[dict[str, Any]], relays: list[str]) -> list[dict[str, Any]]:
    """mss-relay over Postfix (end to end, and as received) and over the
    pass-through, msgs/s, same run, same pattern."""
    rate: dict[tuple[str, str, int, str], float | None] = {}
    for c in summary:
        key = (c["pattern"], c["size"], c["concurrency"])
        rate[(*key, c["target"])] = c["msgs_s"]
        if c["target"] == "postfix":
            rate[(*key, RECEIVED)] = c["accept_msgs_s"]
    rows = []
    for pattern, size, sessions in dict.fromkeys(
        (c["pattern"], c["size"], c["concurrency"]) for c in summary
    ):
        row: dict[str, Any] = {"pattern": pattern, "size": size, "concurrency": sessions}
        for relay in relays:
            mine = rate.get((pattern, size, sessions, relay))
            for base in BASES:
                other = rate.get((pattern, size, sessions, base))
                row[f"{relay}/{base}"] = round(mine / other, 3) if mine and other else None
        rows.append(row)
    return rows


# -- tables ---------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def headline(
    summary: list[dict[str, Any]], targets: list[Target], pattern: str, sessions: int
) -> list[str]:
    here = [c for c in summary if c["concurrency"] == sessions and c["pattern"] == pattern]
    if not here:
        return []
    sizes = list(dict.fromkeys(c["size"] for c in here))
    cells = {(c["size"], c["target"]): c for c in here}
    plural = "s" if sessions > 1 else ""
    lines = [
        f"| msgs/s, {sessions} client{plural}, {pattern} | " + " | ".join(sizes) + " |",
        "| --- |" + " --- |" * len(sizes),
    ]
    for t in targets:
        row = [_cell(cells.get((s, t.key))) for s in sizes]
        lines.append(f"| {t.label} | " + " | ".join(row) + " |")
        if t.key == "postfix":
            row = [_cell(cells.get((s, t.key)), "accept_msgs_s") for s in sizes]
            lines.append("| Postfix, received (its 250s/s) | " + " | ".join(row) + " |")
    return lines


def _cell(cell: dict[str, Any] | None, key: str = "msgs_s") -> str:
    """msgs/s, and the sessions really used when the byte cap allowed fewer."""
    if cell is None:
        return "–"
    used = cell["sessions_used"]
    return _num(cell[key]) + (f" ({used} used)" if used != cell["concurrency"] else "")


def ratio_table(rows: list[dict[str, Any]], relays: list[str]) -> list[str]:
    columns = [f"{r}/{b}" for r in relays for b in BASES]
    lines = [
        "| pattern | size | clients | " + " | ".join(columns) + " |",
        "| --- | --- | --- |" + " --- |" * len(columns),
    ]
    for row in rows:
        values = " | ".join(_num(row[c], 2) for c in columns)
        lines.append(f"| {row['pattern']} | {row['size']} | {row['concurrency']} | {values} |")
    return lines


# The targets, 10 clients: (pattern, relay, base, size) -> the least ratio of
# msgs/s. Issue 6's (persistent sessions), and issue 14's (a new connection per
# message, 2 workers against Postfix end to end).
TARGETS = (
    ("persistent", "N", "postfix", "2KB", 1.0),
    ("persistent", "N", "postfix", "100KB", 0.7),
    ("persistent", "N", "postfix", "5MB", 0.7),
    ("persistent", "1", "passthrough", "2KB", 0.8),
    ("persistent", "1", "passthrough", "100KB", 0.8),
    ("persistent", "1", "passthrough", "5MB", 0.8),
    ("persistent", "1", "passthrough", "20MB-att", 0.8),
    ("new", "N", "postfix", "2KB", 1.0),
    ("new", "N", "postfix", "100KB", 1.0),
    ("new", "N", "postfix", "5MB", 1.0),
)


def acceptance(rows: list[dict[str, Any]], relays: list[str]) -> list[str]:
    """The issues' targets against this run's ratios: met, or missed by how much."""
    by_cell = {(r["pattern"], r["size"]): r for r in rows if r["concurrency"] == 10}
    many = relays[-1]  # the relay with the most workers
    lines = ["| target (10 clients) | needed | measured | |", "| --- | --- | --- | --- |"]
    for pattern, workers, base, size, needed in TARGETS:
        relay = many if workers == "N" else relays[0]
        ratio = by_cell.get((pattern, size), {}).get(f"{relay}/{base}")
        if ratio is None:
            continue
        verdict = "met" if ratio >= needed else f"missed: ×{needed / ratio:.2f} to go"
        lines.append(
            f"| {pattern}: {relay}/{base} at {size} | ≥ {needed:.1f} | {ratio:.2f} | {verdict} |"
        )
    return lines if len(lines) > 2 else []


# -- the trust space on and off (issue 16) ------------------------------------------------

# Issue 16: the relays' ratios with the liste blanche and the Annuaire Santé on
# within 5 % of them off, same run.
TRUST_FLOOR = 0.95


def plain_relays(targets: list[Target]) -> list[str]:
    """The relays as in every run (the ratio and target tables are theirs)."""
    return [t.key for t in targets if isinstance(t, RelayTarget) and not t.trust]


def trust_pairs(targets: list[Target]) -> list[tuple[str, str]]:
    """(relay-Nw, relay-Nw-trust) for each relay measured both ways (--trust)."""
    return [(t.plain_key, t.key) for t in targets if isinstance(t, RelayTarget) and t.trust]


def trust_ratios(rows: list[dict[str, Any]], pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Per cell and relay: its ratio to Postfix (end to end) with the trust
    space off and on, and on/off (the same as its msgs/s on over off)."""
    out = []
    for row in rows:
        for off, on in pairs:
            ratio_off, ratio_on = row.get(f"{off}/postfix"), row.get(f"{on}/postfix")
            out.append(
                {
                    "pattern": row["pattern"],
                    "size": row["size"],
                    "concurrency": row["concurrency"],
                    "relay": off,
                    "off": ratio_off,
                    "on": ratio_on,
                    "on_off": round(ratio_on / ratio_off, 3) if ratio_on and ratio_off else None,
                }
            )
    return out


def _within(value: float | None) -> str:
    if value is None:
        return "–"
    return "yes" if value >= TRUST_FLOOR else f"no: {(1 - value):.0%} slower"


def trust_section(
    rows: list[dict[str, Any]], pairs: list[tuple[str, str]], patterns: list[str]
) -> list[str]:
    """Issue 16's bench point: the targets' ratios off and on, every cell, and
    the worst on/off per pattern."""
    trust = trust_ratios(rows, pairs)
    by_cell = {(t["pattern"], t["size"], t["concurrency"], t["relay"]): t for t in trust}
    plain = [off for off, _ in pairs]
    lines = [
        "## The trust space on and off (issue 16)",
        "",
        "« on »: the same relay with `trust_space.whitelist` and `directory.mode: refuse`"
        " (relay-Nw-trust); issue 16 asks on/off ≥ 0.95 (within 5 %).",
        "",
        "| target (10 clients) | needed | off | on | on/off | within 5 % |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for pattern, workers, base, size, needed in TARGETS:
        relay = plain[-1] if workers == "N" else plain[0]
        row = next(
            (r for r in rows if (r["pattern"], r["size"], r["concurrency"]) == (pattern, size, 10)),
            None,
        )
        if row is None or row.get(f"{relay}/{base}") is None:
            continue
        off, on = row.get(f"{relay}/{base}"), row.get(f"{relay}-trust/{base}")
        on_off = round(on / off, 3) if on and off else None
        lines.append(
            f"| {pattern}: {relay}/{base} at {size} | ≥ {needed:.1f} | {_num(off, 2)}"
            f" | {_num(on, 2)} | {_num(on_off, 2)} | {_within(on_off)} |"
        )
    columns = [f"{r}/postfix {x}" for r in plain for x in ("off", "on", "on/off")]
    lines += [
        "",
        "| pattern | size | clients | " + " | ".join(columns) + " |",
        "| --- | --- | --- |" + " --- |" * len(columns),
    ]
    for row in rows:
        key = (row["pattern"], row["size"], row["concurrency"])
        values = []
        for relay in plain:
            t = by_cell[(*key, relay)]
            values += [_num(t["off"], 2), _num(t["on"], 2), _num(t["on_off"], 2)]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(values) + " |")
    lines += [
        "",
        "| pattern | relay | cells | worst on/off | median on/off | within 5 % everywhere |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for pattern in patterns:
        for relay in plain:
            here = [
                t["on_off"]
                for t in trust
                if t["pattern"] == pattern and t["relay"] == relay and t["on_off"] is not None
            ]
            if not here:
                continue
            missed = sum(v < TRUST_FLOOR for v in here)
            verdict = "yes" if not missed else f"no: {missed} of {len(here)} cells below 0.95"
            lines.append(
                f"| {pattern} | {relay} | {len(here)} | {min(here):.2f}"
                f" | {statistics.median(here):.2f} | {verdict} |"
            )
    return lines


def full_table(summary: list[dict[str, Any]], labels: dict[str, str]) -> list[str]:
    lines = [
        "| pattern | size | clients | server | msgs/s | MB/s | accepted msgs/s | p50 ms"
        " | p99 ms | latency samples | CPU ms/msg | peak RSS MiB | msgs/run | runs"
        " | other load | errors |",
        "| --- | --- | --- | --- |" + " --- |" * 12,
    ]
    for c in summary:
        used = "" if c["sessions_used"] == c["concurrency"] else f" ({c['sessions_used']} used)"
        lines.append(
            f"| {c['pattern']} | {c['size']} | {c['concurrency']}{used} | {labels[c['target']]}"
            f" | {_num(c['msgs_s'])} | {_num(c['mb_s'])} | {_num(c['accept_msgs_s'])}"
            f" | {_num(c['p50_ms'], 2)} | {_num(c['p99_ms'], 2)} | {c['latency_samples']}"
            f" | {_num(c['cpu_ms_msg'], 2)} | {_num(c['peak_rss_mib'])}"
            f" | {_num(c['messages_per_run'], 0)} | {c['runs']}"
            f" | {c['others_load_max']:.0%} | {len(c['errors'])} |"
        )
    return lines


def method(meta: dict[str, Any]) -> list[str]:
    a = meta["options"]
    postfix = meta.get("servers", {}).get("postfix", {}).get("settings", {})
    peer = ", ".join(
        f"`{k} = {v}`" if v else f"`{k} =` (empty)" for k, v in postfix.items() if k in PEER_KEYS
    )
    return [
        "## How",
        "",
        "- Load: smtp-source (C), HELO then MAIL/RCPT/DATA, one recipient, sender"
        f" `{SENDER}`, recipient `{RECIPIENT}`, the message sent with `-F`: From: the"
        " sender BAL, Date, Message-ID, a text/plain part and a base64 PDF attachment"
        " making up the size; the same message to every server. Two connection patterns,"
        " side by side in the same run: « persistent », one connection per session, message"
        " after message (`-d`: a DPI connector); « new », a new connection for each message,"
        " QUIT after it (no `-d`: Thunderbird, Outlook). A refused message aborts"
        " smtp-source (no `-A`): it shows as an error of the run.",
        "- msgs/s and MB/s: messages received by smtp-sink (its `-c` counter, time-stamped"
        " as it prints) over the time from the start of the run to the last one: end to"
        " end. « accepted msgs/s »: messages answered 250, over the time to the last final"
        " reply (smtp-source's exit, or the probe's last reply): above msgs/s only where a"
        " queue builds up. For Postfix it is its receive rate (mail accepted into its queue"
        " per second, while it delivers), shown as « Postfix, received » and as the"
        " `postfix-received` ratio.",
        "- Latency: per message, timed by the probe, a Python client on plain sockets that"
        " speaks as an smtp-source session does: persistent, from MAIL to the final 250 on"
        " one connection; new, from connect to the final 250 (greeting, HELO, the"
        " transaction). It is one of the N clients of every run: the other N-1 are"
        " smtp-source's; with one client it is the only one (smtp-source's `-c` counts a"
        " message when its dot is sent, before the reply: no latency from it). Samples of"
        " all repeats pooled; nearest-rank percentiles: with fewer than 100 samples, p99 is"
        " the largest.",
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
        f" that size and pattern (a warm-up run per server and size, not recorded, gives the"
        f" first), at least one message per client, at most {a['max_mb_per_run']:.0f} MB per"
        " run (fewer clients are then used: shown as « (k used) »). Repeats stop once a"
        f" server's runs of a cell took {a['cell_budget']:.0f} s; hard limit"
        f" {a['run_timeout']:.0f} s per run. Medians of the runs.",
        "- mss-relay: bench/harness.py's relay_config (the YAML written to the run's work"
        " directory): listener `tls: none` on 127.0.0.1, `trusted_clients: 127.0.0.1` → the"
        " DPI user owning the sender BAL (no AUTH, every rule runs), DKIM signing"
        f" (rsa-sha256, 2048 bits), state file pre-filled with {a['conversations']:,}"
        " conversations, JSON transaction log, default limits (20 MiB attachment, 60 MiB"
        " message) and default message slots (4). Raised for the benchmark: per-user"
        " rates (messages_per_minute 1,000,000, recipients_per_hour 10,000,000: on, never"
        " reached), max_connections and max_connections_per_client 1000, busy_wait 600 s."
        " The state is read for patients' replies and written for messages to patients:"
        " a message to a professional, as here, does not touch it.",
        *_trust_method(meta),
        "- Postfix, the honest peer: tests/support/postfix.py's private instance (relayhost ="
        " [smtp-sink] in brackets: no MX look-up; no milter, no header checks; queue under"
        " /tmp on the same disk, fsync as Postfix does) with bench/harness.py's"
        f" PEER_SETTINGS: {peer or '–'}. No log file: Postfix logs through syslog(3),"
        " a syslog daemon's work, not Postfix's (bench/postfix_variants.py measures what"
        " the log file through postlogd costs); smtp-sink's count is then the proof of"
        " delivery. Postfix is a store-and-forward MTA; mss-relay and"
        " the pass-through hold the message and answer only once smtp-sink has.",
    ]


def _trust_method(meta: dict[str, Any]) -> list[str]:
    """The « -trust » relays' set-up, when the run had them (--trust)."""
    notes = next(
        (s["trust_space"] for s in meta.get("servers", {}).values() if "trust_space" in s), None
    )
    if notes is None:
        return []
    return [
        "- mss-relay « liste blanche + Annuaire » (relay-Nw-trust, --trust): the same"
        f" configuration plus `trust_space.whitelist`, a liste blanche of"
        f" {notes['whitelist_entries']:,} entries ({notes['whitelist_domains']:,} domains,"
        f" {notes['whitelist_certificates']} operator DNs) from tests/support/whitelist.py,"
        f" and `directory.mode: refuse`, an extraction of {notes['directory_rows']:,} rows"
        " from tests/support/extraction.py imported by `mss-relay directory import`"
        f" ({notes['directory_import_s']:.0f} s) into a copy of the state file. The"
        " recipient's domain is listed and the recipient is one of the rows (checked"
        " before the start); each run checks that every RCPT's decision line says"
        " `directory: listed`. Each one is measured right after its plain twin.",
    ]


PEER_KEYS = ("maillog_file", "smtpd_peername_lookup", "smtp_dns_support_level")


def markdown(meta: dict[str, Any], summary: list[dict[str, Any]], targets: list[Target]) -> str:
    labels = {t.key: t.label for t in targets}
    relays = plain_relays(targets)
    pairs = trust_pairs(targets)
    m = meta["machine"]
    title = "bench/compare.py --quick (a smoke run, not figures)" if meta["quick"] else ""
    lines = [
        f"# mss-relay side by side: {title or 'bench/compare.py'}",
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
    options = meta["options"]
    for pattern in options["patterns"]:
        lines += [f"## {PATTERN_TITLES[pattern]}", ""]
        key = "concurrency" if pattern == "persistent" else "new_concurrency"
        for sessions in options[key]:
            if table := headline(summary, targets, pattern, sessions):
                lines += [*table, ""]
    if relays:
        rows = ratios(summary, relays)
        lines += ["## Ratios, msgs/s in the same run", "", *ratio_table(rows, relays), ""]
        if targets_met := acceptance(rows, relays):
            lines += ["Issues 6 and 14's targets, this run:", "", *targets_met, ""]
    if pairs:
        rows = ratios(summary, [k for pair in pairs for k in pair])
        lines += [*trust_section(rows, pairs, options["patterns"]), ""]
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
            f"- {c['target']} {c['size']} {c['pattern']} c={c['concurrency']}: {e}"
            for c, e in errors
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


# -- files -----------------------------------------------------------------------------------


def write(
    directory: Path,
    name: str,
    meta: dict[str, Any],
    results: list[dict[str, Any]],
    targets: list[Target],
) -> None:
    summary = summarize(results)
    relays = [t.key for t in targets if isinstance(t, RelayTarget)]
    pairs = trust_pairs(targets)
    text = markdown(meta, summary, targets)
    print("\n" + text)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.md").write_text(text)
    runs = [_without_samples(r) for r in results]
    rows = ratios(summary, relays)
    document = {**meta, "summary": summary, "ratios": rows, "runs": runs}
    if pairs:  # --trust
        document["trust"] = trust_ratios(rows, pairs)
    (directory / f"{name}.json").write_text(
        json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    )
    print(f"written: {directory / (name + '.md')}, {directory / (name + '.json')}")


def _without_samples(result: dict[str, Any]) -> dict[str, Any]:
    """A run as written to compare.json: its latency percentiles, not every sample."""
    samples = result["latencies_ms"]
    latency = {"samples": len(samples), "p50_ms": percentile(samples, 0.5)}
    latency["p99_ms"] = percentile(samples, 0.99)
    return {k: v for k, v in result.items() if k != "latencies_ms"} | {"latency": latency}
