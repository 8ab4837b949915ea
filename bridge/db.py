"""PostgreSQL connections and error classification (IO edge)."""

from __future__ import annotations

import asyncio
import enum
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg

from bridge.config import Settings
from bridge.errors import DatabaseUnavailableError, reason

__all__ = [
    "NOT_MIGRATED",
    "TRANSIENT_ERRORS",
    "Conn",
    "ErrorKind",
    "classify",
    "connect",
    "create_pool",
    "db_address",
    "is_missing_partition",
    "qualified",
    "sqlstate",
]

# A plain connection or one borrowed from the pool: both run the same statements.
Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

# What a statement raises when the database is away, restarting, refusing
# connections or too slow: the work is kept and tried again later.
TRANSIENT_ERRORS = (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
# SQLSTATE classes that mean "this data can never be stored as it is": retrying the
# same rows is useless, so the batch is split to isolate them (22 data exception,
# 23 integrity constraint violation). Everything else is treated as transient.
PERMANENT_CLASSES = frozenset({"22", "23"})
CHECK_VIOLATION = "23514"
# What a command meets in a schema that `fleet-bridge migrate` has not made (yet, or
# not to this version): a missing table (SQLSTATE 42P01) or schema (3F000).
NOT_MIGRATED = (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError)


class ErrorKind(enum.Enum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"


def sqlstate(exc: BaseException) -> str | None:
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) else None


def is_missing_partition(exc: BaseException) -> bool:
    """A row for a day whose partition is missing (dropped, or never made).

    PostgreSQL reports it as a check violation (23514) naming the partitioned table
    and no constraint; a real CHECK violation names its constraint. Told apart by
    these fields, never by the message, which follows the server's lc_messages.
    """
    return sqlstate(exc) == CHECK_VIOLATION and getattr(exc, "constraint_name", None) is None


def classify(exc: BaseException) -> ErrorKind:
    """Transient errors are retried with the batch kept; permanent ones are bisected.

    A missing partition is class 23 but means the writer's partition cache is stale:
    transient, so the day is made again and the batch retried.
    """
    state = sqlstate(exc)
    if state is None or is_missing_partition(exc):
        return ErrorKind.TRANSIENT
    return ErrorKind.PERMANENT if state[:2] in PERMANENT_CLASSES else ErrorKind.TRANSIENT


def qualified(schema: str, table: str) -> str:
    """A schema-qualified, quoted table name (schema validated by the settings)."""
    return f'"{schema}"."{table}"'


def _connect_kwargs(settings: Settings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "dsn": settings.db.dsn.reveal(),
        "timeout": settings.db.connect_timeout_s,
        "server_settings": {"application_name": "fleet-bridge"},
    }
    password = settings.db_password()
    if password is not None:
        kwargs["password"] = password
    return kwargs


def db_address(dsn: str) -> str:
    """Where a DSN points, for messages: ``host:port`` (a host list or a socket
    directory as written); never the user or the password."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    hosts = parts.netloc.rpartition("@")[2] or ",".join(query.get("host", ["localhost"]))
    if "," in hosts or hosts.startswith("/") or re.search(r":\d+$", hosts):
        return hosts
    return f"{hosts}:{query.get('port', ['5432'])[0]}"


async def connect(settings: Settings) -> asyncpg.Connection:
    """One connection, for commands that run a few statements and exit. Failing,
    a :class:`DatabaseUnavailableError` that names the address."""
    try:
        return await asyncpg.connect(**_connect_kwargs(settings))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:  # TimeoutError is an OSError
        problem = f"no answer within {settings.db.connect_timeout_s:g} s" if isinstance(exc, TimeoutError) else None
        where = db_address(settings.db.dsn.reveal())
        raise DatabaseUnavailableError(f"cannot connect to the database at {where}: {problem or reason(exc)}") from exc


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """What a pooled connection is reset with when it is released: nothing more than
    asyncpg's rollback of a transaction left open. The daemon's pool users set
    nothing at session level (transaction-scoped settings and locks only), and
    asyncpg's full reset costs a round trip on every release, that is per batch."""


async def create_pool(settings: Settings) -> asyncpg.Pool:
    """The daemon's pool; the first connection is opened lazily by the writer."""
    pool = asyncpg.create_pool(
        min_size=0,
        max_size=settings.db.pool_max,
        command_timeout=settings.db.command_timeout_s,
        reset=_keep_session,
        **_connect_kwargs(settings),
    )
    return await asyncio.wait_for(pool, timeout=settings.db.connect_timeout_s * 2)
