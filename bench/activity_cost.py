"""The BAL lifecycle's per-message step, alone: what noting an AUTH and a BAL's
message costs, with its background writer on a real SQLite state file.

    .venv/bin/python bench/activity_cost.py [--messages 200000] [--bals 200]

Each accepted message of the submission side notes the user's AUTH and the
sender BAL's message (ActivityRecorder.auth and .sent: a dictionary update);
the writer task writes what was noted, coalesced, once a second. Timed in a
quiet process of its own (process CPU, so the box's load does not blur it),
as the metrics' tap is in bench/metrics_cost.py, and given as a share of the
relay's CPU per message without metrics measured by that bench
(bench/results/metrics_cost.json, when present). The messages are spread over
--bals BALs and users and over a simulated hour, so that the writer writes
(a BAL's date is written again once it is 5 minutes old). Writes
bench/results/activity_cost.json.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if not TYPE_CHECKING and not __package__:  # python bench/activity_cost.py: see bench/_script.py
    import _script

    _script.rerun(__file__)

import argparse
import asyncio
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from mss_relay.state.activity import ActivityRecorder, ActivityStore

from .harness import RESULTS


async def measure(messages: int, bals: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="mss-activity-") as folder:
        store = await ActivityStore.open(Path(folder) / "state.sqlite3")
        start = datetime(2026, 12, 1, tzinfo=UTC)
        # One simulated hour over the run: the 5-minute resolution lets the
        # writer write each BAL again a dozen times, as under real traffic.
        step = timedelta(hours=1) / messages
        moment = [start]
        recorder = ActivityRecorder(
            store, structlog.get_logger(), clock=lambda: moment[0], gather=0.01
        )
        recorder.start()
        users = [f"user{i}" for i in range(bals)]
        senders = [f"bal{i}@ch-exemple.mssante.fr" for i in range(bals)]
        started = time.process_time()
        for n in range(messages):
            moment[0] = start + step * n
            recorder.auth(users[n % bals])
            recorder.sent(senders[n % bals])
            if n % 500 == 0:
                await asyncio.sleep(0)  # the loop runs the writer, as between sessions
        await recorder.close(10.0)
        cpu = time.process_time() - started
        await store.close()
    return {"us_per_msg": cpu * 1e6 / messages}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--bals", type=int, default=200)
    args = parser.parse_args()
    figures = asyncio.run(measure(args.messages, args.bals))
    result: dict[str, object] = {
        "command": "python bench/activity_cost.py",
        "messages": args.messages,
        "bals": args.bals,
        "us_per_msg": round(figures["us_per_msg"], 2),
    }
    baseline = RESULTS / "metrics_cost.json"
    if baseline.exists():
        off = json.loads(baseline.read_text())["off"]["cpu_ms_per_msg"]
        result["relay_cpu_ms_per_msg"] = off
        result["share_percent"] = round(figures["us_per_msg"] / (off * 1000) * 100, 3)
    (RESULTS / "activity_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
