"""The platform database pool, migrated before first use."""

from __future__ import annotations

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from db.migrate import apply_migrations, pending_migrations

# Rows come back as dicts.
Connection = psycopg.AsyncConnection[DictRow]
Pool = AsyncConnectionPool[Connection]


def required(row: DictRow | None) -> DictRow:
    """The row a statement always returns (an INSERT or UPDATE ... RETURNING of a row that exists)."""
    if row is None:
        raise LookupError("the statement returned no row")
    return row


class MigrationsPending(RuntimeError):
    """The application role cannot migrate: the owner must (``migration_database_url``)."""


async def open_pool(
    database_url: str, *, migration_url: str | None = None, min_size: int = 1, max_size: int = 10
) -> Pool:
    """A pool of ``database_url`` (the application role), after the owner's ``migration_url`` has
    applied what is pending; without it, ``database_url`` migrates (one role for both)."""
    async with await psycopg.AsyncConnection.connect(migration_url or database_url, autocommit=True) as conn:
        if pending := await pending_migrations(conn):
            try:
                await apply_migrations(conn)
            except psycopg.errors.InsufficientPrivilege as err:
                raise MigrationsPending(
                    f"{', '.join(pending)} pending and this role may not apply them: set migration_database_url"
                ) from err
    pool = Pool(
        database_url,
        connection_class=Connection,
        min_size=min_size,
        max_size=max_size,
        kwargs={"row_factory": dict_row},
        open=False,
        # A dropped connection is detected and replaced instead of failing the next query.
        check=AsyncConnectionPool.check_connection,
    )
    await pool.open(wait=True, timeout=30)
    return pool
