"""BAL activity on PostgreSQL (state/activity.py's ActivityStore, shared):
each relay's writer merges its notes into the same rows, a date kept only
when later than the stored one, whoever wrote that; a threshold crossed is
recorded once for all relays (the notice is sent by the one that inserted
the row)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from mss_relay.core.addresses import normalize_address
from mss_relay.core.mailbox import Bal
from mss_relay.lifecycle import Activity, Flag
from mss_relay.log import iso_ms
from mss_relay.state.activity import Mark, _date
from mss_relay.state.postgres import PostgresDatabase

_SENT, _RECEIVED = "last_sent_at", "last_received_at"


class PgActivityStore:
    def __init__(self, database: PostgresDatabase) -> None:
        self._database = database

    async def close(self) -> None:
        """The database (its pool) is closed by its owner."""

    async def _write(self, statements: Iterable[tuple[str, list[object]]]) -> None:
        async with self._database.transaction() as db:
            for sql, params in statements:
                await db.execute(sql, params)

    async def record(
        self, auths: Mapping[str, str], sent: Mapping[str, str], received: Mapping[str, str]
    ) -> None:
        # In a stable order: two relays writing the same rows never deadlock.
        statements: list[tuple[str, list[object]]] = [
            (
                'INSERT INTO user_activity ("user", last_auth_at) VALUES (%s, %s)'
                ' ON CONFLICT ("user") DO UPDATE SET'
                " last_auth_at = greatest(user_activity.last_auth_at, excluded.last_auth_at)",
                [user, at],
            )
            for user, at in sorted(auths.items())
        ]
        for column, dates in ((_SENT, sent), (_RECEIVED, received)):
            statements += [
                (
                    f"INSERT INTO bal_activity (bal, first_seen_at, {column}) VALUES (%s, %s, %s)"
                    f" ON CONFLICT (bal) DO UPDATE SET {column} ="
                    f" greatest(bal_activity.{column}, excluded.{column})",
                    [bal, at, at],
                )
                for bal, at in sorted(dates.items())
            ]
        await self._write(statements)

    async def seen(self, bals: Iterable[str], now: datetime) -> None:
        at = iso_ms(now)
        await self._write(
            (
                "INSERT INTO bal_activity (bal, first_seen_at) VALUES (%s, %s)"
                " ON CONFLICT DO NOTHING",
                [b, at],
            )
            for b in sorted(bals)
        )

    async def activities(self, bals: Iterable[Bal]) -> dict[str, Activity]:
        auths = {
            u: at
            for u, at in await self._database.fetch(
                'SELECT "user", last_auth_at FROM user_activity'
            )
        }
        rows = {
            r[0]: r[1:]
            for r in await self._database.fetch(
                "SELECT bal, first_seen_at, last_sent_at, last_received_at FROM bal_activity"
            )
        }
        result = {}
        for bal in bals:
            first, sent, received = rows.get(normalize_address(bal.address), (None, None, None))
            auth = max((auths[u] for u in bal.users if u in auths), default=None)
            result[bal.address] = Activity(_date(first), _date(auth), _date(sent), _date(received))
        return result

    async def marks(self) -> list[Mark]:
        rows = await self._database.fetch(
            "SELECT bal, flag, since, notice_sent_at, notice_txid FROM bal_lifecycle"
        )
        return [Mark(r[0], Flag(r[1]), *r[2:]) for r in rows if r[1] in set(Flag)]

    async def cross(self, bal: str, flag: Flag, since: str, now: datetime) -> bool:
        """False when another relay (or this one before a restart) crossed it."""
        count = await self._database.execute(
            "INSERT INTO bal_lifecycle (bal, flag, since, crossed_at) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            [bal, flag.value, since, iso_ms(now)],
        )
        return count == 1

    async def notice_sent(self, bal: str, flag: Flag, since: str, now: datetime, txid: str) -> None:
        await self._database.execute(
            "UPDATE bal_lifecycle SET notice_sent_at = %s, notice_txid = %s"
            " WHERE bal = %s AND flag = %s AND since = %s",
            [iso_ms(now), txid, bal, flag.value, since],
        )
