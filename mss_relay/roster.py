"""« mss-relay bals »: every BAL of the configuration, its type, its users,
its last activity (its last connection: the flags count from it), its last
message received (information only) and the lifecycle flags it has reached
(mss_relay/lifecycle.py), read from the state database (the relay may be
running: SQLite in WAL)."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime
from typing import Any, TextIO

from mss_relay.config import Config, ConfigError
from mss_relay.lifecycle import FLAG_TEXT, BalStatus
from mss_relay.log import iso_ms, utc_now
from mss_relay.notifier import period_marks, statuses
from mss_relay.state.activity import Mark
from mss_relay.state.database import StateLost, refuse_lost
from mss_relay.state.opening import open_activity, open_postgres

_HEADER = ("BAL", "TYPE", "USERS", "LAST ACTIVITY", "LAST RECEIVED", "DAYS", "FLAGS")


def _iso(moment: datetime | None) -> str | None:
    return iso_ms(moment) if moment is not None else None


def _last(current: BalStatus) -> str:
    activity = current.activity
    if activity.last_activity is not None:
        return iso_ms(activity.last_activity)
    if activity.first_seen is not None:
        return f"never (first seen {iso_ms(activity.first_seen)})"
    return "never (not seen by the relay yet)"


def as_json(current: BalStatus, marks: list[Mark]) -> dict[str, Any]:
    activity = current.activity
    return {
        "address": current.bal.address,
        "type": current.bal.type.value,
        "users": sorted(current.bal.users),
        "first_seen": _iso(activity.first_seen),
        "last_auth": _iso(activity.last_auth),
        "last_sent": _iso(activity.last_sent),
        "last_received": _iso(activity.last_received),
        "last_activity": _iso(activity.last_activity),
        "days_inactive": current.days_inactive,
        "deletion_date": _iso(current.deletion_date),
        "flags": [{"code": f.value, "text": FLAG_TEXT[f]} for f in current.flags],
        "notices_sent": [
            {"flag": m.flag.value, "sent_at": m.notice_sent_at, "txid": m.notice_txid}
            for m in sorted(period_marks(current, marks), key=lambda m: m.notice_sent_at or "")
            if m.notice_sent_at
        ],
    }


def _table(rows: list[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n")


def _row(current: BalStatus) -> tuple[str, ...]:
    days = current.days_inactive
    return (
        current.bal.address,
        current.bal.type.value,
        ",".join(sorted(current.bal.users)) or "-",
        _last(current),
        _iso(current.activity.last_received) or "-",
        "-" if days is None else str(days),
        "; ".join(FLAG_TEXT[f] for f in current.flags) or "-",
    )


async def _read(config: Config) -> tuple[list[BalStatus], list[Mark]]:
    database = await open_postgres(config)
    if database is None:
        try:
            await asyncio.to_thread(refuse_lost, config.database)
        except StateLost as error:  # not an empty database in its place, silently
            raise ConfigError("state.database", str(error)) from None
    try:
        store = await open_activity(config, database)
        try:
            return await statuses(store, config, utc_now), await store.marks()
        finally:
            await store.close()
    finally:
        if database is not None:
            await database.close()


async def list_bals(config: Config, inactive: int | None, as_json_output: bool) -> int:
    current, marks = await _read(config)
    if inactive is not None:
        current = [
            c for c in current if c.days_inactive is not None and c.days_inactive >= inactive
        ]
    if as_json_output:
        document = {
            "generated_at": iso_ms(utc_now()),
            "bals": [as_json(c, marks) for c in current],
        }
        print(json.dumps(document, ensure_ascii=False, indent=2))
        return 0
    if not current:
        print("no BAL" + (f" inactive for {inactive} days or more" if inactive else ""))
        return 0
    _table([_HEADER, *(_row(c) for c in current)], sys.stdout)
    return 0
