"""The current Annuaire Santé import's addresses, held in memory by each
worker, for the RCPT look-up.

Asking the database at every RCPT costs a round trip to aiosqlite's thread
(some 70 µs of CPU and 140 µs of wait for an 8 µs query): the hand-over, not
the query. The index answers in a few microseconds, on the event loop, with
no I/O: a sorted array of each address's 64-bit BLAKE2b digest, searched by
bisection within the bucket of its top bits (AddressIndex). 600,000
addresses take 4.7 MB per worker, and the buckets' starts 256 KB. Two addresses sharing a digest
(one chance in 2**64 / n per look-up, n the addresses) would let an unlisted
one pass as listed; the directory is a check against mistakes, not a lock.

Loaded in a thread (blocking sqlite3, a read-only connection of its own) at
start and whenever another import becomes current: the relay polls the
current generation (DirectoryStore.refresh), and « mss-relay directory
import » asks the running relay to look at once.
"""

from __future__ import annotations

import hashlib
import sqlite3
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


def digest(address: str) -> int:
    """The normalised address's 64-bit digest."""
    return int.from_bytes(hashlib.blake2b(address.encode("utf-8"), digest_size=8).digest())


# The digests are split by their top BUCKET_BITS bits: where each bucket
# starts in the sorted array (256 KB) brings a look-up to a bisection of a
# few entries, so that it touches two or three cache lines whatever the
# number of addresses (a bisection of the whole array would read some
# twenty, out of the processor's caches once the array outgrows them).
BUCKET_BITS = 16
_SHIFT = 64 - BUCKET_BITS


@dataclass(frozen=True, slots=True)
class AddressIndex:
    """One import's distinct addresses (their digests, sorted), and where
    each bucket of them starts (starts[b] to starts[b + 1])."""

    generation: int
    digests: array[int]
    starts: array[int]

    @classmethod
    def of(cls, generation: int, digests: array[int]) -> AddressIndex:
        starts = array("I", bytes(4 * ((1 << BUCKET_BITS) + 1)))
        for value in digests:
            starts[(value >> _SHIFT) + 1] += 1
        for bucket in range(1 << BUCKET_BITS):
            starts[bucket + 1] += starts[bucket]
        return cls(generation, digests, starts)

    def __contains__(self, address: str) -> bool:
        wanted = digest(address)
        bucket = wanted >> _SHIFT
        low, high = self.starts[bucket], self.starts[bucket + 1]
        at = bisect_left(self.digests, wanted, low, high)
        return at < high and self.digests[at] == wanted

    def __len__(self) -> int:
        return len(self.digests)


def load_index(path: Path) -> AddressIndex | None:
    """The current import's index, None when none was ever imported.
    Blocking: called in a thread. The generation and its rows are read in
    one read transaction: an import finishing meanwhile (and removing the
    previous generation's rows) is not seen half-way."""
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    try:
        db.execute("BEGIN")
        row = db.execute(
            "SELECT generation FROM directory_imports WHERE status = 'current'"
        ).fetchone()
        if row is None:
            return None
        generation = int(row[0])
        values = [
            digest(address)
            for (address,) in db.execute(
                "SELECT address FROM directory_entries WHERE generation = ?", [generation]
            )
        ]
        db.execute("COMMIT")
    finally:
        db.close()
    return index_of(generation, values)


def index_of(generation: int, values: Iterable[int]) -> AddressIndex:
    """The index of a generation's digests, in any order, repeats included.
    CPU-bound (a sort; some 0.3 s for 600,000): called in a thread."""
    digests = array("Q")
    last = -1
    for value in sorted(values):  # sorted: a repeated address (or digest) is next to its twin
        if value != last:
            digests.append(value)
            last = value
    return AddressIndex.of(generation, digests)
