"""« mss-relay conversations ... »: look at and close patient conversations,
while the relay runs (SQLite in WAL mode lets both at the file).

Patients are given by address (or INS, or pseudonym) and shown by pseudonym:
the store hashes what it is given with the relay's key (mss_relay/pseudonym.py),
which these commands read but never make (one made by a command run as
another user than the relay would be the wrong key, or one it cannot read)."""

from __future__ import annotations

import getpass
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TextIO

from mss_relay.audit.trail import command_log
from mss_relay.config import Config
from mss_relay.core.addresses import normalize_address
from mss_relay.pseudonym import for_config, for_server, key_file, load_key
from mss_relay.state.api import Conversations
from mss_relay.state.conversations import ConversationRow
from mss_relay.state.opening import open_conversations, open_postgres, stored_fingerprint

_HEADER = ("STATE", "BAL", "PATIENT", "OPENED", "LAST ACTIVITY", "CLOSED", "HOW", "MESSAGES")


def _row(c: ConversationRow) -> tuple[str, ...]:
    return (
        "open" if c.is_open else "closed",
        c.bal,
        c.patient,
        c.opened_at,
        c.last_activity_at,
        c.closed_at or "-",
        f"{c.close_reason} ({c.closed_by})" if c.close_reason else "-",
        str(c.messages),
    )


def _table(rows: list[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n")


@asynccontextmanager
async def _store(config: Config) -> AsyncIterator[Conversations]:
    """The conversations the configuration names (SQLite or PostgreSQL), with
    the relay's key, read but never made."""
    database = await open_postgres(config)
    try:
        if database is not None:
            pseudonyms = for_server(
                config, database.where, await stored_fingerprint(database), create=False
            )
        else:
            pseudonyms = for_config(config, create=False)
        store = await open_conversations(config, pseudonyms, database)
        try:
            yield store
        finally:
            await store.close()
    finally:
        if database is not None:
            await database.close()


async def list_conversations(config: Config, state: str | None, bal: str | None) -> int:
    async with _store(config) as store:
        rows = await store.listing(state, normalize_address(bal) if bal else None)
    if not rows:
        print("no conversation", file=sys.stderr)
        return 0
    _table([_HEADER, *(_row(c) for c in rows)], sys.stdout)
    return 0


async def show_conversation(config: Config, patient: str) -> int:
    async with _store(config) as store:
        history = await store.history(normalize_address(patient))
    if not history:
        print(f"no conversation with {patient}", file=sys.stderr)
        return 1
    for conversation, messages in history:
        _table([_HEADER, _row(conversation)], sys.stdout)
        for at, direction, message_id in messages:
            arrow = "professional -> patient" if direction == "out" else "patient -> BAL"
            print(f"    {at}  {arrow}  {message_id}")
        print()
    return 0


async def close_conversation(config: Config, bal: str, patient: str) -> int:
    actor = f"admin:{getpass.getuser()}"
    async with _store(config) as store:
        closed = await store.close_conversation(
            normalize_address(bal), normalize_address(patient), "admin", actor
        )
    if closed is None:
        print(f"no open conversation between {bal} and {patient}", file=sys.stderr)
        return 1
    pseudonyms = load_key(key_file(config), create=False)  # checked by _store
    masking = [pseudonyms.mask] if config.log.pseudonymize_patients else []
    async with command_log(config, masking) as log:  # the « cli » stream of the audit chain
        log.info(
            "conversation_closed",
            conversation=closed,
            bal=normalize_address(bal),
            patient=normalize_address(patient),
            how="admin",
            by=actor,
        )
    # The pseudonym, as the log and « list » show it: the terminal's
    # scrollback and the logs of scripts are no place for an INS.
    print(f"closed conversation {closed} between {bal} and {pseudonyms.of(patient)}")
    return 0
