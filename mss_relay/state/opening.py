"""Opening the state the configuration names: the SQLite file (one machine)
or the PostgreSQL server (several relays), for the relay and the commands
alike; what cannot be opened is a ConfigError naming its key, one line."""

from __future__ import annotations

from mss_relay.config import Config, ConfigError
from mss_relay.log import Clock, utc_now
from mss_relay.pseudonym import KEY_KEY, Pseudonyms, key_file
from mss_relay.state.activity import ActivityStore
from mss_relay.state.api import Activities, Conversations
from mss_relay.state.conversations import ConversationStore, KeyMismatch
from mss_relay.state.database import StateLost
from mss_relay.state.errors import STATE_ERRORS, STATE_OR_OS
from mss_relay.state.pg_activity import PgActivityStore
from mss_relay.state.pg_conversations import PgConversationStore
from mss_relay.state.postgres import PostgresDatabase, SchemaTooNew, shown

DATABASE_KEY = "state.database"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


async def open_postgres(config: Config) -> PostgresDatabase | None:
    """The server of state.database: postgresql://..., migrated; None with SQLite."""
    settings = config.postgres
    if settings is None:
        return None
    try:
        return await PostgresDatabase.open(settings)
    except SchemaTooNew as error:
        raise ConfigError(DATABASE_KEY, str(error)) from None
    except OSError as error:  # the password file
        raise ConfigError(
            "state.password_file", f"cannot read it: {error.strerror or error}"
        ) from None
    except STATE_ERRORS as error:
        raise ConfigError(
            DATABASE_KEY, f"cannot connect to {shown(settings.url)}: {_first_line(error)}"
        ) from None


async def stored_fingerprint(database: PostgresDatabase) -> str | None:
    """The check of the key that made the server's pseudonyms (None: none yet)."""
    rows = await database.fetch("SELECT fingerprint FROM pseudonym_key")
    return str(rows[0][0]) if rows else None


async def open_conversations(
    config: Config,
    pseudonyms: Pseudonyms,
    database: PostgresDatabase | None,
    *,
    clock: Clock = utc_now,
) -> Conversations:
    """The conversation store: raises ConfigError (key, one line)."""
    idle_days = config.conversations.close_after_days
    try:
        if database is not None:
            return await PgConversationStore.open(
                database,
                pseudonyms=pseudonyms,
                key_file=key_file(config),
                clock=clock,
                idle_days=idle_days,
            )
        return await ConversationStore.open(
            config.database,
            idle_days=idle_days,
            # One write's wait for another process's lock; the reply does
            # not wait for it (Recorder), the writer retries.
            busy_timeout=config.record_timeout,
            pseudonyms=pseudonyms,
            clock=clock,
        )
    except KeyMismatch as error:
        raise ConfigError(KEY_KEY, str(error)) from None
    except StateLost as error:  # not an empty database in its place, silently
        raise ConfigError(DATABASE_KEY, str(error)) from None
    except STATE_OR_OS as error:
        where = shown(database.settings.url) if database else str(config.database)
        raise ConfigError(DATABASE_KEY, f"cannot open {where}: {_first_line(error)}") from None


async def open_activity(config: Config, database: PostgresDatabase | None) -> Activities:
    if database is not None:
        return PgActivityStore(database)
    try:
        return await ActivityStore.open(config.database)
    except STATE_OR_OS as error:
        raise ConfigError(DATABASE_KEY, f"cannot open {config.database}: {error}") from None
