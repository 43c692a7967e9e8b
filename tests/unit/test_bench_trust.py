"""bench/compare.py --trust: the on/off ratios of issue 16 and the trust space
the « -trust » relays run with (the recipient listed in both, else the bench
measures refusals)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import report
from bench.harness import make_state
from bench.load import RECIPIENT
from bench.trust_space import make_trust_space

PAIRS = [("relay-1w", "relay-1w-trust"), ("relay-2w", "relay-2w-trust")]


def _cell(pattern: str, size: str, target: str, msgs_s: float) -> dict[str, Any]:
    return {
        "pattern": pattern,
        "size": size,
        "concurrency": 10,
        "target": target,
        "msgs_s": msgs_s,
        "accept_msgs_s": msgs_s,
    }


def _summary(on_1w: float, on_2w: float) -> list[dict[str, Any]]:
    figures = {
        "postfix": 1000.0,
        "passthrough": 1600.0,
        "relay-1w": 700.0,
        "relay-1w-trust": on_1w,
        "relay-2w": 1000.0,
        "relay-2w-trust": on_2w,
    }
    return [_cell("persistent", "2KB", t, v) for t, v in figures.items()]


def test_on_off_is_the_ratio_of_the_ratios_to_postfix() -> None:
    rows = report.ratios(_summary(672.0, 1000.0), [k for p in PAIRS for k in p])
    trust = {t["relay"]: t for t in report.trust_ratios(rows, PAIRS)}
    assert (trust["relay-1w"]["off"], trust["relay-1w"]["on"]) == (0.7, 0.672)
    assert trust["relay-1w"]["on_off"] == 0.96
    assert trust["relay-2w"]["on_off"] == 1.0


def test_the_section_says_which_cells_miss_five_percent() -> None:
    rows = report.ratios(_summary(630.0, 1000.0), [k for p in PAIRS for k in p])
    text = "\n".join(report.trust_section(rows, PAIRS, ["persistent"]))
    # Issue 6's targets, off and on: relay-1w/passthrough at 2KB is 10 % slower.
    assert "| persistent: relay-1w/passthrough at 2KB | ≥ 0.8 | 0.44 | 0.39 | 0.90 |" in text
    assert "| persistent: relay-2w/postfix at 2KB | ≥ 1.0 | 1.00 | 1.00 | 1.00 | yes |" in text
    assert "| persistent | relay-1w | 1 | 0.90 | 0.90 | no: 1 of 1 cells below 0.95 |" in text
    assert "| persistent | relay-2w | 1 | 1.00 | 1.00 | yes |" in text


def test_the_recipient_is_listed_in_the_whitelist_and_the_directory(tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite3"
    make_state(state, 10)
    trust = make_trust_space(tmp_path, state, entries=6500, rows=1000)
    assert trust.notes["whitelist_entries"] == 6500
    assert trust.notes["directory_rows"] == 1000
    assert RECIPIENT.split("@")[1].encode() in trust.whitelist.read_bytes()
    assert trust.sections() == {
        "trust_space": {"whitelist": str(trust.whitelist)},
        "directory": {"mode": "refuse"},
    }
