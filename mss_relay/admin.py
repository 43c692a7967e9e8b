"""« mss-relay conversations ... »: look at and close patient conversations,
while the relay runs (SQLite in WAL mode lets both at the file).

Patients are given by address (or INS, or pseudonym) and shown by pseudonym:
the store hashes what it is given with the relay's key (mss_relay/pseudonym.py),
which these commands read but never make (one made by a command run as
another user than the relay would be the wrong key, or one it cannot read)."""

from __future__ import annotations

import getpass
import sys
from typing import TextIO

from mss_relay.audit.trail import command_log
from mss_relay.config import Config, ConfigError
from mss_relay.core.addresses import normalize_address
from mss_relay.pseudonym import for_config
from mss_relay.state.conversations import ConversationRow, ConversationStore, KeyMismatch
from mss_relay.state.database import StateLost

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


async def _store(config: Config) -> ConversationStore:
    pseudonyms = for_config(config, create=False)
    try:
        return await ConversationStore.open(
            config.database,
            idle_days=config.conversations.close_after_days,
            pseudonyms=pseudonyms,
        )
    except KeyMismatch as error:
        raise ConfigError("log.pseudonym_key_file", str(error)) from None
    except StateLost as error:  # not an empty database in its place, silently
        raise ConfigError("state.database", str(error)) from None


async def list_conversations(config: Config, state: str | None, bal: str | None) -> int:
    store = await _store(config)
    try:
        rows = await store.listing(state, normalize_address(bal) if bal else None)
    finally:
        await store.close()
    if not rows:
        print("no conversation", file=sys.stderr)
        return 0
    _table([_HEADER, *(_row(c) for c in rows)], sys.stdout)
    return 0


async def show_conversation(config: Config, patient: str) -> int:
    store = await _store(config)
    try:
        history = await store.history(normalize_address(patient))
    finally:
        await store.close()
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
    store = await _store(config)
    try:
        closed = await store.close_conversation(
            normalize_address(bal), normalize_address(patient), "admin", actor
        )
    finally:
        await store.close()
    if closed is None:
        print(f"no open conversation between {bal} and {patient}", file=sys.stderr)
        return 1
    pseudonyms = for_config(config, create=False)
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
