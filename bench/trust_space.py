"""The trust space the « -trust » relays of bench/compare.py --trust run with
(issue 16): the ANS liste blanche and the Annuaire Santé, both on, at their
real sizes.

    whitelist   a liste blanche of 6,500 entries (5,000 domains, 400 operator
                DNs) written by tests/support/whitelist.py, holding the bench's
                recipient domain and the sender's own BAL domain
    directory   an extraction of 600,000 rows written by tests/support/extraction.py,
                the bench's recipient one of them, imported by the real command
                (bench/directory_cost.py's import_extraction) into a copy of the
                run's state file, with directory.mode: refuse

Both are checked before any relay starts: the recipient every run sends to is
listed in the whitelist (by the relay's parser) and in the directory (by the
relay's store), else the bench would measure refusals.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mss_relay.core.addresses import domain_of, normalize_address
from mss_relay.state.directory import DirectoryStore
from mss_relay.trust.whitelist import parse_whitelist
from tests.support.extraction import Bal, generated, write
from tests.support.whitelist import with_domains

from .directory_cost import import_extraction
from .harness import DOMAIN, copy_state
from .load import RECIPIENT, SENDER

WHITELIST_ENTRIES = 6500
DIRECTORY_ROWS = 600_000


@dataclass(frozen=True)
class TrustSpace:
    whitelist: Path
    state: Path  # the run's state file, the extraction imported into it
    notes: dict[str, Any]  # what was generated, and what the import took

    def sections(self) -> dict[str, Any]:
        """The relay_config sections turning both on."""
        return {
            "trust_space": {"whitelist": str(self.whitelist)},
            "directory": {"mode": "refuse"},
        }


def make_trust_space(
    workdir: Path, state: Path, entries: int = WHITELIST_ENTRIES, rows: int = DIRECTORY_ROWS
) -> TrustSpace:
    """The whitelist file and a copy of `state` with an extraction imported."""
    started = time.monotonic()
    folder = workdir / "trust"
    folder.mkdir(parents=True, exist_ok=True)
    whitelist = folder / "listeblanchemssante.xml"
    # The recipient's domain is among tests/support/whitelist.py's ALWAYS; the
    # sender's (the structure's own BAL domain) is added: no start-up warning.
    whitelist.write_bytes(with_domains([DOMAIN], entries))
    listed = parse_whitelist(whitelist.read_bytes())
    missing = [d for d in (domain_of(RECIPIENT), domain_of(SENDER)) if d not in listed]
    if missing:
        raise RuntimeError(f"generated whitelist lacks {', '.join(missing)}")

    trust_state = folder / "state.sqlite3"
    copy_state(state, trust_state)
    recipient = Bal("PER", RECIPIENT, "Martin", "Jean", "Médecin", "CHU B", "69003 LYON")
    extraction = write(folder / "extraction.txt", itertools.chain(generated(rows - 1), [recipient]))
    figures = import_extraction(extraction, trust_state)
    extraction.unlink()  # 100 MB: the database holds it now
    if not asyncio.run(_listed(trust_state, RECIPIENT)):
        raise RuntimeError(f"{RECIPIENT} not in the imported directory")
    with sqlite3.connect(trust_state) as db:  # no -wal file left to copy
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    notes = {
        "whitelist_entries": listed.entries,
        "whitelist_domains": len(listed.domains),
        "whitelist_certificates": listed.certificates,
        "directory_rows": rows,
        "directory_import_s": figures["import_s"],
        "prepared_s": round(time.monotonic() - started, 1),
    }
    return TrustSpace(whitelist, trust_state, notes)


async def _listed(database: Path, address: str) -> bool:
    store = await DirectoryStore.open(database)
    try:
        return await store.listed(normalize_address(address))
    finally:
        await store.close()
