"""The IHE-XDM and X-MSS checks' per-message cost: xdm.mode warn (the default)
against off, for a 2 KB message without attachment and one with a valid
IHE_XDM.zip, in one interleaved run.

    .venv/bin/python bench/xdm_cost.py [--messages 3000] [--repeats 5]

What is timed is what ClientSession.check_xdm adds at the end of DATA, in a
quiet process of its own (process CPU, so that the box's load does not blur
it), as the metrics' tap is in bench/metrics_cost.py: the mode test, then
check_message() — at once for a message without a zip part (its top header
block read for the X-MSS fields), in a worker thread (asyncio.to_thread, the
hop counted; check_alone_us_per_msg is the call without it) for one that
may hold a package (each zip decoded, its METADATA.XML inflated and parsed)
— and, when there are findings, nothing more here (a valid package has
none). The message's inspection
(MessageInfo) is the end of DATA's in any mode and is not counted. Modes are
interleaved (off warn, warn off, ...) within each repeat, per message kind;
figures are medians of the repeats. Each is also given as a share of the
relay's CPU per message measured by bench/metrics_cost.py (its « off »
relay, a 2 KB message, every rule on, DKIM signing:
bench/results/metrics_cost.json, when present). Writes
bench/results/xdm_cost.json. A run takes some 20 s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if not TYPE_CHECKING and not __package__:  # python bench/xdm_cost.py: see bench/_script.py
    import _script

    _script.rerun(__file__)

import argparse
import asyncio
import json
import statistics
import time
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate
from typing import Any

from mss_relay.core.findings import Mode
from mss_relay.core.message import MessageInfo, crlf_lines, inspect_message
from mss_relay.core.xdm import XdmSettings, check_message, wanted
from mss_relay.front.ending import INLINE_LIMIT
from tests.support import xdm as build

from .harness import RESULTS

PATIENT = f"{build.PATIENT}@patient.mssante.fr"


def message(package: bytes | None) -> bytes:
    """A 2 KB letter (as bench/state_cost.py's client sends), and the package."""
    msg = EmailMessage()
    msg["From"] = "jean.dupont@ch-exemple.mssante.fr"
    msg["To"] = PATIENT
    msg["Subject"] = "Compte rendu"
    msg["Date"] = formatdate()
    msg["Message-ID"] = "<bench.1@ch-exemple.mssante.fr>"
    msg.set_content("Bonjour,\n" + "ci-joint le compte rendu de la consultation.\n" * 40)
    if package is not None:
        msg.add_attachment(package, maintype="application", subtype="zip", filename="IHE_XDM.zip")
    return crlf_lines(msg.as_bytes(policy=SMTP_POLICY))


async def relay_step(
    wire: bytes, info: MessageInfo, recipients: tuple[str, ...], settings: XdmSettings
) -> int:
    """ClientSession.check_xdm's work, its logging aside: the findings' count."""
    if settings.mode is Mode.OFF:
        return 0
    if wanted(info) or len(wire) > INLINE_LIMIT:
        report = await asyncio.to_thread(check_message, wire, info, recipients, settings)
    else:
        report = check_message(wire, info, recipients, settings)
    return len(report.findings)


async def timed(wire: bytes, info: MessageInfo, settings: XdmSettings, messages: int) -> float:
    """The process CPU (µs) per message of `messages` checks."""
    recipients = (PATIENT,)
    started = time.process_time()
    for _ in range(messages):
        found = await relay_step(wire, info, recipients, settings)
        assert found == 0, "a valid message: no finding"
    return (time.process_time() - started) * 1e6 / messages


async def measure(messages: int, repeats: int) -> dict[str, Any]:
    kinds = {"plain_2kb": message(None), "ihe_xdm_zip": message(build.for_patient())}
    modes = {"warn": XdmSettings(Mode.WARN), "off": XdmSettings(Mode.OFF)}
    figures: dict[str, Any] = {}
    for kind, wire in kinds.items():
        info = inspect_message(wire, crlf=True)
        runs: dict[str, list[float]] = {mode: [] for mode in modes}
        await timed(wire, info, modes["warn"], messages // 10)  # warm-up: not recorded
        for repeat in range(repeats):
            # off warn, warn off, ...: a drift within a pair weighs on both.
            order = list(modes) if repeat % 2 else list(reversed(modes))
            for mode in order:
                runs[mode].append(await timed(wire, info, modes[mode], messages))
        figures[kind] = {
            "size": len(wire),
            "wanted": wanted(info),
            **{f"{mode}_us_per_msg": round(statistics.median(r), 2) for mode, r in runs.items()},
            "runs_us": {mode: [round(v, 2) for v in r] for mode, r in runs.items()},
        }
        # The check alone, without the thread hop (the part a faster reader would cut).
        started = time.process_time()
        for _ in range(messages):
            check_message(wire, info, (PATIENT,), modes["warn"])
        alone = (time.process_time() - started) * 1e6 / messages
        figures[kind]["check_alone_us_per_msg"] = round(alone, 2)
        figures[kind]["cost_us_per_msg"] = round(
            figures[kind]["warn_us_per_msg"] - figures[kind]["off_us_per_msg"], 2
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    figures = asyncio.run(measure(args.messages, args.repeats))
    result: dict[str, Any] = {
        "command": "python bench/xdm_cost.py",
        "messages": args.messages,
        "repeats": args.repeats,
        **figures,
    }
    baseline = RESULTS / "metrics_cost.json"
    if baseline.exists():
        off = json.loads(baseline.read_text())["off"]["cpu_ms_per_msg"]
        result["relay_cpu_ms_per_msg"] = off
        for kind in figures:
            share = figures[kind]["cost_us_per_msg"] / (off * 1000) * 100
            result[kind]["share_percent"] = round(share, 2)
    (RESULTS / "xdm_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
