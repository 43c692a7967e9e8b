"""Each worker keeps the current Annuaire Santé import in memory
(state/directory_index.py) while directory.mode is warn or refuse: loaded at
start, loaded again within CHECK_INTERVAL of another import becoming current,
or at once when « mss-relay directory import » asks the running relay
(control.py: « directory »)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from structlog.typing import FilteringBoundLogger

from mss_relay.core.directory import DirectoryMode
from mss_relay.state.api import Directory
from mss_relay.state.errors import STATE_ERRORS

CHECK_INTERVAL = 1.0  # seconds between two looks at the current generation
# The state (SQLite or PostgreSQL) or the file could not be read.
_UNREAD: tuple[type[Exception], ...] = (OSError, *STATE_ERRORS)


async def load_current(
    store: Directory, mode: DirectoryMode, log: FilteringBoundLogger
) -> dict[str, object]:
    """One look: the import in force afterwards (generation, addresses), or
    why it could not be read (the index held stays in force)."""
    if mode is DirectoryMode.OFF:
        store.forget()
        return {"ok": True, "mode": mode.value}
    started = time.monotonic()
    try:
        loaded = await store.refresh()
    except _UNREAD as error:
        return {"ok": False, "error": f"directory not read: {type(error).__name__}: {error}"}
    if loaded is not None:
        log.info(
            "directory_loaded",
            generation=loaded.generation,
            addresses=len(loaded),
            seconds=round(time.monotonic() - started, 2),
        )
    held = store.index
    return {
        "ok": True,
        "generation": held.generation if held is not None else None,
        "addresses": len(held) if held is not None else 0,
    }


async def follow(
    store: Directory, mode: Callable[[], DirectoryMode], log: FilteringBoundLogger
) -> None:
    """For ever: the mode read anew at each look (a reload may change it)."""
    failing = False
    while True:
        outcome = await load_current(store, mode(), log)
        if not outcome["ok"] and not failing:  # one line per outage, not one a second
            log.error("directory_load_failed", error=outcome["error"])
        failing = not outcome["ok"]
        await asyncio.sleep(CHECK_INTERVAL)
