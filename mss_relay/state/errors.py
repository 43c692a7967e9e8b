"""The state's failures, whatever its driver (sqlite3, psycopg)."""

from __future__ import annotations

import sqlite3

import psycopg
from psycopg_pool import PoolTimeout

# The state could not answer now (locked, busy, the server unreachable): a
# write may be tried again, a reply that needs it is a 451.
TRANSIENT: tuple[type[Exception], ...] = (
    sqlite3.OperationalError,
    psycopg.OperationalError,
    PoolTimeout,
)
# Any failure of the state's driver.
STATE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error, PoolTimeout)
# The same, and the files around it (a folder not writable, a disk full).
STATE_OR_OS: tuple[type[Exception], ...] = (OSError, *STATE_ERRORS)


class SharedStateUnavailable(Exception):
    """The state shared by the relays cannot answer now (str(): why, with no
    datum of a user): the caller answers 451 4.3.0, or says the command failed."""
